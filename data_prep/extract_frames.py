r"""Extracts the frames of Kinetics-TPS videos as JPEG files (mmaction2's rawframes).

  python -m data_prep.extract_frames --data_root ROOT [--out ROOT/frames]
      [--split train|test|all] [--jobs N] [--short_side S] [--jpeg_quality 95]
      [--only_annotated] [--noprogress]

Writes OUT/<split>/<class>/<video>/img_00001.jpg, ... (from 1, as the annotation files);
resumable, and refused on an OUT extracted with other options. `--only_annotated`
writes the frames with an annotation file (the scored frames 1, 6, 11, ... of videos
without annotations); `--short_side S` resizes the shorter side to S pixels. How:
tps_jax/datasets/frames.py (`extract`, whose keyword arguments these flags are). Prints
every error and warning (`path: problem`), then a summary; exit status 1 when a video
could not be extracted; refused options are one line with exit status 2.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from tps_jax import cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.datasets import frames

_DATA_ROOT = flags.DEFINE_string('data_root', None, 'Dataset root (holds train_videos/).')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default: DATA_ROOT/frames).')
_SPLIT = flags.DEFINE_enum('split', 'all', [*tps.SPLITS, 'all'], 'Which split to extract.')
_JOBS = flags.DEFINE_integer(
  'jobs', os.cpu_count() or 1, 'Worker processes (default: one per CPU core).', lower_bound=1
)
_SHORT_SIDE = flags.DEFINE_integer(
  'short_side',
  None,
  'Resize so the shorter side has this '
  'many pixels (default: the original size, as the '
  'annotation boxes).',
)
_JPEG_QUALITY = flags.DEFINE_integer('jpeg_quality', 95, 'JPEG quality, 1..100.')
_ONLY_ANNOTATED = flags.DEFINE_bool(
  'only_annotated',
  False,
  'Write only the frames with an annotation file (the scored '
  'frames 1, 6, 11, ... of videos without annotations).',
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flag_as_required('data_root')


def main(argv) -> int:
  del argv
  splits = tps.SPLITS if _SPLIT.value == 'all' else (_SPLIT.value,)
  try:
    report = frames.extract(
      _DATA_ROOT.value,
      _OUT.value,
      splits,
      jobs=_JOBS.value,
      short_side=_SHORT_SIDE.value,
      jpeg_quality=_JPEG_QUALITY.value,
      only_annotated=_ONLY_ANNOTATED.value,
      progress=_PROGRESS.value,
    )
  except (frames.SettingsError, submission.SubmissionError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for line in report.errors + report.warnings:
    print(line)
  print(report.summary())
  return 0 if report.ok else 1


if __name__ == '__main__':
  cli.run(main)
