"""The one generic trainer: `train_and_evaluate(config, workdir)` runs the task
`config.task` names (the protocol: tps_jax/tasks/base.py)."""

from tps_jax.train.trainer import TrainingError, initialize_distributed, run_cli, train_and_evaluate

__all__ = ['TrainingError', 'initialize_distributed', 'run_cli', 'train_and_evaluate']
