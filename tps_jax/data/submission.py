"""Reading, validating and writing challenge submissions and ground truth.

Files (docs/dataset.md): `pred_vid_result.json` / `pred_part_result.json`
(a part holds parallel lists `box`, `verb` of proposals) and `gt_vid_result.json` /
`gt_part_result.json` (a part holds one `box` and one `verb`).

Two ways in:
- `load_pair` / `load_json`: the files as plain dicts (any JSON), for tools that edit
  or check them; `validate` lists every problem (the strict check: `write_submission`
  refuses any, `python -m tps_jax.evaluate --strict` too).
- `read_results`: the typed form the scorer reads, fast. msgspec decodes a well-formed
  file straight into the structs below (3x faster than a dict-building parser here:
  fewer objects, unread keys skipped). A file that does not fit them (a NaN or
  Infinity literal, which Python's json accepts and the challenge's tool therefore
  reads; a string where a number should be; a missing key) is parsed generically and
  converted by `to_typed`, which puts a `Malformed` marker where a value cannot be
  read, so that the scorer refuses it only if the challenge's tool would read it there.
  The ground truth must be well-formed throughout (any marker is refused at once).
  Coordinates become Python floats (exact for the integers of real files); a predicted
  state that is not a string becomes an `OtherState`, which equals no state.

Every problem is reported as one line `file: video/frame/human/part: problem`.
"""

from __future__ import annotations

import collections
import json
import math
import os
import secrets
import warnings
from collections.abc import Mapping
from typing import Any

import msgspec

PARTS = (
  'head',
  'torso',
  'left_arm',
  'right_arm',
  'left_hand',
  'right_hand',
  'left_leg',
  'right_leg',
  'left_foot',
  'right_foot',
)
MAX_HUMANS = 10
MAX_PROPOSALS = 5
PRED_FILES = ('pred_vid_result.json', 'pred_part_result.json')
GT_FILES = ('gt_vid_result.json', 'gt_part_result.json')

Box = tuple[float, float, float, float]


class SubmissionError(ValueError):
  """A file that cannot be read, or a submission the challenge's tool would not score.

  `problems` holds every problem line (the message shows the first ones).
  """

  def __init__(self, message: str, problems: list[str] | None = None):
    super().__init__(message)
    self.problems = problems or [message]


# ------------------------------------------------------------------ the typed form


class GTPart(msgspec.Struct, gc=False):
  box: Box
  verb: str


class GTHuman(msgspec.Struct, gc=False):
  box: Box
  parts: dict[str, GTPart]


class GTFrame(msgspec.Struct, gc=False):
  humans: list[GTHuman]


class PredPart(msgspec.Struct, gc=False):
  box: list[Box]
  verb: list[str]


class PredHuman(msgspec.Struct, gc=False):
  box: Box
  parts: dict[str, PredPart]


class PredFrame(msgspec.Struct, gc=False):
  humans: list[PredHuman]


class Malformed:
  """Stands where a file holds a value that cannot be read as the format says."""

  __slots__ = ('problem',)

  def __init__(self, problem: str):
    self.problem = problem

  def __repr__(self) -> str:
    return f'Malformed({self.problem!r})'


class OtherState:
  """A predicted state that is not a string: compared by identity, it matches nothing."""

  __slots__ = ('value',)

  def __init__(self, value: Any):
    self.value = value

  def __repr__(self) -> str:
    return repr(self.value)


class Typed(dict):
  """A part result in the typed form. `clean`: msgspec read it as the format says, so it
  holds no Malformed marker and no OtherState; `finite`: it came from JSON text that
  msgspec decoded, which has no NaN or infinite number. The scorer then skips looking."""

  def __init__(self, frames: Mapping, clean: bool, finite: bool = False):
    super().__init__(frames)
    self.clean = clean
    self.finite = finite


FRAME_TYPES = {'gt': GTFrame, 'pred': PredFrame}
_PART_DECODERS = {
  kind: msgspec.json.Decoder(dict[str, dict[str, frame]]) for kind, frame in FRAME_TYPES.items()
}
_VID_DECODER = msgspec.json.Decoder(dict[str, str])


# ------------------------------------------------------------------------- reading


def _file_names(kind: str) -> tuple[str, str]:
  if kind not in ('gt', 'pred'):
    raise ValueError(f"kind must be 'gt' or 'pred', got {kind!r}")
  return GT_FILES if kind == 'gt' else PRED_FILES


def _read_bytes(path: str) -> bytes:
  if not os.path.isfile(path):
    raise SubmissionError(f'{path}: no such file')
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise SubmissionError(f'{path}: unreadable ({e.strerror})') from None


def _too_deep(path: str) -> SubmissionError:
  return SubmissionError(f'{path}: not valid JSON (nested deeper than a JSON reader recurses)')


def _parse_any(data: bytes, path: str) -> Any:
  """Any JSON, as Python's json reads it (NaN and Infinity literals included)."""
  try:
    return msgspec.json.decode(data)
  except msgspec.DecodeError:
    pass
  except RecursionError:
    raise _too_deep(path) from None
  try:
    return json.loads(data)
  except json.JSONDecodeError as e:
    raise SubmissionError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  except RecursionError:
    raise _too_deep(path) from None
  except ValueError as e:  # bytes that are not UTF-8 text
    raise SubmissionError(f'{path}: not valid JSON ({e})') from None


class DuplicateKeyWarning(UserWarning):
  """A video named twice at the top level of a file: the last entry is read."""


_TOP_LEVEL_RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])


def duplicate_keys(data: bytes) -> list[str]:
  """The top-level keys `data` (a JSON object) holds more than once, sorted.

  Decoding keeps the last entry of a key (msgspec, Python's json and so the challenge's
  tool alike), so a duplicate is found by what is lost: without one, the commas of the
  text are exactly those inside the kept keys and values plus one between each two
  entries; a dropped entry brings at least its separator. Only then is the text parsed
  a second time to name the keys (the hook's last call is the top-level object).
  """
  try:
    kept = _TOP_LEVEL_RAW.decode(data)
    inside = sum(bytes(value).count(b',') + key.count(',') for key, value in kept.items())
    if data.count(b',') <= inside + max(len(kept) - 1, 0):
      return []
  except (msgspec.DecodeError, msgspec.ValidationError):
    pass  # NaN literals, or not an object: the slow way below
  except RecursionError:
    return []  # the reader refuses the file
  try:
    pairs = json.loads(data, object_pairs_hook=list)
  except (ValueError, RecursionError):
    return []  # not JSON: the reader says so
  if not isinstance(pairs, list) or not all(isinstance(p, tuple) for p in pairs):
    return []  # the top level is not an object
  counts = collections.Counter(key for key, _ in pairs)
  return sorted(key for key, count in counts.items() if count > 1)


def _warn_duplicates(data: bytes, path: str) -> None:
  duplicates = duplicate_keys(data)
  if duplicates:
    warnings.warn(
      f'{path}: {len(duplicates)} video key(s) appear more than once '
      f'(e.g. {", ".join(map(repr, duplicates[:3]))}); the last entry of each is read, '
      "as the challenge's tool reads it",
      DuplicateKeyWarning,
      stacklevel=3,
    )


def load_json(path: str) -> Any:
  """A JSON file as plain Python objects; SubmissionError naming the file otherwise."""
  return _parse_any(_read_bytes(path), path)


def _top_level(obj: Any, path: str) -> dict:
  if not isinstance(obj, dict):
    raise SubmissionError(f'{path}: top level must be an object keyed by video name')
  return obj


def _load_results_file(path: str) -> dict:
  data = _read_bytes(path)
  _warn_duplicates(data, path)
  return _top_level(_parse_any(data, path), path)


def load_pair(directory: str, kind: str) -> tuple[dict, dict]:
  """Loads (vid_result, part_result) of kind 'pred' or 'gt' from a directory, as dicts.
  A video key that appears twice in a file is warned about (DuplicateKeyWarning)."""
  return tuple(_load_results_file(os.path.join(directory, name)) for name in _file_names(kind))


def _decode_typed(decoder: msgspec.json.Decoder, data: bytes, path: str) -> Any | None:
  """`data` decoded into the decoder's typed form, or None where it does not fit."""
  try:
    return decoder.decode(data)
  except (msgspec.ValidationError, msgspec.DecodeError):
    return None
  except RecursionError:
    raise _too_deep(path) from None


def read_results(directory: str, kind: str) -> tuple[dict, dict]:
  """(vid_result, part_result) of a directory in the typed form the scorer reads.

  The ground truth must be well-formed throughout: SubmissionError lists what is not.
  A video key that appears twice in a file is warned about (DuplicateKeyWarning).
  """
  vid_name, part_name = (os.path.join(directory, n) for n in _file_names(kind))
  data = _read_bytes(vid_name)
  _warn_duplicates(data, vid_name)
  vid = _decode_typed(_VID_DECODER, data, vid_name)
  if vid is None:
    vid = _top_level(_parse_any(data, vid_name), vid_name)
  data = _read_bytes(part_name)
  _warn_duplicates(data, part_name)
  part = _decode_typed(_PART_DECODERS[kind], data, part_name)
  if part is not None:
    part = Typed(part, clean=True, finite=True)
  else:
    part = _top_level(_parse_any(data, part_name), part_name)
    part = _typed_or_refused(part, kind, os.path.basename(part_name))
  if kind == 'gt':
    check_gt_actions(vid, os.path.basename(vid_name))
  return vid, part


def as_typed(part_result: Mapping, kind: str, file_name: str = '') -> Typed:
  """A part result given as dicts (as json loads it) in the typed form the scorer reads."""
  try:
    return Typed(msgspec.convert(part_result, dict[str, dict[str, FRAME_TYPES[kind]]]), clean=True)
  except msgspec.ValidationError:
    return _typed_or_refused(part_result, kind, file_name or _file_names(kind)[1])


def _typed_or_refused(part_result: Mapping, kind: str, file_name: str) -> Typed:
  problems = [] if kind == 'gt' else None
  typed = to_typed(part_result, kind, problems)
  if problems:
    lines = [f'{file_name}: {line}' for line in problems]
    raise SubmissionError(f'{lines[0]} ({len(lines)} problem(s) in the ground truth)', lines)
  return Typed(typed, clean=False)


def check_gt_actions(vid_result: Mapping, file_name: str) -> None:
  """Refuses a ground truth whose actions are not class names."""
  lines = [
    f'{file_name}: {video}: the action must be a class name, got {action!r}'
    for video, action in vid_result.items()
    if not isinstance(action, str)
  ]
  if lines:
    raise SubmissionError(f'{lines[0]} ({len(lines)} problem(s) in the ground truth)', lines)


# -------------------------------------------------- any JSON -> the typed form


def to_typed(part_result: Mapping, kind: str, problems: list | None = None) -> dict:
  """Converts a part result of any shape to the typed form, `Malformed` where unreadable.

  With a `problems` list, every marker placed is also recorded there as
  'video/frame/human k/part: problem'.
  """
  frame_type = FRAME_TYPES[kind]

  def note(path, problem):
    if problems is not None:
      problems.append(f'{path}: {problem}')
    return Malformed(problem)

  def box(value, path):
    if not isinstance(value, (list, tuple)) or len(value) != 4:
      return note(path, f'box must be 4 numbers [x1, y1, x2, y2], got {_short(value)}')
    if not all(isinstance(v, (int, float)) for v in value):
      return note(path, f'box must hold numbers, got {_short(value)}')
    return tuple(map(_as_float, value))

  def part(value, path):
    if not isinstance(value, dict):
      return note(path, 'a part must be an object')
    boxes, verbs = value.get('box'), value.get('verb')
    if kind == 'gt':
      verb = (
        verbs
        if isinstance(verbs, str)
        else note(path, f'verb must be a state name, got {_short(verbs)}')
      )
      return GTPart(box=box(boxes, path), verb=verb)
    if not isinstance(boxes, list):
      boxes = note(path, f"'box' must be a list of boxes, got {_short(boxes)}")
    else:
      boxes = [box(b, f'{path}/proposal {i + 1}') for i, b in enumerate(boxes)]
    if not isinstance(verbs, list):
      verbs = note(path, f"'verb' must be a list of state names, got {_short(verbs)}")
    else:
      verbs = [v if isinstance(v, str) else OtherState(v) for v in verbs]
    return PredPart(box=boxes, verb=verbs)

  def human(value, path):
    if not isinstance(value, dict):
      return note(path, 'a human must be an object')
    parts = value.get('parts')
    if not isinstance(parts, dict):
      parts = note(path, "'parts' must map part names to parts")
    else:
      parts = {name: part(p, f'{path}/{name}') for name, p in parts.items()}
    human_type = GTHuman if kind == 'gt' else PredHuman
    return human_type(box=box(value.get('box'), path), parts=parts)

  def frame(value, path):
    humans = value.get('humans') if isinstance(value, dict) else None
    if not isinstance(humans, list):
      return note(path, "a frame must be an object with a 'humans' list")
    return frame_type(humans=[human(h, f'{path}/human {i + 1}') for i, h in enumerate(humans)])

  typed = {}
  for video, frames in part_result.items():
    if not isinstance(frames, dict):
      typed[video] = note(video, 'must map frame names to frames')
    else:
      typed[video] = {name: frame(f, f'{video}/{name}') for name, f in frames.items()}
  return typed


def _as_float(number: int | float) -> float:
  """float(number); an integer beyond float range becomes +-inf (refused where read)."""
  try:
    return float(number)
  except OverflowError:
    return math.inf if number > 0 else -math.inf


def _short(value: Any, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + '...'


# ------------------------------------------------------------- strict validation

MAX_COORDINATE = 2**24  # larger integers would not be scored exactly in float64


def _box_problem(box) -> str | None:
  if not isinstance(box, (list, tuple)) or len(box) != 4:
    return f'box must be 4 numbers [x1, y1, x2, y2], got {box!r}'
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
    return f'box must hold numbers, got {box!r}'
  if not all(math.isfinite(v) for v in box):
    return f'box is not finite: {box!r}'
  if not all(abs(v) <= MAX_COORDINATE for v in box):
    return f'box coordinate beyond +-{MAX_COORDINATE}: {box!r}'
  if box[0] > box[2] or box[1] > box[3]:
    return f'box is inverted (x1 > x2 or y1 > y2): {box!r}'
  return None


def validate(
  vid_result: Mapping,
  part_result: Mapping,
  *,
  kind: str = 'pred',
  file_name: str = '',
  actions=None,
  states=None,
) -> list[str]:
  """All problems of a submission (kind 'pred') or ground truth (kind 'gt'), one per line.

  Strict: anything outside the format or the limits, wherever it is, including what
  the challenge's tool never reads or scores as it is (inverted boxes). `actions` /
  `states`, when given, are the vocabularies the names must come from.
  """
  problems = []
  where = file_name or _file_names(kind)[1]
  vid_where = where.replace('part', 'vid')

  def report(path, problem):
    problems.append(f'{where}: {path}: {problem}')

  for video, action in vid_result.items():
    if not isinstance(action, str):
      problems.append(f'{vid_where}: {video}: action must be a class name')
    elif actions is not None and action not in actions:
      problems.append(f'{vid_where}: {video}: unknown action {action!r}')
  for video, frames in part_result.items():
    if not isinstance(frames, dict):
      report(video, 'must map frame names to frames')
      continue
    for frame_name, frame in frames.items():
      path = f'{video}/{frame_name}'
      humans = frame.get('humans') if isinstance(frame, dict) else None
      if not isinstance(humans, list):
        report(path, "missing 'humans' list")
        continue
      if kind == 'pred' and len(humans) > MAX_HUMANS:
        report(path, f'{len(humans)} humans, at most {MAX_HUMANS} allowed')
      for h, human in enumerate(humans):
        hpath = f'{path}/human {h + 1}'
        if not isinstance(human, dict):
          report(hpath, 'must be an object')
          continue
        if p := _box_problem(human.get('box')):
          report(hpath, p)
        parts = human.get('parts', {})
        if not isinstance(parts, dict):
          report(hpath, "'parts' must map part names to parts")
          continue
        for name, part in parts.items():
          ppath = f'{hpath}/{name}'
          if name not in PARTS:
            report(ppath, f'unknown part name (expected one of {", ".join(PARTS)})')
            continue
          if not isinstance(part, dict):
            report(ppath, 'must be an object')
            continue
          problems.extend(f'{where}: {ppath}: {p}' for p in _part_problems(part, kind, states))
  return problems


def _part_problems(part: Mapping, kind: str, states) -> list[str]:
  box, verb = part.get('box'), part.get('verb')
  if kind == 'gt':
    problems = [p] if (p := _box_problem(box)) else []
    if not isinstance(verb, str):
      problems.append(f'verb must be a state name, got {verb!r}')
    elif states is not None and verb not in states:
      problems.append(f'unknown state {verb!r}')
    return problems
  if not isinstance(box, list) or not isinstance(verb, list):
    return ["a predicted part holds lists 'box' and 'verb'"]
  problems = []
  if len(box) != len(verb):
    problems.append(f'{len(box)} boxes but {len(verb)} verbs')
  if len(box) > MAX_PROPOSALS:
    problems.append(f'{len(box)} proposals, at most {MAX_PROPOSALS} allowed')
  problems += [f'proposal {i + 1}: {p}' for i, b in enumerate(box) if (p := _box_problem(b))]
  problems += [
    f'proposal {i + 1}: verb must be a state name, got {v!r}'
    for i, v in enumerate(verb)
    if not isinstance(v, str)
  ]
  if states is not None:
    problems += [
      f'proposal {i + 1}: unknown state {v!r}'
      for i, v in enumerate(verb)
      if isinstance(v, str) and v not in states
    ]
  return problems


# ------------------------------------------------------------------------- writing


def _temporary_name(path: str) -> str:
  """A fresh hidden sibling of `path` (same folder, so that a rename replaces it)."""
  folder, name = os.path.split(path)
  return os.path.join(folder, f'.tmp-{os.getpid()}-{secrets.token_hex(4)}-{name}')


def write_json_files_atomic(files: Mapping[str, Any]) -> None:
  """Writes {path: JSON value} so that the files change together or not at all.

  Every file is written in full to a temporary sibling first (created with mode 0666
  less the umask, as `open` does: mkstemp's 0600 would hide the results from the
  group); only when all are written are they renamed into place, one after another
  (a rename does not need space, so a full disk or a read-only folder fails before
  any file is replaced and the earlier files stay as they were; should a rename still
  fail, the files renamed before it are put back). An OSError names the
  file that could not be written, not its temporary name.
  """
  written = {}
  try:
    for path, obj in files.items():
      path = os.path.abspath(path)
      try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _temporary_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        written[path] = tmp
        with os.fdopen(fd, 'w') as f:
          json.dump(obj, f)
          f.flush()
          os.fsync(f.fileno())
      except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    _replace_together(written)
  finally:
    for tmp in written.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def _replace_together(written: Mapping[str, str]) -> None:
  """Renames each {path: temporary} into place; if a rename fails, the files already
  replaced get their earlier content back (kept as hard links until all are in place)."""
  backups, replaced = {}, []
  try:
    for path in written:
      if os.path.exists(path):
        backups[path] = _temporary_name(path)
        os.link(path, backups[path])
    for path, tmp in written.items():
      os.replace(tmp, path)
      replaced.append(path)
  except OSError:
    for path in replaced:
      if path in backups:
        os.replace(backups.pop(path), path)
      else:
        os.remove(path)
    raise
  finally:
    for backup in backups.values():
      if os.path.exists(backup):
        os.remove(backup)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes one JSON file atomically (`write_json_files_atomic`)."""
  write_json_files_atomic({path: obj})


def write_submission(out_dir: str, vid_result: Mapping, part_result: Mapping) -> None:
  """Validates (strictly), then writes the two prediction files as one pair: both
  replaced or neither (`write_json_files_atomic`)."""
  problems = validate(vid_result, part_result, kind='pred')
  if problems:
    raise SubmissionError(
      f'refusing to write an invalid submission ({len(problems)} problem(s)); first: {problems[0]}',
      problems,
    )
  write_json_files_atomic(
    {
      os.path.join(out_dir, PRED_FILES[0]): dict(vid_result),
      os.path.join(out_dir, PRED_FILES[1]): dict(part_result),
    }
  )
