"""Training: the LightningModule, optimiser and schedule, callbacks and monitoring, device-dependent speed
settings, the run-folder lock, and train() itself."""
