"""The Kinetics-TPS challenge score (ICCV 2021 DeeperAction, part-level track).

The rules (shared/kinetics_tps.md, "The score"), implemented literally:

1. IoU with inclusive pixels (w = x2 - x1 + 1); boxes that do not overlap get -1.
2. Per frame, GT humans are matched one-to-one to predicted humans by the Hungarian
   algorithm on the square cost 1 - IoU (padding has IoU 0), IoU in float32; a match
   counts when IoU > 0.5.
3. Per GT part of a matched human: 1 / N_p (N_p proposals predicted for that part name)
   if any proposal has IoU >= 0.3 with it and the same verb, else 0.
4. Frame score = sum of part scores / number of GT parts; frames without GT humans or
   GT parts are left out; a GT frame missing from the submission scores 0 but counts.
5. Video PSC = mean of its frame scores (1 when no frame is scorable).
6. accuracy(t) = fraction of videos with PSC >= t and the right action class.
7. score = sum_{k=1}^{9999} accuracy(k / 10000) / 10000.

The human/part IoU thresholds are parameters so that the conditioned-accuracy grid of
the challenge's report can be computed with the same code; the score uses 0.5 / 0.3.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from tps_jax.evaluation import submission

HUMAN_IOU_THRESHOLD = 0.5   # strict: IoU > 0.5
PART_IOU_THRESHOLD = 0.3    # IoU >= 0.3
NUM_THRESHOLDS = 10000      # t = k / 10000, k = 1 .. 9999
GRID_HUMAN_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
GRID_PART_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
GRID_PSC_THRESHOLD = 0.5    # a grid cell: fraction of videos with PSC >= 0.5 and right class


def box_iou_inclusive(boxes_a, boxes_b, dtype=np.float64) -> np.ndarray:
  """Pairwise IoU (len(a), len(b)) with inclusive pixels; -1 where boxes do not overlap.

  Under the inclusive convention a box covers pixels x1..x2, so two boxes overlap when
  min(x2) - max(x1) + 1 > 0: boxes sharing one pixel column overlap by one column.
  """
  a = np.asarray(boxes_a, dtype).reshape(-1, 4)
  b = np.asarray(boxes_b, dtype).reshape(-1, 4)
  one = dtype(1)
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
  area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
  area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
  inter = iw * ih
  overlap = (iw > 0) & (ih > 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = inter / (area_a[:, None] + area_b[None, :] - inter)
  return np.where(overlap, iou, dtype(-1)).astype(dtype)


def match_humans(gt_boxes, pred_boxes) -> tuple[np.ndarray, np.ndarray]:
  """Hungarian matching of GT to predicted humans: (pred index or -1, IoU or -inf).

  Cost 1 - IoU on a square matrix padded with IoU 0, IoU in float32 (the challenge's
  convention). The assignment does not depend on the match threshold; callers compare
  the returned IoU with it (> 0.5 for the score).
  """
  num_gt, num_pred = len(gt_boxes), len(pred_boxes)
  matches = np.full(num_gt, -1, np.int64)
  match_iou = np.full(num_gt, -np.inf, np.float32)
  if num_gt == 0 or num_pred == 0:
    return matches, match_iou
  iou = box_iou_inclusive(gt_boxes, pred_boxes, np.float32)
  size = max(num_gt, num_pred)
  padded = np.zeros((size, size), np.float32)
  padded[:num_gt, :num_pred] = iou
  rows, cols = linear_sum_assignment(np.float32(1) - padded)
  real = (rows < num_gt) & (cols < num_pred)
  matches[rows[real]] = cols[real]
  match_iou[rows[real]] = iou[rows[real], cols[real]]
  return matches, match_iou


def frame_score_grid(gt_frame: Mapping, pred_frame: Mapping | None,
                     human_thresholds: Sequence[float],
                     part_thresholds: Sequence[float]) -> np.ndarray | None:
  """Frame scores for every (human IoU > h, part IoU >= p) pair: (H, P), or None.

  None when the frame has no GT human or no GT part (the frame is left out). All GT
  parts of the frame are scored against all proposals of their matched humans with a
  single IoU matrix, masked to (same human, same part name, same verb).
  """
  gt_humans = gt_frame.get("humans", [])
  num_parts = sum(len(h.get("parts", {})) for h in gt_humans)
  if not gt_humans or num_parts == 0:
    return None
  grid = np.zeros((len(human_thresholds), len(part_thresholds)))
  if pred_frame is None:
    return grid
  pred_humans = pred_frame.get("humans", [])
  matches, match_iou = match_humans([h["box"] for h in gt_humans],
                                    [h["box"] for h in pred_humans])
  # One row per GT part of a matched human, one column per proposal of its part.
  gt_boxes, gt_verbs, gt_human_iou, num_proposals = [], [], [], []
  prop_boxes, prop_verbs, prop_owner = [], [], []
  for gt_human, match, m_iou in zip(gt_humans, matches, match_iou):
    if match < 0:
      continue
    pred_parts = pred_humans[match].get("parts", {})
    for name, gt_part in gt_human.get("parts", {}).items():
      proposals = pred_parts.get(name) or {}
      boxes, verbs = proposals.get("box", []), proposals.get("verb", [])
      row = len(gt_boxes)
      gt_boxes.append(gt_part["box"])
      gt_verbs.append(gt_part["verb"])
      gt_human_iou.append(m_iou)
      num_proposals.append(len(boxes))
      prop_boxes.extend(boxes)
      prop_verbs.extend(verbs)
      prop_owner.extend([row] * len(boxes))
  if not prop_boxes:
    return grid
  iou = box_iou_inclusive(gt_boxes, prop_boxes)                         # (R, M)
  owner = np.asarray(prop_owner)
  mine = owner[None, :] == np.arange(len(gt_boxes))[:, None]
  same_verb = np.asarray(gt_verbs, object)[:, None] == np.asarray(prop_verbs, object)[None, :]
  best = np.where(mine & same_verb, iou, -np.inf).max(axis=1)           # (R,)
  n_p = np.asarray(num_proposals, np.float64)
  weight = np.divide(1.0, n_p, out=np.zeros_like(n_p), where=n_p > 0)
  part_ok = (best[:, None] >= np.asarray(part_thresholds, np.float64)) * weight[:, None]
  human_ok = np.asarray(gt_human_iou, np.float32)[:, None] > np.asarray(human_thresholds,
                                                                         np.float32)
  return human_ok.astype(np.float64).T @ part_ok / num_parts


def frame_part_score(gt_frame: Mapping, pred_frame: Mapping | None,
                     human_iou=HUMAN_IOU_THRESHOLD, part_iou=PART_IOU_THRESHOLD
                     ) -> float | None:
  """The frame's score under rules 2-4, or None when the frame is left out."""
  grid = frame_score_grid(gt_frame, pred_frame, [human_iou], [part_iou])
  return None if grid is None else float(grid[0, 0])


def video_psc_grid(gt_frames: Mapping, pred_frames: Mapping | None,
                   human_thresholds: Sequence[float], part_thresholds: Sequence[float]
                   ) -> np.ndarray:
  """Mean frame score over scorable frames for every threshold pair; 1 when none."""
  pred_frames = pred_frames or {}
  grids = [frame_score_grid(gt, pred_frames.get(name), human_thresholds, part_thresholds)
           for name, gt in gt_frames.items()]
  grids = [g for g in grids if g is not None]
  if not grids:
    return np.ones((len(human_thresholds), len(part_thresholds)))
  return np.mean(grids, axis=0)


def video_psc(gt_frames: Mapping, pred_frames: Mapping | None,
              human_iou=HUMAN_IOU_THRESHOLD, part_iou=PART_IOU_THRESHOLD) -> float:
  """Video PSC (rule 5)."""
  return float(video_psc_grid(gt_frames, pred_frames, [human_iou], [part_iou])[0, 0])


def auc_score(psc: Sequence[float], correct: Sequence[bool]) -> float:
  """sum_{k=1}^{9999} accuracy(k/10000) / 10000, in closed form.

  For one video, the number of thresholds t = k/10000 with PSC >= t is the count of k
  in 1..9999 with k/10000 <= PSC (compared in float64 exactly as the literal loop).
  """
  psc = np.asarray(psc, np.float64)
  correct = np.asarray(correct, bool)
  if psc.size == 0:
    return 0.0
  k = np.clip(np.floor(psc * NUM_THRESHOLDS).astype(np.int64), 0, NUM_THRESHOLDS - 1)
  # floor(psc * 10000) may be off by one from the float comparison k/10000 <= psc.
  k = np.where((k + 1 <= NUM_THRESHOLDS - 1) & ((k + 1) / NUM_THRESHOLDS <= psc), k + 1, k)
  k = np.where((k >= 1) & (k / NUM_THRESHOLDS > psc), k - 1, k)
  hits = np.where(correct, k, 0)
  return float(hits.sum() / psc.size / NUM_THRESHOLDS)


def auc_score_literal(psc: Sequence[float], correct: Sequence[bool]) -> float:
  """The definition, term by term (reference for tests)."""
  psc, correct = np.asarray(psc, np.float64), np.asarray(correct, bool)
  total = 0.0
  for k in range(1, NUM_THRESHOLDS):
    total += np.mean((psc >= k / NUM_THRESHOLDS) & correct) / NUM_THRESHOLDS
  return float(total)


@dataclasses.dataclass
class ScoreReport:
  score: float                              # unrounded area under the curve
  psc: dict[str, float]                     # video -> PSC
  correct: dict[str, bool]                  # video -> predicted class == GT class
  grid: np.ndarray                          # (len(GRID_HUMAN), len(GRID_PART)) accuracies
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def score_rounded(self) -> float:
    return round(self.score, 6)

  def format(self) -> str:
    lines = [f"conditioned accuracy: videos with the right class and PSC >= {GRID_PSC_THRESHOLD}",
             "rows: human-match IoU > h; columns: part IoU >= p",
             "  h \\ p " + "".join(f"{p:>8.1f}" for p in GRID_PART_THRESHOLDS)]
    for h, row in zip(GRID_HUMAN_THRESHOLDS, self.grid):
      lines.append(f"  {h:>5.1f} " + "".join(f"{v:>8.4f}" for v in row))
    lines.append(f"videos: {len(self.psc)}  action top-1: "
                 f"{np.mean(list(self.correct.values())) if self.correct else 0:.4f}  "
                 f"mean PSC: {np.mean(list(self.psc.values())) if self.psc else 0:.4f}")
    lines.append(f"score: {self.score_rounded:.6f}")
    return "\n".join(lines)


def challenge_score(gt_vid: Mapping[str, str], gt_part: Mapping, pred_vid: Mapping[str, str],
                    pred_part: Mapping, *, with_grid: bool = True) -> ScoreReport:
  """Scores a submission against ground truth (dicts as loaded from the JSON files).

  Videos are those of `gt_vid`; a video or frame absent from the submission scores 0
  (a warning is recorded), it never raises.
  """
  warnings = submission.coverage_warnings(gt_vid, gt_part, pred_vid, pred_part)
  videos = list(gt_vid)
  correct = {v: pred_vid.get(v) == gt_vid[v] for v in videos}
  # Column/row 0 are the official thresholds; the rest are the report's grid.
  human_thr = (HUMAN_IOU_THRESHOLD,) + (GRID_HUMAN_THRESHOLDS if with_grid else ())
  part_thr = (PART_IOU_THRESHOLD,) + (GRID_PART_THRESHOLDS if with_grid else ())
  psc_grids = {v: video_psc_grid(gt_part.get(v, {}), pred_part.get(v), human_thr, part_thr)
               for v in videos}
  psc = {v: float(g[0, 0]) for v, g in psc_grids.items()}
  score = auc_score([psc[v] for v in videos], [correct[v] for v in videos])
  grid = np.zeros((len(GRID_HUMAN_THRESHOLDS), len(GRID_PART_THRESHOLDS)))
  if with_grid and videos:
    stacked = np.stack([psc_grids[v][1:, 1:] for v in videos])
    right = np.array([correct[v] for v in videos])[:, None, None]
    grid = np.mean((stacked >= GRID_PSC_THRESHOLD) & right, axis=0)
  return ScoreReport(score=score, psc=psc, correct=correct, grid=grid, warnings=warnings)
