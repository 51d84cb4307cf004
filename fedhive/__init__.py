"""fedhive: asynchronous, staleness-aware federated learning on Flower for fleets of unequal devices."""

__version__ = "0.1.0"
