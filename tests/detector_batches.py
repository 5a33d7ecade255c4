"""Hand-made detector batches shared by the detector tests: two 96 x 128 images."""

import jax.numpy as jnp
import numpy as np

TINY_SHAPE = (2, 96, 128, 3)
FULL = np.array([[96.0, 128.0]] * 2, np.float32)  # image_shape: no padding
OBJECTS = [[(10, 12, 60, 70), (70, 20, 120, 90)], [(30, 30, 90, 80)]]


def images(seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(TINY_SHAPE), jnp.float32)


def targets(boxes, labels=None, ignore=None, max_boxes=4):
  """Padded targets of two images: boxes is a list (one list of xyxy per image)."""
  out = {
    'boxes': np.zeros((2, max_boxes, 4), np.float32),
    'labels': np.zeros((2, max_boxes), np.int32),
    'valid': np.zeros((2, max_boxes), bool),
    'ignore': np.zeros((2, max_boxes), bool),
  }
  for b, image_boxes in enumerate(boxes):
    for i, box in enumerate(image_boxes):
      out['boxes'][b, i] = box
      out['valid'][b, i] = True
      out['labels'][b, i] = 0 if labels is None else labels[b][i]
      out['ignore'][b, i] = False if ignore is None else ignore[b][i]
  return out


def total(losses):
  """The sum of a detector's weighted losses (its `loss_*` entries)."""
  return sum(v for k, v in losses.items() if k.startswith('loss_'))
