r"""Parses videos end to end and writes the challenge's submission.

  python -m tps_jax.predict --bundle BUNDLE --data_root DATA --split test --out PRED_DIR
  python -m tps_jax.predict --bundle BUNDLE --video_folder DIR --out PRED_DIR
  python -m tps_jax.predict --bundle BUNDLE --video FILE.mp4 [--video F2.mp4] --out PRED_DIR
      [--split val] [--gt GT_DIR] [--oracle humans,parts,states,action]
      [--set frame_batch=16 --set max_humans=5 ...] [--fresh]

BUNDLE is `python -m tps_jax.export_pipeline`'s folder (the four networks and their
settings). Writes PRED_DIR/pred_vid_result.json and pred_part_result.json in the
submission format (inclusive pixels, img_%05d.json keys, at most 10 humans per frame
and 5 proposals per part), validated, each written atomically.

- Splits of a Kinetics-TPS root: `test` and `train` (ROOT/<split>_videos), `val` (the
  train videos `data_prep.build` held out). `--video_folder` takes class sub-folders
  (their names are the ground-truth action) or loose videos.
- Resumable: each finished video is kept in PRED_DIR/videos/<video>.json, and a rerun
  parses only the others (a rerun with another bundle -- known by its content's
  fingerprint, so a bundle rebuilt at the same path is another --, oracle or settings
  refuses unless --fresh); the two files are merged from them at the end and replaced
  together: a full disk or a read-only PRED_DIR leaves the earlier pair as it was.
- Two --video files with one name (a/x.mp4, b/x.mp4) are refused: the submission is
  keyed by video name.
- Scoring: when the videos have ground truth (`--gt DIR` with gt_vid_result.json /
  gt_part_result.json, or the split's annotations: train, val, and the synthetic
  dataset's test) the challenge score and its grid are printed at the end.
- `--oracle`: any of humans, parts, states, action puts the ground truth in place of
  that stage's output (tps_jax/inference/pipeline.py); all four score 0.9999.
  `--ablation` parses every row of tps_jax/inference/ablation.py in the same pass (the
  system, then the ground truth stage by stage, and the majority-state baseline), writes
  each row's submission to PRED_DIR/ablation/<row>/ and prints the table.
- `--report`: when it scores, also writes the error-analysis page (python -m
  tps_jax.report) to PRED_DIR/report/index.html, the ablation's rows as bars with
  --ablation, and prints its path.
- A video that cannot be read is one line naming it; the rest goes on, the summary
  lists the skipped videos. They are written into the submission with no frame and
  the first action class (the challenge's tool stops on a missing video), so the files
  stay scoreable; a rerun tries them again.
- Several hosts (--multihost or JAX_* variables): the videos are split by process,
  process 0 merges the results (PRED_DIR on a shared filesystem).
Errors are one line on stderr: exit 2 for bad arguments / bundles, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from tps_jax import cli

_BUNDLE = flags.DEFINE_string(
  'bundle', None, 'Pipeline bundle (python -m tps_jax.export_pipeline).'
)
_DATA_ROOT = flags.DEFINE_string('data_root', '', 'Kinetics-TPS root (with --split).')
_SPLIT = flags.DEFINE_enum('split', 'test', ['test', 'train', 'val'], 'Split of --data_root.')
_VIDEO_FOLDER = flags.DEFINE_string('video_folder', '', 'A folder of videos instead.')
_VIDEO = flags.DEFINE_multi_string('video', [], 'Video file(s) instead.')
_OUT = flags.DEFINE_string('out', None, 'Folder for the submission files.')
_GT = flags.DEFINE_string(
  'gt',
  '',
  'Ground truth folder (gt_vid_result.json, gt_part_result.json) to score against / for --oracle.',
)
_ORACLE = flags.DEFINE_list(
  'oracle', [], 'Stages replaced by the ground truth: any of humans, parts, states, action.'
)
_ABLATION = flags.DEFINE_bool(
  'ablation',
  False,
  'Also parse with the ground truth in place '
  'of each stage in turn (tps_jax/inference/ablation.py) and '
  "print the table; PRED_DIR/ablation/<row>/ gets each row's "
  'submission.',
)
_REPORT = flags.DEFINE_bool(
  'report',
  False,
  'When it scores, also write the error-analysis report (python -m tps_jax.report) to '
  'PRED_DIR/report/index.html and print its path.',
)
_SET = flags.DEFINE_multi_string(
  'set', [], "name=value: a pipeline setting instead of the bundle's (e.g. frame_batch=16)."
)
_FRESH = flags.DEFINE_bool('fresh', False, 'Ignore (delete) earlier per-video results.')
_DECODE_THREADS = flags.DEFINE_integer('decode_threads', 2, 'Videos decoded at once.')
_AHEAD = flags.DEFINE_integer('prefetch', 2, 'Videos decoded ahead of the device.')
_BF16 = flags.DEFINE_bool('bf16', False, 'Compute in bfloat16 (GPU / TPU).')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize().')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show the progress bar.')
flags.mark_flags_as_required(['bundle', 'out'])


REPORT_DIR = 'report'  # PRED_DIR/report/index.html with --report


class PredictError(RuntimeError):
  """One line for the user."""


def _settings_overrides(pairs) -> dict:
  values = {}
  for pair in pairs:
    name, sep, text = pair.partition('=')
    if not sep:
      raise PredictError(f'--set {pair!r}: expected name=value')
    try:
      values[name] = json.loads(text)
    except json.JSONDecodeError:
      values[name] = text
  return values


def run(argv) -> int:
  del argv
  import jax
  from absl import logging

  from tps_jax.data import submission
  from tps_jax.inference import ablation as ablation_lib
  from tps_jax.inference import bundle as bundle_lib
  from tps_jax.inference import pipeline as pipeline_lib
  from tps_jax.inference import runner
  from tps_jax.inference import videos as videos_lib
  from tps_jax.metrics import score as score_lib
  from tps_jax.train import distributed

  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  if not (_VIDEO.value or _VIDEO_FOLDER.value or _DATA_ROOT.value):
    raise PredictError('give --data_root (with --split), --video_folder or --video')
  distributed.initialize_distributed(multihost=_MULTIHOST.value)
  oracle = pipeline_lib.parse_oracle(_ORACLE.value)
  dtype = jax.numpy.bfloat16 if _BF16.value else jax.numpy.float32
  pipeline = bundle_lib.load_bundle(
    _BUNDLE.value, dtype=dtype, options=_settings_overrides(_SET.value)
  )
  problems: list[str] = []
  try:
    videos = videos_lib.list_videos(
      data_root=_DATA_ROOT.value,
      split=_SPLIT.value,
      video_folder=_VIDEO_FOLDER.value,
      video_files=_VIDEO.value,
      problems=problems,
    )
  except ValueError as e:  # two --video files with one name
    raise PredictError(str(e)) from None
  from_root = not (_VIDEO.value or _VIDEO_FOLDER.value)
  try:
    truth = runner.ground_truth(
      videos,
      gt_dir=_GT.value,
      data_root=_DATA_ROOT.value if from_root else '',
      split=_SPLIT.value,
      required=bool(oracle or _ABLATION.value),
    )
  except runner.RunError as e:
    flag = '--oracle ' + ','.join(sorted(oracle)) if oracle else '--ablation'
    raise PredictError(f'{flag}: {e}') from None
  variants = [oracle] + ([v for _, v in ablation_lib.ROWS[1:]] if _ABLATION.value else [])
  result = runner.predict(
    pipeline,
    videos,
    _OUT.value,
    variants=variants,
    truth=truth,
    problems=problems,
    fresh=_FRESH.value,
    run_info={'bundle': bundle_lib.fingerprint(_BUNDLE.value), 'bf16': _BF16.value},
    decode_threads=_DECODE_THREADS.value,
    prefetch=_AHEAD.value,
    progress=_PROGRESS.value,
  )
  if result is None:  # not process 0: it merges and reports
    return 0
  out = os.path.abspath(_OUT.value)
  submission.write_submission(out, *result.submissions[0])
  for line in result.summary():
    print(line, file=sys.stderr)
  print(
    f'wrote {os.path.join(out, submission.PRED_FILES[0])} and '
    f'{submission.PRED_FILES[1]} ({len(videos)} videos)',
    file=sys.stderr,
  )
  if truth is None:
    if _REPORT.value:
      print('warning: --report: these videos have no ground truth to score', file=sys.stderr)
    return 0
  report = score_lib.challenge_score(
    truth.vid, truth.part, *result.submissions[0], details=_REPORT.value
  )
  print(report.format())
  rows = []
  if _ABLATION.value:
    for (name, _), pred in zip(ablation_lib.ROWS, result.submissions):
      submission.write_submission(os.path.join(out, 'ablation', name.replace(' ', '_')), *pred)
    rows = ablation_lib.score_rows(truth, result.submissions, pipeline)
    print(f'oracle ablation ({len(truth.vid)} videos):')
    print(ablation_lib.format_table(rows))
  if _REPORT.value:
    from tps_jax.metrics import report_page

    path = report_page.write_report(
      os.path.join(out, REPORT_DIR),
      report,
      truth.part,
      result.submissions[0][1],
      ablation=[(row.name, row.score) for row in rows],
      video_paths={v.name: v.path for v in videos},
    )
    print(f'report: {path}')
  return 0


def main(argv) -> int:
  from tps_jax.data import video as video_lib
  from tps_jax.data.kinetics_tps import AnnotationError
  from tps_jax.data.submission import SubmissionError
  from tps_jax.inference.export import ExportError
  from tps_jax.inference.runner import RunError

  try:
    return run(argv)
  except (ExportError, PredictError, RunError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (
    ValueError,
    AnnotationError,
    SubmissionError,
    video_lib.VideoError,
  ) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except OSError as e:  # a full disk, a read-only --out: the file and the cause
    print(f'error: {cli.os_error_line(e)}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  cli.run(main)
