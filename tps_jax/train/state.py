"""The train state: one pytree that the step updates and checkpoints hold."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training.

  `model_state` holds the non-'params' variable collections (e.g. 'batch_stats');
  `ema_params` is None unless `config.optim.ema_decay` is set.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  ema_params: PyTree
  rng: jax.Array

  def eval_params(self) -> PyTree:
    """The parameters used for evaluation and export: EMA ones when kept."""
    return self.params if self.ema_params is None else self.ema_params
