"""TFDS datasets (ArrayRecord) for the four networks' training, built from a dataset root.

One parametrised builder (`TpsBuilder`) writes each of the DATASETS; `builder_class`
gives the TFDS class of a dataset name. TensorFlow is not needed: features avoid TF
encoders (images are JPEG bytes in `Tensor(shape=(), dtype=object)`, decoded by the
grain pipelines of tps_jax/input/pipelines.py).

Datasets (every example also has `video` (text) and, but for clips, `frame` (int32)):
- `tps_humans`, one per annotated frame: `image` (JPEG bytes); `boxes` (N, 4) f32 human
  boxes; `labels` (N,) int32 (0: person); `ignore` (N,) bool; `action` int32.
- `tps_parts`, one per annotated human: `image` (JPEG of the context crop); `crop_box`
  (4,) f32; `boxes` (N, 4) f32 part boxes in crop pixels; `labels` (N,) int32 (index in
  PARTS); `ignore` (N,) bool (pseudo-label ignore regions); `human` int32; `action` int32.
- `tps_part_states`, one per annotated human with parts: `image`, `crop_box`, `human`,
  `action` as above; `part_boxes` (10, 4) f32 (row i = PARTS[i], crop pixels);
  `part_valid` (10,) bool; `part_state` (10,) int32 (-1: absent).
- `tps_action_clips`, one per video: `frames` (T,) JPEG bytes of every frame (short
  side at most `clip_short_side`); `label` int32; `num_frames` int32.

Boxes are in the annotation's inclusive-pixel convention. `crop_box` is the crop's
region in frame pixels, `(left, top, right, bottom)` edges: crop pixel (x, y) is frame
pixel (x + left, y + top). A crop is the human box grown by `context` x its size on each
side, clipped to the frame. Actions index `metadata['actions']`, states
`metadata['states']`.

Splits `train` and `val`: the root's train videos, split by video (the official test
labels are not public) by `split_videos`, deterministic from the seed and the same for
every dataset built from the root; `metadata['settings']['val_videos']` lists them (the
settings a rebuild must match: split, crop margin, clip size, pseudo-labels).
`tps_part_states` also holds `part_states-<split>.npy`, every example's (10,) states in
the data source's order, for state balancing without reading the images.

Pseudo-labels (`load_pseudo_labels`): a JSON file
```
{"<video>": {"img_00006.json": {"<human number>": {
    "<part>": [{"box": [x1, y1, x2, y2], "score": 0.7}, ...], ...}}}}
```
(boxes in frame pixels; a part may hold one {box, score} instead of a list; the human
number is the annotation's `number`, or its 1-based position when it has none). For
each annotated human, `pseudo_part_boxes` adds the parts its annotation lacks: score >
`positive` -> a positive box, `low` <= score <= `positive` -> an `ignore` box (losses skip
it), lower -> nothing. Only `tps_parts` uses them (states of pseudo boxes are unknown),
and only in the train split (val keeps its ground truth).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from tps_jax.data import augment, tfds_dirs
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import video as video_lib
from tps_jax.datasets import processes

# The datasets built from a Kinetics-TPS root, stored as TFDS_NAMES (tps_<dataset>).
DATASETS = ('humans', 'parts', 'part_states', 'action_clips')
TFDS_NAMES = {dataset: f'tps_{dataset}' for dataset in DATASETS}
VERSION = '1.0.0'
SPLITS = ('train', 'val')
STATE_TABLE = 'part_states-{split}.npy'


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  """A video to build from: its class, where its frames are, its annotated frames (read
  when its examples are made, so that memory does not grow with the dataset)."""

  name: str
  action: str
  label: int
  video_path: str
  frames_dir: str | None = None  # folder of img_XXXXX.jpg, used when set
  num_frames: int | None = None  # the flist's count (frame folders need it)
  annotation_dir: str | None = None
  annotated: tuple[int, ...] = ()  # indices of the annotated frames

  def annotation_path(self, index: int) -> str:
    return os.path.join(self.annotation_dir, tps.frame_name(index))


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  context: float = 0.1  # crop margin, fraction of the human box size
  clip_short_side: int = 256  # action clips: frames downscaled to this
  jpeg_quality: int = 90
  progress: bool = True


# ------------------------------------------------------------------------------ split


def split_videos(videos: Iterable[tuple[str, str]], val_fraction: float, seed: int) -> list[str]:
  """The sorted names of the val videos among (name, action) pairs.

  round(val_fraction * n) videos (at least one when val_fraction > 0 and n >= 2), spread
  over the classes: each class's videos are shuffled and the classes are taken in turn.
  Depends only on the pairs (in any order), the fraction and the seed.
  """
  videos = sorted(set(videos))
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
  num_val = round(val_fraction * len(videos))
  if val_fraction > 0 and len(videos) >= 2:
    num_val = max(num_val, 1)
  rng = np.random.default_rng([seed, 7919])
  by_class: dict[str, list[str]] = {}
  for name, action in videos:
    by_class.setdefault(action, []).append(name)
  order = []  # (rank in its shuffled class, random tie-break, name)
  for names in by_class.values():
    for rank, i in enumerate(rng.permutation(len(names))):
      order.append((rank, rng.random(), names[i]))
  return sorted(name for _, _, name in sorted(order)[:num_val])


# ------------------------------------------------------------------------------- scan


def _record(problems: list[str] | None, error: Exception) -> None:
  """Raises `error` (strict) or appends its one-line message (keep going)."""
  if problems is None:
    raise error
  problems.append(str(error))


def find_frames_dir(
  frames_root: str | None, action: str, name: str, split: str = 'train'
) -> str | None:
  """The frame folder of a video under FRAMES_ROOT, when it exists.

  Accepts `python -m data_prep.extract_frames`'s layout FRAMES_ROOT/<split>/<action>/
  <video> as well as FRAMES_ROOT/<action>/<video> and FRAMES_ROOT/<video>.
  """
  if not frames_root:
    return None
  for folder in (
    os.path.join(frames_root, split, action, name),
    os.path.join(frames_root, action, name),
    os.path.join(frames_root, name),
  ):
    if os.path.isdir(folder):
      return folder
  return None


def check_frames_root(frames_root: str | None) -> None:
  """Refuses frames extracted at another size: the annotations' boxes are in the
  videos' pixels (extract_frames records its settings in extract_frames.json)."""
  if not frames_root:
    return
  if not os.path.isdir(frames_root):
    raise tps.AnnotationError(f'{frames_root}: no such frames folder')
  for folder in (frames_root, os.path.dirname(os.path.abspath(frames_root))):
    settings_path = os.path.join(folder, 'extract_frames.json')
    if os.path.isfile(settings_path):
      with open(settings_path) as f:
        short_side = json.load(f).get('short_side')
      if short_side:
        raise tps.AnnotationError(
          f'{settings_path}: frames were resized (short_side={short_side}); the '
          "annotations' boxes are in the videos' pixels: extract without --short_side"
        )
      return


def list_kinetics_tps(
  root: str, vocab: tps.Vocab, *, frames_root: str | None = None, problems: list[str] | None = None
) -> list[VideoEntry]:
  """The annotated train videos of a Kinetics-TPS root; an annotation file past the
  video's frame count (list/video_train_flist.csv) is a problem."""
  annotations = os.path.join(root, 'train_annotations')
  check_frames_root(frames_root)
  if not os.path.isdir(annotations):
    raise tps.AnnotationError(
      f'{annotations}: no such folder (a Kinetics-TPS root has '
      'train_videos/, train_annotations/ and list/)'
    )
  entries = []
  for video in tps.iter_videos(root, 'train', problems=problems):
    annotated = []
    for index in video.annotated_frames():
      if index > video.num_frames:
        _record(
          problems,
          tps.AnnotationError(
            f"{video.annotation_path(index)}: frame {index} is past the video's "
            f'{video.num_frames} frames'
          ),
        )
      else:
        annotated.append(index)
    entries.append(
      VideoEntry(
        name=video.name,
        action=video.action,
        label=vocab.action_ids[video.action],
        video_path=video.video_path,
        frames_dir=find_frames_dir(frames_root, video.action, video.name),
        num_frames=video.num_frames,
        annotation_dir=video.annotation_dir,
        annotated=tuple(annotated),
      )
    )
  return entries


def scan_video_folder(
  folder: str, *, exclude: str | None = None
) -> tuple[list[str], list[VideoEntry]]:
  """(class names, videos) of a folder of class sub-folders of videos; `exclude` (the
  output folder, when it lies inside) is not a class."""
  if not os.path.isdir(folder):
    raise tps.AnnotationError(f'{folder}: no such folder')
  excluded = os.path.realpath(exclude) if exclude else None
  actions = sorted(
    d.name
    for d in os.scandir(folder)
    if d.is_dir() and not d.name.startswith('.') and os.path.realpath(d.path) != excluded
  )
  entries, seen = [], {}
  for label, action in enumerate(actions):
    for item in sorted(os.scandir(os.path.join(folder, action)), key=lambda e: e.name):
      if item.is_file() and item.name.lower().endswith(tps.VIDEO_EXTENSIONS):
        name = tps.video_name_of(item.name)
        if name in seen:
          raise tps.AnnotationError(f'{item.path}: video name {name!r} also in {seen[name]}')
        seen[name] = item.path
        entries.append(VideoEntry(name=name, action=action, label=label, video_path=item.path))
  if not entries:
    raise tps.AnnotationError(
      f'{folder}: no videos ({", ".join(tps.VIDEO_EXTENSIONS)}) in class sub-folders'
    )
  return actions, entries


# ----------------------------------------------------------------------- pseudo-labels

_FRAME_KEY = re.compile(r'^img_(\d{5,})\.json$')
PseudoLabels = dict[tuple[str, int, int], dict[str, list[tuple[tuple[float, ...], float]]]]


def load_pseudo_labels(path: str) -> PseudoLabels:
  """{(video, frame index, human number): {part: [(box, score), ...]}} from the JSON
  format of the module docstring; any malformed entry is an AnnotationError."""
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as e:
    raise tps.AnnotationError(f'{path}: unreadable ({e.strerror or e})') from None
  except json.JSONDecodeError as e:
    raise tps.AnnotationError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  if not isinstance(data, dict):
    raise tps.AnnotationError(f'{path}: top level must be an object keyed by video')
  labels: PseudoLabels = {}
  for video, frames in data.items():
    for frame, humans in _items(frames, f'{path}: {video}'):
      match = _FRAME_KEY.match(frame)
      if not match:
        raise tps.AnnotationError(
          f'{path}: {video}/{frame}: frame key must look like img_00006.json'
        )
      for human, parts in _items(humans, f'{path}: {video}/{frame}'):
        if not str(human).isdigit():
          raise tps.AnnotationError(
            f"{path}: {video}/{frame}/{human}: human key must be the human's number"
          )
        where = f'{path}: {video}/{frame}/{human}'
        entry = labels.setdefault((video, int(match.group(1)), int(human)), {})
        for part, proposals in _items(parts, where):
          if part not in tps.PARTS:
            raise tps.AnnotationError(f'{where}/{part}: unknown part name')
          entry[part] = [
            _proposal(p, f'{where}/{part}')
            for p in (proposals if isinstance(proposals, list) else [proposals])
          ]
  return labels


def _items(value: Any, where: str):
  if not isinstance(value, dict):
    raise tps.AnnotationError(f'{where}: must be an object, got {type(value).__name__}')
  return value.items()


def _proposal(raw: Any, where: str) -> tuple[tuple[float, ...], float]:
  box = raw.get('box') if isinstance(raw, dict) else None
  score = raw.get('score') if isinstance(raw, dict) else None
  if (
    not isinstance(box, list)
    or len(box) != 4
    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
    or not (box[0] <= box[2] and box[1] <= box[3])
  ):
    raise tps.AnnotationError(
      f'{where}: box must be 4 finite numbers x1 <= x2, y1 <= y2; got {raw!r}'
    )
  if not isinstance(score, (int, float)) or not math.isfinite(score):
    raise tps.AnnotationError(f'{where}: score must be a number, got {raw!r}')
  return tuple(float(v) for v in box), float(score)


def pseudo_part_boxes(
  annotated: Mapping[str, tps.Part],
  proposals: Mapping[str, Sequence[tuple[Sequence[float], float]]],
  *,
  positive: float = 0.4,
  low: float = 0.1,
) -> list[tuple[str, tuple[float, ...], bool]]:
  """(part, box, ignore) to add to a human: proposals for the parts its annotation
  lacks, positive when score > `positive`, ignore when `low` <= score <= `positive`."""
  extra = []
  for part in tps.PARTS:
    if part in annotated:
      continue
    for box, score in proposals.get(part, ()):
      if score > positive:
        extra.append((part, tuple(box), False))
      elif score >= low:
        extra.append((part, tuple(box), True))
  return extra


# ---------------------------------------------------------------------------- examples


def _jpeg_tensor():
  return tfds.features.Tensor(shape=(), dtype=np.object_)


def _scalar(dtype=np.int32):
  return tfds.features.Tensor(shape=(), dtype=dtype)


def dataset_features(dataset: str) -> tfds.features.FeaturesDict:
  """The TFDS features of a dataset's examples (see the module docstring)."""
  common = {'video': tfds.features.Text(), 'frame': _scalar()}
  boxes = {
    'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
    'labels': tfds.features.Tensor(shape=(None,), dtype=np.int32),
    'ignore': tfds.features.Tensor(shape=(None,), dtype=np.bool_),
  }
  crop = {
    'crop_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
    'human': _scalar(),
    'action': _scalar(),
  }
  num_parts = len(tps.PARTS)
  features = {
    'humans': {**common, 'image': _jpeg_tensor(), 'action': _scalar(), **boxes},
    'parts': {**common, 'image': _jpeg_tensor(), **crop, **boxes},
    'part_states': {
      **common,
      'image': _jpeg_tensor(),
      **crop,
      'part_boxes': tfds.features.Tensor(shape=(num_parts, 4), dtype=np.float32),
      'part_valid': tfds.features.Tensor(shape=(num_parts,), dtype=np.bool_),
      'part_state': tfds.features.Tensor(shape=(num_parts,), dtype=np.int32),
    },
    'action_clips': {
      'video': tfds.features.Text(),
      'label': _scalar(),
      'num_frames': _scalar(),
      'frames': tfds.features.Tensor(shape=(None,), dtype=np.object_),
    },
  }[dataset]
  return tfds.features.FeaturesDict(features)


@dataclasses.dataclass
class _HumanCrop:
  image: np.ndarray
  region: tuple[int, int, int, int]
  number: int
  parts: dict[str, np.ndarray]  # part -> inclusive box in crop pixels
  states: dict[str, str]
  extra: list[tuple[str, np.ndarray, bool]]  # pseudo-label (part, crop box, ignore)


class ExampleMaker:
  """Turns a video's frames and annotations into a dataset's examples.

  Bad items raise (strict) or, with `keep_going`, are skipped and returned as problems
  (a video that cannot be decoded: all its examples). Each dataset decides on its own,
  so a dataset's content does not depend on which others are built with it. Picklable:
  worker processes run `examples` (see `worker_pool`).
  """

  def __init__(
    self,
    options: BuildOptions,
    *,
    vocab: tps.Vocab | None = None,
    keep_going: bool = False,
    pseudo_labels: PseudoLabels | None = None,
    positive: float = 0.4,
    low: float = 0.1,
  ):
    """vocab: checks the annotations' states (and numbers them); None for video-folder
    datasets, which have no annotations."""
    self.options = options
    self.vocab = vocab
    self.keep_going = keep_going
    self.pseudo_labels = pseudo_labels or {}
    self.positive, self.low = positive, low

  def examples(self, dataset: str, entry: VideoEntry) -> tuple[list[tuple[str, dict]], list[str]]:
    """(every example of one video for `dataset`, the problems skipped)."""
    problems: list[str] | None = [] if self.keep_going else None
    try:
      if dataset == 'action_clips':
        return [self._clip(entry)], []
      out = []
      for index, image in self._frames(entry, list(entry.annotated)):
        height, width = image.shape[:2]
        annotation = tps.load_frame(
          entry.annotation_path(index),
          vocab=self.vocab,
          image_size=(width, height),
          problems=problems,
        )
        if annotation is not None:
          out += self._frame_examples(dataset, entry, index, image, annotation, problems)
      return out, problems or []
    except (video_lib.VideoError, tps.AnnotationError) as e:
      _record(problems, e)
      return [], problems

  def _frames(
    self, entry: VideoEntry, indices: list[int] | None
  ) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB) of the frames `indices` (None: all) of a video, from its frame
    folder when it has one, else decoded from the video file."""
    # A folder of only the annotated frames (extract_frames --only_annotated) cannot
    # serve a whole clip: then the video is decoded. A video without a frame count
    # (a plain folder of videos) is always decoded.
    if indices is not None:
      wanted = list(indices)
    elif entry.num_frames is not None:
      wanted = list(range(1, entry.num_frames + 1))
    else:
      wanted = None
    if (
      entry.frames_dir
      and wanted is not None
      and all(os.path.isfile(video_lib.frame_file(entry.frames_dir, i)) for i in wanted)
    ):
      yield from video_lib.iter_folder_frames(entry.frames_dir, wanted)
      return
    if indices is not None and not indices:
      return
    last = None if indices is None else max(indices)
    decoded = 0
    for index, image in video_lib.iter_video_frames(
      entry.video_path, None if indices is None else set(indices), last
    ):
      decoded = index
      yield index, image
    if last is not None and decoded < last:
      raise video_lib.VideoError(
        f'{entry.video_path}: the video ends before annotated frame {last}'
      )

  def _clip(self, entry: VideoEntry) -> tuple[str, dict]:
    frames = [
      video_lib.encode_jpeg(
        video_lib.resize_short_side(image, self.options.clip_short_side), self.options.jpeg_quality
      )
      for _, image in self._frames(entry, None)
    ]
    if not frames:
      raise video_lib.VideoError(f'{entry.video_path}: no frame decoded')
    return entry.name, {
      'video': entry.name,
      'label': entry.label,
      'num_frames': len(frames),
      'frames': np.array(frames, dtype=object),
    }

  def _frame_examples(
    self, dataset, entry, index, image, annotation, problems
  ) -> list[tuple[str, dict]]:
    key = f'{entry.name}/{index:05d}'
    common = {'video': entry.name, 'frame': index}
    if dataset == 'humans':
      boxes = np.array([h.box for h in annotation.humans], np.float32).reshape(-1, 4)
      return [
        (
          key,
          {
            **common,
            'image': self._jpeg(image),
            'action': entry.label,
            'boxes': boxes,
            'labels': np.zeros(len(boxes), np.int32),
            'ignore': np.zeros(len(boxes), bool),
          },
        )
      ]
    out = []
    for h, human in enumerate(annotation.humans):
      crop = self._crop(entry, index, image, human, h, problems)
      if dataset == 'part_states' and not crop.parts:
        continue
      example = {
        **common,
        'image': self._jpeg(crop.image),
        'human': crop.number,
        'action': entry.label,
        'crop_box': np.array(crop.region, np.float32),
      }
      out.append(
        (
          f'{key}/{h}',
          {
            **example,
            **(self._part_rows(crop) if dataset == 'part_states' else self._part_list(crop)),
          },
        )
      )
    return out

  def _crop(
    self, entry, index, image, human: tps.Human, position: int, problems: list[str] | None
  ) -> _HumanCrop:
    """The human's context crop with its part boxes (and pseudo-label boxes) in crop
    pixels; a part box outside the crop is a problem."""
    height, width = image.shape[:2]
    region = augment.context_region(human.box, width, height, self.options.context)
    left, top, right, bottom = region
    number = human.number if human.number is not None else position + 1

    last = np.array([right - left - 1, bottom - top - 1] * 2, np.float32)

    def to_crop(box):
      """The box in crop pixels, clipped; None when it does not overlap the crop."""
      shifted = np.array(box, np.float32) - np.array([left, top, left, top], np.float32)
      if (shifted[2:] < 0).any() or (shifted[:2] > last[:2]).any():
        return None
      return np.clip(shifted, 0, last)

    parts, states = {}, {}
    for name, part in human.parts.items():
      box = to_crop(part.box)
      if box is None:
        _record(
          problems,
          tps.AnnotationError(
            f'{entry.annotation_path(index)}: humans[{position}].parts.'
            f"{name}: box {list(part.box)} lies outside its human's crop {list(region)}"
          ),
        )
        continue
      parts[name], states[name] = box, part.verb
    extra = []
    proposals = self.pseudo_labels.get((entry.name, index, number))
    if proposals:
      for name, box, ignore in pseudo_part_boxes(
        human.parts, proposals, positive=self.positive, low=self.low
      ):
        crop_box = to_crop(box)
        if crop_box is not None:
          extra.append((name, crop_box, ignore))
    return _HumanCrop(
      image=image[top:bottom, left:right],
      region=region,
      number=number,
      parts=parts,
      states=states,
      extra=extra,
    )

  def _part_list(self, crop: _HumanCrop) -> dict:
    items = [(name, box, False) for name, box in crop.parts.items()] + crop.extra
    return {
      'boxes': np.array([b for _, b, _ in items], np.float32).reshape(-1, 4),
      'labels': np.array([tps.PARTS.index(n) for n, _, _ in items], np.int32),
      'ignore': np.array([i for _, _, i in items], bool),
    }

  def _part_rows(self, crop: _HumanCrop) -> dict:
    boxes = np.zeros((len(tps.PARTS), 4), np.float32)
    states = np.full(len(tps.PARTS), -1, np.int32)
    for name, box in crop.parts.items():
      row = tps.PARTS.index(name)
      boxes[row], states[row] = box, self.vocab.state_ids[crop.states[name]]
    return {'part_boxes': boxes, 'part_valid': states >= 0, 'part_state': states}

  def _jpeg(self, image: np.ndarray) -> bytes:
    return video_lib.encode_jpeg(np.ascontiguousarray(image), self.options.jpeg_quality)


# ----------------------------------------------------------------------------- builder

_WORKER_MAKER: ExampleMaker | None = None


def _set_worker_maker(maker: ExampleMaker) -> None:
  global _WORKER_MAKER
  _WORKER_MAKER = maker


def _worker_examples(job: tuple[str, VideoEntry]):
  return _WORKER_MAKER.examples(*job)


@contextlib.contextmanager
def worker_pool(maker: ExampleMaker, jobs: int):
  """A pool of `jobs` processes (spawned, each holding `maker`), or None for jobs <= 1."""
  if jobs <= 1:
    yield None
    return
  with processes.process_pool(jobs, _set_worker_maker, (maker,)) as pool:
    yield pool


class TpsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The one builder of every dataset; `builder_class(name, dataset)` subclasses it per
  TFDS name (TFDS takes the name from the class)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'Kinetics-TPS datasets (tps_jax).'}
  dataset: str = ''

  def __init__(
    self,
    *,
    entries: Sequence[VideoEntry] = (),
    val_videos: Sequence[str] = (),
    maker: ExampleMaker | None = None,
    pool=None,
    problems: list[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    **kwargs,
  ):
    """entries / val_videos: the videos and which are val; maker: makes the examples, in
    `pool` (see worker_pool) when given; problems: receives what was skipped."""
    self._entries = list(entries)
    self._val_videos = set(val_videos)
    self._maker, self._pool = maker, pool
    self._problems = problems if problems is not None else []
    self._metadata = dict(metadata or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"tps_jax dataset '{self.dataset}' (see tps_jax/datasets/builders.py)",
      features=dataset_features(self.dataset),
      metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = {}
    for split in SPLITS:
      entries = [e for e in self._entries if (e.name in self._val_videos) == (split == 'val')]
      if entries:
        splits[split] = self._generate_examples(split, entries)
    return splits

  def _generate_examples(self, split: str, entries: Sequence[VideoEntry]):
    jobs = [(self.dataset, entry) for entry in entries]
    results = (
      self._pool.imap(_worker_examples, jobs)
      if self._pool is not None
      else (self._maker.examples(*job) for job in jobs)
    )
    for examples, problems in tqdm(
      results,
      total=len(jobs),
      desc=f'{self.name} {split}',
      unit='video',
      disable=not self._maker.options.progress,
    ):
      self._problems.extend(problems)
      yield from examples


def builder_class(name: str, dataset: str) -> type[TpsBuilder]:
  """The TFDS builder class writing `dataset`'s examples under the TFDS name `name`."""
  if dataset not in DATASETS:
    raise ValueError(f'dataset must be one of {", ".join(DATASETS)}, got {dataset!r}')
  return types.new_class(
    ''.join(w.title() for w in name.split('_')),
    (TpsBuilder,),
    {'skip_registration': True},
    lambda ns: ns.update(name=name, dataset=dataset),
  )


def dataset_dir(out: str, name: str) -> str:
  """Where dataset `name` lives under the output folder: OUT/<name>/<VERSION>."""
  return os.path.join(out, name, VERSION)


def is_built(out: str, name: str) -> bool:
  return os.path.isfile(os.path.join(dataset_dir(out, name), 'dataset_info.json'))


# -------------------------------------------------------------------------- state table


def state_table(directory: str, split: str) -> np.ndarray:
  """(N, 10) int32 part states of a `tps_part_states` split, in the data source's order:
  from `part_states-<split>.npy` when present, else read from the records."""
  path = os.path.join(directory, STATE_TABLE.format(split=split))
  if os.path.exists(path):
    return np.load(path, allow_pickle=False)  # a table of ints; a pickle would run code
  source = tfds_dirs.builder_from_directory(directory).as_data_source(split)
  table = np.full((len(source), len(tps.PARTS)), -1, np.int32)
  for i in range(len(source)):
    table[i] = source[i]['part_state']
  return table


def write_state_tables(directory: str) -> None:
  """Writes `part_states-<split>.npy` for every split of a built `tps_part_states`."""
  builder = tfds_dirs.builder_from_directory(directory)
  for split in builder.info.splits:
    table = state_table(directory, split)
    np.save(os.path.join(directory, STATE_TABLE.format(split=split)), table)
