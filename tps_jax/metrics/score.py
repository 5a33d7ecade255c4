"""The Kinetics-TPS challenge score, equal to the challenge's own tool on what it accepts.

The rules are in docs/dataset.md ("The score"). The challenge's tool
(eval_detection.py of the Kinetics-TPS evaluation repository) computes them with
particular numerics, reproduced here bit for bit, so that every per-video PSC and every
area is the tool's number, not merely close to it:

- Human IoU (rule 1-2): boxes as np.float32, the inclusive IoU in float32 arithmetic,
  (A + B) - inter with A the GT box, -1 without overlap. Per frame, a (GT, predicted)
  matrix: float32 when square; otherwise padded to a square with float64 zeros, which
  makes it float64. scipy's linear_sum_assignment of 1 - matrix in that dtype (so ties
  break as the tool's do); an assigned pair is a match when its element is > h,
  compared in the matrix's dtype. Float semantics of NumPy 2 (NEP 50): a float32 array
  against a Python float compares in float32, i.e. with float32(h), which matters for
  h = 0.001, 0.3, 0.9, 0.99.
- Part IoU (rule 3): the same formula in float64 (the tool's Python floats). The
  matched human's parts are those of the matched predicted human; N_p = the number of
  states listed for the part; the part scores 1.0 / N_p when a proposal has IoU >= p
  and the GT state.
- Sums (rules 4-5): the tool adds one term at a time: part scores per human, humans per
  frame, frames per video. Here too (`_ordered_sums`), because np.sum pairs terms up and
  a last-bit difference in a PSC moves it across a threshold t = k / 10000.
- Frames (rule 4): GT frame keys in order; no GT human -> left out; missing from the
  submission -> counted with 0; present but no GT part -> left out; else scored.
  PSC = sum / counted frames (all GT frame keys less the left-out ones), 1.0 if none.
- Area (rules 6-7): accuracy(k / 10000) = count / videos (int / int), and the area adds
  (1.0 / 10000) * accuracy for k = 1..9999 in order (np.add.accumulate is sequential).

The tool runs one pass per cell of human thresholds x part thresholds (0.001, 0.3, 0.5,
0.9, 0.99; the score is the cell h = 0.5, p = 0.3); here one pass reads the submission
into flat arrays and every cell is a cheap threshold over them: one Hungarian
assignment per frame (it does not depend on h), one IoU per (GT part, proposal with the
GT's state; proposals with another state never score, so only those boxes are read
into numbers when msgspec has already checked the file's).

What is refused and what is warned about follows the tool. It stops (asserts, or fails)
only on: more than 10 humans in a frame it reads (a GT frame with a GT human, present in
the submission); more than 5 states for a part it reads (a GT part name, on the
prediction matched at the lowest h); more boxes than states there; a value it cannot
read where it reads it (a missing key, a box that is not 4 numbers). Those are refused,
one line naming the place, as are non-finite boxes where read and coordinates beyond
+-2^24 in a box that decides a score (for huge integers the tool's exact integer
arithmetic and float64 part ways). Everything else is scored as the tool scores it and
warned about with counts and examples: inverted boxes (same formula), parts with fewer
boxes than states (N_p counts the states), states, actions and part names outside the
vocabularies, videos and frames outside the GT (never read). A GT video missing from the
submission stops the tool with a KeyError; here it counts as the wrong class with every
frame missing (warned). What the tool never reads is not checked.

`score_typed(..., details=True)` also keeps what the score's cell is made of, from the
same pass (ScoreDetails: per scored frame, GT human and GT part of a matched human, and
every part's best proposal whatever its state): the numbers of `python -m
tps_jax.report`.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from itertools import chain, compress, repeat
from operator import attrgetter

import numpy as np
from scipy.optimize import linear_sum_assignment

from tps_jax.data import submission
from tps_jax.data.submission import Malformed, PredFrame, PredHuman, PredPart

THRESHOLDS = (0.001, 0.3, 0.5, 0.9, 0.99)  # the tool's human and part IoU thresholds
HUMAN_IOU_THRESHOLD = 0.5  # the score's cell: IoU > 0.5 ...
PART_IOU_THRESHOLD = 0.3  # ... and part IoU >= 0.3
PRINTED_T = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NUM_THRESHOLDS = 10000  # t = k / 10000, k = 1 .. 9999
MAX_EXAMPLES = 3  # examples named in a warning
MAX_LINES = 50  # refusal lines kept per kind of problem
GT_VID, GT_PART = submission.GT_FILES
PRED_VID, PRED_PART = submission.PRED_FILES


# ------------------------------------------------------------------------ IoU, matching


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
  return _paired_iou(a[:, None, :], b[None, :, :])


def _assign(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
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


def _matched(iou: np.ndarray, square: np.ndarray, threshold: float) -> np.ndarray:
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
  cols, iou, _ = _assign(_paired_iou(gt[:, None, :], pred[None, :, :])[None])
  return cols[0], iou[0]


# ------------------------------------------------------------------------------ sums


def _ordered_sums(
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


def _not_of_type(values: list, expected: type) -> list[int]:
  """Indices of the values that are not of the expected type (Malformed markers)."""
  if set(map(type, values)) <= {expected}:  # the common case, at C speed
    return []
  return [i for i, v in enumerate(values) if type(v) is not expected]


def _starts(counts: np.ndarray) -> np.ndarray:
  """Where each run of `counts` items begins in the flat list."""
  return (np.cumsum(counts) - counts).astype(np.int64)


def _positions(counts: np.ndarray) -> np.ndarray:
  """The index of each flat item within its run."""
  return np.arange(int(counts.sum())) - np.repeat(_starts(counts), counts)


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


# --------------------------------------------------------------------------- report


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
    return area(self.psc_cells, self.correct_videos)

  @functools.cached_property
  def accuracies(self) -> np.ndarray:
    """(H, P, 10) accuracy at the printed t = 0, 0.1, ..., 0.9."""
    return printed_accuracy(self.psc_cells, self.correct_videos)

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
    curve = threshold_accuracy(self.psc_cells[self.official_cell], self.correct_videos)
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


class _Notes:
  """Refusals (lines naming a place) and warnings (counted, with a few examples)."""

  def __init__(self):
    self.refusals: list[str] = []
    self.num_refusals = 0
    self._warnings: dict[str, list] = {}

  def refuse(self, lines: Sequence[str], count: int | None = None) -> None:
    self.refusals += list(lines[:MAX_LINES])
    self.num_refusals += len(lines) if count is None else count

  def refuse_at(self, indices: np.ndarray, line) -> None:
    """Refuses the items at `indices`, naming the first MAX_LINES with line(index)."""
    indices = np.asarray(indices).ravel()
    self.refuse([line(int(i)) for i in indices[:MAX_LINES]], len(indices))

  def warn(self, what: str, consequence: str, examples: Sequence, count: int) -> None:
    if count:
      entry = self._warnings.setdefault(f'{what}\0{consequence}', [0, []])
      entry[0] += count
      entry[1] += [str(e) for e in examples[: MAX_EXAMPLES - len(entry[1])]]

  def stop_if_refused(self) -> None:
    if self.num_refusals:
      more = self.num_refusals - len(self.refusals)
      lines = self.refusals + ([f'... and {more} more like these'] if more > 0 else [])
      raise submission.SubmissionError(
        f'{lines[0]} ({self.num_refusals} problem(s): the submission is not scored)', lines
      )

  @property
  def warnings(self) -> list[str]:
    out = []
    for key, (count, examples) in self._warnings.items():
      what, consequence = key.split('\0')
      out.append(f'{count} {what} (e.g. {", ".join(examples)}): {consequence}')
    return out


# ------------------------------------------------------------------------- reading


def _box_values(boxes: list) -> np.ndarray:
  """(N, 4) float64 of boxes that are tuples of 4 floats (the typed form)."""
  return np.fromiter(chain.from_iterable(boxes), np.float64, 4 * len(boxes)).reshape(-1, 4)


def _refuse_malformed(values: list, expected: type, notes: _Notes, line, replacement) -> None:
  """Refuses (line(i)) the Malformed markers among values, put in place of expected."""
  malformed = _not_of_type(values, expected)
  notes.refuse_at(malformed, line)
  for i in malformed:
    values[i] = replacement


def _check_boxes(
  boxes: np.ndarray, notes: _Notes, file_name: str, place, what: str = 'box(es)'
) -> None:
  """Refuses non-finite boxes and coordinates beyond +-2^24; warns about inverted ones."""
  bad = np.flatnonzero(~(np.abs(boxes) <= submission.MAX_COORDINATE).all(axis=1))  # NaN too
  notes.refuse_at(
    bad,
    lambda i: (
      f'{file_name}: {place(i)}: box is not finite or beyond '
      f'+-{submission.MAX_COORDINATE}: {boxes[i].tolist()}'
    ),
  )
  inverted = np.flatnonzero((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3]))
  notes.warn(
    f'inverted {what} (x1 > x2 or y1 > y2) in {file_name}',
    'scored with the same IoU formula, as the official tool does',
    [place(i) for i in inverted[:MAX_EXAMPLES]],
    len(inverted),
  )


class _Flat:
  """Frames and humans as the tool reads them, in flat arrays (one Python pass)."""

  def __init__(self, gt_part: Mapping, pred_part: Mapping, videos: list[str], notes: _Notes):
    self.notes = notes
    self.videos = videos
    self.clean = getattr(pred_part, 'clean', False)
    self.finite = getattr(pred_part, 'finite', False)
    self._read_frames(gt_part, pred_part)
    self._read_humans()
    notes.stop_if_refused()

  def _read_frames(self, gt_part, pred_part):
    """GT frame keys in order; a frame is present: in the submission, with a GT human."""
    notes, num_videos = self.notes, len(self.videos)
    self.frame_keys = np.zeros(num_videos, np.int64)
    self.no_human = np.zeros(num_videos, np.int64)
    self.missing = np.zeros(num_videos, np.int64)  # GT frames with a human, not submitted
    self.missing_videos = np.zeros(num_videos, bool)
    frame_video, self.frame_names, gt_humans, pred_humans, num_gt, num_pred = ([] for _ in range(6))
    missing_videos, missing_frames, unread_frames = [], [], []
    for v, video in enumerate(self.videos):
      gt_frames = gt_part.get(video)
      if gt_frames is None:
        notes.refuse([f'{GT_PART}: {video}: in {GT_VID} but not in {GT_PART}'])
        continue
      pred_frames = pred_part.get(video)
      if pred_frames is None:
        missing_videos.append(video)
        self.missing_videos[v] = True
        pred_frames = {}
      elif isinstance(pred_frames, Malformed):
        notes.refuse([f'{PRED_PART}: {video}: {pred_frames.problem}'])
        continue
      elif len(pred_frames) != len(gt_frames) or pred_frames.keys() != gt_frames.keys():
        unread_frames += [f'{video}/{name}' for name in pred_frames.keys() - gt_frames.keys()]
      self.frame_keys[v] = len(gt_frames)
      for name, gt_frame in gt_frames.items():
        humans = gt_frame.humans
        if not humans:
          self.no_human[v] += 1
          continue
        pred_frame = pred_frames.get(name)
        if pred_frame is None:
          missing_frames.append(f'{video}/{name}')
          self.missing[v] += 1
          continue
        if type(pred_frame) is not PredFrame:
          notes.refuse([f'{PRED_PART}: {video}/{name}: {pred_frame.problem}'])
          continue
        if len(pred_frame.humans) > submission.MAX_HUMANS:
          notes.refuse(
            [
              f'{PRED_PART}: {video}/{name}: {len(pred_frame.humans)} humans, at '
              f'most {submission.MAX_HUMANS} allowed'
            ]
          )
        frame_video.append(v)
        self.frame_names.append(name)
        gt_humans += humans
        pred_humans += pred_frame.humans
        num_gt.append(len(humans))
        num_pred.append(len(pred_frame.humans))
    self.frame_video = np.asarray(frame_video, np.int64)
    self.num_gt = np.asarray(num_gt, np.int64)
    self.num_pred = np.asarray(num_pred, np.int64)
    self.gt_humans, self.pred_humans = gt_humans, pred_humans
    notes.warn(
      f'video(s) of {GT_VID} missing from {PRED_PART}',
      'every frame counted with 0 (the official tool stops on them)',
      missing_videos,
      len(missing_videos),
    )
    notes.warn(
      f'frame(s) of {GT_PART} missing from {PRED_PART}',
      'counted with 0',
      missing_frames,
      len(missing_frames),
    )
    notes.warn(
      f'frame(s) of {PRED_PART} not in {GT_PART}',
      'never read',
      sorted(unread_frames),
      len(unread_frames),
    )

  def place(self, frame: int) -> str:
    return f'{self.videos[self.frame_video[frame]]}/{self.frame_names[frame]}'

  def human_place(self, index: int, pred: bool) -> str:
    """'video/frame/human k' of a predicted (pred=True) or GT human's flat index."""
    starts = self.pred_start if pred else self.gt_start
    frame = int(np.searchsorted(starts, index, side='right') - 1)
    return f'{self.place(frame)}/human {index - starts[frame] + 1}'

  def _read_humans(self):
    notes = self.notes
    self.gt_start, self.pred_start = _starts(self.num_gt), _starts(self.num_pred)
    self.human_frame = np.repeat(np.arange(len(self.num_gt)), self.num_gt)
    if not self.clean:
      _refuse_malformed(
        self.pred_humans,
        PredHuman,
        notes,
        lambda i: f'{PRED_PART}: {self.human_place(i, True)}: {self.pred_humans[i].problem}',
        PredHuman(box=(0.0,) * 4, parts={}),
      )
    self.gt_parts = list(map(attrgetter('parts'), self.gt_humans))
    self.part_counts = np.fromiter(map(len, self.gt_parts), np.int64, len(self.gt_parts))
    self.frame_parts = (
      np.add.reduceat(self.part_counts, self.gt_start)
      if len(self.num_gt)
      else np.zeros(0, np.int64)
    )
    self.scored = self.frame_parts > 0
    self.gt_boxes = _box_values(list(map(attrgetter('box'), self.gt_humans)))
    _check_boxes(
      self.gt_boxes, notes, GT_PART, lambda i: self.human_place(i, False), 'human box(es)'
    )
    pred_boxes = list(map(attrgetter('box'), self.pred_humans))
    if not self.clean:
      _refuse_malformed(
        pred_boxes,
        tuple,
        notes,
        lambda i: f'{PRED_PART}: {self.human_place(i, True)}: {pred_boxes[i].problem}',
        (0.0,) * 4,
      )
    self.pred_boxes = _box_values(pred_boxes)
    _check_boxes(
      self.pred_boxes, notes, PRED_PART, lambda i: self.human_place(i, True), 'human box(es)'
    )

  def counted_frames(self) -> np.ndarray:
    """Per video: GT frame keys less those left out (no GT human; present, no GT part)."""
    unscored = np.bincount(self.frame_video[~self.scored], minlength=len(self.videos))
    return self.frame_keys - self.no_human - unscored

  def match(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per GT human of a scored frame: (predicted flat index or -1, IoU, float32 matrix)."""
    num_humans = len(self.gt_humans)
    match = np.full(num_humans, -1, np.int64)
    match_iou = np.full(num_humans, -np.inf)
    square = np.zeros(num_humans, bool)
    frames = np.flatnonzero(self.scored & (self.num_pred > 0))
    sizes = self.num_gt[frames] * self.num_pred[frames]
    pair_frame = np.repeat(frames, sizes)
    local = _positions(sizes)
    row_length = self.num_pred[pair_frame]
    gt_index = self.gt_start[pair_frame] + local // row_length
    pred_index = self.pred_start[pair_frame] + local % row_length
    iou = _paired_iou(
      self.gt_boxes[gt_index].astype(np.float32), self.pred_boxes[pred_index].astype(np.float32)
    )
    pair_start = _starts(sizes)
    shapes = np.stack([self.num_gt[frames], self.num_pred[frames]], axis=1)
    for num_gt, num_pred in np.unique(shapes, axis=0).tolist():
      group = np.flatnonzero((shapes[:, 0] == num_gt) & (shapes[:, 1] == num_pred))
      block = iou[pair_start[group][:, None] + np.arange(num_gt * num_pred)]
      cols, values, is_square = _assign(block.reshape(len(group), num_gt, num_pred))
      humans = self.gt_start[frames[group]][:, None] + np.arange(num_gt)
      match[humans] = np.where(cols >= 0, self.pred_start[frames[group]][:, None] + cols, -1)
      match_iou[humans] = values
      square[humans] = is_square
    return match, match_iou, square


_NO_PART = PredPart(box=[], verb=[])  # a part the prediction does not name: N_p = 0


class _Parts:
  """The GT parts of the humans whose parts the tool reads, against the same-named part of
  the matched prediction: per part the number of states N_p and the best IoU among the
  proposals with the GT's state (the only ones that can score)."""

  def __init__(self, flat: _Flat, match: np.ndarray, read: np.ndarray):
    notes, clean, finite = flat.notes, flat.clean, flat.finite
    self.counts = flat.part_counts[read]
    pred_of = match[read].tolist()
    pred_parts = [flat.pred_humans[j].parts for j in pred_of]
    if not clean:
      _refuse_malformed(
        pred_parts,
        dict,
        notes,
        lambda k: f'{PRED_PART}: {flat.human_place(pred_of[k], True)}: {pred_parts[k].problem}',
        {},
      )
    gt_parts = [flat.gt_parts[i] for i in read.tolist()]
    names = list(chain.from_iterable(gt_parts))
    part_human = np.repeat(np.arange(len(read)), self.counts)

    def place(row, gt=False):
      human = read[part_human[row]] if gt else pred_of[part_human[row]]
      return f'{flat.human_place(human, not gt)}/{names[row]}'

    owners = chain.from_iterable(map(repeat, pred_parts, self.counts.tolist()))
    parts = list(map(dict.get, owners, names, repeat(_NO_PART)))
    self.pred_parts = pred_parts
    if not clean:
      _refuse_malformed(
        parts, PredPart, notes, lambda r: f'{PRED_PART}: {place(r)}: {parts[r].problem}', _NO_PART
      )
    boxes, states = list(map(attrgetter('box'), parts)), list(map(attrgetter('verb'), parts))
    if not clean:
      for values in (boxes, states):
        _refuse_malformed(
          values, list, notes, lambda r: f'{PRED_PART}: {place(r)}: {values[r].problem}', []
        )
    num_boxes = np.fromiter(map(len, boxes), np.int64, len(boxes))
    self.num_states = np.fromiter(map(len, states), np.int64, len(states))
    notes.refuse_at(
      np.flatnonzero(self.num_states > submission.MAX_PROPOSALS),
      lambda r: (
        f'{PRED_PART}: {place(r)}: {self.num_states[r]} proposals, at '
        f'most {submission.MAX_PROPOSALS} allowed'
      ),
    )
    notes.refuse_at(
      np.flatnonzero(num_boxes > self.num_states),
      lambda r: (
        f'{PRED_PART}: {place(r)}: {num_boxes[r]} boxes but '
        f'{self.num_states[r]} states (the official tool fails on the extra boxes)'
      ),
    )
    notes.stop_if_refused()
    fewer = np.flatnonzero(num_boxes < self.num_states)
    notes.warn(
      'predicted part(s) with fewer boxes than states',
      'N_p counts the states, as the official tool does',
      [place(r) for r in fewer[:MAX_EXAMPLES]],
      len(fewer),
    )

    # Proposal j < boxes of part r pairs box j with state j. States are compared by id:
    # equal strings get equal ids; a state no GT part read here has (or not a string) -1.
    gt_objs = list(chain.from_iterable(map(dict.values, gt_parts)))
    gt_states = list(map(attrgetter('verb'), gt_objs))
    state_ids = {state: k for k, state in enumerate(set(gt_states))}
    gt_ids = np.fromiter(map(state_ids.__getitem__, gt_states), np.int64, len(gt_states))
    self.states = list(chain.from_iterable(states))
    ids = np.fromiter(map(state_ids.get, self.states, repeat(-1)), np.int64, len(self.states))
    self.other_states = list(compress(self.states, (ids < 0).tolist())) if (ids < 0).any() else []
    proposal_part = np.repeat(np.arange(len(boxes)), num_boxes)
    proposal_index = _positions(num_boxes)
    proposal_state = ids[np.repeat(_starts(self.num_states), num_boxes) + proposal_index]
    same = proposal_state == gt_ids[proposal_part]
    where = lambda i: f'{place(proposal_part[i])}/proposal {proposal_index[i] + 1}'
    chosen = np.flatnonzero(same)
    if clean and finite:  # only the boxes that can score need numbers
      proposal_boxes = _box_values(list(compress(chain.from_iterable(boxes), same.tolist())))
    else:  # the tool reads every box of the part (until a match)
      flat_boxes = list(chain.from_iterable(boxes))
      _refuse_malformed(
        flat_boxes,
        tuple,
        notes,
        lambda i: f'{PRED_PART}: {where(i)}: {flat_boxes[i].problem}',
        (0.0,) * 4,
      )
      every = _box_values(flat_boxes)
      nonfinite = np.flatnonzero(~np.isfinite(every).all(axis=1))
      notes.refuse_at(
        nonfinite, lambda i: f'{PRED_PART}: {where(i)}: box is not finite: {flat_boxes[i]}'
      )
      proposal_boxes = every[chosen]
    _check_boxes(
      proposal_boxes,
      notes,
      PRED_PART,
      lambda k: where(chosen[k]),
      "proposal box(es) with the GT's state",
    )
    self.proposal_part = proposal_part[chosen]
    part = self.proposal_part  # sorted: a run of proposals per part
    self.run_start = np.flatnonzero(
      np.concatenate([[True], part[1:] != part[:-1]]) if part.size else np.zeros(0, bool)
    )
    rows = part[self.run_start]  # the parts with a proposal that can score
    gt_boxes = _box_values(list(map(attrgetter('box'), map(gt_objs.__getitem__, rows.tolist()))))
    _check_boxes(gt_boxes, notes, GT_PART, lambda k: place(rows[k], gt=True), 'part box(es)')
    notes.stop_if_refused()
    self.proposal_boxes = proposal_boxes
    self.gt_boxes = np.repeat(gt_boxes, np.diff(np.append(self.run_start, part.size)), axis=0)
    # Kept (references, no copies) for ScoreDetails: every proposal, whatever its state.
    self.names, self.gt_objs, self.boxes, self.state_lists = names, gt_objs, boxes, states

  def best_iou(self) -> np.ndarray:
    """Per read GT part: the highest IoU of a proposal with its state, -inf if none."""
    best = np.full(len(self.num_states), -np.inf)
    if self.run_start.size:
      iou = _paired_iou(self.gt_boxes, self.proposal_boxes)
      best[self.proposal_part[self.run_start]] = np.maximum.reduceat(iou, self.run_start)
    return best


# ------------------------------------------------------------------------- scoring


def _gt_states(gt_part: Mapping) -> set[str]:
  """Every state of the ground truth."""
  gt_humans = chain.from_iterable(
    frame.humans for frames in gt_part.values() for frame in frames.values()
  )
  gt_parts = map(dict.values, map(attrgetter('parts'), gt_humans))
  return set(map(attrgetter('verb'), chain.from_iterable(gt_parts)))


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
  notes = _Notes()
  videos = list(gt_vid)
  if not videos:
    raise submission.SubmissionError(f'{GT_VID}: no videos to score')
  human_thresholds, part_thresholds = tuple(human_thresholds), tuple(part_thresholds)
  flat = _Flat(gt_part, pred_part, videos, notes)
  match, match_iou, square = flat.match()
  read = np.flatnonzero(_matched(match_iou, square, min(human_thresholds)) & (flat.part_counts > 0))
  parts = _Parts(flat, match, read)
  best = parts.best_iou()

  # Per read GT part, its score at each part threshold; then the tool's sums.
  weight = np.divide(1.0, parts.num_states, out=np.zeros(len(best)), where=parts.num_states > 0)
  part_score = np.where(best >= np.asarray(part_thresholds)[:, None], weight, 0.0)  # (P, N)
  human_sum = _ordered_sums(
    part_score, np.repeat(np.arange(len(read)), parts.counts), _positions(parts.counts), len(read)
  )  # (P, R)
  matched = np.stack([_matched(match_iou[read], square[read], h) for h in human_thresholds])
  contribution = matched[:, None, :] * human_sum[None]  # (H, P, R)
  frame_of = flat.human_frame[read]
  frame_sum = _ordered_sums(
    contribution, frame_of, read - flat.gt_start[frame_of], len(flat.num_gt)
  )
  scored = np.flatnonzero(flat.scored)
  frame_score = frame_sum[..., scored] / flat.frame_parts[scored]
  first_frame = np.searchsorted(flat.frame_video, np.arange(len(videos)))
  video_of = flat.frame_video[scored]
  video_sum = _ordered_sums(frame_score, video_of, scored - first_frame[video_of], len(videos))
  counted = flat.counted_frames()
  psc = np.divide(video_sum, counted, out=np.ones_like(video_sum), where=counted > 0)

  correct = np.array([v in pred_vid and pred_vid[v] == gt_vid[v] for v in videos], bool)
  _warn_names(gt_vid, gt_part, pred_vid, pred_part, flat, parts, notes, vocabulary)
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
      _matched(match_iou, square, human_thresholds[h]),
      match_iou,
      part_score[p],
      frame_score[h, p],
      [gt_vid[v] for v in videos],
      [pred_vid.get(v) for v in videos],
    )
  return report


def _details(
  flat: _Flat,
  parts: _Parts,
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


def _best_proposals(parts: _Parts, kept: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """Per kept read part: the best IoU of any of its proposals, whatever the state
  (-inf: none), and that proposal's state ('' when none; the first of equals)."""
  boxes = [parts.boxes[i] for i in kept.tolist()]
  num_boxes = np.fromiter(map(len, boxes), np.int64, len(boxes))
  owner = np.repeat(np.arange(len(kept)), num_boxes)
  gt_boxes = _box_values([parts.gt_objs[i].box for i in kept.tolist()])
  iou = _paired_iou(gt_boxes[owner], _box_values(list(chain.from_iterable(boxes))))
  best = np.full(len(kept), -np.inf)
  starts = _starts(num_boxes)
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


def _warn_names(
  gt_vid, gt_part, pred_vid, pred_part, flat: _Flat, parts: _Parts, notes: _Notes, vocabulary
) -> None:
  """Videos outside the GT; actions, states and part names outside the vocabularies."""
  extra_states, extra_actions = vocabulary or (set(), set())
  actions = set(gt_vid.values()) | set(extra_actions)
  known = " (the GT's and --data_root's)" if vocabulary else ' (those of the GT)'
  gt_names = set(chain.from_iterable(flat.gt_parts))
  odd_names = sorted(gt_names - set(submission.PARTS))
  notes.warn(
    f'part name(s) in {GT_PART} outside the 10 parts (in the frames read)',
    'scored like the others',
    odd_names,
    len(odd_names),
  )
  missing = [v for v in gt_vid if v not in pred_vid]
  notes.warn(
    f'video(s) of {GT_VID} missing from {PRED_VID}',
    'counted as the wrong class (the official tool stops on them)',
    missing,
    len(missing),
  )
  unread = sorted(map(str, (pred_vid.keys() | pred_part.keys()) - gt_vid.keys()))
  notes.warn(f'video(s) of the submission not in {GT_VID}', 'never read', unread, len(unread))
  read_actions = collections.Counter(
    pred_vid[v]
    for v in gt_vid
    if v in pred_vid and isinstance(pred_vid[v], collections.abc.Hashable)
  )
  unknown = {a: n for a, n in read_actions.items() if not (isinstance(a, str) and a in actions)}
  odd = [
    v for v in gt_vid if v in pred_vid and not isinstance(pred_vid[v], collections.abc.Hashable)
  ]
  notes.warn(
    f'predicted action(s) outside the vocabulary{known}',
    'counted as the wrong class',
    [repr(a) for a in unknown] + [repr(pred_vid[v]) for v in odd],
    sum(unknown.values()) + len(odd),
  )
  counts = collections.Counter(parts.other_states)  # the rare case: look closer
  if counts:
    states = _gt_states(gt_part) | set(extra_states)
    counts = collections.Counter(
      {s: n for s, n in counts.items() if not (isinstance(s, str) and s in states)}
    )
  notes.warn(
    f'predicted state(s) outside the vocabulary{known}',
    'they match no GT state',
    [repr(s) for s, _ in counts.most_common()],
    sum(counts.values()),
  )
  names = sorted(map(repr, set(chain.from_iterable(parts.pred_parts)) - set(submission.PARTS)))
  notes.warn(
    'part name(s) outside the 10 parts in the predicted humans read',
    'read only where the GT has the same name',
    names,
    len(names),
  )


def challenge_score(
  gt_vid: Mapping, gt_part: Mapping, pred_vid: Mapping, pred_part: Mapping, **kwargs
) -> ScoreReport:
  """Scores a submission given as dicts (as json loads the four files); see score_typed."""
  submission.check_gt_actions(gt_vid, GT_VID)
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
