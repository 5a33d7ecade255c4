"""The action recogniser evaluated on many views (TTA) and as checkpoint ensembles.

A video is seen as `clips` temporal clips x `crops` spatial crops (static shapes):
- clips: `num_frames` frames `frame_stride` apart, starts spread evenly over the video
  (the k-th of n starts at floor(room * (2k + 1) / 2n), room = frames left over; one
  clip is the eval pipeline's centred clip);
- crops: the frame's short side scaled to `resize`, then `image_size` crops spread
  evenly along the long side (one crop: the eval pipeline's centre crop; three:
  left / centre / right, as Video Swin's ThreeCrop).
`view_scores` (pure, jittable) runs the network on every view and averages the
logits, or the softmax probabilities (`average='probs'`). A checkpoint ensemble
averages its members' view-averaged scores in the same space; each member has its own
clip settings (frames, stride, size: from its exported config) and its forward is
jitted once. With one view `view_scores` is the plain eval forward.

`evaluate_members` runs members over a split: `val` (or `train`) from the TFDS clips
dataset (tps_jax/data/tfds_layout.py), `test` from ROOT/test_videos decoded directly (the
datasets hold the train videos only). The action task's final evaluation runs it on the
exported variables; an export is loaded as a member by tps_jax/inference/action.py
(`load_member`), and the command line is `python -m tps_jax.evaluate_action`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import video as video_lib
from tps_jax.input import pipelines

PyTree = Any
AVERAGES = ('logits', 'probs')
ENSEMBLE = 'ensemble'


# ----------------------------------------------------------------------------- views


def clip_starts(num_frames: int, length: int, stride: int, clips: int) -> np.ndarray:
  """(clips,) first-frame indices spread evenly over the frames left beyond a clip."""
  room = max(num_frames - ((length - 1) * stride + 1), 0)
  return (room * (2 * np.arange(clips) + 1)) // (2 * clips)


def crop_regions(height: int, width: int, settings, crops: int) -> list[augment.Region]:
  """`crops` regions of the eval crop's size spread evenly along the long side."""
  out_h, out_w = settings.image_size
  zoom = settings.resize / min(height, width)
  crop_h, crop_w = min(out_h / zoom, height), min(out_w / zoom, width)
  if crops == 1:
    return [augment.center_region(height, width, crop_h, crop_w)]
  regions = []
  for fraction in np.linspace(0.0, 1.0, crops):
    if width >= height:
      left, top = fraction * (width - crop_w), (height - crop_h) / 2
    else:
      left, top = (width - crop_w) / 2, fraction * (height - crop_h)
    regions.append((left, top, left + crop_w, top + crop_h))
  return regions


def video_views(frames: Sequence[np.ndarray], settings, *, clips: int, crops: int) -> np.ndarray:
  """(clips * crops, T, H, W, 3) uint8 views of a video, clip-major.

  `frames`: the video's RGB uint8 frames (anything indexable with a length; only the
  frames the clips use are read). `settings`: `pipelines.data_fields('action_clips', ...)`.
  """
  length, stride = settings.num_frames, settings.frame_stride
  steps = np.arange(length) * stride
  indices = [
    (start + steps) % len(frames) for start in clip_starts(len(frames), length, stride, clips)
  ]
  needed = sorted(set(np.concatenate(indices).tolist()))
  images = {i: frames[i] for i in needed}
  height, width = images[needed[0]].shape[:2]
  regions = crop_regions(height, width, settings, crops)
  views = np.empty((clips * crops, length, *settings.image_size, 3), np.uint8)
  for c, clip in enumerate(indices):
    for r, region in enumerate(regions):
      resized = {}
      for t, i in enumerate(clip.tolist()):
        if i not in resized:
          resized[i] = augment.resample(images[i], region, settings.image_size)
        views[c * crops + r, t] = resized[i]
  return views


# ------------------------------------------------------------------------ jitted parts


def view_scores(
  model, variables: PyTree, views, *, average: str = 'logits', views_per_forward: int = 0
):
  """(B, V, T, H, W, 3) normalised views -> (B, K) scores averaged over the V views.

  `average`: 'logits' (mean logits) or 'probs' (mean softmax). The views go through
  the network `views_per_forward` at a time (a divisor of V; 0: all at once), which
  bounds the memory of big models.
  """
  if average not in AVERAGES:
    raise ValueError(f'average must be one of {AVERAGES}, got {average!r}')
  batch, num_views = views.shape[:2]
  per_forward = views_per_forward or num_views
  if num_views % per_forward:
    raise ValueError(f'views_per_forward={per_forward} does not divide the {num_views} views')

  def forward(clips):
    logits = model.apply(variables, clips, train=False).astype(jnp.float32)
    return jax.nn.softmax(logits) if average == 'probs' else logits

  chunks = jnp.swapaxes(views, 0, 1).reshape(
    num_views // per_forward, per_forward * batch, *views.shape[2:]
  )
  scores = jax.lax.map(forward, chunks)
  return scores.reshape(num_views, batch, -1).mean(axis=0)


def ensemble_scores(
  member_scores: Sequence[jax.Array], weights: Sequence[float] | None = None
) -> jax.Array:
  """The (weighted) mean of members' (B, K) scores (all logits or all probabilities)."""
  stacked = jnp.stack([jnp.asarray(s, jnp.float32) for s in member_scores])
  if weights is None:
    return stacked.mean(axis=0)
  weights = jnp.asarray(weights, jnp.float32)
  return jnp.tensordot(weights / weights.sum(), stacked, axes=1)


# ---------------------------------------------------------------------------- members


@dataclasses.dataclass
class Member:
  """One trained action recogniser: its network, variables and training config."""

  name: str
  model: Any
  variables: PyTree
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...] | None = None  # None: taken from the data evaluated

  @functools.cached_property
  def settings(self) -> ml_collections.ConfigDict:
    """Its clip settings (frames, stride, size, eval resize)."""
    return pipelines.data_fields('action_clips', self.config)

  @property
  def num_classes(self) -> int:
    return int(self.variables['params']['head']['kernel'].shape[-1])

  def scorer(self, *, average: str, views_per_forward: int) -> Callable:
    """A jitted (B, V, T, H, W, 3) -> (B, K) function with the variables on device."""
    variables = jax.device_put(self.variables)
    fn = jax.jit(
      functools.partial(
        view_scores, self.model, average=average, views_per_forward=views_per_forward
      )
    )
    return lambda views: fn(variables, views)


# ------------------------------------------------------------------------------ videos


@dataclasses.dataclass
class Video:
  name: str
  label: int  # -1: unknown
  frames: Sequence[np.ndarray]


class _JpegFrames(Sequence):
  """A TFDS clip record's JPEG frames, decoded on first access."""

  def __init__(self, encoded: Sequence[bytes], source: str):
    self._encoded, self._source, self._decoded = encoded, source, {}

  def __len__(self):
    return len(self._encoded)

  def __getitem__(self, index):
    if index not in self._decoded:
      self._decoded[index] = video_lib.decode_jpeg(self._encoded[index], self._source)
    return self._decoded[index]


def dataset_videos(settings, split: str) -> tuple[tuple[str, ...], list[Callable[[], Video]]]:
  """(class names, loaders of the videos) of a TFDS clips dataset split."""
  from tps_jax.data import tfds_dirs  # only for TFDS-backed splits

  directory = pipelines.dataset_path('action_clips', settings)
  builder = tfds_dirs.builder_from_directory(directory)
  if split not in builder.info.splits:
    raise ValueError(
      f'{directory}: no split {split!r} (splits: {", ".join(sorted(builder.info.splits))})'
    )
  source = builder.as_data_source(split)

  def load(i: int) -> Video:
    record = source[i]
    name = record['video']
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Video(
      name, int(record['label']), _JpegFrames(record['frames'], f'{directory}:{split}/{name}')
    )

  loaders = [functools.partial(load, i) for i in range(len(source))]
  return tuple(builder.info.metadata['actions']), loaders


def folder_videos(
  root: str, split: str, *, short_side: int = 256
) -> tuple[tuple[str, ...], list[Callable[[], Video]]]:
  """(class names, loaders) of ROOT/<split>_videos, decoded with PyAV; frames scaled
  as data_prep.build scales the clips datasets' (short side at most `short_side`)."""
  classes = tps.Vocab.from_root(root).actions
  ids = {name: i for i, name in enumerate(classes)}

  def load(video: tps.Video) -> Video:
    frames = [
      video_lib.resize_short_side(image, short_side)
      for _, image in video_lib.iter_video_frames(video.video_path)
    ]
    if not frames:
      raise video_lib.VideoError(f'{video.video_path}: no frame decoded')
    return Video(video.name, ids.get(video.action, -1), frames)

  videos = list(tps.iter_videos(root, split))
  return classes, [functools.partial(load, v) for v in videos]


# -------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalResult:
  class_names: tuple[str, ...]
  videos: list[str]
  labels: np.ndarray  # (N,) -1 where unknown
  scores: dict[str, np.ndarray]  # member name / ENSEMBLE -> (N, K)
  metrics: dict[str, dict[str, float]]  # member name / ENSEMBLE -> top1, top5, count

  def predictions(self, key: str = ENSEMBLE) -> dict[str, str]:
    """{video: predicted class name}: pred_vid_result.json's content."""
    best = self.scores[key].argmax(-1)
    return {video: self.class_names[k] for video, k in zip(self.videos, best)}


def topk_accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """top1 / top5 over the videos with a known label, and their count."""
  known = labels >= 0
  count = int(known.sum())
  if not count:
    return {'count': 0}
  scores, labels = scores[known], labels[known]
  order = np.argsort(-scores, axis=-1)
  hits = order == labels[:, None]
  return {
    'top1': float(hits[:, :1].any(-1).mean()),
    'top5': float(hits[:, :5].any(-1).mean()),
    'count': count,
  }


def _batches(loaders: Sequence[Callable[[], Video]], size: int) -> Iterator[list[Video]]:
  for lo in range(0, len(loaders), size):
    yield [load() for load in loaders[lo : lo + size]]


def evaluate_members(
  members: Sequence[Member],
  *,
  split: str = 'val',
  data_root: str = '',
  tfds_name: str | None = None,
  tfds_dir: str | None = None,
  clips: int = 4,
  crops: int = 3,
  average: str = 'logits',
  batch_size: int = 4,
  views_per_forward: int = 0,
  weights: Sequence[float] | None = None,
  progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
  """Scores every video of a split with each member (multi-view) and their ensemble.

  Data: `split` 'test' reads DATA_ROOT/test_videos; other splits the TFDS clips
  dataset (`tfds_name` under `tfds_dir` or DATA_ROOT/tfds; defaults: the first member's
  config). Batches are padded to `batch_size` videos, so each member compiles once.
  Every process scores every video (the results are the same everywhere).
  """
  if not members:
    raise ValueError('no member to evaluate')
  first = members[0].config.data
  data_root = data_root or first.get('root', '')
  if split == 'test':
    classes, loaders = folder_videos(data_root, 'test')
  else:
    settings = ml_collections.ConfigDict(
      {
        'root': data_root,
        'tfds_name': first.get('tfds_name', '') if tfds_name is None else tfds_name,
        'tfds_dir': first.get('tfds_dir', '') if tfds_dir is None else tfds_dir,
      }
    )
    classes, loaders = dataset_videos(settings, split)
  for member in members:
    if member.num_classes != len(classes) or (
      member.class_names and tuple(member.class_names) != tuple(classes)
    ):
      raise ValueError(
        f'{member.name}: {member.num_classes} classes, the {split} data has '
        f'{len(classes)} ({", ".join(classes)})'
      )
  scorers = [m.scorer(average=average, views_per_forward=views_per_forward) for m in members]
  names, labels, scores = [], [], [[] for _ in members]
  for batch in _batches(loaders, batch_size):
    names += [v.name for v in batch]
    labels += [v.label for v in batch]
    for member, scorer, out in zip(members, scorers, scores):
      views = np.stack(
        [video_views(v.frames, member.settings, clips=clips, crops=crops) for v in batch]
      )
      padded = np.zeros((batch_size, *views.shape[1:]), np.uint8)
      padded[: len(batch)] = views
      out.append(np.asarray(scorer(augment.normalize(padded)))[: len(batch)])
    if progress is not None:
      progress(len(names), len(loaders))
  num_classes = len(classes)
  per_member = [np.concatenate(s) if s else np.zeros((0, num_classes), np.float32) for s in scores]
  labels = np.asarray(labels, np.int64)
  keys = _member_keys(members)
  all_scores = dict(zip(keys, per_member))
  all_scores[ENSEMBLE] = (
    np.asarray(ensemble_scores(per_member, weights))
    if len(names)
    else np.zeros((0, num_classes), np.float32)
  )
  metrics = {key: topk_accuracy(value, labels) for key, value in all_scores.items()}
  return EvalResult(classes, names, labels, all_scores, metrics)


def _member_keys(members: Sequence[Member]) -> list[str]:
  """Members' names, made unique (the same export twice gets '#2')."""
  keys, seen = [], {}
  for member in members:
    seen[member.name] = seen.get(member.name, 0) + 1
    keys.append(member.name if seen[member.name] == 1 else f'{member.name}#{seen[member.name]}')
  return keys
