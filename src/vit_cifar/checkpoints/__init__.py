"""Files that must never be half-written, and checkpoints: atomic writes (and output places checked first),
Lightning's CheckpointIO, loading a network back safely, resuming."""
