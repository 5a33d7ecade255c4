"""The challenge's arithmetic, with the numerics of its tool (eval_detection.py of the
Kinetics-TPS evaluation repository) reproduced bit for bit: the inclusive box IoU, the
Hungarian matching of humans, the sums added one term at a time and the area under
accuracy(t). The rules, in the order the tool applies them: docs/score.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

THRESHOLDS = (0.001, 0.3, 0.5, 0.9, 0.99)  # the tool's human and part IoU thresholds
HUMAN_IOU_THRESHOLD = 0.5  # the score's cell: IoU > 0.5 ...
PART_IOU_THRESHOLD = 0.3  # ... and part IoU >= 0.3
PRINTED_T = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NUM_THRESHOLDS = 10000  # t = k / 10000, k = 1 .. 9999


# ------------------------------------------------------------------------ IoU, matching


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Inclusive IoU of a[..., :] and b[..., :] (broadcast) in their dtype; -1: no overlap."""
  one = a.dtype.type(1)
  inter_w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
  inter_h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
  inter = inter_w * inter_h
  area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
  area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
  with np.errstate(all='ignore'):
    iou = inter / ((area_a + area_b) - inter)
  return np.where((inter_w > 0) & (inter_h > 0), iou, -one)


def box_iou_inclusive(boxes_a, boxes_b, dtype=np.float64) -> np.ndarray:
  """Pairwise IoU (len(a), len(b)) with inclusive pixels; -1 where boxes do not overlap.

  Under the inclusive convention a box covers pixels x1..x2, so two boxes overlap when
  min(x2) - max(x1) + 1 > 0: boxes sharing one pixel column overlap by one column.
  """
  a = np.asarray(boxes_a, dtype).reshape(-1, 4)
  b = np.asarray(boxes_b, dtype).reshape(-1, 4)
  return paired_iou(a[:, None, :], b[None, :, :])


def assign(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
  """The tool's Hungarian step on k frames of one shape: iou (k, n_gt, n_pred) float32.

  Returns (the predicted index assigned to each GT row (k, n_gt), -1 for padding; the
  IoU there as float64, -inf for padding; whether the matrix stayed float32).
  """
  k, num_gt, num_pred = iou.shape
  square = num_gt == num_pred
  cols = np.full((k, num_gt), -1, np.int64)
  if num_pred == 0:
    return cols, np.full((k, num_gt), -np.inf), square
  if num_gt == num_pred == 1:
    cols[:] = 0
  else:
    size = max(num_gt, num_pred)
    matrix = iou
    if not square:
      matrix = np.zeros((k, size, size))  # float64 padding, as the tool's
      matrix[:, :num_gt, :num_pred] = iou
    cost = 1 - matrix
    for q in range(k):
      assigned = linear_sum_assignment(cost[q])[1][:num_gt]  # rows come back as 0..size-1
      cols[q] = np.where(assigned < num_pred, assigned, -1)
  values = np.take_along_axis(iou, np.maximum(cols, 0)[..., None], axis=2)[..., 0]
  return cols, np.where(cols >= 0, values.astype(np.float64), -np.inf), square


def matched(iou: np.ndarray, square: np.ndarray, threshold: float) -> np.ndarray:
  """IoU > threshold as the tool compares: in float32 where its matrix was float32."""
  return iou > np.where(square, np.float64(np.float32(threshold)), threshold)


def match_humans(gt_boxes, pred_boxes) -> tuple[np.ndarray, np.ndarray]:
  """One frame's assignment: (predicted index or -1 per GT human, its IoU or -inf).

  Callers compare the IoU with the threshold (> 0.5 for the score); the assignment
  itself does not depend on it.
  """
  gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
  pred = np.asarray(pred_boxes, np.float32).reshape(-1, 4)
  if len(gt) == 0:
    return np.zeros(0, np.int64), np.zeros(0)
  cols, iou, _ = assign(paired_iou(gt[:, None, :], pred[None, :, :])[None])
  return cols[0], iou[0]


# ------------------------------------------------------------------------------ sums


def ordered_sums(
  values: np.ndarray, segment: np.ndarray, position: np.ndarray, num_segments: int
) -> np.ndarray:
  """Per segment, its values (..., N) added one at a time in position order, from 0.

  As the tool's `total += x` loops do; positions are unique within a segment (gaps are
  fine: leaving out terms that are 0 changes no sum).
  """
  sums = np.zeros(values.shape[:-1] + (num_segments,))
  if position.size == 0:
    return sums
  order = np.argsort(position, kind='stable')
  bounds = np.searchsorted(position[order], np.arange(position.max() + 2))
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    take = order[lo:hi]
    sums[..., segment[take]] += values[..., take]
  return sums


def starts(counts: np.ndarray) -> np.ndarray:
  """Where each run of `counts` items begins in the flat list."""
  return (np.cumsum(counts) - counts).astype(np.int64)


def positions(counts: np.ndarray) -> np.ndarray:
  """The index of each flat item within its run."""
  return np.arange(int(counts.sum())) - np.repeat(starts(counts), counts)


# ------------------------------------------------------------------------------ area


def threshold_accuracy(psc: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """accuracy(k / 10000) for k = 1..9999 (..., 9999): count / videos, as the tool divides.

  psc (..., V), correct (V,). A video passes t = k / 10000 for k <= K, K the number of
  thresholds <= its PSC: searchsorted against the exact float64 thresholds, so the
  counts are the tool's.
  """
  psc = np.asarray(psc, np.float64)
  correct = np.asarray(correct, bool)
  thresholds = np.arange(1, NUM_THRESHOLDS) / NUM_THRESHOLDS
  rows = psc[..., correct].reshape(math.prod(psc.shape[:-1]), int(correct.sum()))
  passed = np.searchsorted(thresholds, rows, side='right')  # K per video
  offsets = NUM_THRESHOLDS * np.arange(len(rows))[:, None]
  hist = np.bincount((passed + offsets).ravel(), minlength=NUM_THRESHOLDS * len(rows))
  counts = np.cumsum(hist.reshape(len(rows), NUM_THRESHOLDS)[:, ::-1], axis=1)[:, ::-1]
  return (counts[:, 1:] / psc.shape[-1]).reshape(psc.shape[:-1] + (NUM_THRESHOLDS - 1,))


def area(psc, correct) -> np.ndarray:
  """sum over k = 1..9999 of (1.0 / 10000) * accuracy(k / 10000), added in order.

  psc (..., V); cells with the same PSC vector (common: h = 0.001 and 0.3 often agree)
  are summed once.
  """
  psc = np.asarray(psc, np.float64)
  rows, inverse = np.unique(psc.reshape(-1, psc.shape[-1]), axis=0, return_inverse=True)
  terms = (1.0 / NUM_THRESHOLDS) * threshold_accuracy(rows, correct)
  return np.add.accumulate(terms, axis=-1)[:, -1][inverse.ravel()].reshape(psc.shape[:-1])


def auc_score(psc: Sequence[float], correct: Sequence[bool]) -> float:
  """The score of one cell from per-video PSC and correctness."""
  if len(psc) == 0:
    return 0.0
  return float(area(psc, correct))


def printed_accuracy(psc: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """accuracy(t) at the tool's printed t = 0, 0.1, ..., 0.9: (..., 10)."""
  psc = np.asarray(psc, np.float64)
  hits = [np.count_nonzero((psc >= t) & np.asarray(correct, bool), axis=-1) for t in PRINTED_T]
  return np.stack(hits, axis=-1) / psc.shape[-1]
