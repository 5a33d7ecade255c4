"""The split of a root's train videos into train and val, by video (the official test
labels are not public): `split_videos`, the same for every dataset built from the root.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def split_videos(videos: Iterable[tuple[str, str]], val_fraction: float, seed: int) -> list[str]:
  """The sorted names of the val videos among (name, action) pairs.

  round(val_fraction * n) videos (at least one when val_fraction > 0 and n >= 2), spread
  over the classes: each class's videos are shuffled and the classes are taken in turn.
  Depends only on the pairs (in any order), the fraction and the seed.
  """
  videos = sorted(set(videos))
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
  num_val = round(val_fraction * len(videos))
  if val_fraction > 0 and len(videos) >= 2:
    num_val = max(num_val, 1)
  rng = np.random.default_rng([seed, 7919])
  by_class: dict[str, list[str]] = {}
  for name, action in videos:
    by_class.setdefault(action, []).append(name)
  order = []  # (rank in its shuffled class, random tie-break, name)
  for names in by_class.values():
    for rank, i in enumerate(rng.permutation(len(names))):
      order.append((rank, rng.random(), names[i]))
  return sorted(name for _, _, name in sorted(order)[:num_val])
