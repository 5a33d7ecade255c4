r"""Time `python -m tps_jax.evaluate` against the literal rules, run as the official tool runs.

  python bench/bench_score.py [--videos 932] [--frames 60] [--humans 3] \
      [--literal_fraction 1.0] [--out DIR]

Writes a ground truth and a submission the size of the official test set (932 videos x
60 sampled frames x 3 humans x 10 parts, 1-5 proposals per part, noisy boxes, a few
humans missed or added) as JSON files, then times two whole processes, JSON reading
included:
- `python -m tps_jax.evaluate --gt GT --pred PRED` (the 25 cells and the score);
- `python -m tests.score_reference GT PRED`: the loop-by-loop restatement of the rules
  in tests/, run the way the challenge's tool runs (json.load, one pass at (0.5, 0.3),
  then one pass per cell: 26 passes), on the first `--literal_fraction` of the videos
  (all by default: some 5 minutes). On a fraction, its reading and passes are scaled up
  linearly and its area steps (vectorised over videos, nearly size-independent) added as
  measured; json.load with the garbage collector on grows faster than linearly, so the
  scaled figure understates the tool's time.
Both must print the same score on the videos the literal run scores (checked).
"""

import os
import re
import subprocess
import sys
import tempfile
import time

import msgspec
import numpy as np
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tps_jax import cli  # noqa: E402  (after the path setup)
from tps_jax.data import submission  # noqa: E402

STATES = ('none', 'bend', 'straighten', 'kick', 'turn', 'raise', 'swing')
ACTIONS = ('run', 'dance', 'jump')


def make(num_videos, num_frames, num_humans, seed=0):
  """(gt_vid, gt_part, pred_vid, pred_part): integer GT boxes, 2-decimal predictions."""
  rng = np.random.default_rng(seed)
  shape = (num_videos, num_frames, num_humans)
  corner = rng.uniform(0, 1200, shape + (2,)).round()
  human = np.concatenate([corner, corner + rng.uniform(60, 300, shape + (2,)).round()], -1)
  pred_human = (human + rng.normal(0, 10, human.shape)).round(2)
  part_corner = corner[..., None, :] + rng.uniform(0, 60, shape + (10, 2)).round()
  part = np.concatenate(
    [part_corner, part_corner + rng.uniform(10, 60, shape + (10, 2)).round()], -1
  )
  proposals = (part[..., None, :] + rng.normal(0, 6, shape + (10, 5, 4))).round(2)
  gt_state = rng.integers(0, len(STATES), shape + (10,))
  pred_state = np.where(
    rng.random(shape + (10, 5)) < 0.6,
    gt_state[..., None],
    rng.integers(0, len(STATES), shape + (10, 5)),
  )
  num_proposals = rng.integers(1, 6, shape + (10,)) * (rng.random(shape + (10,)) > 0.05)
  kept = rng.random(shape) > 0.05  # a human the detector missed
  extra = rng.random(shape[:2]) < 0.1  # a false positive in the frame
  human, pred_human, part, proposals, gt_state, pred_state, num_proposals = (
    a.tolist()
    for a in (
      human.astype(int),
      pred_human,
      part.astype(int),
      proposals,
      gt_state,
      pred_state,
      num_proposals,
    )
  )
  gt_vid, gt_part, pred_vid, pred_part = {}, {}, {}, {}
  for v in range(num_videos):
    name = f'video{v:04d}_{v:06d}_{v + 10:06d}'
    gt_vid[name] = ACTIONS[v % len(ACTIONS)]
    pred_vid[name] = gt_vid[name] if rng.random() < 0.9 else ACTIONS[(v + 1) % len(ACTIONS)]
    gt_frames, pred_frames = {}, {}
    for f in range(num_frames):
      gt_humans, pred_humans = [], []
      for h in range(num_humans):
        gt_humans.append(
          {
            'number': h + 1,
            'box': human[v][f][h],
            'parts': {
              part_name: {
                'number': k + 1,
                'box': part[v][f][h][k],
                'verb': STATES[gt_state[v][f][h][k]],
                'name': part_name,
              }
              for k, part_name in enumerate(submission.PARTS)
            },
          }
        )
        if kept[v, f, h]:
          pred_humans.append(
            {
              'number': len(pred_humans) + 1,
              'box': pred_human[v][f][h],
              'parts': {
                part_name: _proposals(
                  k,
                  part_name,
                  proposals[v][f][h][k],
                  pred_state[v][f][h][k],
                  num_proposals[v][f][h][k],
                )
                for k, part_name in enumerate(submission.PARTS)
                if num_proposals[v][f][h][k]
              },
            }
          )
      if extra[v, f]:
        pred_humans.append(
          {'number': len(pred_humans) + 1, 'box': [0.0, 0.0, 50.5, 90.5], 'parts': {}}
        )
      frame = f'img_{5 * f + 1:05d}.json'
      gt_frames[frame], pred_frames[frame] = {'humans': gt_humans}, {'humans': pred_humans}
    gt_part[name], pred_part[name] = gt_frames, pred_frames
  return gt_vid, gt_part, pred_vid, pred_part


def _proposals(k, name, boxes, states, count):
  return {
    'number': k + 1,
    'name': name,
    'box': boxes[:count],
    'verb': [STATES[s] for s in states[:count]],
  }


def write(folder, data, videos=None):
  """Writes the four files (the first `videos` videos only when given) into folder."""
  gt_vid, gt_part, pred_vid, pred_part = data
  keep = list(gt_vid)[:videos]
  for directory, names, objs in (
    ('gt', submission.GT_FILES, (gt_vid, gt_part)),
    ('pred', submission.PRED_FILES, (pred_vid, pred_part)),
  ):
    os.makedirs(os.path.join(folder, directory), exist_ok=True)
    for file_name, obj in zip(names, objs):
      with open(os.path.join(folder, directory, file_name), 'wb') as f:
        f.write(msgspec.json.encode({v: obj[v] for v in keep}))
  return os.path.join(folder, 'gt'), os.path.join(folder, 'pred')


def timed(args):
  """(seconds, stdout) of a whole `python ...` process run from the repository root."""
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=REPO),
    check=False,
  )
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f'{" ".join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  return seconds, proc.stdout


def official_area(stdout):
  """The area of the (0.5, 0.3) cell as printed by either command."""
  match = re.search(r'^score: ([0-9.]+)$', stdout, re.M)
  return float(match.group(1))


flags.DEFINE_integer('videos', 932, 'Videos of the submission.')
flags.DEFINE_integer('frames', 60, 'Sampled frames per video.')
flags.DEFINE_integer('humans', 3, 'Humans per frame.')
flags.DEFINE_float('literal_fraction', 1.0, 'Fraction of the videos the literal rules score.')
flags.DEFINE_string('out', None, 'Keep the JSON files in this folder (default: a temporary one).')


def main(argv):
  del argv
  args = flags.FLAGS
  folder = args.out or tempfile.mkdtemp(prefix='bench_score_')
  start = time.perf_counter()
  data = make(args.videos, args.frames, args.humans)
  full = write(os.path.join(folder, 'full'), data)
  literal_videos = max(1, round(args.videos * args.literal_fraction))
  part = (
    write(os.path.join(folder, 'fraction'), data, literal_videos)
    if literal_videos < args.videos
    else full
  )
  del data
  sizes = [
    os.path.getsize(os.path.join(d, f)) / 2**20
    for d, names in ((full[0], submission.GT_FILES), (full[1], submission.PRED_FILES))
    for f in names
  ]
  print(
    f'submission: {args.videos} videos x {args.frames} frames x {args.humans} humans, '
    f'files {sum(sizes):.0f} MiB (made in {time.perf_counter() - start:.0f} s, {folder})'
  )

  fast, out = timed(['-m', 'tps_jax.evaluate', '--gt', full[0], '--pred', full[1]])
  print(f'python -m tps_jax.evaluate: {fast:.2f} s (score {official_area(out):.6f})')
  fast_part = None
  if part != full:
    fast_part, out = timed(['-m', 'tps_jax.evaluate', '--gt', part[0], '--pred', part[1]])
  slow, slow_out = timed(['-m', 'tests.score_reference', part[0], part[1]])
  if official_area(out) != official_area(slow_out):
    raise SystemExit(f'the scores differ: {official_area(out)} vs {official_area(slow_out)}')
  area_seconds = float(re.search(r'^area steps: ([0-9.]+) s$', slow_out, re.M).group(1))
  literal = slow
  on_them = '' if fast_part is None else f', tps_jax on them {fast_part:.2f} s'
  print(
    f'literal rules, 26 passes, on {literal_videos} videos: {slow:.1f} s (area steps '
    f'{area_seconds:.1f} s; the same score{on_them})'
  )
  if part != full:
    scale = args.videos / literal_videos
    literal = (slow - area_seconds) * scale + area_seconds
    print(
      f'literal rules scaled to {args.videos} videos: {literal:.0f} s '
      f'(({slow:.1f} - {area_seconds:.1f}) x {scale:.1f} + {area_seconds:.1f})'
    )
  print(f'speed-up: {literal / fast:.0f}x')


if __name__ == '__main__':
  cli.run(main)
