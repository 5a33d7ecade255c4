"""Time the challenge score on a submission the size of the official test set.

  python bench/bench_score.py [--videos 932] [--frames 60] [--humans 3]

932 videos x 60 sampled frames x 3 humans x 10 parts x 1-5 proposals, with noisy
predicted boxes so that matching and thresholds are exercised.
"""
import argparse
import time

import numpy as np

from tps_jax.evaluation.score import challenge_score
from tps_jax.evaluation.submission import PARTS, validate

VERBS = ("none", "bend", "straighten", "kick", "turn")


def make(num_videos, num_frames, num_humans, seed=0):
  rng = np.random.default_rng(seed)
  gt_vid, gt_part, pred_vid, pred_part = {}, {}, {}, {}
  for v in range(num_videos):
    name = f"video{v:04d}_000000_000010"
    gt_vid[name] = "run"
    pred_vid[name] = "run" if rng.random() < 0.9 else "dance"
    gt_frames, pred_frames = {}, {}
    for f in range(num_frames):
      gt_humans, pred_humans = [], []
      for h in range(num_humans):
        x, y = rng.uniform(0, 600, 2)
        hbox = [x, y, x + 100, y + 200]
        gt_parts, pred_parts = {}, {}
        for k, part in enumerate(PARTS):
          px, py = x + rng.uniform(0, 70), y + rng.uniform(0, 170)
          pbox = [px, py, px + 30, py + 30]
          gt_parts[part] = {"number": k + 1, "box": pbox, "verb": str(rng.choice(VERBS)),
                            "name": part}
          n = int(rng.integers(1, 6))
          pred_parts[part] = {"number": k + 1, "name": part,
                              "box": [[c + rng.normal(0, 5) for c in pbox] for _ in range(n)],
                              "verb": [str(rng.choice(VERBS)) for _ in range(n)]}
        gt_humans.append({"number": h + 1, "box": hbox, "parts": gt_parts})
        pred_humans.append({"number": h + 1, "box": [c + rng.normal(0, 8) for c in hbox],
                            "parts": pred_parts})
      frame = f"img_{5 * f + 1:05d}.json"
      gt_frames[frame] = {"humans": gt_humans}
      pred_frames[frame] = {"humans": pred_humans}
    gt_part[name], pred_part[name] = gt_frames, pred_frames
  return gt_vid, gt_part, pred_vid, pred_part


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--videos", type=int, default=932)
  parser.add_argument("--frames", type=int, default=60)
  parser.add_argument("--humans", type=int, default=3)
  args = parser.parse_args()
  t0 = time.perf_counter()
  data = make(args.videos, args.frames, args.humans)
  t1 = time.perf_counter()
  problems = validate(data[2], data[3], kind="pred")
  t2 = time.perf_counter()
  report = challenge_score(*data)
  t3 = time.perf_counter()
  frames = args.videos * args.frames
  print(f"submission: {args.videos} videos, {frames} frames, {frames * args.humans} humans "
        f"(generated in {t1 - t0:.1f}s)")
  print(f"validate: {t2 - t1:.2f}s ({len(problems)} problems)")
  print(f"score (official + 25-cell grid): {t3 - t2:.2f}s -> {frames / (t3 - t2):,.0f} frames/s, "
        f"score {report.score_rounded:.6f}")


if __name__ == "__main__":
  main()
