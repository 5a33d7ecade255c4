r"""Writes a synthetic Kinetics-TPS dataset in the official layout.

  python -m data_prep.make_synthetic --out DIR [--videos 240] [--frames 32] [--seed 0]
      [--size 160x120] [--actions 6] [--test_fraction 0.2] [--jobs 1] [--noprogress]

Videos, per-frame annotations, the lists and frame counts, and the test split's ground
truth; deterministic, resumable (a rerun with the same flags completes DIR). What it
writes and how: tps_jax/datasets/synthetic.py (`write_synthetic`, whose keyword arguments
these flags are). Prints one line of counts; errors are one line, exit status 1.
"""

from __future__ import annotations

import sys

from absl import flags

from tps_jax import cli
from tps_jax.datasets import synthetic

_OUT = flags.DEFINE_string('out', None, 'Dataset root to create or complete.')
_VIDEOS = flags.DEFINE_integer('videos', 240, 'Number of videos (both splits).')
_FRAMES = flags.DEFINE_integer(
  'frames', 32, 'Frames per video at most (each video has 80-100% of it).'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_SIZE = flags.DEFINE_string('size', '160x120', 'Frame size WxH.')
_ACTIONS = flags.DEFINE_integer(
  'actions',
  6,
  f'Number of action classes, 1..{len(synthetic.ACTIONS)} (in order: '
  f'{", ".join(synthetic.ACTIONS)}).',
)
_TEST_FRACTION = flags.DEFINE_float(
  'test_fraction', 0.2, 'Fraction of the videos in the test split.'
)
_JOBS = flags.DEFINE_integer('jobs', 1, 'Worker processes.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flag_as_required('out')


def parse_size(text: str) -> tuple[int, int] | None:
  """'160x120' -> (160, 120); None when it does not look like WxH."""
  width, x, height = text.lower().partition('x')
  return (int(width), int(height)) if x and width.isdigit() and height.isdigit() else None


flags.register_validator(
  'size', lambda text: parse_size(text) is not None, 'must look like 160x120 (WxH)'
)


def main(argv) -> int:
  del argv
  try:
    summary = synthetic.write_synthetic(
      _OUT.value,
      videos=_VIDEOS.value,
      frames=_FRAMES.value,
      size=parse_size(_SIZE.value),
      actions=_ACTIONS.value,
      test_fraction=_TEST_FRACTION.value,
      seed=_SEED.value,
      jobs=_JOBS.value,
      progress=_PROGRESS.value,
    )
  except synthetic.SyntheticError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(summary)
  return 0


if __name__ == '__main__':
  cli.run(main)
