"""Training core: chips, augmentation, losses, metrics, the training loop."""
