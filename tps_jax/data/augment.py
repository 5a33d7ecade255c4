"""Host-side augmentations (numpy / PIL): small pure functions, randomness from a Generator.

Images are RGB uint8 (H, W, 3) arrays. Boxes are (N, 4) float `(x1, y1, x2, y2)` in the
dataset's inclusive-pixel convention (docs/dataset.md: x2 is the last column the
box covers, width = x2 - x1 + 1), and every function returns them in that convention.
Geometry is done on pixel *edges* (x2 + 1), so that a flip maps column x to W - 1 - x
and a resize by s maps the edge x to x * s: the box keeps bounding the same pixels.

Regions are `(left, top, right, bottom)` in edge coordinates (right and bottom
exclusive, floats allowed), as PIL's `box` arguments.

Functions that move or cut boxes also return each box's visible fraction (area inside
the image after the operation / area before clipping), so that callers drop boxes that
left the image and mark the ones that lost most of their area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
# Padding colour: the mean, so that padded pixels are 0 after `normalize`.
MEAN_COLOR = tuple(int(round(v)) for v in IMAGENET_MEAN)

Region = tuple[float, float, float, float]


def normalization() -> dict[str, list[float]]:
  """`normalize`'s constants, as an export's metadata records them (on 0..255)."""
  return {'mean': IMAGENET_MEAN.tolist(), 'std': IMAGENET_STD.tolist()}


_INV_STD = (1 / IMAGENET_STD).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 RGB (..., 3) -> float32 (x - ImageNet mean) / ImageNet std (on 0..255)."""
  out = images.astype(np.float32)
  out *= _INV_STD  # in place: one float32 array for the whole batch
  out += _OFFSET
  return out


# ---------------------------------------------------------------------------- boxes


def _edges(boxes: np.ndarray) -> np.ndarray:
  """Inclusive-pixel boxes -> edge boxes (x2 + 1, y2 + 1), float64."""
  edges = np.array(boxes, np.float64).reshape(-1, 4)
  edges[:, 2:] += 1.0
  return edges


def _inclusive(edges: np.ndarray) -> np.ndarray:
  """Edge boxes -> inclusive-pixel boxes, float32."""
  boxes = np.array(edges, np.float64)
  boxes[:, 2:] -= 1.0
  return boxes.astype(np.float32)


def _edge_area(edges: np.ndarray) -> np.ndarray:
  return np.clip(edges[:, 2] - edges[:, 0], 0, None) * np.clip(edges[:, 3] - edges[:, 1], 0, None)


def _clip_edges(edges: np.ndarray, width: float, height: float):
  """Edge boxes clipped to [0, width] x [0, height] and their visible fraction."""
  clipped = np.stack(
    [
      np.clip(edges[:, 0], 0, width),
      np.clip(edges[:, 1], 0, height),
      np.clip(edges[:, 2], 0, width),
      np.clip(edges[:, 3], 0, height),
    ],
    1,
  )
  area = _edge_area(edges)
  visible = np.where(area > 0, _edge_area(clipped) / np.maximum(area, 1e-12), 0.0)
  return clipped, visible.astype(np.float32)


def context_region(box: Sequence[float], width: int, height: int, margin: float) -> Region:
  """The integer crop region of a human box: the box grown by `margin` x its size on
  each side, clipped to the image (rounded outwards)."""
  x1, y1, x2, y2 = _edges(box)[0]
  dx, dy = margin * (x2 - x1), margin * (y2 - y1)
  return (
    max(0, math.floor(x1 - dx)),
    max(0, math.floor(y1 - dy)),
    min(width, math.ceil(x2 + dx)),
    min(height, math.ceil(y2 + dy)),
  )


def jitter_boxes(
  rng: np.random.Generator, boxes: np.ndarray, amount: float, width: int, height: int
) -> np.ndarray:
  """Moves each box side by up to `amount` x the box's width (x) or height (y),
  uniformly; the result is clipped to the image and stays at least one pixel wide."""
  edges = _edges(boxes)
  size = np.concatenate([edges[:, 2:] - edges[:, :2]] * 2, axis=1)
  edges = edges + rng.uniform(-amount, amount, edges.shape) * size
  x1 = np.clip(np.minimum(edges[:, 0], edges[:, 2] - 1), 0, width - 1)
  y1 = np.clip(np.minimum(edges[:, 1], edges[:, 3] - 1), 0, height - 1)
  x2 = np.clip(np.maximum(edges[:, 2], x1 + 1), 1, width)
  y2 = np.clip(np.maximum(edges[:, 3], y1 + 1), 1, height)
  return _inclusive(np.stack([x1, y1, x2, y2], 1))


# --------------------------------------------------------------------------- geometry


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors the image left-right; column x goes to W - 1 - x. Callers swap left/right
  labels themselves (kinetics_tps.FLIP_PARTS)."""
  width = image.shape[1]
  edges = _edges(boxes)
  flipped = np.stack([width - edges[:, 2], edges[:, 1], width - edges[:, 0], edges[:, 3]], 1)
  return np.ascontiguousarray(image[:, ::-1]), _inclusive(flipped)


def crop(image: np.ndarray, boxes: np.ndarray, region: Region):
  """Cuts an integer region out of the image: (image, boxes clipped, visible fraction)."""
  left, top, right, bottom = (int(v) for v in region)
  edges = _edges(boxes) - np.array([left, top, left, top], np.float64)
  edges, visible = _clip_edges(edges, right - left, bottom - top)
  return image[top:bottom, left:right], _inclusive(edges), visible


def resample(image: np.ndarray, region: Region, size: tuple[int, int]) -> np.ndarray:
  """`region` of the image (floats allowed) resized to size = (height, width), in one
  bilinear resampling."""
  return np.asarray(
    Image.fromarray(image).resize(
      (size[1], size[0]), Image.BILINEAR, box=tuple(float(v) for v in region)
    )
  )


def resize_region(image: np.ndarray, boxes: np.ndarray, region: Region, size: tuple[int, int]):
  """`resample` with boxes: (image, boxes, visible fraction)."""
  out_h, out_w = size
  left, top, right, bottom = region
  sx, sy = out_w / (right - left), out_h / (bottom - top)
  resized = resample(image, region, size)
  edges = (_edges(boxes) - np.array([left, top, left, top])) * np.array([sx, sy, sx, sy])
  edges, visible = _clip_edges(edges, out_w, out_h)
  return resized, _inclusive(edges), visible


def resize(image: np.ndarray, boxes: np.ndarray, size: tuple[int, int]):
  """The whole image resized to size = (height, width): (image, boxes)."""
  height, width = image.shape[:2]
  resized, boxes, _ = resize_region(image, boxes, (0, 0, width, height), size)
  return resized, boxes


def resize_pad(image: np.ndarray, boxes: np.ndarray, size: tuple[int, int], fit_scale: float = 1.0):
  """Resizes keeping the aspect ratio to fit size = (height, width) times `fit_scale`
  (<= 1: multi-scale training), content at the top-left, padded with MEAN_COLOR to
  `size`: (image, boxes, scale); the content is round(h * scale) x round(w * scale)
  pixels."""
  height, width = image.shape[:2]
  out_h, out_w = size
  scale = min(out_h / height, out_w / width) * fit_scale
  content = (min(out_h, max(1, round(height * scale))), min(out_w, max(1, round(width * scale))))
  resized, boxes = resize(image, boxes, content)
  canvas = np.empty((out_h, out_w, 3), np.uint8)
  canvas[...] = MEAN_COLOR
  canvas[: content[0], : content[1]] = resized
  return canvas, boxes, float(scale)


def rotate(image: np.ndarray, boxes: np.ndarray, degrees: float):
  """Rotates counter-clockwise about the image centre, same canvas, corners filled with
  MEAN_COLOR. Each box is re-fitted around its rotated corners and clipped:
  (image, boxes, visible fraction)."""
  height, width = image.shape[:2]
  rotated = np.asarray(
    Image.fromarray(image).rotate(degrees, resample=Image.BILINEAR, fillcolor=MEAN_COLOR)
  )
  theta = math.radians(degrees)
  cos, sin = math.cos(theta), math.sin(theta)
  edges = _edges(boxes)
  xs = edges[:, [0, 2, 2, 0]] - width / 2
  ys = edges[:, [1, 1, 3, 3]] - height / 2
  # Counter-clockwise on screen (y pointing down).
  rx = cos * xs + sin * ys + width / 2
  ry = -sin * xs + cos * ys + height / 2
  fitted = np.stack([rx.min(1), ry.min(1), rx.max(1), ry.max(1)], 1)
  fitted, visible = _clip_edges(fitted, width, height)
  return rotated, _inclusive(fitted), visible


def random_crop_region(
  rng: np.random.Generator, height: int, width: int, min_scale: float
) -> Region:
  """An integer region whose sides are uniform in [min_scale, 1] x the image's, placed
  uniformly."""
  crop_h = max(1, round(height * rng.uniform(min_scale, 1.0)))
  crop_w = max(1, round(width * rng.uniform(min_scale, 1.0)))
  top = int(rng.integers(0, height - crop_h + 1))
  left = int(rng.integers(0, width - crop_w + 1))
  return (left, top, left + crop_w, top + crop_h)


def random_resized_crop_region(
  rng: np.random.Generator,
  height: int,
  width: int,
  area: tuple[float, float],
  aspect: tuple[float, float] = (3 / 4, 4 / 3),
) -> Region:
  """Inception-style multi-scale crop: area uniform in `area` x the image's, aspect
  ratio (w / h) log-uniform in `aspect`; the centred largest crop after 10 misses."""
  for _ in range(10):
    target = height * width * rng.uniform(*area)
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    crop_w, crop_h = math.sqrt(target * ratio), math.sqrt(target / ratio)
    if crop_w <= width and crop_h <= height:
      left = rng.uniform(0, width - crop_w)
      top = rng.uniform(0, height - crop_h)
      return (left, top, left + crop_w, top + crop_h)
  return center_region(height, width, height, width)


def center_region(height: float, width: float, crop_h: float, crop_w: float) -> Region:
  """The centred region of size (crop_h, crop_w) (shrunk to fit the image)."""
  crop_h, crop_w = min(crop_h, height), min(crop_w, width)
  top, left = (height - crop_h) / 2, (width - crop_w) / 2
  return (left, top, left + crop_w, top + crop_h)


# ----------------------------------------------------------------------------- colour


def color_jitter(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
  """Brightness, contrast and saturation each scaled by a factor uniform in
  [1 - strength, 1 + strength]."""
  if strength <= 0:
    return image
  brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, 3)
  pixels = image.astype(np.float32) * brightness
  gray = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
  pixels = (pixels - gray.mean()) * contrast + gray.mean()
  gray = (pixels @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  pixels = gray + (pixels - gray) * saturation
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------- time


def clip_indices(
  num_frames: int, length: int, stride: int, rng: np.random.Generator | None = None
) -> np.ndarray:
  """0-based indices of a clip of `length` frames `stride` apart: a uniformly random
  start with `rng`, the centred one without; a video shorter than the clip loops."""
  span = (length - 1) * stride + 1
  room = max(num_frames - span, 0)
  start = int(rng.integers(0, room + 1)) if rng is not None else room // 2
  return (start + np.arange(length) * stride) % num_frames
