"""Where a submission loses its score: the numbers of `python -m tps_jax.report`.

Everything here reads one ScoreReport made with `score.score_typed(details=True)`: the
per-frame, per-human and per-part arrays of the score's cell (human IoU > 0.5, part IoU
>= 0.3) that the scoring pass itself computed. No rule is restated: a part's credit is
the pass's `part_score`, a human's match the pass's, a video's PSC the pass's.

The loss breakdown splits the perfect score 1 exactly: a video of the wrong class loses
all of it (the action); a video of the right class loses, per counted frame, what its
missing frames, its unmatched GT humans' parts, its parts without a proposal at IoU >=
0.3 (whatever the state) and its found parts without full credit (a wrong state, or
the credit split over several proposals) leave out of the PSC. What remains, the mean
of correct x PSC, is the score but for the area's thresholds t = k / 10000 (a PSC
counts up to its last threshold, and t stops at 0.9999). `psc_breakdown` splits the
mean PSC the same way over every video, whatever its class: the parsing's losses even
where the action is wrong.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from tps_jax.data import submission
from tps_jax.metrics import score as score_lib

FOUND_IOU = score_lib.PART_IOU_THRESHOLD  # a part is found by a proposal at IoU >= 0.3
NO_ACTION = '(none)'  # the predicted action of a video the submission lacks
LOSSES = (
  'wrong action',
  'missing frames',
  'unmatched humans',
  'parts not found',
  'wrong states',
)


@dataclasses.dataclass
class PartRow:
  name: str
  count: int  # GT parts of matched humans
  recall: float  # found at IoU >= 0.3 (any state)
  state_accuracy: float  # the best proposal's state is the GT's, among found parts
  credit: float  # mean part score (1 / N_p or 0) among found parts
  states: list[str]  # the confusion's labels: GT states first, then predicted ones
  confusion: np.ndarray  # (S, S) found parts: rows GT state, columns predicted
  ious: np.ndarray  # best IoU of each part that has a proposal


def details_of(report: score_lib.ScoreReport) -> score_lib.ScoreDetails:
  if report.details is None:
    raise ValueError('the report was scored without details (score_typed(details=True))')
  return report.details


def headline(report: score_lib.ScoreReport) -> dict:
  """The counts beside the score: what was scored and what counted as 0."""
  d = details_of(report)
  return {
    'videos': len(report.videos),
    'frames': int(len(d.frame_names)),
    'counted_frames': int(report.counted_frames.sum()),
    'humans': int(len(d.human_iou)),
    'parts': int(d.frame_parts.sum()),
    'missing_videos': int(d.missing_videos.sum()),
    'missing_frames': int(d.missing_frames.sum()),
    'action_top1': float(np.mean(report.correct_videos)),
    'mean_psc': float(np.mean(report.psc_cells[report.official_cell])),
  }


def _per_video(values: np.ndarray, d: score_lib.ScoreDetails, num_videos: int) -> np.ndarray:
  return np.bincount(d.frame_video, weights=values, minlength=num_videos)


def frame_losses(d: score_lib.ScoreDetails) -> dict[str, np.ndarray]:
  """Per scored frame, the share of its GT parts lost to each cause (with its score: 1)."""
  lost_human = np.bincount(
    d.human_frame, weights=d.human_parts * ~d.human_matched, minlength=len(d.frame_names)
  )
  frame_of_part = d.human_frame[d.part_human]
  found = d.part_iou >= FOUND_IOU
  not_found = np.bincount(frame_of_part, weights=~found, minlength=len(d.frame_names))
  state = np.bincount(frame_of_part, weights=found - d.part_score, minlength=len(d.frame_names))
  return {
    'unmatched humans': lost_human / d.frame_parts,
    'parts not found': not_found / d.frame_parts,
    'wrong states': state / d.frame_parts,
  }


def video_losses(report: score_lib.ScoreReport) -> dict[str, np.ndarray]:
  """Per video, the share of its PSC lost to each cause: with the PSC they add up to 1."""
  d = details_of(report)
  counted = np.maximum(report.counted_frames, 1)  # a video with none has PSC 1: no loss
  losses = {'missing frames': d.missing_frames / counted}
  for cause, share in frame_losses(d).items():
    losses[cause] = _per_video(share, d, len(report.videos)) / counted
  return losses


def loss_breakdown(report: score_lib.ScoreReport) -> list[tuple[str, float]]:
  """[(cause, score lost)] summing with 't grid' and the score (the last row) to 1."""
  num_videos = len(report.videos)
  correct = report.correct_videos
  rows = [('wrong action', float(np.mean(~correct)))]
  rows += [
    (cause, float(np.sum(loss[correct])) / num_videos)
    for cause, loss in video_losses(report).items()
  ]
  kept = float(np.mean(correct * report.psc_cells[report.official_cell]))
  rows.append(('t grid (k / 10000)', kept - report.score))
  rows.append(('score', report.score))
  return rows


def psc_breakdown(report: score_lib.ScoreReport) -> list[tuple[str, float]]:
  """[(cause, mean PSC lost)] over every video, whatever its class, summing with the mean
  PSC (the last row) to 1: the parsing's losses even where the action is wrong."""
  rows = [(cause, float(np.mean(loss))) for cause, loss in video_losses(report).items()]
  return rows + [('mean PSC', float(np.mean(report.psc_cells[report.official_cell])))]


def humans(report: score_lib.ScoreReport) -> dict:
  """Human matching at IoU > 0.5: precision, recall and the assigned IoUs."""
  d = details_of(report)
  matched = int(d.human_matched.sum())
  predicted = int(d.frame_pred_humans.sum())
  return {
    'gt': len(d.human_iou),
    'predicted': predicted,
    'matched': matched,
    'precision': matched / predicted if predicted else 0.0,
    'recall': matched / len(d.human_iou) if len(d.human_iou) else 0.0,
    'ious': np.maximum(d.human_iou[np.isfinite(d.human_iou)], 0.0),  # -1: no overlap
  }


def _codes(values: list, labels: list) -> np.ndarray:
  """The index of each value in labels."""
  index = {label: i for i, label in enumerate(labels)}
  return np.fromiter(map(index.__getitem__, values), np.int64, len(values))


def parts(report: score_lib.ScoreReport) -> list[PartRow]:
  """One row per part name (the ten first), from the parts of matched humans."""
  d = details_of(report)
  names = [*submission.PARTS, *sorted(set(d.part_names) - set(submission.PARTS))]
  states = sorted(set(d.gt_states) | set(d.pred_states))
  part_of = _codes(d.part_names, names)
  gt, pred = _codes(d.gt_states, states), _codes(d.pred_states, states)
  found = d.part_iou >= FOUND_IOU
  rows = []
  for k, name in enumerate(names):
    mine = part_of == k
    hit = mine & found
    pairs = np.bincount(gt[hit] * len(states) + pred[hit], minlength=len(states) ** 2)
    pairs = pairs.reshape(len(states), len(states))
    gt_labels = np.unique(gt[mine])
    labels = np.concatenate([gt_labels, np.setdiff1d(np.unique(pred[hit]), gt_labels)])
    confusion = pairs[np.ix_(labels, labels)]
    count, num_found = int(mine.sum()), int(hit.sum())
    rows.append(
      PartRow(
        name=name,
        count=count,
        recall=num_found / count if count else 0.0,
        state_accuracy=float(np.trace(confusion)) / num_found if num_found else 0.0,
        credit=float(d.part_score[hit].mean()) if num_found else 0.0,
        states=[states[i] for i in labels.tolist()],
        confusion=confusion,
        ious=np.maximum(d.part_iou[mine & np.isfinite(d.part_iou)], 0.0),
      )
    )
  return rows


def top_confusions(row: PartRow, limit: int = 3) -> list[tuple[str, str, int]]:
  """The most frequent (GT state, predicted state, count) with the two different."""
  off = [
    (row.states[i], row.states[j], int(row.confusion[i, j]))
    for i, j in zip(*np.nonzero(row.confusion))
    if i != j
  ]
  return sorted(off, key=lambda c: (-c[2], c[0], c[1]))[:limit]


def actions(report: score_lib.ScoreReport) -> dict:
  """Top-1, the confusion matrix (rows GT, columns predicted) and per-class accuracy."""
  d = details_of(report)
  predicted = [NO_ACTION if a is None else str(a) for a in d.pred_actions]
  gt = [str(a) for a in d.gt_actions]
  labels = sorted(set(gt))
  labels += sorted(set(predicted) - set(labels))
  index = {a: i for i, a in enumerate(labels)}
  confusion = np.zeros((len(labels), len(labels)), np.int64)
  np.add.at(confusion, ([index[a] for a in gt], [index[a] for a in predicted]), 1)
  counts = collections.Counter(gt)
  hits = collections.Counter(a for a, right in zip(gt, report.correct_videos.tolist()) if right)
  return {
    'top1': float(np.mean(report.correct_videos)),
    'labels': labels,
    'confusion': confusion,
    'per_class': [(a, counts[a], hits[a] / counts[a]) for a in sorted(counts)],
  }


def videos(report: score_lib.ScoreReport) -> list[dict]:
  """One row per video: PSC, actions, frames counted and missing, in the GT's order."""
  d = details_of(report)
  psc = report.psc_cells[report.official_cell]
  frames = np.bincount(d.frame_video, minlength=len(report.videos))
  return [
    {
      'video': name,
      'psc': float(psc[v]),
      'correct': bool(report.correct_videos[v]),
      'gt_action': str(d.gt_actions[v]),
      'pred_action': NO_ACTION if d.pred_actions[v] is None else str(d.pred_actions[v]),
      'counted': int(report.counted_frames[v]),
      'scored': int(frames[v]),
      'missing': int(d.missing_frames[v]),
    }
    for v, name in enumerate(report.videos)
  ]


def worst_videos(report: score_lib.ScoreReport, count: int, frames: int) -> list[tuple[str, list]]:
  """The `count` videos of lowest PSC (then name), each with its `frames` scored frames
  of lowest score: [(video, [(frame key, frame score)])]."""
  d = details_of(report)
  psc = report.psc_cells[report.official_cell]
  order = sorted(range(len(report.videos)), key=lambda v: (psc[v], report.videos[v]))[:count]
  out = []
  for v in order:
    mine = np.flatnonzero(d.frame_video == v)
    chosen = mine[np.lexsort((mine, d.frame_score[mine]))][:frames]
    out.append(
      (report.videos[v], [(d.frame_names[i], float(d.frame_score[i])) for i in chosen.tolist()])
    )
  return out
