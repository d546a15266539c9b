"""Device memory: the bytes each memory strategy needs, measured activations, and the strategy to train with."""
