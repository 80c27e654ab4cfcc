"""Import of official PyTorch checkpoints into Flax params."""
