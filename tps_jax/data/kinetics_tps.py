"""Reading Kinetics-TPS from disk: the one reader every stage and tool uses.

Layout (docs/dataset.md; the synthetic set of tps_jax/datasets/synthetic.py has
the same shape):
```
ROOT/train_videos/<action>/<video>.mp4          ROOT/test_videos/<action>/<video>.mp4
ROOT/train_annotations/<action>/<video>/<video>/img_00001.json ...   (video folder twice)
ROOT/list/body_part.txt part_stat.txt object.txt video_train_flist.csv video_test_flist.csv
```
One frame's annotation: `{"humans": [{"number", "box": [x1, y1, x2, y2], "parts":
{"<part>": {"number", "box", "verb", "name"}}}], "objects": [...]}`, boxes in absolute
pixels. Only some frames are annotated (at least the scored ones 1, 6, 11, ...).

Every malformed thing is an `AnnotationError('path: field: problem')` (one line naming
the file and the field). Callers that want to keep going pass a `problems` list: the
malformed unit (the part, human, object, frame or video) is left out and its message
appended, so that the caller counts and prints what was skipped.

Assumptions where the public material is silent (the dataset is registration-only):
- `list/video_*_flist.csv` ("number of frames per video"): a header row is optional;
  columns are separated by commas, tabs or spaces; the video is the first field that
  is not an integer (a bare name or a path, extensions and folders stripped) and the
  count the first integer field, or the columns a header names (`frames`, `num_frames`,
  `total_frames`, ...). mmaction2-style lists (`path num_frames label`) read the same.
- `list/*.txt`: one name per line; a leading index column (`3 bend`) is dropped when
  every line has one.
- `objects` (optional) is a list of `{"box", "name"}` (or a dict of them keyed by id);
  other keys anywhere (ids, numbers, attributes) are accepted and ignored.
- An annotation folder named once (`<action>/<video>/img_*.json`) is read too.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tps_jax.data import submission

PARTS = submission.PARTS  # the ten parts, in the label order of every network


def mirrored_part(name: str) -> str:
  """The part a horizontal flip turns `name` into (left <-> right)."""
  for a, b in (('left_', 'right_'), ('right_', 'left_')):
    if name.startswith(a):
      return b + name[len(a) :]
  return name


# FLIP_PARTS[i]: index in PARTS of the mirror image of PARTS[i] (a permutation).
FLIP_PARTS = tuple(PARTS.index(mirrored_part(name)) for name in PARTS)
SPLITS = ('train', 'test')
FRAME_STRIDE = 5  # scored frames: img_00001, img_00006, ...
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm')
_FRAME_FILE = re.compile(r'^img_(\d{5,})\.json$')
_FLIST_NAME_COLUMNS = (
  'video',
  'video_name',
  'videoname',
  'name',
  'vid',
  'video_id',
  'filename',
  'file',
  'path',
  'frame_dir',
)
_FLIST_COUNT_COLUMNS = (
  'frames',
  'num_frames',
  'frame_num',
  'frame_count',
  'nframes',
  'total_frames',
  'num_frame',
  'count',
  'length',
)


class AnnotationError(ValueError):
  """A dataset file that is missing or malformed; the message is 'path: problem'."""


def frame_name(index: int, ext: str = '.json') -> str:
  """'img_00001.json' for index 1 (frames are numbered from 1)."""
  return f'img_{index:05d}{ext}'


def sampled_frames(num_frames: int) -> list[int]:
  """The frames the challenge scores: 1, 6, 11, ... up to num_frames."""
  return list(range(1, num_frames + 1, FRAME_STRIDE))


def format_problems(problems: Sequence[str], limit: int = 20) -> str:
  """Problems as printed at the end of a run that kept going: the first `limit`, a count."""
  lines = list(problems[:limit])
  if len(problems) > limit:
    lines.append(f'... and {len(problems) - limit} more')
  lines.append(f'{len(problems)} problem(s); the items named were skipped')
  return '\n'.join(lines)


class _Reporter:
  """Raises AnnotationError on the first problem, or records every problem."""

  def __init__(self, path: str, problems: list[str] | None):
    self.path, self.problems = path, problems

  def __call__(self, where: str, problem: str) -> None:
    message = f'{self.path}: {where}: {problem}' if where else f'{self.path}: {problem}'
    if self.problems is None:
      raise AnnotationError(message)
    self.problems.append(message)


# ----------------------------------------------------------------------------- lists


def read_list(path: str) -> list[str]:
  """Names of a list/*.txt file, one per line (blank lines ignored)."""
  lines = [
    (n, line.strip()) for n, line in enumerate(_read_text(path).splitlines(), 1) if line.strip()
  ]
  numbered = [re.match(r'^\d+[\s,:]+(\S.*)$', line) for _, line in lines]
  if lines and all(numbered):
    lines = [(n, m.group(1).strip()) for (n, _), m in zip(lines, numbered)]
  seen = set()
  for line_no, name in lines:
    if name in seen:
      raise AnnotationError(f'{path}: line {line_no}: duplicate name {name!r}')
    seen.add(name)
  return [name for _, name in lines]


def read_flist(csv_path: str) -> dict[str, int]:
  """video name -> number of frames, from list/video_{train,test}_flist.csv."""
  rows = []
  for line_no, line in enumerate(_read_text(csv_path).splitlines(), 1):
    if not line.strip():
      continue
    fields = next(csv.reader([line])) if ',' in line else line.split()
    rows.append((line_no, line.strip(), [f.strip() for f in fields]))
  name_col = count_col = None
  if rows and not any(_is_int(f) for f in rows[0][2]):
    header = [f.lower() for f in rows.pop(0)[2]]
    name_col = next((header.index(c) for c in _FLIST_NAME_COLUMNS if c in header), None)
    count_col = next((header.index(c) for c in _FLIST_COUNT_COLUMNS if c in header), None)
  counts: dict[str, int] = {}
  for line_no, line, fields in rows:
    where = f'{csv_path}: line {line_no}'
    count_at = (
      count_col
      if count_col is not None
      else next((i for i, f in enumerate(fields) if _is_int(f)), None)
    )
    name_at = (
      name_col
      if name_col is not None
      else next((i for i, f in enumerate(fields) if not _is_int(f)), None)
    )
    if count_at is None or count_at >= len(fields) or not _is_int(fields[count_at]):
      raise AnnotationError(f'{where}: no frame count in {line!r}')
    if name_at is None or name_at >= len(fields) or not fields[name_at]:
      raise AnnotationError(f'{where}: no video name in {line!r}')
    name, count = video_name_of(fields[name_at]), int(fields[count_at])
    if count <= 0:
      raise AnnotationError(f'{where}: frame count must be positive, got {count}')
    if counts.get(name, count) != count:
      raise AnnotationError(f'{where}: {name} listed twice with {counts[name]} and {count} frames')
    counts[name] = count
  return counts


def video_name_of(path_or_name: str) -> str:
  """'Y0-KQvJjKAw_000057_000067' from a name, a file name or a path."""
  base = os.path.basename(path_or_name.rstrip('/\\'))
  stem, ext = os.path.splitext(base)
  return stem if ext.lower() in VIDEO_EXTENSIONS + ('.json',) else base


@dataclasses.dataclass(frozen=True)
class Vocab:
  """The label vocabularies of a dataset root (never hard-coded)."""

  parts: tuple[str, ...]
  states: tuple[str, ...]
  actions: tuple[str, ...]
  objects: tuple[str, ...] = ()

  @classmethod
  def from_root(cls, root: str) -> Vocab:
    """states: list/part_stat.txt; actions: sorted train_videos/ class folders;
    objects: list/object.txt (optional); parts: PARTS (list/body_part.txt is checked)."""
    list_dir = os.path.join(root, 'list')
    body_parts = os.path.join(list_dir, 'body_part.txt')
    if os.path.exists(body_parts):
      names = read_list(body_parts)
      if sorted(names) != sorted(PARTS):
        raise AnnotationError(
          f'{body_parts}: expected the 10 parts {", ".join(PARTS)}; got {", ".join(names)}'
        )
    objects_path = os.path.join(list_dir, 'object.txt')
    objects = tuple(read_list(objects_path)) if os.path.exists(objects_path) else ()
    return cls(
      parts=PARTS,
      states=tuple(read_list(os.path.join(list_dir, 'part_stat.txt'))),
      actions=tuple(action_folders(root, 'train')),
      objects=objects,
    )

  @functools.cached_property
  def state_ids(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.states)}

  @functools.cached_property
  def action_ids(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.actions)}

  @functools.cached_property
  def object_ids(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.objects)}


def action_folders(root: str, split: str) -> list[str]:
  """Sorted class folder names under ROOT/<split>_videos."""
  videos_dir = os.path.join(root, f'{split}_videos')
  if not os.path.isdir(videos_dir):
    raise AnnotationError(f'{videos_dir}: no such folder')
  return sorted(d.name for d in os.scandir(videos_dir) if d.is_dir() and not d.name.startswith('.'))


# ------------------------------------------------------------------------ annotations

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Part:
  box: Box  # x1, y1, x2, y2 absolute pixels, as in the file
  verb: str  # part state
  number: int | None = None


@dataclasses.dataclass(frozen=True)
class Human:
  box: Box
  parts: Mapping[str, Part]  # part name -> Part, a subset of PARTS
  number: int | None = None


@dataclasses.dataclass(frozen=True)
class ObjectBox:
  box: Box
  name: str
  number: int | None = None


@dataclasses.dataclass(frozen=True)
class FrameAnnotation:
  humans: tuple[Human, ...]
  objects: tuple[ObjectBox, ...] = ()


def load_frame(
  path: str,
  *,
  vocab: Vocab | None = None,
  image_size: tuple[int, int] | None = None,
  problems: list[str] | None = None,
) -> FrameAnnotation | None:
  """Reads and checks one frame's annotation file.

  Args:
    path: an img_XXXXX.json file.
    vocab: when given, part states and object names must be in it.
    image_size: (width, height); when given, boxes must lie in [0, width] x [0, height].
    problems: None: raise AnnotationError on the first problem. A list: append each
      problem and leave out the malformed unit (part, human, object; the whole frame,
      returning None, when the file itself is unreadable).
  """
  try:
    text = _read_text(path)
  except AnnotationError as e:
    if problems is None:
      raise
    problems.append(str(e))
    return None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    truncated = e.pos >= len(text.rstrip())
    _Reporter(path, problems)(
      '',
      f'{"truncated JSON" if truncated else "not valid JSON"} '
      f'({e.msg} at line {e.lineno} column {e.colno})',
    )
    return None
  return parse_frame(data, path, vocab=vocab, image_size=image_size, problems=problems)


def parse_frame(
  data: Any,
  source: str = '<json>',
  *,
  vocab: Vocab | None = None,
  image_size: tuple[int, int] | None = None,
  problems: list[str] | None = None,
) -> FrameAnnotation | None:
  """A FrameAnnotation from a decoded JSON object (`source` names it in messages);
  the keyword arguments are load_frame's."""
  report = _Reporter(source, problems)
  if not isinstance(data, dict):
    report('', f"top level must be an object with a 'humans' list, got {type(data).__name__}")
    return None
  if 'humans' not in data:
    report('', "missing 'humans'")
    return None
  if not isinstance(data['humans'], list):
    report('humans', f'must be a list, got {type(data["humans"]).__name__}')
    return None
  humans = []
  for i, raw in enumerate(data['humans']):
    human = _parse_human(raw, f'humans[{i}]', report, vocab, image_size)
    if human is not None:
      humans.append(human)
  objects = []
  raw_objects = data.get('objects', [])
  if isinstance(raw_objects, dict):
    raw_objects = [
      dict(o, number=o.get('number', k)) if isinstance(o, dict) else o
      for k, o in raw_objects.items()
    ]
  if not isinstance(raw_objects, list):
    report('objects', f'must be a list, got {type(raw_objects).__name__}')
    raw_objects = []
  for i, raw in enumerate(raw_objects):
    obj = _parse_object(raw, f'objects[{i}]', report, vocab, image_size)
    if obj is not None:
      objects.append(obj)
  return FrameAnnotation(humans=tuple(humans), objects=tuple(objects))


def _parse_human(raw, where, report, vocab, image_size) -> Human | None:
  if not isinstance(raw, dict):
    report(where, f'must be an object, got {type(raw).__name__}')
    return None
  box = _parse_box(raw, where, report, image_size)
  number = _parse_number(raw, where, report)
  if box is None or number is False:
    return None
  raw_parts = raw.get('parts')
  if not isinstance(raw_parts, dict):
    report(
      f'{where}.parts',
      'missing'
      if raw_parts is None
      else f'must map part names to parts, got {type(raw_parts).__name__}',
    )
    return None
  parts = {}
  for name, raw_part in raw_parts.items():
    part = _parse_part(name, raw_part, f'{where}.parts.{name}', report, vocab, image_size)
    if part is not None:
      parts[name] = part
  return Human(box=box, parts=parts, number=number)


def _parse_part(name, raw, where, report, vocab, image_size) -> Part | None:
  if name not in PARTS:
    report(where, f'unknown part name {name!r} (expected one of {", ".join(PARTS)})')
    return None
  if not isinstance(raw, dict):
    report(where, f'must be an object, got {type(raw).__name__}')
    return None
  if raw.get('name', name) != name:
    report(f'{where}.name', f'{raw["name"]!r} differs from its key {name!r}')
    return None
  box = _parse_box(raw, where, report, image_size)
  number = _parse_number(raw, where, report)
  verb = raw.get('verb')
  if not isinstance(verb, str):
    report(f'{where}.verb', 'missing' if verb is None else f'must be a state name, got {verb!r}')
    return None
  if vocab is not None and verb not in vocab.state_ids:
    report(f'{where}.verb', f'unknown state {verb!r} (not in list/part_stat.txt)')
    return None
  if box is None or number is False:
    return None
  return Part(box=box, verb=verb, number=number)


def _parse_object(raw, where, report, vocab, image_size) -> ObjectBox | None:
  if not isinstance(raw, dict):
    report(where, f'must be an object, got {type(raw).__name__}')
    return None
  box = _parse_box(raw, where, report, image_size)
  number = _parse_number(raw, where, report)
  name = raw.get('name')
  if not isinstance(name, str):
    report(f'{where}.name', 'missing' if name is None else f'must be an object name, got {name!r}')
    return None
  if vocab is not None and vocab.objects and name not in vocab.object_ids:
    report(f'{where}.name', f'unknown object {name!r} (not in list/object.txt)')
    return None
  if box is None or number is False:
    return None
  return ObjectBox(box=box, name=name, number=number)


def _parse_number(raw: dict, where: str, report) -> int | None | bool:
  """The optional 'number' id: an int, None when absent, False when malformed."""
  number = raw.get('number')
  if number is None or (isinstance(number, int) and not isinstance(number, bool)):
    return number
  if isinstance(number, str) and number.isdigit():
    return int(number)
  report(f'{where}.number', f'must be an integer, got {number!r}')
  return False


def _parse_box(raw: dict, where: str, report, image_size) -> Box | None:
  where = f'{where}.box'
  if 'box' not in raw:
    report(where, 'missing')
    return None
  box = raw['box']
  if not isinstance(box, (list, tuple)) or len(box) != 4:
    report(where, f'must be 4 numbers [x1, y1, x2, y2], got {box!r}')
    return None
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
    report(where, f'must hold numbers, got {box!r}')
    return None
  if not all(math.isfinite(v) for v in box):
    report(where, f'is not finite: {box!r}')
    return None
  x1, y1, x2, y2 = box
  if not (x1 < x2 and y1 < y2):
    report(where, f'is inverted or empty (need x1 < x2 and y1 < y2): {box!r}')
    return None
  if image_size is not None:
    width, height = image_size
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
      report(where, f'{box!r} lies outside the {width}x{height} image')
      return None
  return (x1, y1, x2, y2)


def frame_to_json(frame: FrameAnnotation, *, objects: bool = True) -> dict:
  """The annotation-file / ground-truth schema of a frame (numbers from 1 when unset)."""
  humans = []
  for h, human in enumerate(frame.humans):
    parts = {
      name: {
        'number': part.number if part.number is not None else k + 1,
        'box': list(part.box),
        'verb': part.verb,
        'name': name,
      }
      for k, (name, part) in enumerate(human.parts.items())
    }
    humans.append(
      {
        'number': human.number if human.number is not None else h + 1,
        'box': list(human.box),
        'parts': parts,
      }
    )
  out = {'humans': humans}
  if objects and frame.objects:
    out['objects'] = [
      {'number': o.number if o.number is not None else k + 1, 'box': list(o.box), 'name': o.name}
      for k, o in enumerate(frame.objects)
    ]
  return out


# ----------------------------------------------------------------------------- videos


@dataclasses.dataclass(frozen=True)
class Video:
  name: str
  action: str  # the class folder the video sits in
  video_path: str
  annotation_dir: str | None  # folder of img_XXXXX.json; None when not annotated
  num_frames: int  # from list/video_<split>_flist.csv

  def annotation_path(self, index: int) -> str | None:
    return (
      None if self.annotation_dir is None else os.path.join(self.annotation_dir, frame_name(index))
    )

  def annotated_frames(self) -> list[int]:
    """Indices of the frames that have an annotation file, sorted."""
    if self.annotation_dir is None:
      return []
    return sorted(
      int(m.group(1)) for f in os.listdir(self.annotation_dir) if (m := _FRAME_FILE.match(f))
    )


def iter_videos(root: str, split: str, *, problems: list[str] | None = None) -> Iterator[Video]:
  """The videos of a split sorted by name, with their class, files and frame count.

  A video file missing from the flist, a flist entry without a video file, a video in
  two class folders, or (when ROOT/<split>_annotations exists) a video without an
  annotation folder is an AnnotationError, or a recorded problem and a skipped video
  when `problems` is a list.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  flist_path = os.path.join(root, 'list', f'video_{split}_flist.csv')
  counts = read_flist(flist_path)
  videos_dir = os.path.join(root, f'{split}_videos')
  annotations_root = os.path.join(root, f'{split}_annotations')
  has_annotations = os.path.isdir(annotations_root)
  files: dict[str, list[tuple[str, str]]] = {}
  for action in action_folders(root, split):
    for entry in os.scandir(os.path.join(videos_dir, action)):
      if (
        entry.is_file()
        and entry.name.lower().endswith(VIDEO_EXTENSIONS)
        and not entry.name.startswith('.')
      ):
        files.setdefault(video_name_of(entry.name), []).append((action, entry.path))
  for name in sorted(set(files) | set(counts)):
    if name not in files:
      _Reporter(flist_path, problems)(name, f'listed but no video file under {videos_dir}')
      continue
    (action, path), *others = files[name]
    report = _Reporter(path, problems)
    if others:
      report('', f'the same video is also in {", ".join(p for _, p in others)}')
      continue
    if name not in counts:
      report('', f'not listed in {flist_path}')
      continue
    annotation_dir = None
    if has_annotations:
      candidates = (
        os.path.join(annotations_root, action, name, name),
        os.path.join(annotations_root, action, name),
      )
      annotation_dir = next((d for d in candidates if os.path.isdir(d)), None)
      if annotation_dir is None:
        _Reporter(candidates[0], problems)('', 'no such annotation folder')
        continue
    yield Video(
      name=name,
      action=action,
      video_path=path,
      annotation_dir=annotation_dir,
      num_frames=counts[name],
    )


# ---------------------------------------------------------------- challenge ground truth


def ground_truth(
  root: str, split: str, *, vocab: Vocab | None = None, problems: list[str] | None = None
) -> tuple[dict, dict]:
  """(gt_vid_result, gt_part_result) of an annotated split, in the challenge's schema.

  The part result holds the scored frames (1, 6, 11, ...) that have annotation files;
  objects are left out (the score does not read them).
  """
  annotations_root = os.path.join(root, f'{split}_annotations')
  if not os.path.isdir(annotations_root):
    raise AnnotationError(
      f'{annotations_root}: no such folder; the {split} split has no ground truth'
    )
  vocab = vocab or Vocab.from_root(root)
  vid_result, part_result = {}, {}
  for video in iter_videos(root, split, problems=problems):
    frames = {}
    for index in sampled_frames(video.num_frames):
      path = video.annotation_path(index)
      if not os.path.exists(path):
        continue
      frame = load_frame(path, vocab=vocab, problems=problems)
      if frame is not None:
        frames[frame_name(index)] = frame_to_json(frame, objects=False)
    vid_result[video.name] = video.action
    part_result[video.name] = frames
  return vid_result, part_result


def write_ground_truth(root: str, split: str, out_dir: str, **kwargs) -> tuple[dict, dict]:
  """Writes gt_vid_result.json and gt_part_result.json of a split into out_dir."""
  vid_result, part_result = ground_truth(root, split, **kwargs)
  problems = submission.validate(vid_result, part_result, kind='gt')
  if problems:
    raise AnnotationError(
      f'{out_dir}: ground truth fails validation ({len(problems)} problem(s)); first: {problems[0]}'
    )
  vid_file, part_file = (os.path.join(out_dir, name) for name in submission.GT_FILES)
  submission.write_json_files_atomic({vid_file: vid_result, part_file: part_result})
  return vid_result, part_result


# ---------------------------------------------------------------------------- helpers


def _read_text(path: str) -> str:
  try:
    with open(path, encoding='utf-8') as f:
      return f.read()
  except FileNotFoundError:
    raise AnnotationError(f'{path}: no such file') from None
  except (OSError, UnicodeDecodeError) as e:
    raise AnnotationError(f'{path}: unreadable ({e})') from None


def _is_int(field: str) -> bool:
  return bool(re.fullmatch(r'[+-]?\d+', field.strip()))
