"""The part-state network (Hikvision's Kinetics-TPS report, section 2.3, Fig. 2).

One state per body part of a human crop:

```
human crop (B, S, S, 3) ──► Swin ──► stage_r map ──RoIAlign(part boxes)──► part features
                                 └─► stage_4 pooled ──────────────────────► human feature
[part feature ; human feature] ─Dense─► + part-identity embedding + action embedding
   ──► LayerNorm ──► BERT encoder over the 10 part tokens (absent parts masked out)
   ──► per-part state classifier (one einsum over per-part weights) ──► (B, 10, states)
```

Design choices where the report is silent:
- The action enters as an embedding *added to every part token* (the same as
  concatenating it before the input projection), not as an extra token: an extra
  token would reach the parts only through attention, so the `use_attention=False`
  ablation could not use it, and Table 3 adds action information before attention.
- Part features: RoIAlign (aligned, 2x2 samples per bin) on the normalised
  `roi_stage` feature map (the Swin is built with a LayerNorm on that stage), a 1x1
  projection to `roi_channels`, flattened (keeping the bins' layout, which tells a
  bent limb from a stretched one). The stride follows from the stage:
  `patch 4 * 2 ** (roi_stage - 1)`.
- `part_feature='crop'`, the Table 3 baseline without RoI pooling: each part box is
  cut out of the input image and resized to `crop_size` (bilinear, by RoIAlign on
  the pixels) and goes through the same backbone (shared weights); its pooled
  last-stage feature is the part feature. The part sees its own pixels, at the price
  of a backbone pass per part.
- `use_attention=False`, the baseline without multi-head attention: the same
  encoder layers without their attention sub-layer (a per-token residual MLP).
- BERT conventions: post-norm layers (`x = LN(x + sublayer(x))`), LayerNorm and
  dropout on the summed input embeddings, GELU MLP, truncated-normal(0.02) init.

Absent parts are masked out of the attention keys; a human with no part at all
attends uniformly (finite logits, no NaN) and its outputs are to be ignored (the
loss and the metrics mask them). Besides (B, 10, 4) boxes, the network accepts
(B, K, 10, 4): K sets of part boxes per human (e.g. the part detector's k-th
proposal of every part), sharing one backbone pass; the encoder runs per set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tps_jax.data.kinetics_tps import PARTS
from tps_jax.models.swin import build_swin
from tps_jax.ops.boxes import to_edges
from tps_jax.ops.roi_align import roi_align

Dtype = Any
PART_FEATURES = ('roi_align', 'crop')
_dense_init = nn.initializers.truncated_normal(0.02)


def part_rois(features, boxes, *, stride: int, output_size: int):
  """(B, H, W, C) map, (B, N, 4) boxes in input pixels -> (B, N, o, o, C) RoI features."""
  return roi_align(
    features,
    boxes.astype(jnp.float32),
    output_size,
    spatial_scale=1.0 / stride,
    sampling_ratio=2,
    aligned=True,
  )


def part_crops(images, boxes, *, size: int):
  """(B, S, S, 3) images, (B, N, 4) boxes -> (B, N, size, size, 3) resized crops."""
  return roi_align(
    images, boxes.astype(jnp.float32), size, spatial_scale=1.0, sampling_ratio=2, aligned=True
  )


def attention_mask(valid):
  """(..., P) bool -> (..., 1, P, P): a query attends to the valid keys only."""
  return valid[..., None, None, :] & jnp.ones_like(valid)[..., None, :, None]


class EncoderLayer(nn.Module):
  """A BERT layer (post-norm): x = LN(x + attn(x)); x = LN(x + mlp(x)).

  `use_attention=False` drops the attention sub-layer (the per-token MLP ablation).
  """

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  use_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, *, train: bool):
    if self.use_attention:
      y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        dropout_rate=self.attention_dropout_rate,
        kernel_init=_dense_init,
        force_fp32_for_softmax=True,
        name='attention',
      )(x, mask=mask, deterministic=not train)
      y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
      x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name='attention_norm')(x + y)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init, name='mlp_in')(x)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_dense_init, name='mlp_out')(
      nn.gelu(y, approximate=False)
    )
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name='mlp_norm')(x + y)


class PartStateNet(nn.Module):
  """Part states of a human crop from its part boxes and the video's action.

  __call__(images (B, S, S, 3) normalised float, part_boxes (B, [K,] P, 4) xyxy
  inclusive input pixels, as the dataset's (row i = PARTS[i]), part_valid (B, [K,] P) bool, action (B,) int32,
  *, train) -> logits (B, [K,] P, num_states) float32.
  """

  num_states: int
  num_actions: int
  num_parts: int = len(PARTS)
  backbone_arch: str = 'swin_l'  # a key of tps_jax.models.swin.SWIN_ARCHS
  backbone_overrides: Mapping[str, Any] | None = None
  part_feature: str = 'roi_align'  # or 'crop' (the Table 3 baseline; module doc)
  roi_stage: int = 3  # 1..4: the feature map the part boxes pool from
  roi_output_size: int = 7
  roi_channels: int = 256  # 1x1 projection of the RoI features before flattening
  crop_size: int = 112  # part_feature='crop': side of each part's crop
  hidden_dim: int = 768
  num_layers: int = 2
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  use_action: bool = True
  use_attention: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False

  def setup(self):
    if self.part_feature not in PART_FEATURES:
      raise ValueError(f'part_feature must be one of {PART_FEATURES}, got {self.part_feature!r}')
    self.backbone = build_swin(
      self.backbone_arch,
      **{
        'feature_norms': (self.roi_stage,),  # the one stage the parts pool from
        **dict(self.backbone_overrides or {}),
        'num_classes': 0,
        'dtype': self.dtype,
        'remat': self.remat,
      },
    )
    if not 1 <= self.roi_stage <= len(self.backbone.depths):
      raise ValueError(f'roi_stage must be in 1..{len(self.backbone.depths)}, got {self.roi_stage}')
    if self.part_feature == 'roi_align':
      self.roi_projection = nn.Dense(self.roi_channels, dtype=self.dtype, kernel_init=_dense_init)
    self.token_projection = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_dense_init)
    self.part_embedding = self.param(
      'part_embedding', _dense_init, (self.num_parts, self.hidden_dim)
    )
    if self.use_action:
      self.action_embedding = nn.Embed(
        self.num_actions, self.hidden_dim, embedding_init=_dense_init, dtype=self.dtype
      )
    self.embedding_norm = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype)
    self.embedding_dropout = nn.Dropout(self.dropout_rate)
    self.encoder = [
      EncoderLayer(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.attention_dropout_rate,
        self.use_attention,
        self.dtype,
        name=f'encoder_{i}',
      )
      for i in range(self.num_layers)
    ]
    self.classifier_kernel = self.param(
      'classifier_kernel', _dense_init, (self.num_parts, self.hidden_dim, self.num_states)
    )
    self.classifier_bias = self.param(
      'classifier_bias', nn.initializers.zeros, (self.num_parts, self.num_states)
    )

  @property
  def roi_stride(self) -> int:
    """Pixels per cell of the RoI feature map: patch size * 2 per merging stage."""
    return self.backbone.patch_size[0] * 2 ** (self.roi_stage - 1)

  def part_features(self, images, boxes, features, *, train: bool):
    """(B, N, F) feature of each of the N boxes per image."""
    batch, num_boxes = boxes.shape[:2]
    boxes = to_edges(boxes)  # the dataset's inclusive pixels -> the ops' edges
    if self.part_feature == 'roi_align':
      rois = part_rois(
        features[f'stage_{self.roi_stage}'],
        boxes,
        stride=self.roi_stride,
        output_size=self.roi_output_size,
      )
      return self.roi_projection(rois).reshape(batch, num_boxes, -1)
    crops = part_crops(images, boxes, size=self.crop_size)
    crops = crops.reshape(batch * num_boxes, *crops.shape[2:])
    pooled = self.backbone(crops, train=train, return_features=True)['pooled']
    return pooled.reshape(batch, num_boxes, -1)

  def __call__(self, images, part_boxes, part_valid, action, *, train: bool):
    batch = images.shape[0]
    sets = part_boxes.shape[1:-2]  # () or (K,)
    num_sets = math.prod(sets)
    if part_boxes.shape[-2:] != (self.num_parts, 4) or part_boxes.shape[0] != batch:
      raise ValueError(
        f'part_boxes must be (B, [K,] {self.num_parts}, 4) with B = {batch}, got {part_boxes.shape}'
      )
    if part_valid.shape != part_boxes.shape[:-1]:
      raise ValueError(
        f'part_valid {part_valid.shape} must be part_boxes.shape[:-1] {part_boxes.shape[:-1]}'
      )
    features = self.backbone(images, train=train, return_features=True)
    parts = self.part_features(images, part_boxes.reshape(batch, -1, 4), features, train=train)
    parts = parts.reshape(batch * num_sets, self.num_parts, -1)
    human = jnp.repeat(features['pooled'], num_sets, axis=0)  # (B * K, C_4)
    human = jnp.broadcast_to(human[:, None], (*parts.shape[:2], human.shape[-1]))
    tokens = self.token_projection(jnp.concatenate([parts, human.astype(parts.dtype)], -1))
    tokens = tokens + self.part_embedding.astype(self.dtype)
    if self.use_action:
      tokens = tokens + jnp.repeat(self.action_embedding(action), num_sets, axis=0)[:, None]
    x = self.embedding_dropout(self.embedding_norm(tokens), deterministic=not train)

    valid = part_valid.reshape(batch * num_sets, self.num_parts).astype(bool)
    mask = attention_mask(valid)
    for layer in self.encoder:
      x = layer(x, mask, train=train)
    logits = jnp.einsum('npd,pds->nps', x, self.classifier_kernel.astype(self.dtype))
    logits = logits.astype(jnp.float32) + self.classifier_bias
    return logits.reshape(batch, *sets, self.num_parts, self.num_states)
