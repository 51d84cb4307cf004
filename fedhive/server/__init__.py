"""Server side: the orchestrator (one event loop for every mode), transports, checkpoints."""
