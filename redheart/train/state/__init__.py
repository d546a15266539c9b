"""What training saves: modular checkpoints (weights by module group) and the one rolling resume state."""
