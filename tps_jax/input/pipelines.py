"""grain input pipelines, one per dataset: decode, augment, batch to static shapes.

  make_pipeline(dataset, config, split, *, train, seed=0, shard=(0, 1), batch_size=None)
      -> grain DatasetIterator of dict batches of numpy arrays

reads a TFDS dataset that `python -m data_prep.build` wrote (tps_jax/data/tfds_layout.py:
`dataset` is one of its DATASETS, stored as tps_<dataset> or `data.tfds_name`;
`dataset_metadata(dataset, config)` gives its vocabularies):

- `humans` / `parts`: `image` (B, H, W, 3) f32; `boxes` (B, M, 4) f32; `labels` (B, M)
  int32 (0: person / index in PARTS); `valid` (B, M) bool; `ignore` (B, M) bool;
  `image_size` (B, 2) int32; `scale` (B,) f32.
- `part_states`: `image` (B, S, S, 3) f32; `part_boxes` (B, 10, 4) f32 (row i =
  PARTS[i]); `part_valid` (B, 10) bool; `part_state` (B, 10) int32 (-1: absent);
  `action` (B,) int32.
- `action_clips` (or any clips dataset, `data.tfds_name`): `clip` (B, T, S, S, 3) f32;
  `label` (B,) int32.
(B: the per-process batch size; S may also be a (height, width) pair.)

Images are normalised with the ImageNet mean and std (on 0..255: (x - 255 * mean) /
(255 * std), mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)). Boxes are in input
pixels of the batch's image, in the dataset's inclusive-pixel convention (x2 = last
column). Detector images are resized keeping the aspect ratio to fit (H, W) and padded
at the bottom/right (pads are 0 after normalisation): the content is `image_size` (the
(h, w) before resizing: the frame or crop, after the train-time crop) times `scale`, so
a box b in the batch is b / scale in that image. M = max_boxes: the boxes are padded
(valid False) and, beyond M, the largest non-ignored ones are kept (a warning, once).

`config.data` fields (`DATA_FIELDS`: a pipeline reads every one of its fields, and a
missing one is a `DataConfigError` naming it; configs/common.py's `data` gives the
reading fields):
- every dataset: `root` (dataset root; datasets under ROOT/tfds), `tfds_dir` (another
  folder of datasets), `tfds_name` (the dataset's folder name, e.g. a `--video_folder`
  build; '' = tps_<dataset>), `read_threads` (grain threads), `prefetch_batches`
  (batches read ahead), `worker_count` (grain worker processes, 0: none),
  `worker_buffer_size`, `train_videos` (N > 0: train on the examples of N of the train
  split's videos, drawn by the run's seed, the same on every process; 0: all).
- `humans` / `parts`: `image_size` (H, W), `max_boxes`, `flip` (parts: left/right labels
  swapped), `random_rotation` (degrees, uniform in [-r, r]; boxes re-fitted),
  `random_crop`, `crop_min_scale` (crop sides in [s, 1] of the image), `min_visible`
  (a box keeping less of its area after rotation / crop is marked `ignore`; one keeping
  none is dropped), `scale_range` (lo, hi): train images fill a fraction in [lo, hi] of
  the canvas, uniform (multi-scale training: (0.6, 1) is short sides 480-800 of an 800
  canvas); (1, 1): all of it.
- `part_states`: `image_size` S (crop), `resize` R (the crop is resized to R x R, then
  cropped S x S: random in train, centred in eval; 0: R = round(S * 8 / 7), i.e. 256 for
  224), `flip` (left/right parts swap rows with their states), `box_jitter` (each box
  side moves by up to this fraction of the box size), `color_jitter` (brightness,
  contrast, saturation factors in [1 - c, 1 + c]), `balance_states` (train examples
  drawn with state-balancing weights, tps_jax/input/resample.py).
- `action_clips`: `num_frames` T, `frame_stride`, `image_size` S, `crop_area` (train: random
  crop of this fraction of the frame's area, aspect in [3/4, 4/3], resized to S x S),
  `flip`, `resize` (eval: short side resized to this, centre crop S x S; 0: S).

Train (`train=True`): this process's shard (every `count`-th example from `index`),
shuffled per epoch (or state-balanced resampling), endless, augmented by grain's seeded
random maps; the order and augmentation are a function of (seed, process index), and the
iterator's get_state / set_state resume it exactly. Eval: this process's contiguous
share of ceil(N / count) examples, in order, no augmentation, finite; every process
yields ceil(ceil(N / count) / B) batches, the last ones short or empty (0 rows), as the
trainer's Task contract asks (tps_jax/tasks/base.py).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from tps_jax.data import augment, tfds_dirs, tfds_layout
from tps_jax.data import kinetics_tps as tps
from tps_jax.data.video import decode_jpeg
from tps_jax.input import resample

# Where a dataset is and how it is read: every pipeline's fields.
READ_FIELDS = (
  'root',
  'tfds_dir',
  'tfds_name',
  'read_threads',
  'prefetch_batches',
  'worker_count',
  'worker_buffer_size',
  'train_videos',
)
_DETECTOR_FIELDS = (
  'image_size',
  'max_boxes',
  'flip',
  'random_rotation',
  'random_crop',
  'crop_min_scale',
  'min_visible',
  'scale_range',
)
# The `config.data` fields each dataset's pipeline reads.
DATA_FIELDS = {
  'humans': READ_FIELDS + _DETECTOR_FIELDS,
  'parts': READ_FIELDS + _DETECTOR_FIELDS,
  'part_states': READ_FIELDS
  + ('image_size', 'resize', 'flip', 'box_jitter', 'color_jitter', 'balance_states'),
  'action_clips': READ_FIELDS
  + ('num_frames', 'frame_stride', 'image_size', 'crop_area', 'flip', 'resize'),
}
# Fields added after exports were first written, with the value that reads as before:
# an older export's config.json lacks them and still builds its pipeline.
ADDED_FIELDS = {'train_videos': 0, 'scale_range': (1.0, 1.0)}
NUM_PARTS = len(tps.PARTS)
_FLIP_PARTS = np.array(tps.FLIP_PARTS)
_warned_overflow = False


class DataConfigError(ValueError):
  """A `config.data` a pipeline cannot read (one line naming the fields)."""


def data_fields(dataset: str, config) -> ml_collections.ConfigDict:
  """The `DATA_FIELDS[dataset]` of `config.data`, `image_size` as (H, W) and a `resize`
  of 0 resolved; DataConfigError naming the fields `config.data` lacks."""
  if dataset not in DATA_FIELDS:
    raise ValueError(f'dataset must be one of {", ".join(DATA_FIELDS)}, got {dataset!r}')
  data = config.get('data') if hasattr(config, 'get') else None
  data = data or {}
  missing = [f for f in DATA_FIELDS[dataset] if f not in data and f not in ADDED_FIELDS]
  if missing:
    raise DataConfigError(
      f'config.data: no {", ".join(missing)} (the {dataset} pipeline reads '
      f"{', '.join(DATA_FIELDS[dataset])}; configs/common.py's data() has the reading "
      'fields)'
    )
  settings = {f: data.get(f, ADDED_FIELDS.get(f)) for f in DATA_FIELDS[dataset]}
  settings['image_size'] = _hw(settings['image_size'])
  if dataset == 'part_states' and not settings['resize']:
    settings['resize'] = round(max(settings['image_size']) * 8 / 7)
  if dataset == 'action_clips' and not settings['resize']:
    settings['resize'] = min(settings['image_size'])
  return ml_collections.ConfigDict(settings)


def _hw(size) -> tuple[int, int]:
  """(height, width) from an int or a pair."""
  if isinstance(size, int):
    return (size, size)
  height, width = size
  return (int(height), int(width))


def dataset_path(dataset: str, settings) -> str:
  """The folder of the newest version of a dataset; FileNotFoundError if none."""
  name = settings.tfds_name or tfds_layout.TFDS_NAMES[dataset]
  folder = os.path.join(settings.tfds_dir or os.path.join(settings.root, 'tfds'), name)
  versions = []
  if os.path.isdir(folder):
    for entry in os.scandir(folder):
      parts = entry.name.split('.')
      if (
        len(parts) == 3
        and all(p.isdigit() for p in parts)
        and os.path.isfile(os.path.join(entry.path, 'dataset_info.json'))
      ):
        versions.append((tuple(map(int, parts)), entry.path))
  if not versions:
    raise FileNotFoundError(
      f'{folder}: no such dataset (run python -m data_prep.build --data_root '
      f'{settings.root or "DATASET_ROOT"} --datasets {dataset})'
    )
  return max(versions)[1]


# --------------------------------------------------------------------------- examples


def output_spec(dataset: str, settings) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{key: (shape, dtype)} of one example of a batch (the leading B left out)."""
  height, width = settings.image_size
  if dataset in ('humans', 'parts'):
    boxes = settings.max_boxes
    return {
      'image': ((height, width, 3), np.float32),
      'boxes': ((boxes, 4), np.float32),
      'labels': ((boxes,), np.int32),
      'valid': ((boxes,), np.bool_),
      'ignore': ((boxes,), np.bool_),
      'image_size': ((2,), np.int32),
      'scale': ((), np.float32),
    }
  if dataset == 'part_states':
    return {
      'image': ((height, width, 3), np.float32),
      'part_boxes': ((NUM_PARTS, 4), np.float32),
      'part_valid': ((NUM_PARTS,), np.bool_),
      'part_state': ((NUM_PARTS,), np.int32),
      'action': ((), np.int32),
    }
  return {'clip': ((settings.num_frames, height, width, 3), np.float32), 'label': ((), np.int32)}


def _keep_boxes(boxes, labels, ignore, max_boxes: int):
  """Padded (max_boxes, ...) arrays and the validity mask; beyond max_boxes the
  non-ignored boxes come first, larger first."""
  global _warned_overflow
  count = len(boxes)
  if count > max_boxes:
    if not _warned_overflow:
      logging.warning(
        'an image has %d boxes, more than max_boxes=%d: keeping the largest '
        'non-ignored ones (warned once)',
        count,
        max_boxes,
      )
      _warned_overflow = True
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order = np.lexsort((-area, ignore))[:max_boxes]
    boxes, labels, ignore = boxes[order], labels[order], ignore[order]
    count = max_boxes
  out_boxes = np.zeros((max_boxes, 4), np.float32)
  out_labels = np.zeros(max_boxes, np.int32)
  out_ignore = np.zeros(max_boxes, bool)
  out_boxes[:count], out_labels[:count], out_ignore[:count] = boxes, labels, ignore
  return out_boxes, out_labels, np.arange(max_boxes) < count, out_ignore


def detector_example(
  raw: Mapping[str, Any], rng: np.random.Generator | None, *, settings, swap_parts: bool
) -> dict[str, np.ndarray]:
  """A tps_humans / tps_parts record -> a padded detector example (uint8 image).
  Train (rng given): flip, rotation, crop, scale as configured; then resize with padding."""
  image = decode_jpeg(raw['image'])
  boxes = np.asarray(raw['boxes'], np.float32).reshape(-1, 4)
  labels = np.asarray(raw['labels'], np.int32)
  ignore = np.asarray(raw['ignore'], bool)
  visible = np.ones(len(boxes), np.float32)
  fit_scale = 1.0
  if rng is not None:
    if settings.flip and rng.random() < 0.5:
      image, boxes = augment.hflip(image, boxes)
      if swap_parts:
        labels = _FLIP_PARTS[labels].astype(np.int32)
    if settings.random_rotation > 0:
      angle = rng.uniform(-settings.random_rotation, settings.random_rotation)
      image, boxes, seen = augment.rotate(image, boxes, angle)
      visible *= seen
    if settings.random_crop:
      region = augment.random_crop_region(rng, *image.shape[:2], settings.crop_min_scale)
      image, boxes, seen = augment.crop(image, boxes, region)
      visible *= seen
    low, high = settings.scale_range
    if (low, high) != (1.0, 1.0):
      fit_scale = rng.uniform(low, high)
  content = np.array(image.shape[:2], np.int32)
  image, boxes, scale = augment.resize_pad(image, boxes, settings.image_size, fit_scale)
  keep = visible > 0
  ignore = ignore | (visible < settings.min_visible)
  boxes, labels, valid, ignore = _keep_boxes(
    boxes[keep], labels[keep], ignore[keep], settings.max_boxes
  )
  return {
    'image': image,
    'boxes': boxes,
    'labels': labels,
    'valid': valid,
    'ignore': ignore & valid,
    'image_size': content,
    'scale': np.float32(scale),
  }


def part_state_example(
  raw: Mapping[str, Any], rng: np.random.Generator | None, *, settings
) -> dict[str, np.ndarray]:
  """A tps_part_states record -> resize R x R, crop S x S (random / centred); train also
  flips (left/right rows swapped), jitters part boxes and colours."""
  image = decode_jpeg(raw['image'])
  height, width = image.shape[:2]
  out_h, out_w = settings.image_size
  resize = settings.resize
  top, left = (resize - out_h) / 2, (resize - out_w) / 2
  if rng is not None:
    top, left = rng.integers(0, resize - out_h + 1), rng.integers(0, resize - out_w + 1)
  kx, ky = resize / width, resize / height
  region = (left / kx, top / ky, (left + out_w) / kx, (top + out_h) / ky)
  image, boxes, visible = augment.resize_region(
    image, raw['part_boxes'], region, settings.image_size
  )
  valid = np.asarray(raw['part_valid'], bool) & (visible > 0)
  states = np.asarray(raw['part_state'], np.int32)
  if rng is not None:
    if settings.flip and rng.random() < 0.5:
      image, boxes = augment.hflip(image, boxes)
      boxes, valid, states = boxes[_FLIP_PARTS], valid[_FLIP_PARTS], states[_FLIP_PARTS]
    if settings.box_jitter > 0:
      boxes = augment.jitter_boxes(rng, boxes, settings.box_jitter, out_w, out_h)
    image = augment.color_jitter(rng, image, settings.color_jitter)
  return {
    'image': image,
    'part_boxes': np.where(valid[:, None], boxes, 0).astype(np.float32),
    'part_valid': valid,
    'part_state': np.where(valid, states, -1).astype(np.int32),
    'action': np.int32(raw['action']),
  }


def action_example(
  raw: Mapping[str, Any], rng: np.random.Generator | None, *, settings
) -> dict[str, np.ndarray]:
  """A tps_action_clips record -> T frames `frame_stride` apart (random / centred
  start); train: one multi-scale crop and flip for the whole clip; eval: short side to
  `resize`, centre crop."""
  frames = raw['frames']
  indices = augment.clip_indices(len(frames), settings.num_frames, settings.frame_stride, rng)
  decoded = {i: decode_jpeg(frames[i]) for i in sorted(set(indices.tolist()))}
  height, width = decoded[indices[0]].shape[:2]
  out_h, out_w = settings.image_size
  flip = False
  if rng is not None:
    region = augment.random_resized_crop_region(rng, height, width, tuple(settings.crop_area))
    flip = settings.flip and rng.random() < 0.5
  else:
    zoom = settings.resize / min(height, width)
    region = augment.center_region(height, width, out_h / zoom, out_w / zoom)
  resized = {
    i: augment.resample(image, region, settings.image_size) for i, image in decoded.items()
  }
  clip = np.stack([resized[i] for i in indices.tolist()])
  if flip:
    clip = np.ascontiguousarray(clip[:, :, ::-1])
  return {'clip': clip, 'label': np.int32(raw['label'])}


_EXAMPLE_FNS: dict[str, Callable[..., dict]] = {
  'humans': functools.partial(detector_example, swap_parts=False),
  'parts': functools.partial(detector_example, swap_parts=True),
  'part_states': part_state_example,
  'action_clips': action_example,
}


def collate(examples, *, spec: Mapping[str, tuple[tuple[int, ...], Any]]) -> dict:
  """Stacks examples into a batch (images / clips normalised to float32); no examples
  give a batch of 0 rows with the spec's shapes."""
  if not examples:
    return {key: np.zeros((0, *shape), dtype) for key, (shape, dtype) in spec.items()}
  batch = {}
  for key, (_, dtype) in spec.items():
    stacked = np.stack([example[key] for example in examples])
    batch[key] = (
      augment.normalize(stacked) if key in ('image', 'clip') else stacked.astype(dtype, copy=False)
    )
  return batch


def _empty_batch(_, *, spec) -> dict:
  return collate([], spec=spec)


# --------------------------------------------------------------------------- pipeline


def _process_seeds(seed: int, process_index: int) -> tuple[int, int]:
  """Two 32-bit seeds (order, augmentation) of (seed, process index)."""
  order, augmentation = np.random.SeedSequence([seed, process_index]).generate_state(2)
  return int(order), int(augmentation)


class _Subset:
  """The records of `source` at `indices`, as a grain data source."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self._indices = source, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[int(self._indices[index])]


def video_subset(videos: list[str], num_videos: int, seed: int, *, where: str) -> np.ndarray:
  """Sorted indices of the examples whose video is one of `num_videos` of `videos`' distinct
  names, drawn by `seed` (independent of the process); ValueError naming
  `config.data.train_videos` when there are fewer."""
  names = sorted(set(videos))
  if num_videos > len(names):
    raise ValueError(
      f'config.data.train_videos: {num_videos} videos asked, {where} has {len(names)}'
    )
  chosen = set(np.random.default_rng(seed).choice(names, num_videos, replace=False).tolist())
  return np.array([i for i, video in enumerate(videos) if video in chosen], np.int64)


def _videos_of(source) -> list[str]:
  """The `video` of every record of a data source, in its order."""
  return [_text(source[i]['video']) for i in range(len(source))]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def dataset_metadata(dataset: str, config) -> dict[str, Any]:
  """A dataset's metadata: 'actions', 'states' (vocabularies, in label order), 'parts',
  'settings' (how it was built, with 'val_videos'), 'source'."""
  directory = dataset_path(dataset, data_fields(dataset, config))
  return dict(tfds_dirs.builder_from_directory(directory).info.metadata)


def make_pipeline(
  dataset: str,
  config,
  split: str,
  *,
  train: bool,
  seed: int = 0,
  shard: tuple[int, int] = (0, 1),
  batch_size: int | None = None,
):
  """A grain DatasetIterator of this process's batches (see the module docstring).

  Args:
    dataset: one of DATA_FIELDS ('humans', 'parts', 'part_states', 'action_clips').
    config: a stage config; reads `config.data` (and `config.batch_size` when
      batch_size is None: the global batch divided by the process count).
    split: 'train' or 'val'.
    train: endless, shuffled and augmented; else finite, in order, no augmentation.
    seed: train order and augmentation seed.
    shard: (process_index, process_count).
    batch_size: per-process batch size.
  """
  settings = data_fields(dataset, config)
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f'shard: process index {index} not in [0, {count})')
  if batch_size is None:
    batch_size = config.batch_size // count
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  directory = dataset_path(dataset, settings)
  builder = tfds_dirs.builder_from_directory(directory)
  if split not in builder.info.splits:
    raise ValueError(
      f'{directory}: no split {split!r} (splits: {", ".join(sorted(builder.info.splits))})'
    )
  source = builder.as_data_source(split)
  spec = output_spec(dataset, settings)
  example_fn = functools.partial(_EXAMPLE_FNS[dataset], settings=settings)
  batch_fn = functools.partial(collate, spec=spec)
  if train:
    subset = None
    if settings.train_videos:
      where = f'{directory} split {split!r}'
      subset = video_subset(_videos_of(source), settings.train_videos, seed, where=where)
      source = _Subset(source, subset)
    examples = grain.MapDataset.source(source)[index::count]
    if not len(examples):
      raise ValueError(
        f'{directory}: split {split!r} has {len(source)} examples, none for '
        f'process {index} of {count}'
      )
    order_seed, augment_seed = _process_seeds(seed, index)
    if dataset == 'part_states' and settings.balance_states:
      table = tfds_layout.state_table(directory, split)
      table = (table if subset is None else table[subset])[index::count]
      examples = resample.WeightedResampleDataset(
        examples, resample.state_balancing_weights(table), seed=order_seed
      )
    else:
      examples = examples.shuffle(seed=order_seed).repeat()
    examples = examples.random_map(example_fn, seed=augment_seed)
    examples = examples.batch(batch_size, drop_remainder=True, batch_fn=batch_fn)
  else:
    per_process = math.ceil(len(source) / count)
    start = min(index * per_process, len(source))
    examples = grain.MapDataset.source(source)[start : start + per_process]
    examples = examples.map(functools.partial(example_fn, rng=None))
    examples = examples.batch(batch_size, batch_fn=batch_fn)
    missing = math.ceil(per_process / batch_size) - len(examples)
    if missing:
      empty = grain.MapDataset.range(missing).map(functools.partial(_empty_batch, spec=spec))
      examples = grain.MapDataset.concatenate([examples, empty])
  iterator = examples.to_iter_dataset(
    grain.ReadOptions(
      num_threads=settings.read_threads, prefetch_buffer_size=settings.prefetch_batches
    )
  )
  if settings.worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read its absl flags; outside an absl app take their defaults.
      flags.FLAGS.mark_as_parsed()
    iterator = iterator.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=settings.worker_count, per_worker_buffer_size=settings.worker_buffer_size
      )
    )
  return iter(iterator)
