"""Stage 3 training: DDP setup, optimizers/schedules, checkpoints, logging, the training loop."""
