"""One training engine for every job (train, prune, forget): loop, optimiser, checkpoints, guards."""
