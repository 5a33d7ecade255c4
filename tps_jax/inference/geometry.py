"""Crop geometry of the end-to-end pipeline, on device: the training builders' rules.

The networks were trained on inputs the host made with PIL (tps_jax/datasets/examples.py,
tps_jax/input/pipelines.py, tps_jax/data/augment.py); at inference the same geometry
is computed here in jnp, batched and jittable, and the pixels are resampled on device
with PIL's bilinear filter (`resample`: a triangle of radius max(1, scale) around each
output pixel's centre, normalised, reading only the crop's own pixels as PIL does on
the cut-out crop) as two dense matmuls per crop. Against PIL on the same pixels the
crops differ by about 0.3 grey level on average (PIL rounds to integers after each
axis; tests/test_pipeline.py). Rules mirrored:

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

import jax
import jax.numpy as jnp


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


def crop_to_frame(edges, regions, crop_scale):
  """Edge boxes (..., 4) in a crop's input pixels -> frame pixels; the crop is `region`
  (..., 4) of the frame, scaled by `crop_scale` (..., 2) (y, x)."""
  return shift_boxes(scale_boxes(edges, 1.0 / crop_scale), regions[..., :2])


def frame_to_crop(edges, regions, crop_scale):
  """The inverse of `crop_to_frame`."""
  return scale_boxes(shift_boxes(edges, -regions[..., :2]), crop_scale)


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


def _filter_weights(start, step, bins: int, low, high, size: int):
  """(..., bins, size) PIL bilinear weights along one axis: output pixel i is centred at
  start + (i + 0.5) step; input pixels outside [low, high) take no part."""
  support = jnp.maximum(step, 1.0)[..., None, None]
  centre = start[..., None] + (jnp.arange(bins, dtype=jnp.float32) + 0.5) * step[..., None]
  pixel = jnp.arange(size, dtype=jnp.float32)
  weight = jnp.maximum(0.0, 1.0 - jnp.abs(pixel + 0.5 - centre[..., None]) / support)
  weight = jnp.where((pixel >= low[..., None, None]) & (pixel < high[..., None, None]), weight, 0.0)
  return weight / jnp.maximum(weight.sum(-1, keepdims=True), 1e-12)


def resample(images, start, step, bounds, output_size: tuple[int, int]):
  """Bilinear crops as PIL resizes: images (N, H, W, C); per crop (N, K, 2) (x, y) the
  first output pixel's edge `start` and the input pixels per output pixel `step`, and
  the (N, K, 4) pixel `bounds` (left, top, right, bottom) it may read -> (N, K, h, w, C).
  """
  out_h, out_w = output_size
  height, width = images.shape[1:3]
  bounds = jnp.round(bounds)
  rows = _filter_weights(
    start[..., 1], step[..., 1], out_h, bounds[..., 1], bounds[..., 3], height
  )  # (N, K, h, H)
  cols = _filter_weights(
    start[..., 0], step[..., 0], out_w, bounds[..., 0], bounds[..., 2], width
  )  # (N, K, w, W)
  precision = jax.lax.Precision.HIGHEST
  if out_h * width <= height * out_w:  # contract the bigger axis second: fewer flops
    tmp = jnp.einsum('nkyh,nhwc->nkywc', rows, images, precision=precision)
    return jnp.einsum('nkxw,nkywc->nkyxc', cols, tmp, precision=precision)
  tmp = jnp.einsum('nkxw,nhwc->nkhxc', cols, images, precision=precision)
  return jnp.einsum('nkyh,nkhxc->nkyxc', rows, tmp, precision=precision)


def content_mask(content_hw, output_size: tuple[int, int]):
  """(..., h, w, 1) float mask of the top-left content (..., 2) of an output canvas."""
  rows = jnp.arange(output_size[0], dtype=jnp.float32)
  cols = jnp.arange(output_size[1], dtype=jnp.float32)
  inside = (rows[:, None] < content_hw[..., 0, None, None]) & (
    cols[None, :] < content_hw[..., 1, None, None]
  )
  return inside[..., None].astype(jnp.float32)


def _region_hw(regions):
  return jnp.stack([regions[..., 3] - regions[..., 1], regions[..., 2] - regions[..., 0]], axis=-1)


def _crops(canvas, canvas_scale, regions, start, crop_scale, output_size):
  """`resample` of frame regions whose output pixel i starts at frame x = start +
  i / crop_scale, reading the region's pixels, on a canvas `canvas_scale` x the frame."""
  to_canvas = canvas_scale[:, None, ::-1]  # (N, 1, 2) (x, y)
  return resample(
    canvas,
    start * to_canvas,
    to_canvas / crop_scale[..., ::-1],
    scale_boxes(regions, canvas_scale[:, None]),
    output_size,
  )


def fitted_crops(canvas, canvas_scale, regions, output_size: tuple[int, int]):
  """Crops resized to fit `output_size` keeping the aspect ratio (the part detector's
  input): (crops (N, K, h, w, C) padded with 0, content (N, K, 2) (h, w), crop scale
  (N, K, 2) (y, x): crop pixels -> input pixels).

  canvas (N, H, W, C) normalised; canvas_scale (N, 2): frame -> canvas (y, x);
  regions (N, K, 4) frame edges.
  """
  region_hw = _region_hw(regions)
  content = fit_content(region_hw, output_size)
  crop_scale = content / region_hw
  crops = _crops(canvas, canvas_scale, regions, regions[..., :2], crop_scale, output_size)
  return crops * content_mask(content, output_size), content, crop_scale


def squeezed_crops(canvas, canvas_scale, regions, resize: int, output_size: tuple[int, int]):
  """The part-state input: each region squeezed to resize x resize, centre window
  `output_size` (crops (N, K, h, w, C), crop scale (N, K, 2) (y, x) = resize / region
  size, offset (y, x) of the window in the squeezed crop)."""
  crop_scale = resize / _region_hw(regions)
  offset = (resize - jnp.asarray(output_size, jnp.float32)) / 2.0
  start = regions[..., :2] + (offset / crop_scale)[..., ::-1]
  crops = _crops(canvas, canvas_scale, regions, start, crop_scale, output_size)
  return crops, crop_scale, offset


def boxes_into_window(frame_edges, regions, crop_scale, offset, output_size):
  """Frame edge boxes (..., P, 4) of a region's parts -> inclusive boxes in the
  squeezed window (`squeezed_crops`) and whether any of each box is left there.

  regions (..., 4), crop_scale (..., 2), offset (2,) broadcast over the P boxes.
  """
  local = frame_to_crop(frame_edges, regions[..., None, :], crop_scale[..., None, :])
  local = shift_boxes(local, -jnp.broadcast_to(offset[::-1], local.shape[:-1] + (2,)))
  height, width = output_size
  clipped = jnp.stack(
    [
      jnp.clip(local[..., 0], 0, width),
      jnp.clip(local[..., 1], 0, height),
      jnp.clip(local[..., 2], 0, width),
      jnp.clip(local[..., 3], 0, height),
    ],
    axis=-1,
  )
  visible = (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])
  return clipped - jnp.array([0.0, 0.0, 1.0, 1.0]), visible


def scaled_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
  """A static input size (h, w) times a test-time scale factor, at least a pixel."""
  return tuple(max(1, round(side * factor)) for side in size)


def whole_frames(frame_hw):
  """(N, 1, 4) regions (left, top, right, bottom) covering each frame (N, 2) (h, w)."""
  zeros = jnp.zeros_like(frame_hw)
  return jnp.concatenate([zeros, frame_hw[:, ::-1]], axis=-1)[:, None]


def mirror_columns(images, content_w):
  """Images (..., H, W, C) with their first `content_w` (...) columns mirrored (the
  content at the top-left of a padded input, as the networks take it); the padding
  stays where it is. Mirroring twice gives the images back exactly."""
  width = images.shape[-2]
  x = jnp.arange(width)
  cw = jnp.round(content_w).astype(jnp.int32)[..., None]
  index = jnp.where(x < cw, cw - 1 - x, x)  # (..., W)
  index = jnp.broadcast_to(index[..., None, :, None], images.shape[:-3] + (1, width, 1))
  return jnp.take_along_axis(images, index, axis=-2)


def mirror_edges(edges, content_w):
  """Edge boxes (..., 4) on an input whose content (...) columns were mirrored ->
  the boxes on the input before (`mirror_columns`); its own inverse."""
  cw = jnp.asarray(content_w, edges.dtype)
  return jnp.stack([cw - edges[..., 2], edges[..., 1], cw - edges[..., 0], edges[..., 3]], axis=-1)
