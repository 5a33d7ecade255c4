"""Backbone + FPN neck for the detectors (Cascade R-CNN, RetinaNet, GFL), built by name.

ResNet / ResNeXt archs (tps_jax/models/resnet.py) default to the detection setting
of torchvision and mmdetection: frozen BatchNorm (running statistics, affine
parameters trainable as mmdetection's `requires_grad=True`) and the stem plus stage 1
frozen (`frozen_stages=1`). Swin archs (tps_jax/models/swin.py) get a LayerNorm on
every output stage (`feature_norms`), as mmdetection's Swin, and no head.

Both return 'stage_1'..'stage_4' at strides 4..32; the FPN reads them by those keys.
The detector holds the two modules as its fields `backbone` and `neck`, so their
parameters live under 'backbone/...' and 'neck/...'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tps_jax.models.fpn import FPN
from tps_jax.models.resnet import RESNET_ARCHS, ResNet, build_resnet
from tps_jax.models.swin import SWIN_ARCHS, SwinTransformer, build_swin

Dtype = Any

# Field defaults per backbone family for detection (overridable per config).
RESNET_DETECTION = dict(norm='frozen', frozen_stages=1, norm_affine_trainable=True)
SWIN_DETECTION = dict(feature_norms=True, num_classes=0, drop_path_rate=0.2)


def backbone_archs() -> list[str]:
  """Every arch `build_backbone` accepts (2D Swin only)."""
  return sorted(RESNET_ARCHS) + sorted(a for a in SWIN_ARCHS if not a.startswith('swin3d'))


def build_backbone(arch: str, *, dtype: Dtype = jnp.float32, **overrides) -> nn.Module:
  """A ResNet or Swin backbone for detection; `overrides` are its module fields."""
  if arch in RESNET_ARCHS:
    return build_resnet(arch, **{**RESNET_DETECTION, **overrides, 'dtype': dtype})
  if arch in SWIN_ARCHS and not arch.startswith('swin3d'):
    return build_swin(arch, **{**SWIN_DETECTION, **overrides, 'dtype': dtype})
  raise ValueError(f'unknown detector backbone {arch!r}; supported: {", ".join(backbone_archs())}')


def stage_channels(backbone: nn.Module) -> dict[str, int]:
  """Channels of each 'stage_i' map of a `build_backbone` module."""
  if isinstance(backbone, ResNet):
    return backbone.stage_channels
  if isinstance(backbone, SwinTransformer):
    return {f'stage_{i + 1}': backbone.embed_dim * 2**i for i in range(len(backbone.depths))}
  raise TypeError(f'not a detector backbone: {type(backbone).__name__}')


def build_neck(
  *,
  out_channels: int = 256,
  in_keys: Sequence[str] = ('stage_1', 'stage_2', 'stage_3', 'stage_4'),
  extra: str = 'maxpool',
  num_extra: int = 1,
  relu_between_extra: bool = False,
  norm: str = 'none',
  dtype: Dtype = jnp.float32,
) -> FPN:
  """The FPN (defaults: R-CNN's P2-P6 with P6 max-pooled from P5)."""
  return FPN(
    out_channels=out_channels,
    in_keys=tuple(in_keys),
    extra=extra,
    num_extra=num_extra,
    relu_between_extra=relu_between_extra,
    norm=norm,
    dtype=dtype,
  )


def backbone_is_trainable(backbone: nn.Module, path: Sequence[str]) -> bool:
  """Whether the backbone parameter at `path` (relative to the backbone) trains."""
  if isinstance(backbone, ResNet):
    return backbone.is_trainable(path)
  return True


def is_trainable(model: nn.Module, path: Sequence[str]) -> bool:
  """For a detector with a `backbone` field: False for its frozen backbone parameters."""
  if path and path[0] == 'backbone':
    return backbone_is_trainable(model.backbone, path[1:])
  return True
