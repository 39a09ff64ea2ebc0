"""Training: optimizer, sharded train step, checkpoints and the train loop."""
