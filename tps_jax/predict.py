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
  parses only the others (a rerun with another bundle, oracle or settings refuses
  unless --fresh); the two files are merged from them at the end.
- Scoring: when the videos have ground truth (`--gt DIR` with gt_vid_result.json /
  gt_part_result.json, or the split's annotations: train, val, and the synthetic
  dataset's test) the challenge score and its grid are printed at the end.
- `--oracle`: any of humans, parts, states, action puts the ground truth in place of
  that stage's output (tps_jax/inference/pipeline.py); all four score 0.9999.
  `--ablation` parses every row of tps_jax/inference/ablation.py in the same pass (the
  system, then the ground truth stage by stage, and the majority-state baseline), writes
  each row's submission to PRED_DIR/ablation/<row>/ and prints the table.
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
import time

from absl import app, flags

_BUNDLE = flags.DEFINE_string('bundle', None, 'Pipeline bundle (python -m '
                              'tps_jax.export_pipeline).')
_DATA_ROOT = flags.DEFINE_string('data_root', '', 'Kinetics-TPS root (with --split).')
_SPLIT = flags.DEFINE_enum('split', 'test', ['test', 'train', 'val'], 'Split of --data_root.')
_VIDEO_FOLDER = flags.DEFINE_string('video_folder', '', 'A folder of videos instead.')
_VIDEO = flags.DEFINE_multi_string('video', [], 'Video file(s) instead.')
_OUT = flags.DEFINE_string('out', None, 'Folder for the submission files.')
_GT = flags.DEFINE_string('gt', '', 'Ground truth folder (gt_vid_result.json, '
                          'gt_part_result.json) to score against / for --oracle.')
_ORACLE = flags.DEFINE_list('oracle', [], 'Stages replaced by the ground truth: any of '
                            'humans, parts, states, action.')
_ABLATION = flags.DEFINE_bool('ablation', False, 'Also parse with the ground truth in place '
                              'of each stage in turn (tps_jax/inference/ablation.py) and '
                              'print the table; PRED_DIR/ablation/<row>/ gets each row\'s '
                              'submission.')
_SET = flags.DEFINE_multi_string('set', [], 'name=value: a pipeline setting instead of '
                                 "the bundle's (e.g. frame_batch=16).")
_FRESH = flags.DEFINE_bool('fresh', False, 'Ignore (delete) earlier per-video results.')
_DECODE_THREADS = flags.DEFINE_integer('decode_threads', 2, 'Videos decoded at once.')
_AHEAD = flags.DEFINE_integer('prefetch', 2, 'Videos decoded ahead of the device.')
_BF16 = flags.DEFINE_bool('bf16', False, 'Compute in bfloat16 (GPU / TPU).')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize().')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show the progress bar.')
flags.mark_flags_as_required(['bundle', 'out'])

RESULTS_DIR = 'videos'
RUN_FILE = 'run.json'


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


def _ground_truth(videos, oracle):
  """GroundTruth of the videos, or None when they have none (and no oracle needs it)."""
  from tps_jax.data import kinetics_tps as tps
  from tps_jax.evaluation import submission
  from tps_jax.inference.parse import GroundTruth
  if _GT.value:
    vid, part = submission.load_pair(_GT.value, 'gt')
  elif _DATA_ROOT.value and not (_VIDEO.value or _VIDEO_FOLDER.value) and os.path.isdir(
      os.path.join(_DATA_ROOT.value, f'{"train" if _SPLIT.value == "val" else _SPLIT.value}'
                   '_annotations')):
    vid, part = tps.ground_truth(_DATA_ROOT.value,
                                 'train' if _SPLIT.value == 'val' else _SPLIT.value,
                                 problems=[])
  else:
    if oracle:
      raise PredictError(f'--oracle {",".join(sorted(oracle))}: these videos have no ground '
                         'truth (give --gt DIR, or a --data_root split with annotations)')
    return None
  names = {v.name for v in videos}
  missing = sorted(names - set(vid))
  if oracle and missing:
    raise PredictError(f'--oracle: {len(missing)} video(s) have no ground truth, e.g. '
                       f'{missing[0]}')
  return GroundTruth({k: v for k, v in vid.items() if k in names},
                     {k: v for k, v in part.items() if k in names})


def _prepare_out(out: str, run: dict) -> str:
  """PRED_DIR/videos, after checking earlier results were made the same way."""
  results = os.path.join(out, RESULTS_DIR)
  run_path = os.path.join(out, RUN_FILE)
  if _FRESH.value and os.path.isdir(results):
    import shutil
    shutil.rmtree(results)
  if os.path.isfile(run_path) and os.path.isdir(results):
    with open(run_path) as f:
      before = json.load(f)
    differs = sorted(k for k in set(before) | set(run) if before.get(k) != run.get(k))
    if differs:
      raise PredictError(f'{results}: results of an earlier run with other '
                         f'{", ".join(differs)}; pass --fresh to start over or another --out')
  os.makedirs(results, exist_ok=True)
  from tps_jax.evaluation import submission
  submission.write_json_atomic(run_path, run)
  return results


def run(argv) -> int:
  del argv
  import jax
  from tps_jax.evaluation import score as score_lib
  from tps_jax.evaluation import submission
  from tps_jax.inference import ablation as ablation_lib
  from tps_jax.inference import bundle as bundle_lib
  from tps_jax.inference import parse as parse_lib
  from tps_jax.inference import pipeline as pipeline_lib
  from tps_jax.inference import videos as videos_lib
  from tps_jax.train import trainer
  from tqdm import tqdm

  from absl import logging
  logging.set_verbosity(logging.WARNING)   # orbax logs every file it reads at INFO
  if sum(map(bool, (_VIDEO.value, _VIDEO_FOLDER.value, _DATA_ROOT.value))) == 0:
    raise PredictError('give --data_root (with --split), --video_folder or --video')
  trainer.initialize_distributed(multihost=_MULTIHOST.value)
  oracle = pipeline_lib.parse_oracle(_ORACLE.value)
  overrides = _settings_overrides(_SET.value)
  dtype = jax.numpy.bfloat16 if _BF16.value else jax.numpy.float32
  pipeline = bundle_lib.load_bundle(_BUNDLE.value, dtype=dtype, settings=overrides)
  problems: list[str] = []
  videos = videos_lib.list_videos(data_root=_DATA_ROOT.value, split=_SPLIT.value,
                                  video_folder=_VIDEO_FOLDER.value, video_files=_VIDEO.value,
                                  problems=problems)
  variants = [oracle] + ([v for _, v in ablation_lib.ROWS[1:]] if _ABLATION.value else [])
  truth = _ground_truth(videos, oracle or _ABLATION.value)
  out = os.path.abspath(_OUT.value)
  run_info = {'bundle': os.path.abspath(_BUNDLE.value),
              'variants': [sorted(v) for v in variants],
              'settings': pipeline.settings.to_dict(), 'bf16': _BF16.value}
  process, count = jax.process_index(), jax.process_count()
  results_dir = _prepare_out(out, run_info) if process == 0 else os.path.join(out, RESULTS_DIR)
  if count > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('predict:prepared')
  done = {f[:-len('.json')] for f in os.listdir(results_dir) if f.endswith('.json')}
  mine = [v for i, v in enumerate(videos) if i % count == process and v.name not in done]
  skipped = list(problems) if process == 0 else []
  start = time.perf_counter()

  parser = parse_lib.VideoParser(pipeline, variants=variants, truth=truth)
  clip_side = int(pipeline.actions[0].preprocessing.get('clip_short_side', 256))
  load = lambda item: videos_lib.decode(
      item, prepare=lambda image: pipeline_lib.prepare_frame(image, pipeline.canvas),
      clip_short_side=clip_side)
  bar = tqdm(total=len(mine), unit='video', disable=not _PROGRESS.value or process != 0,
             desc=f'parsing ({len(done)} done before)' if done else 'parsing',
             dynamic_ncols=True)

  def decoded():
    for _, video, error in videos_lib.prefetch(mine, load, ahead=_AHEAD.value,
                                               threads=_DECODE_THREADS.value):
      if error:
        skipped.append(error)
        bar.write(f'skipped: {error}', file=sys.stderr)
        bar.update(1)
      else:
        yield video

  for result in parser.run(decoded()):
    submission.write_json_atomic(os.path.join(results_dir, f'{result.name}.json'), {
        'actions': result.actions, 'frames': result.frames,
        'action_scores': result.action_scores})
    bar.update(1)
    bar.set_postfix_str(f'{parser.frames_parsed / (time.perf_counter() - start):.1f} frames/s')
  bar.close()
  seconds = time.perf_counter() - start
  if count > 1:
    submission.write_json_atomic(os.path.join(out, f'skipped-{process}.json'), skipped)
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('predict:parsed')
    if process:
      return 0
    for p in range(1, count):
      with open(os.path.join(out, f'skipped-{p}.json')) as f:
        skipped += json.load(f)

  submissions = _merge(videos, results_dir, len(variants), pipeline.action_names[0])
  submission.write_submission(out, *submissions[0])
  parsed = len(mine) - sum(1 for s in skipped if s not in problems)
  print(f'parsed {parsed} video(s) ({parser.frames_parsed} frames) in {seconds:.1f} s'
        + (f', {parser.frames_parsed / seconds:.2f} frames/s' if seconds > 0 else '')
        + (f'; {len(done)} kept from before' if done else ''), file=sys.stderr)
  if skipped:
    print(f'skipped {len(skipped)} video(s), written with no frame:', file=sys.stderr)
    for line in skipped:
      print(f'  {line}', file=sys.stderr)
  print(f'wrote {os.path.join(out, submission.PRED_FILES[0])} and '
        f'{submission.PRED_FILES[1]} ({len(submissions[0][0])} videos)', file=sys.stderr)
  if truth is None:
    return 0
  print(score_lib.challenge_score(truth.vid, truth.part, *submissions[0]).format())
  if _ABLATION.value:
    rows = []
    for (name, _), (pred_vid, pred_part) in zip(ablation_lib.ROWS, submissions):
      submission.write_submission(os.path.join(out, 'ablation', name.replace(' ', '_')),
                                  pred_vid, pred_part)
      rows.append(ablation_lib.score_row(name, truth.vid, truth.part, pred_vid, pred_part))
    counts = pipeline.states.metadata.get('state_counts')
    if counts:
      majority = ablation_lib.majority_states(counts, pipeline.state_names)
      pred_vid, pred_part = submissions[0]
      baseline = {v: ablation_lib.with_states(frames, majority) for v, frames in pred_part.items()}
      rows.append(ablation_lib.score_row(ablation_lib.BASELINE, truth.vid, truth.part,
                                         pred_vid, baseline))
    print(f'oracle ablation ({len(truth.vid)} videos):')
    print(ablation_lib.format_table(rows))
  return 0


def _merge(videos, results_dir: str, num_variants: int, fallback_action: str):
  """[(pred_vid, pred_part)] per variant from the per-video results; a video without
  one (unreadable) gets no frame and `fallback_action`."""
  merged = [({}, {}) for _ in range(num_variants)]
  for item in videos:
    path = os.path.join(results_dir, f'{item.name}.json')
    result = None
    if os.path.isfile(path):
      with open(path) as f:
        result = json.load(f)
    for i, (pred_vid, pred_part) in enumerate(merged):
      pred_vid[item.name] = result['actions'][i] if result else fallback_action
      pred_part[item.name] = result['frames'][i] if result else {}
  return merged


def main(argv) -> int:
  from tps_jax.data import video as video_lib
  from tps_jax.data.kinetics_tps import AnnotationError
  from tps_jax.evaluation.submission import SubmissionError
  from tps_jax.inference.export import ExportError
  try:
    return run(argv)
  except (ExportError, PredictError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (FileNotFoundError, ValueError, AnnotationError, SubmissionError,
          video_lib.VideoError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
