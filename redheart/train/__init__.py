"""Training: the trainer and its one window loop, the training run (recipe.py), and the sub-packages for memory,
swap, parallel, saved state, telemetry and the learning-rate sweep."""
