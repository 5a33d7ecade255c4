"""The TFDS datasets (ArrayRecord) built from a dataset root for the four networks'
training: their names, folders, features and state tables.

tps_jax/datasets/ writes them (`python -m data_prep.build`), the grain pipelines of
tps_jax/input/pipelines.py read them. TensorFlow is not needed: features avoid TF
encoders (images are JPEG bytes in `Tensor(shape=(), dtype=object)`, decoded by the
pipelines).

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
labels are not public) by `split_videos` (tps_jax/datasets/val_split.py), deterministic
from the seed and the same for every dataset built from the root;
`metadata['settings']['val_videos']` lists them (the settings a rebuild must match:
split, crop margin, clip size, pseudo-labels). `tps_part_states` also holds
`part_states-<split>.npy`, every example's (10,) states in the data source's order, for
state balancing without reading the images (`state_table`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from tps_jax.data import kinetics_tps as tps
from tps_jax.data import tfds_dirs

# The datasets built from a Kinetics-TPS root, stored as TFDS_NAMES (tps_<dataset>).
DATASETS = ('humans', 'parts', 'part_states', 'action_clips')
TFDS_NAMES = {dataset: f'tps_{dataset}' for dataset in DATASETS}
VERSION = '1.0.0'
SPLITS = ('train', 'val')
STATE_TABLE = 'part_states-{split}.npy'


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


def dataset_dir(out: str, name: str) -> str:
  """Where dataset `name` lives under the output folder: OUT/<name>/<VERSION>."""
  return os.path.join(out, name, VERSION)


def is_built(out: str, name: str) -> bool:
  return os.path.isfile(os.path.join(dataset_dir(out, name), 'dataset_info.json'))


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
