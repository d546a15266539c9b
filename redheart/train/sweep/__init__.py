"""The learning-rate sweep: trials on disk, the selection score, and its plot."""
