"""Mesh and sharding, train state, checkpoints, metric writing, the generic loop."""
