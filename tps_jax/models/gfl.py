"""GFL, Generalized Focal Loss (Li et al. 2020): a one-stage detector with a joint
classification-IoU score and a learned distribution over each box side.

Frame: backbone + FPN P3-P7 (extra levels convolved from P5's output) as RetinaNet
(tps_jax/models/retinanet.py), one square anchor of side 8 x stride per location (used
only for ATSS assignment and as the point the box sides are measured from). Head, shared
over the levels: two towers of `num_convs` 3x3 conv + GroupNorm(32) + ReLU, then
- a 3x3 conv with one logit per class: its sigmoid is the joint class-and-quality score
  (trained towards the IoU of the predicted box with its GT, 0 for background);
- a 3x3 conv with 4 x (reg_max + 1) logits, scaled by a learned scalar per level: per
  box side a softmax over the distances 0..reg_max (in units of the level's stride)
  whose expectation (`integral`) is that side's distance from the anchor centre.

GFL v2 (Li et al. 2021, `dgqp=True`): the distribution-guided quality predictor (DGQP)
computes each location's localisation quality from the distributions: per side the
top-`reg_topk` probabilities and their mean, 4 x (k + 1) numbers, through a 1x1 conv of
`reg_channels` + ReLU and a 1x1 conv to one sigmoid; the class score is then
sigmoid(class logit) x quality. `logits` are that joint score's logit, so the losses
and inference below serve both versions unchanged.

Training (`train=True`): targets cleaned as `cascade_rcnn.clean_targets`; ATSS
assignment (per level the 9 anchors closest to each GT centre; positives those with IoU
>= mean + std of the candidates' and centre inside the GT); anchors covered by an ignore
region beyond `ignore_iof_thr` are neither positive nor negative. Losses (mmdetection's
GFLHead): quality focal loss (beta 2) over positives and negatives / #positives; GIoU
(weight 2) and distribution focal loss (weight 0.25, over the 4 sides) on positives,
each positive weighted by its (detached) highest class score, divided by the sum of
those weights (at least 1).
Inference (`train=False`): per level the `pre_nms_top_n` best (anchor, class) pairs
with score > `score_threshold`, boxes from the integral distances, class-aware NMS at
0.6, the best `max_detections` padded with a validity mask.

Parameter names follow mmdetection's (tps_jax/convert/one_stage.py maps them):
head/{cls,reg}_tower/{conv,gn}_<i>, head/cls_logits (gfl_cls), head/bbox_pred
(gfl_reg), head/scale_<level> (scales.<level>.scale), head/reg_conf_{0,1} (GFL v2's
reg_conf.0 and reg_conf.2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tps_jax import ops
from tps_jax.models import hashable
from tps_jax.models.retinanet import (
  FPN_INPUTS,
  ConvTower,
  OneStageDetector,
  assemble,
  big_enough,
  builder_fields,
  flatten_levels,
  head_init,
  image_shapes,
  level_strides,
  make_anchors,
  nms_detections,
  prior_bias,
  top_candidates,
)

Dtype = Any


@dataclasses.dataclass(frozen=True)
class GFLSpec:
  """The head's hyper-parameters, static (defaults: mmdetection's gfl_r50_fpn_1x_coco)."""

  anchors: ops.AnchorGenerator = ops.AnchorGenerator.mmdet(
    strides=(8, 16, 32, 64, 128), ratios=(1.0,), octave_base_scale=8, scales_per_octave=1
  )
  num_convs: int = 4
  feat_channels: int = 256
  num_groups: int = 32  # GroupNorm groups of the towers
  prior_prob: float = 0.01
  reg_max: int = 16  # distances 0..reg_max strides per side
  # GFL v2: the distribution-guided quality predictor (module docstring).
  dgqp: bool = False
  reg_topk: int = 4
  reg_channels: int = 64
  # Training.
  atss_topk: int = 9
  ignore_iof_thr: float = 0.5  # anchors this much inside an ignore box: neither
  qfl_beta: float = 2.0
  cls_weight: float = 1.0
  giou_weight: float = 2.0
  dfl_weight: float = 0.25
  # Inference.
  score_threshold: float = 0.05
  pre_nms_top_n: int = 1000  # per level, (anchor, class) pairs
  nms_threshold: float = 0.6
  max_detections: int = 100
  min_size: float | None = 0.0  # detections need both sides > this; None: keep all

  def __post_init__(self):
    object.__setattr__(self, 'anchors', make_anchors(self.anchors))
    if set(self.anchors.num_anchors_per_location) != {1}:
      raise ValueError(
        f'GFLSpec: GFL has one anchor per location, got {self.anchors.num_anchors_per_location}'
      )


def integral(distribution_logits):
  """(..., n + 1) logits over distances 0..n -> (...,) expected distance."""
  probs = jax.nn.softmax(distribution_logits.astype(jnp.float32), axis=-1)
  return probs @ jnp.arange(distribution_logits.shape[-1], dtype=jnp.float32)


def distribution_statistics(distribution_logits, topk: int):
  """GFL v2's DGQP input: (..., 4, n + 1) logits -> (..., 4 * (topk + 1)), per side the
  `topk` largest probabilities and their mean (mmdetection's channel order)."""
  probs = jax.nn.softmax(distribution_logits.astype(jnp.float32), axis=-1)
  top, _ = jax.lax.top_k(probs, topk)
  stats = jnp.concatenate([top, top.mean(axis=-1, keepdims=True)], axis=-1)
  return stats.reshape(stats.shape[:-2] + (-1,))


def probability_logit(probs, eps: float = 1e-6):
  """The logit whose sigmoid is `probs` (clipped away from 0 and 1)."""
  probs = jnp.clip(probs, eps, 1.0 - eps)
  return jnp.log(probs) - jnp.log1p(-probs)


class GFLHead(nn.Module):
  """Levels (B, H_l, W_l, C) -> logits (B, A, classes), distribution logits (B, A, 4, n + 1).

  With `dgqp` (GFL v2) the logits are those of sigmoid(class logit) x DGQP quality.
  """

  num_classes: int
  num_convs: int = 4
  feat_channels: int = 256
  num_groups: int = 32
  prior_prob: float = 0.01
  reg_max: int = 16
  dgqp: bool = False
  reg_topk: int = 4
  reg_channels: int = 64
  dtype: Dtype = jnp.float32

  def quality(self, distributions):
    """(B, A, 4, n + 1) distribution logits -> (B, A, 1) DGQP quality in (0, 1)."""
    stats = distribution_statistics(distributions, self.reg_topk)[:, :, None, :]
    conv = lambda features, name: nn.Conv(
      features, (1, 1), kernel_init=head_init, dtype=self.dtype, name=name
    )
    hidden = nn.relu(conv(self.reg_channels, 'reg_conf_0')(stats.astype(self.dtype)))
    return jax.nn.sigmoid(conv(1, 'reg_conf_1')(hidden).astype(jnp.float32))[:, :, 0, :]

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    tower = lambda name: ConvTower(
      self.num_convs, self.feat_channels, self.num_groups, self.dtype, name=name
    )
    cls_tower, reg_tower = tower('cls_tower'), tower('reg_tower')
    conv = lambda features, name, bias: nn.Conv(
      features,
      (3, 3),
      padding=((1, 1), (1, 1)),
      kernel_init=head_init,
      bias_init=nn.initializers.constant(bias),
      dtype=self.dtype,
      name=name,
    )
    cls_logits = conv(self.num_classes, 'cls_logits', prior_bias(self.prior_prob))
    bins = self.reg_max + 1
    bbox_pred = conv(4 * bins, 'bbox_pred', 0.0)
    logits, distributions = [], []
    for level, x in enumerate(levels):
      x = x.astype(self.dtype)
      scale = self.param(f'scale_{level}', nn.initializers.ones, ())
      logits.append(cls_logits(cls_tower(x)))
      distributions.append(bbox_pred(reg_tower(x)).astype(jnp.float32) * scale)
    distributions = flatten_levels(distributions, 4 * bins)
    distributions = distributions.reshape(distributions.shape[:2] + (4, bins))
    logits = flatten_levels(logits, self.num_classes).astype(jnp.float32)
    if self.dgqp:
      logits = probability_logit(jax.nn.sigmoid(logits) * self.quality(distributions))
    return logits, distributions


class GFL(OneStageDetector):
  """One-stage detector with QFL / DFL / GIoU losses (see the module docstring); head
  outputs: logits (B, A, classes), distribution logits (B, A, 4, n + 1)."""

  settings: GFLSpec = GFLSpec()

  def setup(self):
    s = self.settings
    self.head = GFLHead(
      self.num_classes,
      s.num_convs,
      s.feat_channels,
      s.num_groups,
      s.prior_prob,
      s.reg_max,
      s.dgqp,
      s.reg_topk,
      s.reg_channels,
      dtype=self.dtype,
    )

  def anchor_geometry(self, feature_shapes, padded_shape):
    """(anchors (A, 4), centres (A, 2), strides (A,)) as float32 numpy constants."""
    anchors = np.concatenate(self.settings.anchors.grid_anchors(feature_shapes, padded_shape))
    centers = (anchors[:, :2] + anchors[:, 2:]) / np.float32(2)
    return anchors, centers, level_strides(self.settings.anchors, feature_shapes, padded_shape)

  def detect(self, images, image_shape=None) -> dict[str, jax.Array]:
    """{'boxes' (B, D, 4), 'scores' (B, D), 'labels' (B, D) int32, 'valid' (B, D)}."""
    s = self.settings
    padded_shape, image_shape = image_shapes(images, image_shape)
    shapes, logits, distributions = self.head_outputs(images, train=False)
    _, centers, strides = self.anchor_geometry(shapes, padded_shape)
    index, labels, scores, ok = top_candidates(
      jax.nn.sigmoid(logits),
      s.anchors.num_anchors_per_level(shapes),
      s.score_threshold,
      s.pre_nms_top_n,
    )
    picked = jnp.take_along_axis(distributions, index[..., None, None], axis=1)
    distances = integral(picked) * jnp.asarray(strides)[index][..., None]
    boxes = ops.decode_distances(jnp.asarray(centers)[index], distances, max_shape=image_shape)
    return nms_detections(
      boxes, scores, labels, ok & big_enough(boxes, s.min_size), s.nms_threshold, s.max_detections
    )

  def losses(self, images, image_shape, targets: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """{'loss_cls', 'loss_box', 'loss_dfl'} (weighted, to be summed) and statistics."""
    s = self.settings
    padded_shape, image_shape = image_shapes(images, image_shape)
    gt_boxes, gt_labels, gt_valid, gt_ignore, dropped = self.targets_in_image(targets, image_shape)
    shapes, logits, distributions = self.head_outputs(images, train=True)
    anchors, centers, strides = self.anchor_geometry(shapes, padded_shape)
    out = gfl_loss(
      logits,
      distributions,
      anchors,
      centers,
      strides,
      s.anchors.num_anchors_per_level(shapes),
      s.anchors.valid_mask(shapes, image_shape, padded_shape),
      gt_boxes,
      gt_labels,
      gt_valid,
      gt_ignore,
      s,
    )
    out['gt_dropped'] = jnp.sum(dropped).astype(jnp.float32)
    return out


def gfl_loss(
  logits,
  distributions,
  anchors,
  centers,
  strides,
  num_anchors_per_level: Sequence[int],
  anchor_valid,
  gt_boxes,
  gt_labels,
  gt_valid,
  gt_ignore,
  settings: GFLSpec,
) -> dict[str, jax.Array]:
  """GFL's losses from head outputs and clean targets (see the module docstring).

  Args:
    logits (B, A, C), distributions (B, A, 4, reg_max + 1): head outputs.
    anchors (A, 4), centers (A, 2), strides (A,): `GFL.anchor_geometry`.
    num_anchors_per_level: static counts (sum A), for ATSS.
    anchor_valid: (B, A) anchors that take part (cell inside the image).
    gt_boxes (B, G, 4), gt_labels (B, G), gt_valid (B, G), gt_ignore (B, G): targets as
      `cascade_rcnn.clean_targets` returns them; ignore rows are regions, not objects.

  Returns:
    {'loss_cls', 'loss_box', 'loss_dfl'} weighted by the settings, 'positives' per image
    and 'mean_quality' (mean IoU of the positives' predicted boxes).
  """
  s, num_classes = settings, logits.shape[-1]
  assignment = ops.atss_assign(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    gt_ignore,
    anchor_valid,
    topk=s.atss_topk,
    ignore_iof_thr=s.ignore_iof_thr,
  )
  positive = assignment.positive
  take = lambda x, index: jnp.take_along_axis(x, index, axis=1)
  labels = jnp.where(positive, take(gt_labels, assignment.gt_index), num_classes)
  # Boxes in units of each anchor's stride, as the distributions.
  strides = jnp.asarray(strides)[:, None]
  target_boxes = take(gt_boxes, assignment.gt_index[..., None]) / strides
  points = jnp.asarray(centers) / strides
  predicted = ops.decode_distances(points, integral(distributions))
  quality = jnp.where(
    positive,
    ops.box_overlaps(jax.lax.stop_gradient(predicted), target_boxes, 'iou', aligned=True),
    0.0,
  )
  num_positive = jnp.sum(positive)
  loss_cls = ops.quality_focal_loss(
    logits, labels, quality, positive | assignment.negative, num_positive, beta=s.qfl_beta
  )
  # Each positive counts by its highest (detached) score; their sum normalises.
  weight = jnp.where(positive, jnp.max(jax.nn.sigmoid(jax.lax.stop_gradient(logits)), axis=-1), 0.0)
  total_weight = jnp.maximum(jnp.sum(weight), 1.0)
  loss_box = ops.giou_loss(predicted, target_boxes, weight, total_weight)
  side_targets = ops.encode_distances(points, target_boxes, max_distance=s.reg_max)
  loss_dfl = ops.distribution_focal_loss(distributions, side_targets, weight, 4.0 * total_weight)
  return {
    'loss_cls': s.cls_weight * loss_cls,
    'loss_box': s.giou_weight * loss_box,
    'loss_dfl': s.dfl_weight * loss_dfl,
    'positives': num_positive / logits.shape[0],
    'mean_quality': jnp.sum(quality) / jnp.maximum(num_positive, 1),
  }


def build_gfl(
  backbone: str,
  num_classes: int,
  *,
  backbone_overrides: Mapping[str, Any] | None = None,
  neck: Mapping[str, Any] | None = None,
  head: Mapping[str, Any] | None = None,
  dtype: Dtype = jnp.float32,
) -> GFL:
  """A GFL detector from names and field overrides (configs and checkpoint import).

  Args:
    backbone: a `detector_backbone.build_backbone` arch ('resnet50', 'resnext101_32x4d', ...).
    backbone_overrides: fields of the backbone.
    neck: fields of `detector_backbone.build_neck` (default: mmdetection's GFL FPN, C3-C5
      inputs, P6 and P7 convolved from P5's output).
    head: fields of `GFLSpec` ('anchors' may be a mapping of `AnchorGenerator.mmdet`
      arguments).
  """
  neck_fields = {
    'in_keys': FPN_INPUTS,
    'extra': 'conv_on_output',
    'num_extra': 2,
    **hashable(neck or {}),
  }
  spec = GFLSpec(**hashable(head or {}))
  return assemble(GFL, backbone, num_classes, spec, neck_fields, backbone_overrides, dtype)


def from_config(model_config, num_classes: int, dtype=jnp.float32) -> GFL:
  """The detection task's builder (`config.model.family = 'gfl'`)."""
  return build_gfl(model_config.backbone, num_classes, dtype=dtype, **builder_fields(model_config))
