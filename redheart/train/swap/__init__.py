"""Group-wise swap training: the model in host memory, one module group at a time on the device."""
