"""FPN anchors: static numpy constants computed at trace time from static shapes.

Conventions (torchvision's AnchorGenerator and mmdetection 2.x's AnchorGenerator
agree on all of these):
- Cell anchors per level: for each aspect ratio r = h / w (outer loop) and each
  size s (inner loop), a box of width s / sqrt(r) and height s * sqrt(r) centred
  on the cell centre. Index of (ratio i, size j) = i * len(sizes) + j.
- Grid: the anchor centre of cell (y, x) is ((x + center_offset) * stride_x,
  (y + center_offset) * stride_y); center_offset is 0 in both libraries' detector
  configs (RPN, RetinaNet, ATSS/GFL), i.e. centres on the cell's top-left corner.
- Flattened order per level: row-major over (y, x), then the cell anchors:
  index = (y * W + x) * A + a, matching a head's (H, W, A * 4) output reshaped to
  (H * W * A, 4).
- torchvision rounds the cell anchors to integers (`round_cells=True`) and takes
  each level's stride as image_size // feature_size per axis (`strides=None`);
  mmdetection keeps fractional cells and uses the configured strides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorGenerator:
  """Anchors for a list of feature levels (static config; hashable).

  Attributes:
    sizes: per level, the anchor sides at aspect ratio 1, in pixels.
    aspect_ratios: per level, the h / w ratios.
    strides: per level, the stride in pixels (int, or (stride_y, stride_x)); None:
      derived from the image shape as image // feature (torchvision).
    center_offset: cell-centre offset in units of the stride.
    round_cells: round the cell anchors to integers (torchvision).
  """

  sizes: tuple[tuple[float, ...], ...]
  aspect_ratios: tuple[tuple[float, ...], ...]
  strides: tuple | None = None
  center_offset: float = 0.0
  round_cells: bool = False

  def __post_init__(self):
    if len(self.sizes) != len(self.aspect_ratios):
      raise ValueError(
        f'AnchorGenerator: {len(self.sizes)} levels of sizes but '
        f'{len(self.aspect_ratios)} of aspect_ratios'
      )
    if self.strides is not None and len(self.strides) != len(self.sizes):
      raise ValueError(f'AnchorGenerator: {len(self.strides)} strides for {len(self.sizes)} levels')

  @classmethod
  def torchvision(
    cls, sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
  ) -> AnchorGenerator:
    """torchvision.models.detection.anchor_utils.AnchorGenerator (its defaults: R-CNN FPN)."""
    return cls(
      tuple(map(tuple, sizes)), tuple(map(tuple, aspect_ratios)), strides=None, round_cells=True
    )

  @classmethod
  def mmdet(
    cls,
    strides: Sequence[int],
    ratios: Sequence[float],
    scales: Sequence[float] | None = None,
    octave_base_scale: float | None = None,
    scales_per_octave: int | None = None,
  ) -> AnchorGenerator:
    """mmdetection's AnchorGenerator with base_sizes = strides.

    Either `scales` (Cascade R-CNN RPN: [8]) or `octave_base_scale` and
    `scales_per_octave` (RetinaNet: 4 and 3; ATSS / GFL: 8 and 1).
    """
    if (scales is None) == (octave_base_scale is None):
      raise ValueError('AnchorGenerator.mmdet: give either scales or octave_base_scale')
    if scales is None:
      scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
    sizes = tuple(tuple(float(s) * stride for s in scales) for stride in strides)
    return cls(sizes, (tuple(ratios),) * len(strides), strides=tuple(strides))

  @property
  def num_levels(self) -> int:
    return len(self.sizes)

  @property
  def num_anchors_per_location(self) -> tuple[int, ...]:
    return tuple(len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios))

  def cell_anchors(self, level: int) -> np.ndarray:
    """(A, 4) float32 anchors of one level centred on (0, 0) (before the offset)."""
    sizes = np.asarray(self.sizes[level], np.float32)
    h_ratios = np.sqrt(np.asarray(self.aspect_ratios[level], np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    cells = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    return np.round(cells) if self.round_cells else cells

  def level_strides(self, feature_shapes, image_shape=None) -> list[tuple[int, int]]:
    """(stride_y, stride_x) per level."""
    if self.strides is None:
      if image_shape is None:
        raise ValueError('AnchorGenerator: strides=None needs the (padded) image_shape')
      return [
        (int(image_shape[0]) // int(h), int(image_shape[1]) // int(w)) for h, w in feature_shapes
      ]
    return [(s, s) if np.isscalar(s) else tuple(s) for s in self.strides]

  def grid_points(self, feature_shapes, image_shape=None) -> list[np.ndarray]:
    """Per level, (H * W, 2) float32 cell centres (x, y) in pixels (row-major)."""
    points = []
    for (height, width), (sy, sx) in zip(
      feature_shapes, self.level_strides(feature_shapes, image_shape)
    ):
      xs = (np.arange(width, dtype=np.float32) + self.center_offset) * sx
      ys = (np.arange(height, dtype=np.float32) + self.center_offset) * sy
      yy, xx = np.meshgrid(ys, xs, indexing='ij')
      points.append(np.stack([xx.reshape(-1), yy.reshape(-1)], axis=1).astype(np.float32))
    return points

  def grid_anchors(
    self, feature_shapes: Sequence[tuple[int, int]], image_shape: tuple[int, int] | None = None
  ) -> list[np.ndarray]:
    """Per level, (H * W * A, 4) float32 anchors for feature maps of (H, W).

    `image_shape` (padded batch (height, width)) is needed only with strides=None.
    """
    if len(feature_shapes) != self.num_levels:
      raise ValueError(
        f'AnchorGenerator: {len(feature_shapes)} feature maps for {self.num_levels} levels'
      )
    anchors = []
    for level, points in enumerate(self.grid_points(feature_shapes, image_shape)):
      shifts = np.concatenate([points, points], axis=1)  # (HW, 4)
      anchors.append((shifts[:, None, :] + self.cell_anchors(level)[None]).reshape(-1, 4))
    return anchors

  def num_anchors_per_level(self, feature_shapes) -> tuple[int, ...]:
    return tuple(
      int(h) * int(w) * a for (h, w), a in zip(feature_shapes, self.num_anchors_per_location)
    )

  def valid_mask(self, feature_shapes, image_sizes, padded_shape=None):
    """(..., total_anchors) bool: anchor's cell lies inside the unpadded image.

    mmdetection's `valid_flags`: cell (y, x) is valid iff x * stride_x < width and
    y * stride_y < height of that image. `image_sizes` (..., 2) is (height, width)
    per image (may be traced); levels are concatenated in order.
    """
    image_sizes = jnp.asarray(image_sizes, jnp.float32)
    flags = []
    strides = self.level_strides(feature_shapes, padded_shape)
    for (height, width), (sy, sx), num in zip(
      feature_shapes, strides, self.num_anchors_per_location
    ):
      cell_y = np.repeat(np.arange(height * width) // width * sy, num).astype(np.float32)
      cell_x = np.repeat(np.arange(height * width) % width * sx, num).astype(np.float32)
      flags.append((cell_y < image_sizes[..., 0, None]) & (cell_x < image_sizes[..., 1, None]))
    return jnp.concatenate(flags, axis=-1)
