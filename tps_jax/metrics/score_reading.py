"""Reading and refusing a submission as the challenge's tool does.

The tool reads only what its scoring loop reaches and stops only where that loop fails;
here `Frames` and `Parts` read the same places into flat arrays (one Python pass), refuse
what the tool refuses with one line naming each place, and count with a few examples
what it scores silently. Which is which, in the order the tool meets it: docs/score.md
("Read, refused, warned").
"""

from __future__ import annotations

import collections
import collections.abc
from collections.abc import Mapping, Sequence
from itertools import chain, compress, repeat
from operator import attrgetter

import numpy as np

from tps_jax.data import submission
from tps_jax.data.submission import Malformed, PredFrame, PredHuman, PredPart
from tps_jax.metrics import score_math

MAX_EXAMPLES = 3  # examples named in a warning
MAX_LINES = 50  # refusal lines kept per kind of problem
GT_VID, GT_PART = submission.GT_FILES
PRED_VID, PRED_PART = submission.PRED_FILES


class Notes:
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


def _not_of_type(values: list, expected: type) -> list[int]:
  """Indices of the values that are not of the expected type (Malformed markers)."""
  if set(map(type, values)) <= {expected}:  # the common case, at C speed
    return []
  return [i for i, v in enumerate(values) if type(v) is not expected]


def box_values(boxes: list) -> np.ndarray:
  """(N, 4) float64 of boxes that are tuples of 4 floats (the typed form)."""
  return np.fromiter(chain.from_iterable(boxes), np.float64, 4 * len(boxes)).reshape(-1, 4)


def _refuse_malformed(values: list, expected: type, notes: Notes, line, replacement) -> None:
  """Refuses (line(i)) the Malformed markers among values, put in place of expected."""
  malformed = _not_of_type(values, expected)
  notes.refuse_at(malformed, line)
  for i in malformed:
    values[i] = replacement


def _check_boxes(
  boxes: np.ndarray, notes: Notes, file_name: str, place, what: str = 'box(es)'
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


class Frames:
  """Frames and humans as the tool reads them, in flat arrays (one Python pass)."""

  def __init__(self, gt_part: Mapping, pred_part: Mapping, videos: list[str], notes: Notes):
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
    self.gt_start, self.pred_start = (
      score_math.starts(self.num_gt),
      score_math.starts(self.num_pred),
    )
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
    self.gt_boxes = box_values(list(map(attrgetter('box'), self.gt_humans)))
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
    self.pred_boxes = box_values(pred_boxes)
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
    local = score_math.positions(sizes)
    row_length = self.num_pred[pair_frame]
    gt_index = self.gt_start[pair_frame] + local // row_length
    pred_index = self.pred_start[pair_frame] + local % row_length
    iou = score_math.paired_iou(
      self.gt_boxes[gt_index].astype(np.float32), self.pred_boxes[pred_index].astype(np.float32)
    )
    pair_start = score_math.starts(sizes)
    shapes = np.stack([self.num_gt[frames], self.num_pred[frames]], axis=1)
    for num_gt, num_pred in np.unique(shapes, axis=0).tolist():
      group = np.flatnonzero((shapes[:, 0] == num_gt) & (shapes[:, 1] == num_pred))
      block = iou[pair_start[group][:, None] + np.arange(num_gt * num_pred)]
      cols, values, is_square = score_math.assign(block.reshape(len(group), num_gt, num_pred))
      humans = self.gt_start[frames[group]][:, None] + np.arange(num_gt)
      match[humans] = np.where(cols >= 0, self.pred_start[frames[group]][:, None] + cols, -1)
      match_iou[humans] = values
      square[humans] = is_square
    return match, match_iou, square


_NO_PART = PredPart(box=[], verb=[])  # a part the prediction does not name: N_p = 0


class Parts:
  """The GT parts of the humans whose parts the tool reads, against the same-named part of
  the matched prediction: per part the number of states N_p and the best IoU among the
  proposals with the GT's state (the only ones that can score)."""

  def __init__(self, flat: Frames, match: np.ndarray, read: np.ndarray):
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
    proposal_index = score_math.positions(num_boxes)
    proposal_state = ids[np.repeat(score_math.starts(self.num_states), num_boxes) + proposal_index]
    same = proposal_state == gt_ids[proposal_part]
    where = lambda i: f'{place(proposal_part[i])}/proposal {proposal_index[i] + 1}'
    chosen = np.flatnonzero(same)
    if clean and finite:  # only the boxes that can score need numbers
      proposal_boxes = box_values(list(compress(chain.from_iterable(boxes), same.tolist())))
    else:  # the tool reads every box of the part (until a match)
      flat_boxes = list(chain.from_iterable(boxes))
      _refuse_malformed(
        flat_boxes,
        tuple,
        notes,
        lambda i: f'{PRED_PART}: {where(i)}: {flat_boxes[i].problem}',
        (0.0,) * 4,
      )
      every = box_values(flat_boxes)
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
    gt_boxes = box_values(list(map(attrgetter('box'), map(gt_objs.__getitem__, rows.tolist()))))
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
      iou = score_math.paired_iou(self.gt_boxes, self.proposal_boxes)
      best[self.proposal_part[self.run_start]] = np.maximum.reduceat(iou, self.run_start)
    return best


def _gt_states(gt_part: Mapping) -> set[str]:
  """Every state of the ground truth."""
  gt_humans = chain.from_iterable(
    frame.humans for frames in gt_part.values() for frame in frames.values()
  )
  gt_parts = map(dict.values, map(attrgetter('parts'), gt_humans))
  return set(map(attrgetter('verb'), chain.from_iterable(gt_parts)))


def warn_names(
  gt_vid, gt_part, pred_vid, pred_part, flat: Frames, parts: Parts, notes: Notes, vocabulary
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
