r"""Builds the TFDS (ArrayRecord) datasets the four networks train on.

  python -m data_prep.build --data_root ROOT [--out DIR] \
      [--datasets humans,parts,part_states,action_clips] [--val_fraction 0.1] [--seed 0] \
      [--frames_dir DIR] [--context 0.1] [--clip_short_side 256] [--jpeg_quality 90] \
      [--pseudo_labels FILE [--pseudo_positive 0.4] [--pseudo_low 0.1]] \
      [--jobs 1] [--keep_going] [--overwrite] [--noprogress]
  python -m data_prep.build --video_folder DIR --name my_videos [--out DIR] ...

`tps_humans`, `tps_parts`, `tps_part_states` and `tps_action_clips` under OUT (default
ROOT/tfds), split by video into `train` and `val`; or, from class sub-folders of videos,
one action-clip dataset NAME. What is built and how: tps_jax/datasets/build.py
(`build_datasets`, whose keyword arguments these flags are); the features:
tps_jax/data/tfds_layout.py. Prints a line per dataset built or kept. Bad input stops the
build with one line naming the file (exit status 1), or with --keep_going is skipped
and listed, with a count, at the end; a finished dataset built with other settings is
an error until --overwrite.
"""

from __future__ import annotations

import sys

from absl import flags

from tps_jax import cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import tfds_layout
from tps_jax.datasets import build

_DATA_ROOT = flags.DEFINE_string(
  'data_root', None, 'Kinetics-TPS root (train_videos/, train_annotations/, list/).'
)
_VIDEO_FOLDER = flags.DEFINE_string(
  'video_folder', None, 'Instead: a folder of class sub-folders of videos.'
)
_NAME = flags.DEFINE_string('name', None, 'Dataset name for --video_folder (e.g. my_videos).')
_OUT = flags.DEFINE_string(
  'out', None, 'Output folder (default DATA_ROOT/tfds or VIDEO_FOLDER/tfds).'
)
_DATASETS = flags.DEFINE_list(
  'datasets', list(tfds_layout.DATASETS), f'Comma-separated, from {",".join(tfds_layout.DATASETS)}.'
)
_VAL_FRACTION = flags.DEFINE_float(
  'val_fraction', 0.1, 'Fraction of the train videos held out as the val split.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the train/val split.')
_FRAMES_DIR = flags.DEFINE_string(
  'frames_dir', None, 'Extracted frame folders to read instead of decoding the videos.'
)
_CONTEXT = flags.DEFINE_float(
  'context', 0.1, 'Human crops: margin around the box, fraction of its size.'
)
_CLIP_SHORT_SIDE = flags.DEFINE_integer(
  'clip_short_side',
  256,
  'Action clips: frames downscaled so the short side is at most this (0: kept).',
)
_JPEG_QUALITY = flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality 1..100.')
_PSEUDO_LABELS = flags.DEFINE_string(
  'pseudo_labels',
  None,
  'Pseudo-label JSON merged into tps_parts (format: tps_jax/datasets/pseudo_labels.py).',
)
_PSEUDO_POSITIVE = flags.DEFINE_float(
  'pseudo_positive', 0.4, 'Pseudo-labels scoring above this are positives.'
)
_PSEUDO_LOW = flags.DEFINE_float(
  'pseudo_low', 0.1, 'Pseudo-labels scoring in [pseudo_low, pseudo_positive] are ignore regions.'
)
_JOBS = flags.DEFINE_integer('jobs', 1, 'Worker processes decoding and encoding videos.')
_KEEP_GOING = flags.DEFINE_bool(
  'keep_going', False, 'Skip bad annotations / videos, list them at the end.'
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild finished datasets.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.mark_flags_as_mutual_exclusive(['data_root', 'video_folder'], required=True)


def main(argv) -> int:
  del argv
  try:
    problems = build.build_datasets(
      _DATA_ROOT.value,
      video_folder=_VIDEO_FOLDER.value,
      name=_NAME.value,
      out=_OUT.value,
      datasets=_DATASETS.value,
      val_fraction=_VAL_FRACTION.value,
      seed=_SEED.value,
      frames_dir=_FRAMES_DIR.value,
      context=_CONTEXT.value,
      clip_short_side=_CLIP_SHORT_SIDE.value,
      jpeg_quality=_JPEG_QUALITY.value,
      pseudo_labels=_PSEUDO_LABELS.value,
      pseudo_positive=_PSEUDO_POSITIVE.value,
      pseudo_low=_PSEUDO_LOW.value,
      jobs=_JOBS.value,
      keep_going=_KEEP_GOING.value,
      overwrite=_OVERWRITE.value,
      progress=_PROGRESS.value,
    )
  except build.ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if problems:
    print(tps.format_problems(problems), file=sys.stderr)
  return 0


if __name__ == '__main__':
  cli.run(main)
