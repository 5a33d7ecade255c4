"""Resampling that balances part states per part (the Hikvision report, section 3.1).

Each example (a human crop) holds up to ten parts, each in one state. The natural state
distribution is very skewed ('none' dominates every part), so examples are drawn with
replacement with weights from inverse state frequencies:

  w_i = max over the valid parts p of example i of  n_p / (K_p * count_p(state_ip))

where count_p(s) is the number of examples whose part p is in state s, n_p the number of
examples with part p and K_p the number of states part p shows (so n_p / (K_p count_p(s))
is 1 for every state when part p alone is balanced). An example is drawn as often as its
rarest part state asks. One draw serves all ten parts at once, so no weighting makes
every part exactly uniform; on skewed, action-correlated states the largest / smallest
state frequency ratio of a part drops about tenfold (tests/test_pipelines.py) with an
effective sample size of a fifth to a half of the examples (the mean over parts instead
of the max balances less; importance weights that flatten every part exactly put nearly
all the mass on a dozen examples).

`WeightedResampleDataset` is a grain MapDataset: element k of the endless stream is
parent[draw(epoch)[k mod n]] with epoch = k div n and draw(epoch) a fixed-seed weighted
draw of n indices, so the order is a pure function of (seed, k): deterministic, and a
grain iterator over it checkpoints and resumes like any other.
"""

from __future__ import annotations

import sys

import grain
import numpy as np


def state_balancing_weights(part_states: np.ndarray) -> np.ndarray:
  """(N,) float64 sampling weights (summing to 1) from (N, P) int states (-1: absent).

  An example without any part gets weight 0 (it carries no state to learn).
  """
  states = np.asarray(part_states)
  num_parts = states.shape[1]
  inverse = np.zeros(states.shape, np.float64)
  for p in range(num_parts):
    column = states[:, p]
    present = column >= 0
    if not present.any():
      continue
    values, index, counts = np.unique(column[present], return_inverse=True, return_counts=True)
    inverse[present, p] = present.sum() / (len(values) * counts[index])
  weights = inverse.max(1)
  if weights.sum() <= 0:
    raise ValueError('state balancing: no example has a part with a state')
  return weights / weights.sum()


class WeightedResampleDataset(grain.MapDataset):
  """Endless weighted draw with replacement from `parent`, one fixed draw per epoch."""

  def __init__(self, parent: grain.MapDataset, weights: np.ndarray, *, seed: int):
    super().__init__(parent)
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(parent),):
      raise ValueError(f'weights: expected shape ({len(parent)},), got {weights.shape}')
    self._cumulative = np.cumsum(weights / weights.sum())
    self._seed = int(seed)
    self._cache = (None, None)  # (epoch, draw): one attribute, swapped atomically

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'WeightedResampleDataset(seed={self._seed})'

  def epoch_draw(self, epoch: int) -> np.ndarray:
    """The parent indices drawn for one epoch (len(parent) of them)."""
    cached_epoch, draw = self._cache
    if cached_epoch != epoch:
      rng = np.random.default_rng([self._seed, epoch])
      draw = np.searchsorted(self._cumulative, rng.random(len(self._cumulative)), side='right')
      draw = np.minimum(draw, len(self._cumulative) - 1)
      self._cache = (epoch, draw)
    return draw

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, len(self._cumulative))
    return self._parent[int(self.epoch_draw(epoch)[position])]
