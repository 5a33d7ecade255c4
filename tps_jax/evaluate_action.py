r"""Evaluates action recognisers with multi-view TTA, alone and as a logit ensemble.

  python -m tps_jax.evaluate_action --export DIR[,DIR...] --data_root ROOT \
      [--clips 4 --crops 3] [--split val] [--average logits|probs] [--batch_size 4] \
      [--views_per_forward 0] [--tfds_name NAME --tfds_dir DIR] [--out DIR]

Each DIR is a training export (`WORKDIR/export`, tps_jax/train/checkpointing.py); the
members may differ in arch and clip settings (each samples its own views). Prints
top-1 / top-5 per member and for the ensemble (the mean of the members' view-averaged
logits, or probabilities with --average probs). `--split val` (or `train`) reads the
TFDS clips dataset (`--tfds_name`, default the first member's, under ROOT/tfds or
`--tfds_dir`); `--split test` decodes ROOT/test_videos. `--out DIR` writes the
ensemble's `pred_vid_result.json` ({video: class name}, the challenge's format) there.
Errors are one line on stderr, exit status 1.
"""

from __future__ import annotations

import functools
import os
import sys

from absl import flags
from tqdm import tqdm

from tps_jax import cli

_EXPORT = flags.DEFINE_list('export', None, 'Comma-separated export directories.')
_DATA_ROOT = flags.DEFINE_string(
  'data_root', '', "Dataset root (default: the first member's config.data.root)."
)
_SPLIT = flags.DEFINE_string(
  'split', 'val', "'val' / 'train' (TFDS clips) or 'test' (ROOT/test_videos)."
)
_CLIPS = flags.DEFINE_integer('clips', 4, 'Temporal clips per video.')
_CROPS = flags.DEFINE_integer(
  'crops', 3, 'Spatial crops per clip (1: centre; 3: both ends and centre of the long side).'
)
_AVERAGE = flags.DEFINE_enum(
  'average', 'logits', ['logits', 'probs'], 'What views and members average.'
)
_BATCH = flags.DEFINE_integer('batch_size', 4, 'Videos per forward batch.')
_VIEWS_PER_FORWARD = flags.DEFINE_integer(
  'views_per_forward', 0, 'Views through the network at once (divides clips x crops; 0: all).'
)
_TFDS_NAME = flags.DEFINE_string('tfds_name', None, 'TFDS clips dataset name.')
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None, 'Folder of TFDS datasets.')
_OUT = flags.DEFINE_string('out', None, 'Write pred_vid_result.json to this folder.')
flags.mark_flag_as_required('export')


def format_table(result) -> list[str]:
  """One line per member and one for the ensemble."""
  lines = []
  for key, metrics in result.metrics.items():
    if metrics.get('count'):
      lines.append(
        f'{key}: top1 {metrics["top1"]:.4f}  top5 {metrics["top5"]:.4f}  '
        f'({metrics["count"]} videos)'
      )
    else:
      lines.append(f'{key}: no labelled video')
  return lines


def _advance(bar: tqdm, done: int, total: int) -> None:
  """Moves the progress bar to `done` of `total` videos."""
  bar.total = total
  bar.update(done - bar.n)


def main(argv) -> int:
  del argv
  # Imported here so that --help does not load JAX.
  from tps_jax.data import submission
  from tps_jax.data import video as video_lib
  from tps_jax.data.kinetics_tps import AnnotationError
  from tps_jax.inference import action as action_export
  from tps_jax.tasks import action_views

  try:
    members = [action_export.load_member(path) for path in _EXPORT.value]
    with tqdm(desc=f'{_SPLIT.value} videos', unit='video') as bar:
      result = action_views.evaluate_members(
        members,
        split=_SPLIT.value,
        data_root=_DATA_ROOT.value,
        tfds_name=_TFDS_NAME.value,
        tfds_dir=_TFDS_DIR.value,
        clips=_CLIPS.value,
        crops=_CROPS.value,
        average=_AVERAGE.value,
        batch_size=_BATCH.value,
        views_per_forward=_VIEWS_PER_FORWARD.value,
        progress=functools.partial(_advance, bar),
      )
  except (FileNotFoundError, ValueError, AnnotationError, video_lib.VideoError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(
    f'{_SPLIT.value}: {len(result.videos)} videos, {_CLIPS.value} clips x '
    f'{_CROPS.value} crops, {_AVERAGE.value} averaged'
  )
  print('\n'.join(format_table(result)))
  if _OUT.value:
    path = os.path.join(_OUT.value, submission.PRED_FILES[0])
    submission.write_json_atomic(path, result.predictions())
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  cli.run(main)
