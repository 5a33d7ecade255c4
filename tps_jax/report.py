r"""An error-analysis report of a submission, one static page to open in a browser.

  python -m tps_jax.report --pred PRED_DIR --gt GT_DIR [--data_root DATA] --out REPORT_DIR
  python -m tps_jax.report --pred PRED_DIR --data_root DATA --split val --out REPORT_DIR
      [--worst 8] [--ablation DIR]

Scores the submission once, with the code `python -m tps_jax.evaluate` runs (the same
table is printed), and writes REPORT_DIR/index.html with its pictures beside it
(tps_jax/metrics/report_page.py): the score and its grid, where the score is lost, humans,
parts, actions, and every video sortable by PSC with the worst ones drawn. Opens from
disk, no server, no network.

Ground truth: --gt DIR (gt_vid_result.json, gt_part_result.json), or --data_root with
--split (train, test, or val: the train videos data_prep.build held out) for the
split's annotations. --data_root also extends the vocabularies (as evaluate's) and lets
the worst videos' frames be drawn. The oracle ablation's rows are read from
PRED_DIR/ablation/<row>/ (as `predict --ablation` writes them) or --ablation DIR.

Bad input is what evaluate says: a submission the official tool would not score is one
line on stderr and exit 2; what it scores with a warning is scored, warned about on
stderr and listed on the page.
"""

from __future__ import annotations

import gc
import os
import sys

from absl import flags

from tps_jax import cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.metrics import report_page
from tps_jax.metrics import score as score_lib


class UsageError(ValueError):
  """A user mistake; the message is one line."""


def _check_arguments(pred, out, gt, data_root, split, worst) -> None:
  if not pred or not out:
    raise UsageError('--pred and --out are required')
  if bool(gt) == bool(split):
    raise UsageError('give either --gt GT_DIR or --split (with --data_root)')
  if split and not data_root:
    raise UsageError('--split needs --data_root')
  if worst < 0:
    raise UsageError('--worst must not be negative')


def split_ground_truth(root: str, split: str, problems: list[str]) -> tuple[dict, dict]:
  """(gt_vid, gt_part) of a split's annotated videos; val: the held-out train videos.
  Annotation problems (skipped videos or frames) are added to `problems`."""
  from tps_jax.inference import videos as videos_lib  # noqa: PLC0415  (TFDS: only for val)

  if split != 'val':
    return tps.ground_truth(root, split, problems=problems)
  keep = set(videos_lib.val_videos(root))
  vid, part = tps.ground_truth(root, 'train', problems=problems)
  return {k: v for k, v in vid.items() if k in keep}, {k: v for k, v in part.items() if k in keep}


def video_files(root: str | None) -> dict[str, str]:
  """{video: file} of both splits of a dataset root ({} without one)."""
  paths = {}
  for split in tps.SPLITS if root else ():
    if os.path.isdir(os.path.join(root, f'{split}_videos')):
      paths.update({v.name: v.video_path for v in tps.iter_videos(root, split, problems=[])})
  return paths


def ablation_row_names(folder: str | None) -> list[str]:
  """The sub-folders of an ablation folder that hold a submission (one per row)."""
  if not folder or not os.path.isdir(folder):
    return []
  return sorted(
    entry.name
    for entry in os.scandir(folder)
    if os.path.isfile(os.path.join(entry.path, submission.PRED_FILES[1]))
  )


def _vocabulary(root: str | None):
  if not root:
    return None
  vocab = tps.Vocab.from_root(root)
  return set(vocab.states), set(vocab.actions)


def score_rows(folder: str, names: list[str], gt_vid, gt_part, vocabulary) -> list:
  """(row, score) of each row's submission, 'system' first, then by score."""
  rows = []
  for name in names:
    pred = submission.read_results(os.path.join(folder, name), 'pred')
    row = score_lib.score_typed(gt_vid, gt_part, *pred, vocabulary=vocabulary)
    rows.append((name.replace('_', ' '), row.score))
  return sorted(rows, key=lambda r: (r[0] != 'system', r[1]))


def run_report(
  *,
  pred: str,
  out: str,
  gt: str | None = None,
  data_root: str | None = None,
  split: str | None = None,
  worst: int = report_page.WORST_VIDEOS,
  ablation: str | None = None,
  keep: list | None = None,
) -> int:
  """The command's work (keyword arguments named as its flags); returns the exit status.

  keep: a list that gets the parsed files, so that a process about to exit skips their
  teardown (seconds for a test-set-sized submission), as evaluate does.
  """
  try:
    _check_arguments(pred, out, gt, data_root, split, worst)
    vocabulary = _vocabulary(data_root)
    if gt:
      gt_vid, gt_part = submission.read_results(gt, 'gt')
    else:
      problems = []
      gt_vid, raw = split_ground_truth(data_root, split, problems)
      gt_part = submission.as_typed(raw, 'gt')
      for problem in problems:
        print(f'warning: {problem}', file=sys.stderr)
    pred_vid, pred_part = submission.read_results(pred, 'pred')
    if keep is not None:
      keep.append((gt_vid, gt_part, pred_vid, pred_part))
    report = score_lib.score_typed(
      gt_vid, gt_part, pred_vid, pred_part, vocabulary=vocabulary, details=True
    )
    folder = ablation or os.path.join(pred, 'ablation')
    if ablation and not os.path.isdir(folder):
      raise UsageError(f'--ablation {folder}: no such folder')
    rows = score_rows(folder, ablation_row_names(folder), gt_vid, gt_part, vocabulary)
    video_paths = video_files(data_root)
  except (submission.SubmissionError, UsageError, tps.AnnotationError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for warning in report.warnings:
    print(f'warning: {warning}', file=sys.stderr)
  print(report.format())
  try:
    path = report_page.write_report(
      out, report, gt_part, pred_part, ablation=rows, video_paths=video_paths, worst=worst
    )
  except OSError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'report: {os.path.abspath(path)}')
  return 0


def define_flags() -> None:
  """The command's flags, defined only when it runs (`python -m tps_jax.report`), so that
  importing run_report registers no flag beside another tool's of the same name."""
  flags.DEFINE_string('pred', None, 'Folder with pred_vid_result.json, pred_part_result.json.')
  flags.DEFINE_string('gt', None, 'Folder with gt_vid_result.json, gt_part_result.json.')
  flags.DEFINE_string(
    'data_root', None, 'Kinetics-TPS root: vocabularies, the videos to draw, --split.'
  )
  flags.DEFINE_enum('split', None, ['train', 'test', 'val'], "Score this split's annotations.")
  flags.DEFINE_string('out', None, 'Folder for index.html and its pictures.')
  flags.DEFINE_integer('worst', report_page.WORST_VIDEOS, 'Worst videos drawn.')
  flags.DEFINE_string(
    'ablation', None, 'Folder of oracle-ablation rows (default: PRED_DIR/ablation if present).'
  )


_KEEP = []  # the parsed files, alive until os._exit


def main(argv) -> None:
  del argv
  gc.disable()  # millions of small objects and no cycles: collecting only costs time
  names = ('pred', 'out', 'gt', 'data_root', 'split', 'worst', 'ablation')
  code = run_report(**{name: flags.FLAGS[name].value for name in names}, keep=_KEEP)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
