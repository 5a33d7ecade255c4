"""Swin Transformer for images (NHWC) and clips (NTHWC): one implementation.

Liu et al. 2021 (Swin) and Liu et al. 2022 (Video Swin). Every op is written for any
number of grid axes, so the image model and the video model are the same modules with
a 2- or 3-long `patch_size` / `window_size`.

Window rules, each its reference's: along an axis where the token grid is not larger
than the window there is one window and no shift; elsewhere the grid is zero-padded at
the end to a multiple of the window, and every second block rolls it by half a window
and masks attention between regions that the roll brought together. Where the grid is
smaller than the window, images (torchvision's Swin) keep the window and zero-pad the
grid up to it (the padded tokens take part in attention, unmasked, as there), while
clips (official Video Swin, torchvision's swin3d) clip the window to the grid, its
relative position bias reading the first `vol x vol` block of the full window's index
(exact when only time, the slowest axis, is clipped). Other image references differ
only on grids at or below the window: the official Swin clips a square window to the
grid's smaller side, mmdetection's Swin keeps the shift there.
An input that does not divide by the patch is zero-padded at the end (as Video Swin and
the detection Swins); torchvision's image Swin drops the remainder rows and columns.

Parameter names follow the official release (`layers_i/blocks_j/attn/qkv`, ...), so
checkpoint conversion (tps_jax/convert/swin.py) is a table of renames.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.models import hashable

Dtype = Any

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
_IMAGE_224 = dict(patch_size=(4, 4), window_size=(7, 7))
_IMAGE_384 = dict(patch_size=(4, 4), window_size=(12, 12))
# Kinetics-style window; Something-Something models use window_size=(16, 7, 7).
_VIDEO = dict(patch_size=(2, 4, 4), window_size=(8, 7, 7))

# `SwinTransformer` field values per architecture (the Swin and Video Swin papers and their official configs).
SWIN_ARCHS: dict[str, dict] = {
  'swin_t': {**_TINY, **_IMAGE_224},
  'swin_s': {**_SMALL, **_IMAGE_224},
  'swin_b': {**_BASE, **_IMAGE_224},
  'swin_l': {**_LARGE, **_IMAGE_224},
  'swin_b_384': {**_BASE, **_IMAGE_384},
  'swin_l_384': {**_LARGE, **_IMAGE_384},
  'swin3d_t': {**_TINY, **_VIDEO},
  'swin3d_s': {**_SMALL, **_VIDEO},
  'swin3d_b': {**_BASE, **_VIDEO},
}
LAYER_NORM_EPS = 1e-5
MASK_VALUE = -100.0  # added to the attention logits between regions (as the references)

# ------------------------------------------------------------------------------- ops
# Pure functions of static shapes run in numpy at trace time; the others are jnp.


def window_and_shift(
  grid: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The window and shift of one attention layer on a token grid (module docstring).

  No shift along an axis the window covers; there a clip's window (3 axes) is clipped
  to the grid, an image's (2 axes) kept, the grid being padded up to it.
  """
  shift = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
  if len(grid) == 2:
    return tuple(window), shift
  return tuple(min(g, w) for g, w in zip(grid, window)), shift


def relative_position_index(window: Sequence[int]) -> np.ndarray:
  """(vol, vol) index of each token pair's offset into the (prod(2w - 1), heads) table.

  Offsets are shifted to start at 0 and combined row-major (first axis slowest).
  """
  coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing='ij'))
  coords = coords.reshape(len(window), -1)  # (ndim, vol)
  offsets = coords[:, :, None] - coords[:, None, :] + np.reshape(window, (-1, 1, 1)) - 1
  sides = [2 * w - 1 for w in window]
  strides = np.cumprod([1] + sides[:0:-1])[::-1]  # row-major
  return np.tensordot(strides, offsets, axes=1).astype(np.int32)


def window_bias_index(window: Sequence[int], clipped: Sequence[int]) -> np.ndarray:
  """The bias index of a window clipped to `clipped`: the references' leading block."""
  vol = math.prod(clipped)
  return relative_position_index(window)[:vol, :vol]


def partition_windows(x, window: Sequence[int]):
  """(B, *grid, C) with every grid axis divisible by the window -> (B * nW, vol, C).

  Windows are ordered row-major over the window grid, tokens row-major inside one.
  """
  batch, *grid, channels = x.shape
  ndim = len(grid)
  split = [v for g, w in zip(grid, window) for v in (g // w, w)]
  x = x.reshape(batch, *split, channels)
  order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]
  return x.transpose(order).reshape(-1, math.prod(window), channels)


def merge_windows(windows, window: Sequence[int], grid: Sequence[int]):
  """Inverse of `partition_windows`: (B * nW, vol, C) -> (B, *grid, C)."""
  ndim = len(grid)
  counts = [g // w for g, w in zip(grid, window)]
  x = windows.reshape(-1, *counts, *window, windows.shape[-1])
  order = [0, *[v for i in range(ndim) for v in (1 + i, 1 + ndim + i)], 2 * ndim + 1]
  return x.transpose(order).reshape(-1, *grid, windows.shape[-1])


def window_region_ids(
  padded: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> np.ndarray | None:
  """(nW, vol) id of the region each token came from before the roll; None: no shift.

  Along a shifted axis the rolled grid has three regions: [0, -w), [-w, -s), [-s, end);
  tokens of one window attend to each other only within the same region.
  """
  if not any(shift):
    return None
  ids = np.zeros(padded, np.int32)
  for axis, (size, w, s) in enumerate(zip(padded, window, shift)):
    if s:
      region = np.zeros(size, np.int32)
      region[size - w :] = 1
      region[size - s :] = 2
      ids = ids * 3 + np.expand_dims(region, tuple(a for a in range(len(padded)) if a != axis))
  return np.asarray(partition_windows(ids[None, ..., None], window))[..., 0]


def shifted_window_mask(
  padded: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> np.ndarray | None:
  """(nW, vol, vol) additive attention mask (0 within a region, MASK_VALUE across), a
  constant of the compiled program; None without shift."""
  ids = window_region_ids(padded, window, shift)
  if ids is None:
    return None
  return np.where(ids[:, :, None] == ids[:, None, :], 0.0, MASK_VALUE).astype(np.float32)


def gelu(x):
  """Exact GELU in torch's erf form (XLA compiles erf to cheaper code than the erfc of
  jax.nn.gelu(approximate=False))."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(1.0 / math.sqrt(2.0), x.dtype)))


def pad_to_multiple(x, multiple: Sequence[int]):
  """Zero-pads the grid axes of (B, *grid, C) at the end up to a multiple."""
  pads = [(0, 0)] + [(0, -g % m) for g, m in zip(x.shape[1:-1], multiple)] + [(0, 0)]
  return jnp.pad(x, pads) if any(p for _, p in pads) else x


def merge_patches(x):
  """(B, [T,] H, W, C) -> (B, [T,] ceil(H/2), ceil(W/2), 4C), H and W zero-padded.

  Channel blocks in the references' order (h, w) = (0,0), (1,0), (0,1), (1,1): a
  reshape, not four strided slices.
  """
  x = pad_to_multiple(x, (1,) * (x.ndim - 4) + (2, 2))
  *lead, height, width, channels = x.shape
  x = x.reshape(*lead, height // 2, 2, width // 2, 2, channels)
  n = len(lead)
  x = x.transpose(*range(n), n, n + 2, n + 3, n + 1, n + 4)  # (..., h', w', dw, dh, C)
  return x.reshape(*lead, height // 2, width // 2, 4 * channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon: float):
  """LayerNorm over the last axis with two-pass statistics (as torch; E[x^2] - E[x]^2
  loses precision on large activations), computed in float32, returned in x's dtype."""
  return _layer_norm_forward(x, scale, bias, epsilon)[0]


def _layer_norm_forward(x, scale, bias, epsilon):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=-1, keepdims=True)
  centred = x32 - mean
  inv_std = jax.lax.rsqrt((centred * centred).mean(axis=-1, keepdims=True) + epsilon)
  y = (centred * inv_std) * scale + bias
  return y.astype(x.dtype), (x, mean, inv_std, scale)


def _layer_norm_backward(epsilon, residuals, dy):
  # The closed form: autodiff of the two-pass statistics is twice as slow on CPU.
  del epsilon
  x, mean, inv_std, scale = residuals
  normalised = (x.astype(jnp.float32) - mean) * inv_std
  dy = dy.astype(jnp.float32)
  g = dy * scale
  dx = inv_std * (
    g - g.mean(axis=-1, keepdims=True) - normalised * (g * normalised).mean(axis=-1, keepdims=True)
  )
  axes = tuple(range(dy.ndim - 1))
  return dx.astype(x.dtype), (dy * normalised).sum(axes), dy.sum(axes)


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


# ---------------------------------------------------------------------------- modules

_dense_init = nn.initializers.truncated_normal(0.02)


class LayerNorm(nn.Module):
  """LayerNorm over channels (`scale`, `bias` float32; output in `dtype`)."""

  epsilon: float = LAYER_NORM_EPS
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example (train only)."""

  rate: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return x * (mask.astype(x.dtype) / keep)


class WindowAttention(nn.Module):
  """(Shifted-)window multi-head self-attention with relative position bias.

  Input and output (B, *grid, C). Windows are batched, never looped over; the bias is
  gathered once per call and, with the shift mask, broadcast over batch and windows.
  """

  num_heads: int
  window_size: Sequence[int]  # the configured window (sets the bias table size)
  shift_size: Sequence[int]
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    batch, *grid, channels = x.shape
    window, shift = window_and_shift(grid, self.window_size, self.shift_size)
    vol = math.prod(window)
    heads = self.num_heads
    head_dim = channels // heads
    table = self.param(
      'relative_position_bias_table',
      _dense_init,
      (math.prod(2 * w - 1 for w in self.window_size), heads),
    )
    bias = jnp.take(table.T, window_bias_index(self.window_size, window), axis=1)

    x = pad_to_multiple(x, window)
    padded = x.shape[1:-1]
    axes = tuple(range(1, 1 + len(grid)))
    if any(shift):
      x = jnp.roll(x, [-s for s in shift], axis=axes)
    windows = partition_windows(x, window)  # (B*nW, vol, C)
    num_windows = windows.shape[0] // batch
    qkv = nn.Dense(
      3 * channels, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_dense_init, name='qkv'
    )(windows)
    # Heads next to windows (batch axes leading) before the matmuls: XLA's CPU matmuls
    # run twice as fast on this layout as on the einsum of the (n, vol, heads, d) one.
    qkv = qkv.reshape(-1, vol, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]  # (n, heads, vol, d)
    logits = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, num_windows, heads, vol, vol) + bias
    mask = shifted_window_mask(padded, window, shift)
    if mask is not None:
      logits = logits + mask[:, None]
    # Softmax with the normalisation deferred: dividing the (vol, d) output by the row
    # sums costs less than dividing the (vol, vol) weights (and commutes with dropout).
    # The max only keeps exp in range: no gradient flows through it.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    row_sums = weights.sum(axis=-1, keepdims=True)
    weights = weights.astype(self.dtype).reshape(-1, heads, vol, vol)
    weights = nn.Dropout(self.attn_drop_rate)(weights, deterministic=not train)
    out = jnp.matmul(weights, v, preferred_element_type=jnp.float32)
    out = out.reshape(batch, num_windows, heads, vol, head_dim) / row_sums
    out = out.astype(self.dtype).reshape(-1, heads, vol, head_dim).transpose(0, 2, 1, 3)
    out = nn.Dense(channels, dtype=self.dtype, kernel_init=_dense_init, name='proj')(
      out.reshape(-1, vol, channels)
    )
    out = nn.Dropout(self.drop_rate)(out, deterministic=not train)
    out = merge_windows(out, window, padded)
    if any(shift):
      out = jnp.roll(out, shift, axis=axes)
    return out[(slice(None), *[slice(0, g) for g in grid])]


class Mlp(nn.Module):
  hidden_dim: int
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    out_dim = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_dense_init, name='fc1')(x)
    x = gelu(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    x = nn.Dense(out_dim, dtype=self.dtype, kernel_init=_dense_init, name='fc2')(x)
    return nn.Dropout(self.drop_rate)(x, deterministic=not train)


class SwinBlock(nn.Module):
  """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)), with stochastic depth."""

  num_heads: int
  window_size: Sequence[int]
  shift_size: Sequence[int]
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):  # positional `train`: static for nn.remat
    drop_path = DropPath(self.drop_path_rate)
    y = WindowAttention(
      self.num_heads,
      self.window_size,
      self.shift_size,
      self.qkv_bias,
      self.attn_drop_rate,
      self.drop_rate,
      self.dtype,
      name='attn',
    )(LayerNorm(dtype=self.dtype, name='norm1')(x), train=train)
    x = x + drop_path(y, train=train)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.drop_rate, self.dtype, name='mlp')(
      LayerNorm(dtype=self.dtype, name='norm2')(x), train=train
    )
    return x + drop_path(y, train=train)


class PatchProjection(nn.Module):
  """A convolution whose stride is its kernel (`kernel` (*patch, C_in, C_out), `bias`),
  computed as one matmul of the flattened patches (XLA's CPU convolution is slower)."""

  features: int
  patch_size: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, *grid, channels = x.shape
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (*self.patch_size, channels, self.features)
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    counts = [g // p for g, p in zip(grid, self.patch_size)]
    ndim = len(grid)
    x = x.reshape(batch, *[v for c, p in zip(counts, self.patch_size) for v in (c, p)], channels)
    x = x.transpose(0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1)
    x = x.reshape(batch, *counts, -1)  # (B, *counts, prod(patch) C)
    kernel = kernel.reshape(-1, self.features).astype(self.dtype)
    return jnp.dot(x.astype(self.dtype), kernel) + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
  """Non-overlapping patches -> tokens (a conv of stride = kernel), then LayerNorm.

  The input is zero-padded at the end to a multiple of the patch (as Video Swin).
  """

  patch_size: Sequence[int]
  embed_dim: int
  use_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = pad_to_multiple(x, self.patch_size)
    x = PatchProjection(self.embed_dim, tuple(self.patch_size), self.dtype, name='proj')(x)
    if self.use_norm:
      x = LayerNorm(dtype=self.dtype, name='norm')(x)
    return x


class PatchMerging(nn.Module):
  """2x2 spatial neighbours concatenated (C -> 4C), normed, projected to 2C.

  Only H and W are merged; time is never downsampled.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = LayerNorm(dtype=self.dtype, name='norm')(merge_patches(x))
    return nn.Dense(
      2 * channels, use_bias=False, dtype=self.dtype, kernel_init=_dense_init, name='reduction'
    )(x)


class SwinStage(nn.Module):
  """`depth` blocks alternating plain and shifted windows, then (maybe) patch merging.

  Returns (tokens before merging, tokens after merging).
  """

  depth: int
  num_heads: int
  window_size: Sequence[int]
  mlp_ratio: float
  qkv_bias: bool
  drop_rate: float
  attn_drop_rate: float
  drop_path_rates: Sequence[float]
  downsample: bool
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    # Argument 0 of the rematerialised __call__ is the module, so `train` is argument 2.
    block_cls = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
    for j in range(self.depth):
      shift = tuple(0 if j % 2 == 0 else w // 2 for w in self.window_size)
      x = block_cls(
        self.num_heads,
        self.window_size,
        shift,
        self.mlp_ratio,
        self.qkv_bias,
        self.drop_rate,
        self.attn_drop_rate,
        self.drop_path_rates[j],
        self.dtype,
        name=f'blocks_{j}',
      )(x, train)
    if not self.downsample:
      return x, x
    return x, PatchMerging(self.dtype, name='downsample')(x)


class SwinTransformer(nn.Module):
  """Swin / Video Swin backbone with an optional classification head.

  Input (B, H, W, 3) or (B, T, H, W, 3), float, already normalised.
  `return_features=False`: logits (B, num_classes), or the pooled features (B, C_4)
  without a head. `return_features=True`: {'stage_1'..'stage_4': (B, [T,] H_i, W_i, C_i)
  at strides 4, 8, 16, 32 (each stage's blocks' output before merging; the last one after
  the final norm), 'pooled': (B, C_4), and 'logits' when there is a head}.
  """

  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  patch_size: Sequence[int] = (4, 4)
  window_size: Sequence[int] = (7, 7)
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.1  # rises linearly from 0 over the blocks to this
  patch_norm: bool = True
  # A LayerNorm on each stage's features before the last (`feature_norm_i`), as the
  # detection backbones have (the last stage's is `norm`); a tuple of stage numbers
  # (1-based) puts one on those stages only (a network that reads one stage).
  feature_norms: bool | tuple[int, ...] = False
  num_classes: int = 0  # 0: no head
  head_drop_rate: float = 0.0
  dtype: Dtype = jnp.float32  # compute dtype; parameters stay float32
  remat: bool = False  # rematerialise each block in the backward pass

  @nn.compact
  def __call__(self, x, *, train: bool, return_features: bool = False):
    if x.ndim != len(self.patch_size) + 2:
      raise ValueError(
        f'expected input of rank {len(self.patch_size) + 2} '
        f'(B, {"T, " if len(self.patch_size) == 3 else ""}H, W, C), '
        f'got shape {x.shape}'
      )
    x = PatchEmbed(
      self.patch_size, self.embed_dim, self.patch_norm, self.dtype, name='patch_embed'
    )(x.astype(self.dtype))
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    starts = np.cumsum([0, *self.depths]).tolist()
    num_stages = len(self.depths)
    features = {}
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      last = i == num_stages - 1
      before_merge, x = SwinStage(
        depth,
        heads,
        tuple(self.window_size),
        self.mlp_ratio,
        self.qkv_bias,
        self.drop_rate,
        self.attn_drop_rate,
        tuple(rates[starts[i] : starts[i + 1]]),
        downsample=not last,
        dtype=self.dtype,
        remat=self.remat,
        name=f'layers_{i}',
      )(x, train=train)
      if not last:
        features[f'stage_{i + 1}'] = (
          LayerNorm(dtype=self.dtype, name=f'feature_norm_{i + 1}')(before_merge)
          if self.feature_norms is True or i + 1 in (self.feature_norms or ())
          else before_merge
        )
    x = LayerNorm(dtype=self.dtype, name='norm')(x)
    features[f'stage_{num_stages}'] = x
    pooled = x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)
    features['pooled'] = pooled
    out = pooled
    if self.num_classes:
      out = nn.Dropout(self.head_drop_rate)(pooled, deterministic=not train)
      out = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_dense_init, name='head')(
        out
      ).astype(jnp.float32)
      features['logits'] = out
    return features if return_features else out


def build_swin(arch: str, **overrides) -> SwinTransformer:
  """A `SwinTransformer` for a named architecture, with field overrides.

  E.g. `build_swin('swin3d_b', window_size=(16, 7, 7), num_classes=174)`.
  """
  if arch not in SWIN_ARCHS:
    raise ValueError(f'unknown Swin arch {arch!r}; supported: {", ".join(SWIN_ARCHS)}')
  return SwinTransformer(**{**SWIN_ARCHS[arch], **overrides})


def build_video_classifier(
  model_config, num_classes: int, dtype: Dtype = jnp.float32
) -> SwinTransformer:
  """The action recogniser's Video Swin from its config: `arch` (a `swin3d_*`),
  `window_size`, `drop_path_rate`, `head_drop_rate`, `remat`, `overrides` (other
  `SwinTransformer` fields), with a `num_classes` head. The action task trains it and
  an export is rebuilt with it."""
  arch = model_config.arch
  if arch not in SWIN_ARCHS or len(SWIN_ARCHS[arch]['patch_size']) != 3:
    raise ValueError(
      f'config.model.arch: {arch!r} is not a video Swin arch '
      f'({", ".join(a for a in SWIN_ARCHS if a.startswith("swin3d"))})'
    )
  return build_swin(
    arch,
    num_classes=num_classes,
    window_size=tuple(model_config.window_size),
    drop_path_rate=model_config.drop_path_rate,
    head_drop_rate=model_config.head_drop_rate,
    remat=model_config.remat,
    dtype=dtype,
    **hashable(model_config.overrides),
  )
