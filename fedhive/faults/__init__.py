"""Hostile input and faults, to test a deployment the way its users will: other people's machines.

- :mod:`fedhive.faults.mutations`: hostile variants of an honest client reply (arrays, example counts, version
  claims, metrics, forged task ids and duplicates), each with what the server must do with it;
- :mod:`fedhive.faults.inprocess`: drives the real engine and strategies with a fleet of which some clients reply
  with those mutations, and checks the invariants (no crash, nothing applied twice, a rejected reply never changes
  the model, the model stays finite).

``benchmarks/faults.py`` runs the large version; ``tests/faults/`` the small one.
"""
