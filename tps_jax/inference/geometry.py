"""Crop geometry of the end-to-end pipeline, on device: the training builders' rules.

The networks were trained on inputs the host made with PIL (tps_jax/data/builders.py,
tps_jax/data/pipelines.py, tps_jax/data/augment.py); at inference the same geometry
is computed here in jnp, batched and jittable, and the pixels are resampled on device
by bilinear RoIAlign (`ops.roi_align`, aligned, one sample per output pixel and up to
`MAX_SAMPLES` per axis when shrinking, i.e. PIL's pixel-centre convention with a box
filter for downscaling). Rules mirrored:

- canvas (`augment.resize_pad`): a frame (h, w) is scaled by s = min(H / h, W / w) to
  content (round(h s), round(w s)) at the top-left of an (H, W) canvas, padding the
  mean colour (0 after normalisation); per axis, frame edge x maps to x * cw / w;
- human crop (`augment.context_region`): the inclusive human box grown by `context` x
  its size on each side, rounded outwards to integers, clipped to the frame;
- part detector input (`pipelines.detector_example` on the crop): the crop resized to
  fit (Hp, Wp) keeping its aspect ratio, top-left, padded;
- part-state input (`pipelines.part_state_example`, eval): the crop squeezed to R x R,
  then the centred S x S window.

Boxes: inclusive pixels at the interfaces (as the annotations and the part-state
network take them); continuous edges inside (x2 + 1), as the detectors output them.
"""
from __future__ import annotations

import jax.numpy as jnp

from tps_jax.ops.roi_align import roi_align

MAX_SAMPLES = 2     # bilinear samples per output pixel and axis when shrinking


def fit_content(frame_hw, canvas_hw):
  """`resize_pad`'s content size: (..., 2) frame (h, w) -> (..., 2) float32 (h, w)."""
  frame_hw = jnp.asarray(frame_hw, jnp.float32)
  canvas = jnp.asarray(canvas_hw, jnp.float32)
  scale = jnp.min(canvas / frame_hw, axis=-1, keepdims=True)
  return jnp.clip(jnp.round(frame_hw * scale), 1.0, canvas)


def scale_boxes(boxes, factor_hw):
  """Edge boxes (..., 4) times per-axis factors (..., 2) given as (y, x)."""
  fy, fx = factor_hw[..., 0:1], factor_hw[..., 1:2]
  return boxes * jnp.concatenate([fx, fy, fx, fy], axis=-1)


def shift_boxes(boxes, origin_xy):
  """Edge boxes (..., 4) plus an (x, y) origin (..., 2)."""
  return boxes + jnp.concatenate([origin_xy, origin_xy], axis=-1)


def context_regions(boxes, frame_hw, context: float):
  """Integer crop regions (left, top, right, bottom) of inclusive boxes (..., 4) in
  frames (..., 2): grown by `context` x the size per side, outwards, clipped; at
  least one pixel."""
  x1, y1 = boxes[..., 0], boxes[..., 1]
  x2, y2 = boxes[..., 2] + 1.0, boxes[..., 3] + 1.0
  dx, dy = context * (x2 - x1), context * (y2 - y1)
  height, width = frame_hw[..., 0], frame_hw[..., 1]
  left = jnp.clip(jnp.floor(x1 - dx), 0.0, width - 1.0)
  top = jnp.clip(jnp.floor(y1 - dy), 0.0, height - 1.0)
  right = jnp.maximum(jnp.minimum(width, jnp.ceil(x2 + dx)), left + 1.0)
  bottom = jnp.maximum(jnp.minimum(height, jnp.ceil(y2 + dy)), top + 1.0)
  return jnp.stack([left, top, right, bottom], axis=-1)


def resample(images, regions, output_size: tuple[int, int]):
  """Bilinear crops: images (N, H, W, C), regions (N, K, 4) edges -> (N, K, h, w, C)."""
  return roi_align(images, regions, output_size, spatial_scale=1.0, sampling_ratio=-1,
                   aligned=True, max_sampling_ratio=MAX_SAMPLES)


def content_mask(content_hw, output_size: tuple[int, int]):
  """(..., h, w, 1) float mask of the top-left content (..., 2) of an output canvas."""
  rows = jnp.arange(output_size[0], dtype=jnp.float32)
  cols = jnp.arange(output_size[1], dtype=jnp.float32)
  inside = ((rows[:, None] < content_hw[..., 0, None, None]) &
            (cols[None, :] < content_hw[..., 1, None, None]))
  return inside[..., None].astype(jnp.float32)


def fitted_crops(canvas, canvas_scale, regions, output_size: tuple[int, int]):
  """Crops resized to fit `output_size` keeping the aspect ratio (the part detector's
  input): (crops (N, K, h, w, C) padded with 0, content (N, K, 2) (h, w), crop scale
  (N, K, 2) (y, x): crop pixels -> input pixels).

  canvas (N, H, W, C) normalised; canvas_scale (N, 2): frame -> canvas (y, x);
  regions (N, K, 4) frame edges.
  """
  region_hw = jnp.stack([regions[..., 3] - regions[..., 1],
                         regions[..., 2] - regions[..., 0]], axis=-1)
  content = fit_content(region_hw, output_size)
  crop_scale = content / region_hw
  out = jnp.asarray(output_size, jnp.float32)
  # The whole output canvas seen in frame pixels: its content is the region.
  window = jnp.concatenate([regions[..., :2], regions[..., :2] + (out / crop_scale)[..., ::-1]],
                           axis=-1)
  crops = resample(canvas, scale_boxes(window, canvas_scale[:, None]), output_size)
  return crops * content_mask(content, output_size), content, crop_scale


def squeezed_crops(canvas, canvas_scale, regions, resize: int, output_size: tuple[int, int]):
  """The part-state input: each region squeezed to resize x resize, centre window
  `output_size` (crops (N, K, h, w, C), crop scale (N, K, 2) (y, x) = resize / region
  size, offset (y, x) of the window in the squeezed crop)."""
  region_hw = jnp.stack([regions[..., 3] - regions[..., 1],
                         regions[..., 2] - regions[..., 0]], axis=-1)
  crop_scale = resize / region_hw
  offset = (resize - jnp.asarray(output_size, jnp.float32)) / 2.0
  start = regions[..., :2] + (offset / crop_scale)[..., ::-1]
  end = start + (jnp.asarray(output_size, jnp.float32) / crop_scale)[..., ::-1]
  window = jnp.concatenate([start, end], axis=-1)
  crops = resample(canvas, scale_boxes(window, canvas_scale[:, None]), output_size)
  return crops, crop_scale, offset


def boxes_into_window(frame_edges, regions, crop_scale, offset, output_size):
  """Frame edge boxes (..., P, 4) of a region's parts -> inclusive boxes in the
  squeezed window (`squeezed_crops`) and whether any of each box is left there.

  regions (..., 4), crop_scale (..., 2), offset (2,) broadcast over the P boxes.
  """
  local = shift_boxes(frame_edges, -regions[..., None, :2])
  local = scale_boxes(local, crop_scale[..., None, :])
  local = shift_boxes(local, -jnp.broadcast_to(offset[::-1], local.shape[:-1] + (2,)))
  height, width = output_size
  clipped = jnp.stack([jnp.clip(local[..., 0], 0, width), jnp.clip(local[..., 1], 0, height),
                       jnp.clip(local[..., 2], 0, width), jnp.clip(local[..., 3], 0, height)],
                      axis=-1)
  visible = (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])
  return clipped - jnp.array([0.0, 0.0, 1.0, 1.0]), visible
