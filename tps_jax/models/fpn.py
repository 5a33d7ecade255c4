"""Feature Pyramid Network (Lin et al. 2017) over a dict of backbone stage features.

Inputs are the backbones' 'stage_i' maps (ResNet and Swin alike: stage_i at stride
2^(i+1)); output level 'p{i+1}' comes from 'stage_i', so stage_1..stage_4 give p2..p5.
Lateral 1x1 convs, a top-down path of nearest-neighbour upsampling to the finer map's
exact size (as torchvision's and mmdetection's `F.interpolate(size=...)`, so odd sizes
match), and 3x3 output convs. Extra coarser levels, per `extra`:
- 'maxpool': P6 = P5[::2, ::2] (max-pool kernel 1, stride 2): torchvision Faster R-CNN's
  LastLevelMaxPool, mmdetection's `add_extra_convs=False` (Cascade R-CNN, num_outs=5).
- 'conv_on_input': P6 = conv3x3/2(last input stage): mmdetection `add_extra_convs=
  'on_input'` (RetinaNet), torchvision LastLevelP6P7 when in_channels != out_channels.
- 'conv_on_output': P6 = conv3x3/2(P5 output): mmdetection 'on_output' (GFL),
  torchvision RetinaNet's LastLevelP6P7(256, 256).
Each further extra level applies the same op to the previous one, after a ReLU for convs
when `relu_between_extra` (torchvision's LastLevelP6P7 always; mmdetection's
`relu_before_extra_convs`, False in its RetinaNet / GFL configs).

`norm='bn'` (torchvision's fasterrcnn_resnet50_fpn_v2) puts a BatchNorm after every conv,
whose bias it replaces ('lateral_p3_bn'); it normalises with its running statistics
(frozen, affine parameters trainable), as the ResNet backbones' frozen BatchNorms.

Parameter names say which level they serve: 'lateral_p3', 'output_p3', 'extra_p6'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tps_jax.models.resnet import BatchNorm

Dtype = Any

EXTRA_MODES = ('none', 'maxpool', 'conv_on_input', 'conv_on_output')

# torchvision's FPN initialisation: kaiming_uniform_(a=1), zero bias.
fpn_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def level_of(key: str) -> int:
  """'stage_i' (stride 2^(i+1)) -> pyramid level i + 1."""
  match = re.fullmatch(r'stage_(\d+)', key)
  if not match:
    raise ValueError(f"FPN input {key!r} is not a backbone stage key ('stage_<i>')")
  return int(match[1]) + 1


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index of each output row of torch's nearest interpolation to `out_size`.

  torch computes floor(dst * (in / out)) in float32; doing the same keeps odd sizes exact.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(index, in_size - 1)


def upsample_nearest(x, size: Sequence[int]):
  """(B, h, w, C) -> (B, H, W, C) by torch's nearest rule; static index arrays."""
  for axis, out_size in zip((1, 2), size):
    in_size = x.shape[axis]
    if out_size == 2 * in_size:
      x = jnp.repeat(x, 2, axis=axis)  # the common case, without a gather
    elif out_size != in_size:
      x = jnp.take(x, nearest_indices(in_size, out_size), axis=axis)
  return x


class FPN(nn.Module):
  """Backbone stage features -> {'p<l>': (B, H_l, W_l, out_channels)}."""

  out_channels: int = 256
  in_keys: Sequence[str] = ('stage_1', 'stage_2', 'stage_3', 'stage_4')
  extra: str = 'maxpool'  # one of EXTRA_MODES
  num_extra: int = 1  # extra levels above the last input's
  relu_between_extra: bool = False
  norm: str = 'none'  # 'none' | 'bn'
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.norm not in ('none', 'bn'):
      raise ValueError(f"FPN.norm: {self.norm!r} is not 'none' or 'bn'")
    if self.extra not in EXTRA_MODES:
      raise ValueError(f'FPN.extra: {self.extra!r} is not one of {", ".join(EXTRA_MODES)}')
    if (self.extra == 'none') != (self.num_extra == 0):
      raise ValueError(f'FPN: extra={self.extra!r} with num_extra={self.num_extra}')
    levels = [level_of(k) for k in self.in_keys]
    if levels != list(range(levels[0], levels[0] + len(levels))):
      raise ValueError(f'FPN.in_keys must be consecutive stages, got {tuple(self.in_keys)}')
    super().__post_init__()

  @property
  def input_levels(self) -> list[int]:
    return [level_of(k) for k in self.in_keys]

  @property
  def levels(self) -> list[int]:
    """Every output level, finest first."""
    first = self.input_levels[0]
    return list(range(first, first + len(self.in_keys) + self.num_extra))

  @nn.compact
  def __call__(self, features: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in self.in_keys if k not in features]
    if missing:
      raise ValueError(f'FPN: backbone features lack {missing} (have {sorted(features)})')

    def conv(kernel: int, stride: int, name: str):
      pad = kernel // 2
      layer = nn.Conv(
        self.out_channels,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=self.norm == 'none',
        kernel_init=fpn_init,
        dtype=self.dtype,
        name=name,
      )
      if self.norm == 'none':
        return layer
      norm = BatchNorm(dtype=self.dtype, name=f'{name}_bn')
      return lambda x: norm(layer(x))

    inputs = [features[k].astype(self.dtype) for k in self.in_keys]
    levels = self.input_levels
    merged = conv(1, 1, f'lateral_p{levels[-1]}')(inputs[-1])
    outputs = {levels[-1]: conv(3, 1, f'output_p{levels[-1]}')(merged)}
    for level, x in zip(reversed(levels[:-1]), reversed(inputs[:-1])):
      lateral = conv(1, 1, f'lateral_p{level}')(x)
      merged = lateral + upsample_nearest(merged, lateral.shape[1:3])
      outputs[level] = conv(3, 1, f'output_p{level}')(merged)

    source = inputs[-1] if self.extra == 'conv_on_input' else outputs[levels[-1]]
    for level in range(levels[-1] + 1, levels[-1] + 1 + self.num_extra):
      if self.extra == 'maxpool':
        source = source[:, ::2, ::2]
      else:
        if self.relu_between_extra and level > levels[-1] + 1:
          source = nn.relu(source)
        source = conv(3, 2, f'extra_p{level}')(source)
      outputs[level] = source
    return {f'p{level}': outputs[level] for level in sorted(outputs)}
