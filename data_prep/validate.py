r"""Checks a Kinetics-TPS root: layout, lists, frame counts, every annotation, every video.

  python -m data_prep.validate --data_root ROOT [--split train|test|all]
      [--video_mode full|quick|none] [--jobs N] [--box_tolerance PX] [--max_problems N]
      [--stats] [--noprogress]

Prints every problem as `path: problem` (all of them, after the whole run), then the
warnings and a summary of counts per split; exit status 1 when there is any problem.
`--video_mode full` decodes every video to the end, `quick` opens it and decodes its
first frame, `none` does not open it. What is checked: tps_jax/datasets/validation.py
(`validate`, whose keyword arguments these flags are).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from tps_jax import cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.datasets import validation

_DATA_ROOT = flags.DEFINE_string('data_root', None, 'Dataset root (holds train_videos/, list/).')
_SPLIT = flags.DEFINE_enum('split', 'all', [*tps.SPLITS, 'all'], 'Which split to check.')
_VIDEO_MODE = flags.DEFINE_enum(
  'video_mode',
  'full',
  validation.VIDEO_MODES,
  'full: decode every frame; quick: open each '
  'video, read its frame count from the header and decode its first frame; none: do not '
  'open videos (no frame-count or image-bound checks).',
)
_JOBS = flags.DEFINE_integer(
  'jobs', os.cpu_count() or 1, 'Worker processes (default: one per CPU core).', lower_bound=1
)
_BOX_TOLERANCE = flags.DEFINE_float(
  'box_tolerance',
  0.0,
  'Pixels a box may reach past the right and bottom image edges beyond x2 = width, y2 = height.',
  lower_bound=0.0,
)
_MAX_PROBLEMS = flags.DEFINE_integer(
  'max_problems', 0, 'Print at most N problems and N warnings (0: all).'
)
_STATS = flags.DEFINE_bool(
  'stats', False, 'Also print the videos per action and the parts per state.'
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flag_as_required('data_root')


def limited(lines: Sequence[str], limit: int, what: str) -> list[str]:
  """The first `limit` lines (all for limit <= 0) and a count of the rest."""
  if limit <= 0 or len(lines) <= limit:
    return list(lines)
  return list(lines[:limit]) + [
    f'... and {len(lines) - limit} more {what} (--max_problems {limit})'
  ]


def main(argv) -> int:
  del argv
  root = _DATA_ROOT.value
  if not os.path.isdir(root):
    print(f'error: {root}: no such folder', file=sys.stderr)
    return 1
  splits = tps.SPLITS if _SPLIT.value == 'all' else (_SPLIT.value,)
  report = validation.validate(
    root,
    splits,
    video_mode=_VIDEO_MODE.value,
    jobs=_JOBS.value,
    box_tolerance=_BOX_TOLERANCE.value,
    progress=_PROGRESS.value,
  )
  for line in limited(report.problems, _MAX_PROBLEMS.value, 'problem(s)') + limited(
    report.warnings, _MAX_PROBLEMS.value, 'warning(s)'
  ):
    print(line)
  print(validation.format_summary(report, stats=_STATS.value))
  return 0 if report.ok else 1


if __name__ == '__main__':
  cli.run(main)
