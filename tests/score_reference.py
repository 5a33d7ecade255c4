"""The challenge's score restated loop by loop from docs/score.md: a test oracle.

Deliberately literal and slow: one Python step per rule, the ground-truth frames visited
in file order, every sum accumulated one term at a time in the order the rules give. It
shares no code with tps_jax.metrics.score (nor score_math, score_reading), which must
agree with it bit for bit.

The numeric conventions of the challenge's tool act where noted:
- human IoU: the boxes become np.float32 numbers and the IoU is computed with float32
  scalars. The (GT, predicted) IoU matrix is float32 when square; otherwise it is padded
  to a square with float64 zeros and so becomes float64. The Hungarian assignment is
  scipy's linear_sum_assignment of 1 - matrix in that dtype, and "IoU > h" compares a
  matrix element with the Python float h in that dtype (float semantics of NumPy 2: a
  float32 number against a Python float compares in float32).
- part IoU: Python arithmetic on the numbers as read from JSON.
- accuracy(t) = integer count / number of videos; the area adds
  (1.0 / 10000) * accuracy(k / 10000) for k = 1, 2, ..., 9999, in that order.

It reads submissions the official tool accepts, plus a video missing from the
submission (the tool stops on it; here: the wrong class and every frame missing).
"""

import time

import numpy as np
from scipy.optimize import linear_sum_assignment

THRESHOLDS = (0.001, 0.3, 0.5, 0.9, 0.99)
CELLS = tuple((h, p) for h in THRESHOLDS for p in THRESHOLDS)  # h outer, as printed
OFFICIAL_CELL = (0.5, 0.3)
STEPS = 10000
PRINTED_T = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def inclusive_iou(a, b):
  """Rule 1 for two boxes of scalars (Python numbers or np.float32), in their arithmetic."""
  inter_w = min(a[2], b[2]) - max(a[0], b[0]) + 1
  inter_h = min(a[3], b[3]) - max(a[1], b[1]) + 1
  if inter_w <= 0 or inter_h <= 0:
    return -1.0
  inter = inter_w * inter_h
  area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
  area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
  return inter / (area_a + area_b - inter)


def matched_humans(gt_humans, pred_humans, h):
  """Rule 2: {GT index: predicted index} of the assigned pairs whose IoU is > h."""
  gt_boxes = [[np.float32(c) for c in human['box']] for human in gt_humans]
  pred_boxes = [[np.float32(c) for c in human['box']] for human in pred_humans]
  num_gt, num_pred = len(gt_boxes), len(pred_boxes)
  iou = np.zeros((num_gt, num_pred), np.float32)
  for i in range(num_gt):
    for j in range(num_pred):
      iou[i, j] = inclusive_iou(gt_boxes[i], pred_boxes[j])
  square = iou
  if num_gt != num_pred:
    size = max(num_gt, num_pred)
    square = np.zeros((size, size))  # float64 padding makes the matrix float64
    square[:num_gt, :num_pred] = iou
  rows, cols = linear_sum_assignment(1 - square)
  return {
    int(r): int(c) for r, c in zip(rows, cols) if r < num_gt and c < num_pred and square[r, c] > h
  }


def part_score(gt_part, pred_parts, name, p):
  """Rule 3: 1 / N_p when a proposal has IoU >= p and the GT state, else 0."""
  if name not in pred_parts:
    return 0
  boxes, verbs = pred_parts[name]['box'], pred_parts[name]['verb']
  for box, verb in zip(boxes, verbs):
    if inclusive_iou(gt_part['box'], box) >= p and verb == gt_part['verb']:
      return 1.0 / len(verbs)
  return 0


def frame_score(gt_humans, pred_humans, h, p):
  """Rule 4d: part scores summed per human, then over humans, / GT parts; None: no part."""
  matches = matched_humans(gt_humans, pred_humans, h)
  total, num_parts = 0, 0
  for i, gt_human in enumerate(gt_humans):
    num_parts += len(gt_human['parts'])
    human_total = 0
    if i in matches:
      pred_parts = pred_humans[matches[i]]['parts']
      for name, gt_part in gt_human['parts'].items():
        human_total += part_score(gt_part, pred_parts, name, p)
    total += human_total
  return None if num_parts == 0 else total / num_parts


def video_psc(gt_frames, pred_frames, h, p):
  """Rules 4 (checks a-d in order) and 5; pred_frames None: the video is missing."""
  total, counted = 0, 0
  for name, gt_frame in gt_frames.items():
    gt_humans = gt_frame['humans']
    if not gt_humans:  # a: left out
      continue
    if pred_frames is None or name not in pred_frames:  # b: counted, scores 0
      counted += 1
      continue
    score = frame_score(gt_humans, pred_frames[name]['humans'], h, p)
    if score is None:  # c: no GT part, left out
      continue
    counted += 1  # d
    total += score
  return 1.0 if counted == 0 else total / counted


def score_cells(gt_vid, gt_part, pred_vid, pred_part, cells=CELLS):
  """(PSC (len(cells), videos), correct (videos,)) for the videos of gt_vid, in order."""
  psc = [[video_psc(gt_part[v], pred_part.get(v), h, p) for v in gt_vid] for h, p in cells]
  correct = [v in pred_vid and pred_vid[v] == gt_vid[v] for v in gt_vid]
  return np.array(psc, np.float64).reshape(len(cells), len(gt_vid)), np.array(correct, bool)


def accuracy(psc, correct, t, num_videos=None):
  """Rule 6 over the last axis: count(PSC >= t and right class) / videos.

  num_videos: the true counts when the last axis is padded (padding has correct False).
  """
  psc = np.asarray(psc, np.float64)
  hits = np.count_nonzero((psc >= t) & np.asarray(correct, bool), axis=-1)
  return hits / (psc.shape[-1] if num_videos is None else num_videos)


def area(psc, correct, num_videos=None):
  """Rule 7 over the last axis (videos): for k = 1..9999 in order, add (1/10000) acc.

  Vectorised over the leading axes only: each of those sums is still added term by term.
  """
  psc = np.asarray(psc, np.float64)
  total = np.zeros(psc.shape[:-1])
  for k in range(1, STEPS):
    total = total + (1.0 / STEPS) * accuracy(psc, correct, k / STEPS, num_videos)
  return total


def official_run(gt_vid, gt_part, pred_vid, pred_part):
  """As the challenge's tool runs: one pass at (0.5, 0.3), then one pass per cell.

  Returns ({cell: (accuracies at PRINTED_T, area)}, seconds spent in the area steps).
  """
  score_cells(gt_vid, gt_part, pred_vid, pred_part, (OFFICIAL_CELL,))
  results, area_seconds = {}, 0.0
  for cell in CELLS:
    psc, correct = score_cells(gt_vid, gt_part, pred_vid, pred_part, (cell,))
    start = time.perf_counter()
    cell_area = float(area(psc[0], correct))
    area_seconds += time.perf_counter() - start
    results[cell] = ([float(accuracy(psc[0], correct, t)) for t in PRINTED_T], cell_area)
  return results, area_seconds


def printout(results):
  """The lines the tool prints for official_run's results."""
  for (h, p), (accuracies, cell_area) in results.items():
    yield f'human iou:  {h} part iou:  {p}'
    yield from map(str, accuracies)
    yield f'area:  {cell_area}'


def main(argv):
  """`python -m tests.score_reference GT_DIR PRED_DIR`: prints every cell, then the score."""
  import json
  import os

  gt_dir, pred_dir = argv[1:3]
  load = lambda folder, name: json.load(open(os.path.join(folder, name)))
  gt_vid, gt_part = load(gt_dir, 'gt_vid_result.json'), load(gt_dir, 'gt_part_result.json')
  pred_vid = load(pred_dir, 'pred_vid_result.json')
  pred_part = load(pred_dir, 'pred_part_result.json')
  results, area_seconds = official_run(gt_vid, gt_part, pred_vid, pred_part)
  for line in printout(results):
    print(line)
  print(f'area steps: {area_seconds:.3f} s')
  print(f'score: {round(results[OFFICIAL_CELL][1], 6):.6f}')


if __name__ == '__main__':
  import sys

  main(sys.argv)
