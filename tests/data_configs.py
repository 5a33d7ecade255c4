"""Configs whose `data` holds every field an input pipeline reads, for tests that build
pipelines or examples directly (tps_jax/input/pipelines.py DATA_FIELDS): `DEFAULTS` per
dataset (no augmentation beyond flips and jitter), updated with a test's own fields."""

import ml_collections

from configs import common

_DETECTOR = {
  'image_size': (800, 1344),
  'max_boxes': 32,
  'flip': True,
  'random_rotation': 0.0,
  'random_crop': False,
  'crop_min_scale': 0.5,
  'scale_range': (1.0, 1.0),
  'min_visible': 0.3,
}
DEFAULTS = {
  'humans': _DETECTOR,
  'parts': _DETECTOR,
  'part_states': {
    'image_size': 224,
    'resize': 0,
    'flip': True,
    'box_jitter': 0.05,
    'color_jitter': 0.4,
    'balance_states': False,
  },
  'action_clips': {
    'num_frames': 32,
    'frame_stride': 2,
    'image_size': 224,
    'crop_area': (0.3, 1.0),
    'flip': True,
    'resize': 0,
  },
}


def data_config(dataset: str, **fields) -> ml_collections.ConfigDict:
  """ConfigDict({'data': ...}) with every field of `dataset`'s pipeline, `fields`
  replacing the defaults."""
  return ml_collections.ConfigDict({'data': common.data(**{**DEFAULTS[dataset], **fields})})
