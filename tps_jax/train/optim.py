"""Optimiser: AdamW, warmup + cosine, global-norm clipping, layer-wise lr decay, EMA,
frozen parameters.

Config fields (`config.optim`): learning_rate, warmup_steps, end_lr_ratio, b1, b2,
eps, weight_decay, grad_clip_norm (0: off), layer_decay (1.0: off), ema_decay (0: off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def param_name(path) -> str:
  """'encoder/layer_0/kernel': a jax key path as a parameter's name."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def path_names(path) -> tuple[str, ...]:
  """('encoder', 'layer_0', 'kernel'): a jax key path as the Task hooks take it."""
  return tuple(param_name(path).split('/'))


def warmup_cosine_schedule(
  learning_rate: float, total_steps: int, warmup_steps: int, end_lr_ratio: float = 0.0
) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine to `end_lr_ratio * lr`."""
  warmup_steps = min(warmup_steps, total_steps)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=learning_rate,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=learning_rate * end_lr_ratio,
  )


def layer_lr_scales(
  params: PyTree,
  layer_id: Callable[[tuple[str, ...]], int | None],
  num_layers: int,
  layer_decay: float,
) -> PyTree:
  """Per-leaf lr multipliers `layer_decay ** (num_layers - layer_id(path))`.

  Leaves whose layer id is None count as the head (multiplier 1).
  """

  def scale(path, _):
    layer = layer_id(path_names(path))
    layer = num_layers if layer is None else layer
    if not 0 <= layer <= num_layers:
      raise ValueError(f'layer_id({param_name(path)}) = {layer} is outside [0, {num_layers}]')
    return float(layer_decay) ** (num_layers - layer)

  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales: PyTree) -> optax.GradientTransformation:
  """Multiplies each update leaf by a constant (a per-parameter lr multiplier)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init_fn, update_fn)


def decay_mask_tree(params: PyTree, decay_mask: Callable[[tuple[str, ...], Any], bool]) -> PyTree:
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: bool(decay_mask(path_names(path), leaf)), params
  )


def make_optimizer(
  optim_config,
  params: PyTree,
  *,
  total_steps: int,
  layer_id=None,
  num_layers: int = 0,
  decay_mask=None,
  trainable=None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimiser chain and its learning-rate schedule.

  Layer-wise decay multiplies the whole AdamW update (so both the Adam step and the
  decoupled weight decay) of a leaf by its lr multiplier: identical to giving each
  layer its own learning rate. Parameters for which `trainable(path)` is False (a
  frozen backbone stage) get a zero update: no Adam step, no weight decay, and no
  optimiser moments. Gradient clipping sees only the trainable leaves.
  """
  schedule = warmup_cosine_schedule(
    optim_config.learning_rate,
    total_steps,
    optim_config.warmup_steps,
    optim_config.get('end_lr_ratio', 0.0),
  )
  mask = None if decay_mask is None else decay_mask_tree(params, decay_mask)
  chain = []
  if optim_config.get('grad_clip_norm', 0.0):
    chain.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  chain.append(
    optax.adamw(
      schedule,
      b1=optim_config.get('b1', 0.9),
      b2=optim_config.get('b2', 0.999),
      eps=optim_config.get('eps', 1e-8),
      weight_decay=optim_config.get('weight_decay', 0.0),
      mask=mask,
    )
  )
  layer_decay = optim_config.get('layer_decay', 1.0)
  if layer_decay != 1.0:
    if layer_id is None:
      raise ValueError('config.optim.layer_decay is set but the task defines no layer_id')
    chain.append(scale_by_tree(layer_lr_scales(params, layer_id, num_layers, layer_decay)))
  tx = optax.chain(*chain)
  if trainable is not None:
    labels = jax.tree_util.tree_map_with_path(
      lambda path, _: 'train' if trainable(path_names(path)) else 'freeze', params
    )
    if 'freeze' in jax.tree.leaves(labels):
      tx = optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)
  return tx, schedule


def ema_update(ema_params: PyTree, params: PyTree, decay: float) -> PyTree:
  """Exponential moving average: `decay * ema + (1 - decay) * params`."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
