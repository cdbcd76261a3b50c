"""The training engine every track reuses: trainer, checkpoints, run directories, DDP."""
