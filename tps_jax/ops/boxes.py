"""Box geometry and box coders: pure jnp, any leading batch dimensions.

Boxes are `(x1, y1, x2, y2)` in absolute pixels, continuous coordinates (no "+1"
width convention, as torchvision and mmdetection 2.x). Image shapes are
`(height, width)`. Every function broadcasts over leading dimensions and is safe on
degenerate input: zero-area or inverted boxes give IoU 0, never NaN, and the
coders clamp widths away from zero so that padded rows produce finite values and
finite gradients (the padding is masked out later by the caller).

Coders:
- `encode_deltas` / `decode_deltas`: the (dx, dy, dw, dh) parameterisation of
  R-CNN with per-coordinate `means` / `stds` (mmdetection's DeltaXYWHBBoxCoder;
  torchvision's `BoxCoder(weights)` is `stds = 1 / weights`, means 0) and the
  log-scale clamp at log(1000 / 16).
- `encode_distances` / `decode_distances`: the (left, top, right, bottom)
  distances from a point used by GFL (mmdetection's DistancePointBBoxCoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

# log(1000 / 16): the largest log-scale change the decoders allow (torchvision's
# `bbox_xform_clip`, mmdetection's `wh_ratio_clip=16/1000`).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# Widths below this are treated as this in the coders (degenerate padded boxes).
_MIN_SIZE = 1e-6


def _safe_div(num, den):
  """num / den where den > 0, else 0; finite gradients on both branches."""
  positive = den > 0
  return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def box_area(boxes):
  """(..., 4) -> (...,): (x2 - x1) * (y2 - y1), as torchvision (negative if inverted)."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_overlaps(boxes1, boxes2, mode: str = 'iou', aligned: bool = False):
  """IoU-family overlaps, pairwise or aligned (mmdetection's `bbox_overlaps`).

  Args:
    boxes1: (..., N, 4).
    boxes2: (..., M, 4); with `aligned`, any shape broadcastable with `boxes1`.
    mode: 'iou'; 'giou' (generalised IoU, in [-1, 1]); 'iof' (intersection over
      the area of `boxes1`, the "foreground": used for ignore regions).
    aligned: elementwise over broadcast (..., 4) instead of all pairs.

  Returns:
    (..., N, M) pairwise, or the broadcast leading shape when aligned. A zero
    denominator (zero-area boxes) gives 0.
  """
  if mode not in ('iou', 'giou', 'iof'):
    raise ValueError(f"box_overlaps: mode must be 'iou', 'giou' or 'iof', got {mode!r}")
  if not aligned:
    boxes1, boxes2 = boxes1[..., :, None, :], boxes2[..., None, :, :]
  area1, area2 = box_area(boxes1), box_area(boxes2)
  top_left = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
  bottom_right = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
  wh = jnp.maximum(bottom_right - top_left, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  if mode == 'iof':
    return _safe_div(inter, area1)
  union = area1 + area2 - inter
  iou = _safe_div(inter, union)
  if mode == 'iou':
    return iou
  enclose_wh = jnp.maximum(
    jnp.maximum(boxes1[..., 2:], boxes2[..., 2:]) - jnp.minimum(boxes1[..., :2], boxes2[..., :2]),
    0.0,
  )
  enclose = enclose_wh[..., 0] * enclose_wh[..., 1]
  return iou - _safe_div(enclose - union, enclose)


def box_iou(boxes1, boxes2):
  """Pairwise IoU (..., N, 4) x (..., M, 4) -> (..., N, M) (torchvision.ops.box_iou)."""
  return box_overlaps(boxes1, boxes2, 'iou')


def generalized_box_iou(boxes1, boxes2):
  """Pairwise GIoU (torchvision.ops.generalized_box_iou)."""
  return box_overlaps(boxes1, boxes2, 'giou')


def clip_boxes(boxes, image_shape):
  """Clips x to [0, width] and y to [0, height].

  `image_shape` is (height, width): a tuple, or an array (..., 2) broadcastable
  with the boxes' leading dimensions (one shape per image of a padded batch).
  """
  image_shape = jnp.asarray(image_shape, boxes.dtype)
  # (..., ) image leading dims -> trailing singleton axes for the boxes' extra dims.
  trailing = (1,) * (boxes.ndim - image_shape.ndim + 1)
  height = image_shape[..., 0].reshape(image_shape.shape[:-1] + trailing)
  width = image_shape[..., 1].reshape(image_shape.shape[:-1] + trailing)
  x = jnp.clip(boxes[..., 0::2], 0.0, width)
  y = jnp.clip(boxes[..., 1::2], 0.0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def to_edges(boxes):
  """Inclusive-pixel boxes (the dataset's: x2 = last column) -> continuous edges
  (x2 = right edge), the convention of these ops and of the networks."""
  return jnp.asarray(boxes, jnp.float32) + jnp.array([0.0, 0.0, 1.0, 1.0])


def to_inclusive(boxes):
  """Continuous-edge boxes -> the dataset's inclusive-pixel convention."""
  return jnp.asarray(boxes, jnp.float32) - jnp.array([0.0, 0.0, 1.0, 1.0])


def box_xyxy_to_cxcywh(boxes):
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], axis=-1)


def box_cxcywh_to_xyxy(boxes):
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_centers(boxes):
  """(..., 4) -> (..., 2) centre points (x, y)."""
  return (boxes[..., :2] + boxes[..., 2:]) * 0.5


def min_size_mask(boxes, min_size: float):
  """True where both sides are >= min_size (torchvision's remove_small_boxes, as a mask)."""
  return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
    (boxes[..., 3] - boxes[..., 1]) >= min_size
  )


# ------------------------------------------------------------------ delta coder


def encode_deltas(
  boxes,
  anchors,
  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
):
  """Regression targets taking `anchors` to `boxes`, both (..., 4) broadcastable.

  dx = (gx - px) / pw, dw = log(gw / pw) (same for y, h), then (d - means) / stds.
  Cascade R-CNN's stages use stds (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1),
  (0.033, 0.033, 0.067, 0.067); torchvision's weights (10, 10, 5, 5) = stds 1/w.
  """
  anchors = anchors.astype(jnp.float32)
  boxes = boxes.astype(jnp.float32)
  p_wh = jnp.maximum(anchors[..., 2:] - anchors[..., :2], _MIN_SIZE)
  g_wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], _MIN_SIZE)
  p_xy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
  g_xy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
  deltas = jnp.concatenate([(g_xy - p_xy) / p_wh, jnp.log(g_wh / p_wh)], axis=-1)
  return (deltas - jnp.asarray(means, jnp.float32)) / jnp.asarray(stds, jnp.float32)


def decode_deltas(
  deltas,
  anchors,
  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
  *,
  log_scale_clip: float | tuple[float, float] = BBOX_XFORM_CLIP,
  max_shape=None,
):
  """Inverse of `encode_deltas`: boxes (..., 4) from deltas and anchors.

  Args:
    log_scale_clip: clamp of dw, dh after de-normalisation: a float c clamps to
      [-c, c] (mmdetection); a pair (lo, hi) clamps to [lo, hi] (torchvision
      clamps only above: `(-inf, BBOX_XFORM_CLIP)`).
    max_shape: optional (height, width) (or per-image (..., 2)) to clip to.
  """
  lo, hi = (
    (-log_scale_clip, log_scale_clip)
    if isinstance(log_scale_clip, (int, float))
    else log_scale_clip
  )
  deltas = deltas.astype(jnp.float32) * jnp.asarray(stds, jnp.float32) + jnp.asarray(
    means, jnp.float32
  )
  anchors = anchors.astype(jnp.float32)
  p_xy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
  p_wh = anchors[..., 2:] - anchors[..., :2]
  xy = p_xy + p_wh * deltas[..., :2]
  wh = p_wh * jnp.exp(jnp.clip(deltas[..., 2:], lo, hi))
  boxes = jnp.concatenate([xy - wh * 0.5, xy + wh * 0.5], axis=-1)
  return boxes if max_shape is None else clip_boxes(boxes, max_shape)


# --------------------------------------------------------------- distance coder


def encode_distances(points, boxes, max_distance: float | None = None, eps: float = 0.1):
  """(left, top, right, bottom) from `points` (..., 2) to box sides (..., 4).

  Clamped to [0, max_distance - eps] when `max_distance` is given (GFL encodes in
  units of the level's stride with max_distance = reg_max).
  """
  points = points.astype(jnp.float32)
  distances = jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
  upper = None if max_distance is None else max_distance - eps
  return jnp.clip(distances, 0.0, upper)


def decode_distances(points, distances, max_shape=None):
  """Boxes (..., 4) from points (..., 2) and (left, top, right, bottom) distances."""
  points = points.astype(jnp.float32)
  boxes = jnp.concatenate([points - distances[..., :2], points + distances[..., 2:]], axis=-1)
  return boxes if max_shape is None else clip_boxes(boxes, max_shape)
