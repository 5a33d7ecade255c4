"""A resumable prediction run: videos in, the challenge's submission files out.

`predict(pipeline, videos, out, ...)` is what `python -m tps_jax.predict` and the demo
(tps_jax/chain.py) run:

- the input stage (tps_jax/inference/videos.py) decodes videos ahead of the device;
- `VideoParser` parses them, one oracle set per variant (tps_jax/inference/parse.py);
- each finished video is kept in OUT/videos/<video>.json (atomically), so that a run
  that is killed resumes from the last finished video; OUT/run.json records how the
  results were made (the caller's `run_info`, e.g. the bundle's fingerprint; variants,
  settings), and a rerun made another way refuses instead of mixing them (`fresh=True`
  starts over);
- a video that cannot be read is one line, counted and listed, and written into the
  submission with no frame and a fallback action (the challenge's tool stops on a
  missing video), so that the files stay scoreable; a rerun tries it again;
- several processes (jax.distributed): the videos are split by process index, each
  writes its own videos' results, process 0 merges them all (OUT on a shared disk);
- the per-variant submissions are validated and written atomically by the caller
  (`submission.write_submission`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

import jax

from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.inference import parse as parse_lib
from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.inference import videos as videos_lib

RESULTS_DIR = 'videos'
RUN_FILE = 'run.json'


class RunError(RuntimeError):
  """A run that cannot go on (one line)."""


@dataclasses.dataclass
class Prediction:
  submissions: list[tuple[dict, dict]]  # per variant: (pred_vid, pred_part)
  parsed: int  # videos parsed by this run
  kept: int  # videos whose earlier results were reused
  skipped: list[str]  # one line per video that could not be read
  frames: int
  seconds: float

  def summary(self) -> list[str]:
    rate = f', {self.frames / self.seconds:.2f} frames/s' if self.seconds > 0 else ''
    lines = [
      f'parsed {self.parsed} video(s) ({self.frames} frames) in '
      f'{self.seconds:.1f} s{rate}' + (f'; {self.kept} kept from before' if self.kept else '')
    ]
    if self.skipped:
      lines.append(f'skipped {len(self.skipped)} video(s), written with no frame:')
      lines += [f'  {line}' for line in self.skipped]
    return lines


def ground_truth(
  videos: Sequence[videos_lib.VideoItem],
  *,
  gt_dir: str = '',
  data_root: str = '',
  split: str = '',
  required: bool = False,
) -> parse_lib.GroundTruth | None:
  """The ground truth of `videos`: from a GT folder (gt_vid_result.json,
  gt_part_result.json) or the split's annotations under `data_root`; None when there is
  none (a RunError when `required`, e.g. by an oracle)."""
  annotations = 'train' if split == 'val' else split
  if gt_dir:
    vid, part = submission.load_pair(gt_dir, 'gt')
  elif data_root and split and os.path.isdir(os.path.join(data_root, f'{annotations}_annotations')):
    vid, part = tps.ground_truth(data_root, annotations, problems=[])
  elif required:
    raise RunError(
      'these videos have no ground truth (give --gt DIR, or a --data_root split with annotations)'
    )
  else:
    return None
  names = {v.name for v in videos}
  missing = sorted(names - set(vid))
  if required and missing:
    raise RunError(f'{len(missing)} video(s) have no ground truth, e.g. {missing[0]}')
  return parse_lib.GroundTruth(
    {k: v for k, v in vid.items() if k in names}, {k: v for k, v in part.items() if k in names}
  )


def _results_dir(out: str, run_info: dict, fresh: bool) -> str:
  """OUT/videos, after checking that earlier results there were made the same way."""
  results = os.path.join(out, RESULTS_DIR)
  run_path = os.path.join(out, RUN_FILE)
  if fresh and os.path.isdir(results):
    shutil.rmtree(results)
  if os.path.isfile(run_path) and os.path.isdir(results):
    try:
      with open(run_path) as f:
        before = json.load(f)
    except (OSError, ValueError) as e:
      raise RunError(f'{run_path}: unreadable ({e}); pass --fresh to start over') from None
    if not isinstance(before, dict):
      raise RunError(f'{run_path}: not a run record; pass --fresh to start over')
    differs = sorted(k for k in set(before) | set(run_info) if before.get(k) != run_info.get(k))
    if differs:
      raise RunError(
        f'{results}: results of an earlier run with other '
        f'{", ".join(differs)}; pass --fresh to start over, or another --out'
      )
  os.makedirs(results, exist_ok=True)
  submission.write_json_atomic(run_path, run_info)
  return results


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


def predict(
  pipeline: pipeline_lib.Pipeline,
  videos: Sequence[videos_lib.VideoItem],
  out: str,
  *,
  variants: Sequence[frozenset[str]] = (frozenset(),),
  truth: parse_lib.GroundTruth | None = None,
  problems: Sequence[str] = (),
  run_info: dict | None = None,
  fresh: bool = False,
  decode_threads: int = 2,
  prefetch: int = 2,
  progress: bool = True,
) -> Prediction | None:
  """Parses `videos` into OUT (module docstring); returns the merged result on process
  0, None on the others. `problems`: videos already known to be unreadable."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(out)
  run_info = {
    **(run_info or {}),
    'variants': [sorted(v) for v in variants],
    'settings': pipeline.options.to_dict(),
  }
  run_info = json.loads(json.dumps(run_info))  # as run.json holds it: tuples are lists
  process, count = jax.process_index(), jax.process_count()
  results_dir = (
    _results_dir(out, run_info, fresh) if process == 0 else os.path.join(out, RESULTS_DIR)
  )
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices('predict:prepared')
  done = {f[: -len('.json')] for f in os.listdir(results_dir) if f.endswith('.json')}
  mine = [v for i, v in enumerate(videos) if i % count == process and v.name not in done]
  skipped = list(problems) if process == 0 else []
  parser = parse_lib.VideoParser(pipeline, variants=variants, truth=truth)
  clip_side = int(pipeline.actions[0].preprocessing.get('clip_short_side', 256))
  load = lambda item: videos_lib.decode(
    item,
    prepare=lambda image: pipeline_lib.prepare_frame(image, pipeline.canvas),
    clip_short_side=clip_side,
  )
  bar = tqdm(
    total=len(mine),
    unit='video',
    disable=not progress or process != 0,
    desc=f'parsing ({len(done)} done before)' if done else 'parsing',
    dynamic_ncols=True,
    file=sys.stderr,
  )
  start = time.perf_counter()
  failed = 0

  def decoded():
    nonlocal failed
    for _, video, error in videos_lib.prefetch(mine, load, ahead=prefetch, threads=decode_threads):
      if error:
        failed += 1
        skipped.append(error)
        tqdm.write(f'skipped: {error}', file=sys.stderr)
        bar.update(1)
      else:
        yield video

  for result in parser.run(decoded()):
    submission.write_json_atomic(
      os.path.join(results_dir, f'{result.name}.json'),
      {'actions': result.actions, 'frames': result.frames, 'action_scores': result.action_scores},
    )
    bar.update(1)
    bar.set_postfix_str(f'{parser.frames_parsed / (time.perf_counter() - start):.1f} frames/s')
  bar.close()
  seconds = time.perf_counter() - start
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    submission.write_json_atomic(os.path.join(out, f'skipped-{process}.json'), skipped)
    multihost_utils.sync_global_devices('predict:parsed')
    if process:
      return None
    for other in range(1, count):
      with open(os.path.join(out, f'skipped-{other}.json')) as f:
        skipped += json.load(f)
  merged = _merge(videos, results_dir, len(variants), pipeline.action_names[0])
  return Prediction(
    merged,
    parsed=len(mine) - failed,
    kept=len(done),
    skipped=skipped,
    frames=parser.frames_parsed,
    seconds=seconds,
  )
