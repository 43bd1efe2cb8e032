"""The training engine: config schema, trainer, metrics, checkpoints, distributed helpers."""
