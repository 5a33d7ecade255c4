"""ResNet and ResNeXt (He et al. 2016; Xie et al. 2017) for classification and detection.

One module for every depth and width: `block='basic'` (ResNet-18/34) or `'bottleneck'`
(ResNet-50/101/152, ResNeXt via `groups` / `width_per_group`, wide ResNets via
`width_per_group`). The layout is torchvision's ("ResNet v1.5", mmdetection's
`style='pytorch'`): the stride of a bottleneck sits on its 3x3 conv, downsampling
shortcuts are a strided 1x1 conv + BN. Parameter names follow torchvision
(`conv1`, `bn1`, `layer1_0/conv2`, `layer1_0/downsample_conv`, ...) so checkpoint import
is a table of renames (tps_jax/convert/resnet.py).

Normalisation (`norm`):
- 'frozen': BatchNorm with fixed running statistics, as torchvision's FrozenBatchNorm2d
  and mmdetection's `norm_eval=True`. Its affine parameters are trainable when
  `norm_affine_trainable` (mmdetection's `requires_grad=True`) and frozen otherwise
  (torchvision's FrozenBatchNorm2d, whose weight and bias are buffers).
- 'batch': BatchNorm normalising with the batch's statistics in training and updating
  the running ones (the 'batch_stats' collection must be mutable), running statistics
  at evaluation. Under `jax.jit` with the batch sharded over a mesh, the mean over the
  batch axis is a global reduction, so the statistics are those of the global batch:
  synchronised BatchNorm, with no extra code. (With gradient accumulation they are the
  micro-batch's.)

`frozen_stages` = k freezes the stem (k >= 0) and stages 1..k, as mmdetection's
`frozen_stages` (torchvision's `trainable_layers` t is k = 4 - t, and t = 5 is k = -1):
their output is cut from the gradient, so every parameter before it gets none, and
their BatchNorms use running statistics even in 'batch' mode. An optimiser that decays
weights must skip these parameters (zero gradient alone does not stop AdamW's decay):
`ResNet.is_trainable(path)` tells which.

With `return_features=True` the output is a dict 'stage_1'..'stage_4' (C2..C5, strides
4..32), the same keys as `tps_jax.models.swin`, so one FPN serves both backbones, plus
'pooled' and, with a head, 'logits'.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BN_EPSILON = 1e-5  # torchvision / mmdetection BatchNorm2d default
NORM_MODES = ('frozen', 'batch')

# Field values of `ResNet` per architecture (torchvision's names).
RESNET_ARCHS = {
  'resnet18': dict(block='basic', depths=(2, 2, 2, 2)),
  'resnet34': dict(block='basic', depths=(3, 4, 6, 3)),
  'resnet50': dict(block='bottleneck', depths=(3, 4, 6, 3)),
  'resnet101': dict(block='bottleneck', depths=(3, 4, 23, 3)),
  'resnet152': dict(block='bottleneck', depths=(3, 8, 36, 3)),
  'resnext50_32x4d': dict(block='bottleneck', depths=(3, 4, 6, 3), groups=32, width_per_group=4),
  'resnext101_32x4d': dict(block='bottleneck', depths=(3, 4, 23, 3), groups=32, width_per_group=4),
  'resnext101_32x8d': dict(block='bottleneck', depths=(3, 4, 23, 3), groups=32, width_per_group=8),
  'resnext101_64x4d': dict(block='bottleneck', depths=(3, 4, 23, 3), groups=64, width_per_group=4),
  'wide_resnet50_2': dict(block='bottleneck', depths=(3, 4, 6, 3), width_per_group=128),
  'wide_resnet101_2': dict(block='bottleneck', depths=(3, 4, 23, 3), width_per_group=128),
}
_EXPANSION = {'basic': 1, 'bottleneck': 4}
_STEM = ('conv1', 'bn1')

# torchvision's initialisation: He-normal over fan-out for convs.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with torchvision's numerics.

  `scale` / `bias` are in 'params' and `mean` / `var` in 'batch_stats' whatever the
  mode, so every mode reads the same checkpoint. The normalisation is applied as
  FrozenBatchNorm2d does (x * scale' + bias'), in float32 whatever the compute dtype.
  """

  use_batch_statistics: bool = False  # normalise with (and update) the batch's statistics
  affine_trainable: bool = True
  momentum: float = 0.9  # flax convention: weight of the old running value
  epsilon: float = BN_EPSILON
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """`mask` (x.shape[:-1] or a prefix of it, bool): the rows whose statistics count
    in 'batch' mode (e.g. the sampled RoIs that are not padding); None: all of them."""
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    if not self.affine_trainable:
      scale, bias = jax.lax.stop_gradient(scale), jax.lax.stop_gradient(bias)
    x = x.astype(jnp.float32)
    if self.use_batch_statistics:
      axes = tuple(range(x.ndim - 1))
      if mask is None:
        count = x.size // channels
        mean = x.mean(axes)
        var = jnp.square(x - mean).mean(axes)
      else:
        weights = jnp.asarray(mask, jnp.float32).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        weights = jnp.broadcast_to(weights, x.shape[:-1] + (1,))
        count = jnp.sum(weights)
        mean = jnp.sum(x * weights, axes) / jnp.maximum(count, 1)
        var = jnp.sum(jnp.square(x - mean) * weights, axes) / jnp.maximum(count, 1)
      if not self.is_initializing():
        # torch keeps the unbiased variance as the running estimate; a batch without a
        # counted row leaves the running statistics as they were.
        unbiased = var * count / jnp.maximum(count - 1, 1)
        for running, batch in ((running_mean, mean), (running_var, unbiased)):
          blended = self.momentum * running.value + (1 - self.momentum) * batch
          running.value = jax.lax.stop_gradient(jnp.where(count > 0, blended, running.value))
    else:
      mean, var = running_mean.value, running_var.value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x * multiplier + (bias - mean * multiplier)).astype(self.dtype)


def conv(
  features: int, kernel: int, stride: int = 1, groups: int = 1, *, name: str, dtype: Dtype
) -> nn.Conv:
  """Bias-free conv with torch's symmetric padding (kernel // 2), not XLA's 'SAME'."""
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    kernel_init=conv_init,
    dtype=dtype,
    name=name,
  )


class ResidualBlock(nn.Module):
  """A basic (3x3, 3x3) or bottleneck (1x1, grouped 3x3, 1x1) residual block.

  The stride sits on the 3x3 conv (torchvision / mmdetection 'pytorch' style).
  """

  planes: int
  stride: int
  bottleneck: bool
  groups: int
  width_per_group: int
  norm: Callable[..., nn.Module]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.bottleneck:
      width = int(self.planes * self.width_per_group / 64) * self.groups
      out_channels = self.planes * _EXPANSION['bottleneck']
      # (features, kernel, stride, groups) per conv.
      convs = [(width, 1, 1, 1), (width, 3, self.stride, self.groups), (out_channels, 1, 1, 1)]
    else:
      out_channels = self.planes
      convs = [(self.planes, 3, self.stride, 1), (self.planes, 3, 1, 1)]
    out = x
    for i, (features, kernel, stride, groups) in enumerate(convs, start=1):
      out = conv(features, kernel, stride, groups, name=f'conv{i}', dtype=self.dtype)(out)
      out = self.norm(name=f'bn{i}')(out)
      if i < len(convs):
        out = nn.relu(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_channels:
      shortcut = conv(out_channels, 1, self.stride, name='downsample_conv', dtype=self.dtype)(x)
      shortcut = self.norm(name='downsample_bn')(shortcut)
    return nn.relu(out + shortcut)


def classification_head(num_classes: int, dtype: Dtype = jnp.float32) -> nn.Dense:
  """The linear classifier on the pooled features ('head' in the params tree)."""
  return nn.Dense(num_classes, dtype=dtype, name='head')


class ResNet(nn.Module):
  """ResNet / ResNeXt backbone with an optional classification head.

  Input (B, H, W, 3), float, already normalised (ImageNet mean / std for imported
  torchvision or mmdetection weights).
  """

  block: str = 'bottleneck'  # 'basic' | 'bottleneck'
  depths: Sequence[int] = (3, 4, 6, 3)
  groups: int = 1  # ResNeXt cardinality
  width_per_group: int = 64  # ResNeXt bottleneck width (64: plain ResNet)
  num_classes: int = 0  # 0: no head
  norm: str = 'batch'  # 'frozen' | 'batch' (see module docstring)
  norm_affine_trainable: bool = True
  frozen_stages: int = -1  # -1: none; 0: stem; k: stem and stages 1..k
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32  # compute dtype; parameters stay float32

  def __post_init__(self):
    if self.block not in _EXPANSION:
      raise ValueError(f'ResNet.block: {self.block!r} is not one of {", ".join(_EXPANSION)}')
    if self.norm not in NORM_MODES:
      raise ValueError(f'ResNet.norm: {self.norm!r} is not one of {", ".join(NORM_MODES)}')
    if not -1 <= self.frozen_stages <= len(self.depths):
      raise ValueError(
        f'ResNet.frozen_stages: {self.frozen_stages} is outside [-1, {len(self.depths)}]'
      )
    if self.block == 'basic' and (self.groups, self.width_per_group) != (1, 64):
      raise ValueError('ResNet: the basic block supports only groups=1, width_per_group=64')
    super().__post_init__()

  @property
  def stage_channels(self) -> dict[str, int]:
    """Channels of each 'stage_i' feature map."""
    return {f'stage_{i + 1}': 64 * 2**i * _EXPANSION[self.block] for i in range(len(self.depths))}

  def is_trainable(self, path: Sequence[str]) -> bool:
    """Whether the parameter at `path` (relative to this module's params) gets gradient."""
    top = path[0]
    if top in _STEM or top.startswith('layer'):
      section = 0 if top in _STEM else int(top[len('layer') :].split('_')[0])
      if section <= self.frozen_stages:
        return False
    is_norm = path[-2].startswith('bn') or path[-2] == 'downsample_bn'
    return self.norm_affine_trainable or not is_norm

  @nn.compact
  def __call__(self, x, *, train: bool = False, return_features: bool = False):
    if x.ndim != 4:
      raise ValueError(f'ResNet expects (B, H, W, C) images, got shape {x.shape}')

    def norm(section: int):
      frozen = section <= self.frozen_stages
      return functools.partial(
        BatchNorm,
        use_batch_statistics=self.norm == 'batch' and train and not frozen,
        affine_trainable=self.norm_affine_trainable and not frozen,
        momentum=self.bn_momentum,
        dtype=self.dtype,
      )

    def cut_if_frozen(x, section: int):
      return jax.lax.stop_gradient(x) if section <= self.frozen_stages else x

    x = conv(64, 7, 2, name='conv1', dtype=self.dtype)(x.astype(self.dtype))
    x = nn.relu(norm(0)(name='bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = cut_if_frozen(x, 0)
    features = {}
    for stage, depth in enumerate(self.depths, start=1):
      for j in range(depth):
        x = ResidualBlock(
          64 * 2 ** (stage - 1),
          2 if stage > 1 and j == 0 else 1,
          self.block == 'bottleneck',
          self.groups,
          self.width_per_group,
          norm(stage),
          self.dtype,
          name=f'layer{stage}_{j}',
        )(x)
      x = cut_if_frozen(x, stage)
      features[f'stage_{stage}'] = x
    pooled = x.astype(jnp.float32).mean(axis=(1, 2))
    features['pooled'] = pooled
    out = pooled
    if self.num_classes:
      out = classification_head(self.num_classes, self.dtype)(pooled).astype(jnp.float32)
      features['logits'] = out
    return features if return_features else out


def build_resnet(arch: str, **overrides) -> ResNet:
  """A `ResNet` for a named architecture (torchvision's names), with field overrides."""
  if arch not in RESNET_ARCHS:
    raise ValueError(f'unknown ResNet arch {arch!r}; supported: {", ".join(RESNET_ARCHS)}')
  return ResNet(**{**RESNET_ARCHS[arch], **overrides})


def trainable_mask(model: ResNet, params) -> Any:
  """A tree of bools like `params`: True where `model.is_trainable`."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: model.is_trainable([k.key for k in path]), params
  )
