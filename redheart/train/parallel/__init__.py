"""Training with several processes under torchrun: the process group, data-parallel windows, FSDP sharding."""
