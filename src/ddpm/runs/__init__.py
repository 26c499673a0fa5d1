"""Runs: build a run's objects from its config, train, load a run from a checkpoint, evaluate."""
