"""The Kinetics-TPS challenge score, equal to the challenge's own tool on what it accepts.

`challenge_score` / `score_typed` score a submission for every cell of human x part IoU
thresholds in one pass: score_reading.py reads it as the tool does (refusing and warning
where the tool would), score_math.py does the tool's arithmetic bit for bit. The rules,
what is refused and what is warned about, in the order the tool applies them:
docs/score.md.

`score_typed(..., details=True)` also keeps what the score's cell is made of, from the
same pass (ScoreDetails: per scored frame, GT human and GT part of a matched human, and
every part's best proposal whatever its state): the numbers of `python -m
tps_jax.report`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from itertools import chain, compress

import numpy as np

from tps_jax.data import submission
from tps_jax.metrics import score_math, score_reading
from tps_jax.metrics.score_math import (
  HUMAN_IOU_THRESHOLD,
  NUM_THRESHOLDS,
  PART_IOU_THRESHOLD,
  THRESHOLDS,
)


@dataclasses.dataclass
class ScoreDetails:
  """What the score's cell (human IoU > 0.5, part IoU >= 0.3) is made of, from the
  scoring pass itself (score_typed(details=True)): the report's numbers.

  Frames are the scored ones (a GT frame present in the submission with a GT part),
  humans the GT humans of those frames, parts the GT parts of the matched humans.
  """

  frame_video: np.ndarray  # (F,) video index of each scored frame
  frame_names: list[str]  # (F,) its key, img_XXXXX.json
  frame_score: np.ndarray  # (F,) its score in the cell (part scores / GT parts)
  frame_parts: np.ndarray  # (F,) its GT parts
  frame_pred_humans: np.ndarray  # (F,) predicted humans in it
  missing_frames: np.ndarray  # (V,) GT frames with a human missing from the submission
  missing_videos: np.ndarray  # (V,) bool: the video is missing from the part result
  human_frame: np.ndarray  # (N,) scored-frame index of each GT human
  human_iou: np.ndarray  # (N,) IoU with its assigned predicted human (-inf: none)
  human_matched: np.ndarray  # (N,) IoU > 0.5 as the tool compares
  human_parts: np.ndarray  # (N,) its GT parts
  part_human: np.ndarray  # (M,) GT human index of each part of a matched human
  part_names: list[str]  # (M,)
  gt_states: list[str]  # (M,)
  part_iou: np.ndarray  # (M,) best IoU of any proposal of the same-named part (-inf: none)
  pred_states: list[str]  # (M,) the state of that proposal ('' when none)
  part_score: np.ndarray  # (M,) its score in the cell: 1 / N_p or 0
  gt_actions: list  # (V,)
  pred_actions: list  # (V,) None where the video has no predicted action


@dataclasses.dataclass
class ScoreReport:
  videos: list[str]  # the GT videos, in order
  human_thresholds: tuple[float, ...]
  part_thresholds: tuple[float, ...]
  psc_cells: np.ndarray  # (H, P, V) per-video PSC of every cell
  correct_videos: np.ndarray  # (V,) predicted class == GT class
  counted_frames: np.ndarray  # (V,) frames the PSC divides by
  warnings: list[str] = dataclasses.field(default_factory=list)
  details: ScoreDetails | None = None  # score_typed(details=True)

  @functools.cached_property
  def areas(self) -> np.ndarray:
    """(H, P) the area under accuracy(t) of every cell: the score of that cell."""
    return score_math.area(self.psc_cells, self.correct_videos)

  @functools.cached_property
  def accuracies(self) -> np.ndarray:
    """(H, P, 10) accuracy at the printed t = 0, 0.1, ..., 0.9."""
    return score_math.printed_accuracy(self.psc_cells, self.correct_videos)

  @property
  def official_cell(self) -> tuple[int, int]:
    return (
      self.human_thresholds.index(HUMAN_IOU_THRESHOLD),
      self.part_thresholds.index(PART_IOU_THRESHOLD),
    )

  @property
  def score(self) -> float:
    """The challenge's score, unrounded: the area of the cell h = 0.5, p = 0.3."""
    return float(self.areas[self.official_cell])

  @property
  def score_rounded(self) -> float:
    return round(self.score, 6)

  @property
  def grid(self) -> np.ndarray:
    return self.areas

  @property
  def psc(self) -> dict[str, float]:
    """video -> PSC of the score's cell."""
    return dict(zip(self.videos, self.psc_cells[self.official_cell].tolist()))

  @property
  def correct(self) -> dict[str, bool]:
    return dict(zip(self.videos, self.correct_videos.tolist()))

  def accuracy_curve(self) -> tuple[np.ndarray, np.ndarray]:
    """(t, accuracy(t)) of the score's cell at t = k / 10000, k = 0..9999."""
    t = np.arange(NUM_THRESHOLDS) / NUM_THRESHOLDS
    curve = score_math.threshold_accuracy(self.psc_cells[self.official_cell], self.correct_videos)
    first = np.count_nonzero(self.correct_videos) / len(self.videos)  # t = 0: all PSC >= 0
    return t, np.concatenate([[first], curve])

  def format(self, verbose: bool = False) -> str:
    """The areas as a table (accuracies too, as the tool prints them, when verbose)."""
    lines = []
    if verbose:
      for i, h in enumerate(self.human_thresholds):
        for j, p in enumerate(self.part_thresholds):
          lines.append(f'human iou:  {h} part iou:  {p}')
          lines += [repr(float(a)) for a in self.accuracies[i, j]]
          lines.append(f'area:  {float(self.areas[i, j])!r}')
    lines += [
      'area under accuracy(t); rows: human IoU > h, columns: part IoU >= p',
      '  h \\ p ' + ''.join(f'{p:>10g}' for p in self.part_thresholds),
    ]
    for h, row in zip(self.human_thresholds, self.areas):
      lines.append(f'  {h:>5g} ' + ''.join(f'{v:>10.6f}' for v in row))
    top1 = float(np.mean(self.correct_videos)) if self.videos else 0.0
    mean_psc = float(np.mean(self.psc_cells[self.official_cell])) if self.videos else 0.0
    lines.append(
      f'videos: {len(self.videos)}  action top-1: {top1:.4f}  '
      f'mean PSC (h {HUMAN_IOU_THRESHOLD}, p {PART_IOU_THRESHOLD}): {mean_psc:.4f}'
    )
    lines.append(f'score: {self.score_rounded:.6f}')
    return '\n'.join(lines)


def score_typed(
  gt_vid: Mapping,
  gt_part: Mapping,
  pred_vid: Mapping,
  pred_part: Mapping,
  *,
  human_thresholds: Sequence[float] = THRESHOLDS,
  part_thresholds: Sequence[float] = THRESHOLDS,
  vocabulary: tuple[set, set] | None = None,
  details: bool = False,
) -> ScoreReport:
  """Scores the typed form (submission.read_results / as_typed) for every threshold cell.

  vocabulary: (states, actions) known beyond those of the ground truth (--data_root).
  details: also fill report.details (ScoreDetails) from this pass; the thresholds must
  then hold the score's cell.
  Raises submission.SubmissionError (all problem lines) where the tool would refuse.
  """
  notes = score_reading.Notes()
  videos = list(gt_vid)
  if not videos:
    raise submission.SubmissionError(f'{score_reading.GT_VID}: no videos to score')
  human_thresholds, part_thresholds = tuple(human_thresholds), tuple(part_thresholds)
  flat = score_reading.Frames(gt_part, pred_part, videos, notes)
  match, match_iou, square = flat.match()
  read = np.flatnonzero(
    score_math.matched(match_iou, square, min(human_thresholds)) & (flat.part_counts > 0)
  )
  parts = score_reading.Parts(flat, match, read)
  best = parts.best_iou()

  # Per read GT part, its score at each part threshold; then the tool's sums.
  weight = np.divide(1.0, parts.num_states, out=np.zeros(len(best)), where=parts.num_states > 0)
  part_score = np.where(best >= np.asarray(part_thresholds)[:, None], weight, 0.0)  # (P, N)
  human_sum = score_math.ordered_sums(
    part_score,
    np.repeat(np.arange(len(read)), parts.counts),
    score_math.positions(parts.counts),
    len(read),
  )  # (P, R)
  matched = np.stack(
    [score_math.matched(match_iou[read], square[read], h) for h in human_thresholds]
  )
  contribution = matched[:, None, :] * human_sum[None]  # (H, P, R)
  frame_of = flat.human_frame[read]
  frame_sum = score_math.ordered_sums(
    contribution, frame_of, read - flat.gt_start[frame_of], len(flat.num_gt)
  )
  scored = np.flatnonzero(flat.scored)
  frame_score = frame_sum[..., scored] / flat.frame_parts[scored]
  first_frame = np.searchsorted(flat.frame_video, np.arange(len(videos)))
  video_of = flat.frame_video[scored]
  video_sum = score_math.ordered_sums(
    frame_score, video_of, scored - first_frame[video_of], len(videos)
  )
  counted = flat.counted_frames()
  psc = np.divide(video_sum, counted, out=np.ones_like(video_sum), where=counted > 0)

  correct = np.array([v in pred_vid and pred_vid[v] == gt_vid[v] for v in videos], bool)
  score_reading.warn_names(gt_vid, gt_part, pred_vid, pred_part, flat, parts, notes, vocabulary)
  report = ScoreReport(
    videos=videos,
    human_thresholds=human_thresholds,
    part_thresholds=part_thresholds,
    psc_cells=psc,
    correct_videos=correct,
    counted_frames=counted,
    warnings=notes.warnings,
  )
  if details:
    h, p = report.official_cell
    report.details = _details(
      flat,
      parts,
      read,
      score_math.matched(match_iou, square, human_thresholds[h]),
      match_iou,
      part_score[p],
      frame_score[h, p],
      [gt_vid[v] for v in videos],
      [pred_vid.get(v) for v in videos],
    )
  return report


def _details(
  flat: score_reading.Frames,
  parts: score_reading.Parts,
  read: np.ndarray,
  matched: np.ndarray,
  match_iou: np.ndarray,
  part_score: np.ndarray,
  frame_score: np.ndarray,
  gt_actions: list,
  pred_actions: list,
) -> ScoreDetails:
  """ScoreDetails of the score's cell from the pass's arrays: `matched` per GT human,
  `part_score` per read part and `frame_score` per scored frame at that cell."""
  scored = flat.scored
  scored_index = np.cumsum(scored) - 1  # flat frame -> scored frame
  humans = np.flatnonzero(scored[flat.human_frame])
  kept = np.flatnonzero(np.repeat(matched[read], parts.counts))  # parts of matched humans
  human_of_part = np.repeat(read, parts.counts)[kept]
  part_iou, pred_states = _best_proposals(parts, kept)
  human_number = np.full(len(flat.gt_humans), -1, np.int64)
  human_number[humans] = np.arange(len(humans))
  return ScoreDetails(
    frame_video=flat.frame_video[scored],
    frame_names=list(compress(flat.frame_names, scored.tolist())),
    frame_score=np.asarray(frame_score, np.float64),
    frame_parts=flat.frame_parts[scored],
    frame_pred_humans=flat.num_pred[scored],
    missing_frames=flat.missing,
    missing_videos=flat.missing_videos,
    human_frame=scored_index[flat.human_frame[humans]],
    human_iou=match_iou[humans],
    human_matched=matched[humans],
    human_parts=flat.part_counts[humans],
    part_human=human_number[human_of_part],
    part_names=[parts.names[i] for i in kept.tolist()],
    gt_states=[parts.gt_objs[i].verb for i in kept.tolist()],
    part_iou=part_iou,
    pred_states=pred_states,
    part_score=part_score[kept],
    gt_actions=gt_actions,
    pred_actions=pred_actions,
  )


def _best_proposals(parts: score_reading.Parts, kept: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """Per kept read part: the best IoU of any of its proposals, whatever the state
  (-inf: none), and that proposal's state ('' when none; the first of equals)."""
  boxes = [parts.boxes[i] for i in kept.tolist()]
  num_boxes = np.fromiter(map(len, boxes), np.int64, len(boxes))
  owner = np.repeat(np.arange(len(kept)), num_boxes)
  gt_boxes = score_reading.box_values([parts.gt_objs[i].box for i in kept.tolist()])
  iou = score_math.paired_iou(
    gt_boxes[owner], score_reading.box_values(list(chain.from_iterable(boxes)))
  )
  best = np.full(len(kept), -np.inf)
  starts = score_math.starts(num_boxes)
  has = np.flatnonzero(num_boxes > 0)
  if has.size:
    best[has] = np.maximum.reduceat(iou, starts[has])
  first_best = np.flatnonzero(iou == best[owner])
  owners, first = np.unique(owner[first_best], return_index=True)
  position = np.zeros(len(kept), np.int64)
  position[owners] = first_best[first] - starts[owners]
  states = [
    str(parts.state_lists[i][k]) if n else ''
    for i, k, n in zip(kept.tolist(), position.tolist(), num_boxes.tolist())
  ]
  return best, states


def challenge_score(
  gt_vid: Mapping, gt_part: Mapping, pred_vid: Mapping, pred_part: Mapping, **kwargs
) -> ScoreReport:
  """Scores a submission given as dicts (as json loads the four files); see score_typed."""
  submission.check_gt_actions(gt_vid, score_reading.GT_VID)
  return score_typed(
    gt_vid,
    submission.as_typed(gt_part, 'gt'),
    pred_vid,
    submission.as_typed(pred_part, 'pred'),
    **kwargs,
  )


def video_psc(
  gt_frames: Mapping,
  pred_frames: Mapping | None,
  human_iou=HUMAN_IOU_THRESHOLD,
  part_iou=PART_IOU_THRESHOLD,
) -> float:
  """One video's PSC (rules 4-5); pred_frames None: the video is missing."""
  report = challenge_score(
    {'v': ''},
    {'v': gt_frames},
    {'v': ''},
    {} if pred_frames is None else {'v': pred_frames},
    human_thresholds=(human_iou,),
    part_thresholds=(part_iou,),
  )
  return float(report.psc_cells[0, 0, 0])


def frame_part_score(
  gt_frame: Mapping,
  pred_frame: Mapping | None,
  human_iou=HUMAN_IOU_THRESHOLD,
  part_iou=PART_IOU_THRESHOLD,
) -> float | None:
  """One frame's score (rules 2-4); None when the frame is left out (no GT human, or
  present in the submission without GT parts); 0.0 when missing from the submission."""
  if not gt_frame.get('humans'):
    return None
  if pred_frame is None:
    return 0.0
  report = challenge_score(
    {'v': ''},
    {'v': {'f': gt_frame}},
    {'v': ''},
    {'v': {'f': pred_frame}},
    human_thresholds=(human_iou,),
    part_thresholds=(part_iou,),
  )
  return None if report.counted_frames[0] == 0 else float(report.psc_cells[0, 0, 0])
