"""The one generic trainer (`train_and_evaluate`) and the Task protocol it runs."""

from tps_jax.train.tasks import EXAMPLE_MASK, Evaluator, Task, get_task, register_task
from tps_jax.train.trainer import (TrainingError, initialize_distributed, run_cli,
                                   train_and_evaluate)
