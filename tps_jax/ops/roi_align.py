"""RoIAlign (He et al. 2017) on NHWC features, numerically torchvision's roi_align.

Every output bin averages `grid_h x grid_w` bilinear samples placed at the centres
of a regular sub-grid of the bin, with torchvision's edge rules: a sample more than
one pixel outside the map contributes 0, samples in [-1, 0] read the border, and
the average always divides by the full sample count. Both the bilinear weights and
those rules are separable in y and x, so each RoI is described by two small tables
per axis: (bins, 2 * samples) pixel indices and weights (two neighbours per
sample, the 1 / grid_size average folded in). Two implementations read them:

- 'gather': gathers the (2S)^2 neighbours of every bin and contracts with the
  weights; work ~ K * out_h * out_w * 4 S^2 * C, like torchvision's kernel.
  Fastest on CPU, where the dense form below wastes most of its work.
- 'einsum': scatters the tables into dense (out_h, H) and (out_w, W) interpolation
  matrices and computes A_y F A_x^T with two einsums: work ~ K * out_h * H * W * C,
  more arithmetic but plain matmuls (no gathers / scatters in the forward or the
  backward pass), the fast form on GPUs and TPUs.

`impl=None` picks 'gather' on CPU and 'einsum' elsewhere. Gradients flow to the
features (boxes are treated as constants, as torchvision does).

sampling_ratio <= 0 is torchvision's / mmdetection's adaptive rule, ceil(roi_size /
out_size) samples per bin per RoI; under jit the sample count is capped at the
static `max_sampling_ratio` (extra sample slots get zero weight), which is exact
for every RoI whose adaptive count is within the cap and uses `max_sampling_ratio`
evenly spaced samples for larger RoIs.

`multilevel_roi_align` pools each RoI from its own FPN level. With 'gather' all
levels are flattened into one table and each RoI gathers with its level's offset,
size and scale, so the cost is that of one level whatever the number of levels
(no compute-all-and-select). With 'einsum' each level's matrices are built with
zero weights for RoIs of other levels and the per-level results are summed: the
dense cost is sum over levels, about 4/3 of the finest level alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _pair(size) -> tuple[int, int]:
  return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _axis_tables(start, length, bins: int, extent, sampling_ratio: int, max_sampling_ratio: int):
  """Sampling tables along one axis for every RoI.

  Args:
    start, length: (...,) RoI start and length on the feature map (float32).
    bins: number of output bins along the axis.
    extent: feature map size along the axis (int, or (...,) per RoI).
    sampling_ratio: > 0 fixed samples per bin; <= 0 adaptive, capped.

  Returns:
    index (..., bins, 2 * S) int32 pixel indices (low and high neighbour of each
    sample) and weight (..., bins, 2 * S) float32, with S the static sample count.
  """
  if sampling_ratio > 0:
    num = sampling_ratio
    grid = jnp.full(start.shape, float(sampling_ratio), jnp.float32)
  else:
    num = max_sampling_ratio
    grid = jnp.clip(jnp.ceil(length / bins), 0.0, float(max_sampling_ratio))
  bin_size = length / bins
  grid_safe = jnp.maximum(grid, 1.0)[..., None, None]
  sample = jnp.arange(num, dtype=jnp.float32)
  # torchvision: start + p * bin + (i + .5) * bin / grid, in this order (float32).
  coord = (
    start[..., None, None]
    + jnp.arange(bins, dtype=jnp.float32)[:, None] * bin_size[..., None, None]
    + (sample + 0.5) * bin_size[..., None, None] / grid_safe
  )  # (..., bins, S)
  extent = jnp.asarray(extent, jnp.float32)
  extent_b = extent[..., None, None] if extent.ndim else extent
  inside = (coord >= -1.0) & (coord <= extent_b) & (sample < grid[..., None, None])
  coord = jnp.maximum(coord, 0.0)
  low = jnp.floor(coord)
  at_edge = low >= extent_b - 1.0
  low = jnp.where(at_edge, extent_b - 1.0, low)
  high = jnp.where(at_edge, extent_b - 1.0, low + 1.0)
  frac = jnp.where(at_edge, 0.0, coord - low)
  scale = jnp.where(inside, 1.0, 0.0) / grid_safe
  index = jnp.stack([low, high], axis=-1).astype(jnp.int32)
  weight = jnp.stack([(1.0 - frac) * scale, frac * scale], axis=-1)
  shape = index.shape[:-2] + (2 * num,)
  return index.reshape(shape), weight.reshape(shape)


def _roi_tables(
  boxes, scale, height, width, output_size, sampling_ratio, aligned, max_sampling_ratio
):
  """y and x tables for boxes (..., 4) at `scale` on maps of (height, width)."""
  boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (boxes[..., i] * scale - offset for i in range(4))
  roi_w, roi_h = x2 - x1, y2 - y1
  if not aligned:  # legacy behaviour: RoIs at least one pixel wide
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  out_h, out_w = output_size
  y_tables = _axis_tables(y1, roi_h, out_h, height, sampling_ratio, max_sampling_ratio)
  x_tables = _axis_tables(x1, roi_w, out_w, width, sampling_ratio, max_sampling_ratio)
  return y_tables, x_tables


def _pool_gather(table, base, row_stride, y_tables, x_tables, roi_chunk: int):
  """Gathers the (2S)^2 neighbours per bin from a flat (rows, C) table.

  XLA materialises a gather's output before contracting it, so RoIs go through
  `lax.map` in chunks of `roi_chunk`: the gathered neighbours of a chunk stay in
  cache (all RoIs at once would be ~1 GB for 1024 RoIs, 7x7, S=2, C=256).
  """
  (y_index, y_weight), (x_index, x_weight) = y_tables, x_tables
  lead = base.shape
  num_rois = math.prod(lead)
  out_h, out_w = y_index.shape[-2], x_index.shape[-2]
  if num_rois == 0:
    return jnp.zeros(lead + (out_h, out_w, table.shape[-1]), table.dtype)

  def pool_one(args):
    base, row_stride, y_index, y_weight, x_index, x_weight = args
    rows = base + y_index * row_stride  # (P, a)
    flat = rows[:, :, None, None] + x_index[None, None]  # (P, a, Q, b)
    values = jnp.take(table, flat, axis=0, mode='clip')  # (P, a, Q, b, C)
    weight = y_weight[:, :, None, None] * x_weight[None, None]
    return jnp.einsum(
      'paqb,paqbc->pqc', weight.astype(table.dtype), values, precision=jax.lax.Precision.HIGHEST
    )

  per_roi = [
    a.reshape((num_rois,) + a.shape[len(lead) :])
    for a in (base, row_stride, y_index, y_weight, x_index, x_weight)
  ]
  out = jax.lax.map(pool_one, tuple(per_roi), batch_size=min(roi_chunk, num_rois))
  return out.reshape(lead + out.shape[1:])


def _dense_matrix(index, weight, size: int):
  """(..., bins, 2S) tables -> (..., bins, size) interpolation matrix."""
  one_hot = index[..., None] == jnp.arange(size, dtype=jnp.int32)
  return jnp.einsum('...s,...sh->...h', weight, one_hot.astype(weight.dtype))


def _pool_einsum(features, y_tables, x_tables, precision):
  """A_y F A_x^T per RoI with dense interpolation matrices; features (N, H, W, C)."""
  _, height, width, _ = features.shape
  a_y = _dense_matrix(*y_tables, height).astype(features.dtype)  # (N, K, P, H)
  a_x = _dense_matrix(*x_tables, width).astype(features.dtype)  # (N, K, Q, W)
  rows = jnp.einsum('nkph,nhwc->nkpwc', a_y, features, precision=precision)
  return jnp.einsum('nkqw,nkpwc->nkpqc', a_x, rows, precision=precision)


def _default_impl() -> str:
  return 'gather' if jax.default_backend() == 'cpu' else 'einsum'


_STATIC = (
  'output_size',
  'spatial_scales',
  'sampling_ratio',
  'aligned',
  'max_sampling_ratio',
  'impl',
  'precision',
  'roi_chunk',
)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _multilevel_roi_align(
  features,
  boxes,
  levels,
  *,
  output_size,
  spatial_scales,
  sampling_ratio,
  aligned,
  max_sampling_ratio,
  impl,
  precision,
  roi_chunk,
):
  num_images = boxes.shape[0]
  num_levels = len(features)
  levels = jnp.clip(levels, 0, num_levels - 1)
  shapes = [f.shape[1:3] for f in features]

  if impl == 'einsum':
    out = 0.0
    for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
      tables = _roi_tables(
        boxes, scale, *shapes[level], output_size, sampling_ratio, aligned, max_sampling_ratio
      )
      if num_levels > 1:  # zero the weights of RoIs that belong to other levels
        mine = (levels == level)[..., None, None]
        tables = tuple((index, jnp.where(mine, weight, 0.0)) for index, weight in tables)
      out = out + _pool_einsum(feature, *tables, precision)
    return out

  # gather: one flat (rows, C) table over all levels and images.
  channels = features[0].shape[-1]
  table = jnp.concatenate([f.reshape(-1, channels) for f in features], axis=0)
  level_base = np.cumsum([0] + [num_images * h * w for h, w in shapes[:-1]])
  pick = lambda values, dtype: jnp.asarray(np.asarray(values), dtype)[levels]
  heights = pick([h for h, _ in shapes], jnp.int32)
  widths = pick([w for _, w in shapes], jnp.int32)
  scales = pick(spatial_scales, jnp.float32)
  image = jnp.arange(num_images, dtype=jnp.int32)[:, None]
  base = pick(level_base, jnp.int32) + image * heights * widths
  tables = _roi_tables(
    boxes, scales, heights, widths, output_size, sampling_ratio, aligned, max_sampling_ratio
  )
  return _pool_gather(table, base, widths, *tables, roi_chunk)


def multilevel_roi_align(
  features: Sequence[jax.Array],
  boxes,
  levels,
  output_size,
  spatial_scales: Sequence[float],
  sampling_ratio: int = -1,
  aligned: bool = False,
  *,
  max_sampling_ratio: int = 4,
  impl: str | None = None,
  precision=jax.lax.Precision.HIGHEST,
  roi_chunk: int = 4,
):
  """RoIAlign of each RoI on its own pyramid level.

  Args:
    features: per level (N, H_l, W_l, C), same N and C.
    boxes: (N, K, 4) xyxy in image pixels (padded rows are fine: any values).
    levels: (N, K) int level of each RoI (e.g. from `assign.map_roi_levels`);
      clipped to the valid range.
    output_size: int or (out_h, out_w).
    spatial_scales: per level, feature size / image size (1 / stride).
    sampling_ratio, aligned, max_sampling_ratio: as `roi_align`.
    impl: 'gather', 'einsum' or None (by backend; see the module docstring).
    precision: matmul precision of the 'einsum' path (HIGHEST keeps float32 on
      accelerators; DEFAULT allows TF32 / bf16 passes).
    roi_chunk: RoIs per step of the 'gather' path (see `_pool_gather`).

  Returns:
    (N, K, out_h, out_w, C) in the features' dtype.
  """
  features = [jnp.asarray(f) for f in features]
  if len(features) != len(spatial_scales):
    raise ValueError(
      f'multilevel_roi_align: {len(features)} feature maps but {len(spatial_scales)} spatial_scales'
    )
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f'roi_align: boxes must be (N, K, 4), got {boxes.shape}')
  impl = impl or _default_impl()
  if impl not in ('gather', 'einsum'):
    raise ValueError(f"roi_align: impl must be 'gather' or 'einsum', got {impl!r}")
  return _multilevel_roi_align(
    features,
    jnp.asarray(boxes),
    jnp.asarray(levels, jnp.int32),
    output_size=_pair(output_size),
    spatial_scales=tuple(float(s) for s in spatial_scales),
    sampling_ratio=int(sampling_ratio),
    aligned=bool(aligned),
    max_sampling_ratio=int(max_sampling_ratio),
    impl=impl,
    precision=precision,
    roi_chunk=int(roi_chunk),
  )


def roi_align(
  features,
  boxes,
  output_size,
  spatial_scale: float = 1.0,
  sampling_ratio: int = -1,
  aligned: bool = False,
  *,
  max_sampling_ratio: int = 4,
  impl: str | None = None,
  precision=jax.lax.Precision.HIGHEST,
  roi_chunk: int = 4,
):
  """torchvision.ops.roi_align on NHWC features with per-image boxes.

  Args:
    features: (N, H, W, C).
    boxes: (N, K, 4) xyxy in image coordinates; box k of image n pools from
      features[n]. Padded rows may hold anything (mask the outputs).
    output_size: int or (out_h, out_w).
    spatial_scale: feature size / image size (1 / stride).
    sampling_ratio: samples per bin along each axis; <= 0: adaptive
      ceil(roi_size / output_size), capped at `max_sampling_ratio` under jit.
    aligned: shift boxes by -0.5 pixel (the pixel-centre model; Detectron2,
      mmdetection). False is the legacy behaviour and torchvision's default.

  Returns:
    (N, K, out_h, out_w, C).
  """
  return multilevel_roi_align(
    [features],
    boxes,
    jnp.zeros(boxes.shape[:2], jnp.int32),
    output_size,
    [spatial_scale],
    sampling_ratio,
    aligned,
    max_sampling_ratio=max_sampling_ratio,
    impl=impl,
    precision=precision,
    roi_chunk=roi_chunk,
  )
