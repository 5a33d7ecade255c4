"""Cascade R-CNN (Cai & Vasconcelos 2018): backbone + FPN + RPN + a cascade of RoI heads.

One implementation for every member of the family: `num_stages=1` with class-specific
regression is Faster R-CNN (torchvision's fasterrcnn_resnet50_fpn imports into it),
three stages with class-agnostic regression is Cascade R-CNN (mmdetection's configs).
The backbone (ResNet or Swin, tps_jax/models/detector_backbone.py) and the FPN are
module fields; the RPN is tps_jax/models/rpn.py.

Training (`train=True`, returns a dict of losses and statistics):
- targets are cleaned first: boxes clipped to the image, degenerate, non-finite or
  out-of-image boxes and out-of-range labels dropped (counted in 'gt_dropped');
- RPN loss and proposals (tps_jax/models/rpn.py);
- stage s adds the ground truth to its RoIs, assigns them at IoU `iou_thresholds[s]`
  (ignore regions make RoIs neither positive nor negative), samples 512 with a quarter
  positive, and computes softmax cross-entropy plus smooth-L1 on deltas normalised by
  `box_stds[s]` (or, `box_loss='giou'`, 1 - GIoU of the decoded boxes: the Swin
  detection release's `reg_decoded_bbox`), weighted by `stage_weights[s]`; box heads
  with BatchNorm (`norm='bn'`) normalise with the statistics of the stage's valid
  sampled RoIs over the whole (sharded) batch, or their running ones
  (`bn_mode='frozen'`); the sampled RoIs that are not ground
  truth, regressed by the stage (argmax class for negatives), are the next stage's
  RoIs, without gradient (mmdetection's `refine_bboxes`).
Inference (`train=False`, returns padded detections in input pixels): each stage
refines the previous one's boxes; class scores are the mean over the stages (of the
logits before the softmax, as mmdetection, or of the probabilities: `score_average`),
boxes come from the last stage; score threshold, per-class NMS, top `max_detections`.

Classes: `num_classes` foreground classes, the softmax's last column is background
(mmdetection's order; torchvision's background-first heads are permuted on import).
Images are (B, H, W, 3), normalised, padded to a static size; `image_shape` (B, 2)
gives each image's content (height, width) at the top-left (default: all of it).
All shapes are static; nothing leaves the device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tps_jax import ops
from tps_jax.models import detector_backbone, hashable
from tps_jax.models import rpn as rpn_lib
from tps_jax.models.resnet import BatchNorm

Dtype = Any

BN_MODES = ('batch', 'frozen')
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


@dataclasses.dataclass(frozen=True)
class RoISpec:
  """The RoI heads' hyper-parameters, static (defaults: mmdetection's Cascade R-CNN R-50 FPN)."""

  num_stages: int = 3
  iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
  box_stds: tuple[tuple[float, ...], ...] = CASCADE_STDS
  stage_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
  class_agnostic: bool = True
  # RoI feature extraction on the finest `num_levels` FPN levels (P2-P5).
  num_levels: int = 4
  output_size: int = 7
  sampling_ratio: int = 0  # <= 0: adaptive (mmdetection), capped below
  max_sampling_ratio: int = 4
  aligned: bool = True  # mmdetection True, torchvision False
  level_rule: str = 'mmdet'  # 'mmdet' | 'torchvision' (ops.map_roi_levels)
  # Head: `num_convs` 3x3 convs (no bias) + `norm` + ReLU, then `num_fcs` FCs + ReLU.
  # `norm`: 'gn' GroupNorm(32) (mmdetection's 4conv1fc) | 'bn' BatchNorm (the Swin
  # detection release's SyncBN, torchvision's fasterrcnn_resnet50_fpn_v2), trained with
  # the statistics of the whole global batch's sampled RoIs (`bn_mode='batch'`) or with
  # its running statistics kept (`'frozen'`).
  num_convs: int = 0
  conv_channels: int = 256
  norm: str = 'gn'
  bn_mode: str = 'batch'
  num_fcs: int = 2
  fc_dim: int = 1024
  # Training.
  num_samples: int = 512
  positive_fraction: float = 0.25
  ignore_iof_thr: float = 0.5
  # 'smooth_l1' on normalised deltas | 'giou': 1 - GIoU of the decoded boxes and their
  # ground truth (mmdetection's `reg_decoded_bbox=True` + GIoULoss).
  box_loss: str = 'smooth_l1'
  smooth_l1_beta: float = 1.0
  cls_weight: float = 1.0
  box_weight: float = 1.0
  # Inference.
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  max_detections: int = 100
  max_candidates: int | None = None  # (box, class) pairs entering NMS; None: all
  min_size: float = 0.0  # detections need both sides >= this (torchvision 1e-2)
  score_average: str = 'logits'  # 'logits' (mmdetection) | 'probs'
  log_scale_clip: float | tuple[float, float] = ops.BBOX_XFORM_CLIP

  def __post_init__(self):
    for name in ('iou_thresholds', 'box_stds', 'stage_weights'):
      if len(getattr(self, name)) < self.num_stages:
        raise ValueError(
          f'RoISpec.{name}: {len(getattr(self, name))} values for {self.num_stages} stages'
        )
    for name, known in (
      ('score_average', ('logits', 'probs')),
      ('norm', ('gn', 'bn')),
      ('bn_mode', BN_MODES),
      ('box_loss', ('smooth_l1', 'giou')),
    ):
      if getattr(self, name) not in known:
        raise ValueError(
          f'RoISpec.{name}: {getattr(self, name)!r} is not one of {", ".join(known)}'
        )


# The specs that make the model compute what each library computes.
CONVENTIONS = {
  'mmdet': (dict(), dict()),
  'torchvision': (
    dict(
      anchors=ops.AnchorGenerator.torchvision(),
      min_pos_iou=0.0,
      low_quality_matches='torchvision',
      allowed_border=None,
      log_scale_clip=(-math.inf, ops.BBOX_XFORM_CLIP),
    ),
    dict(
      num_stages=1,
      class_agnostic=False,
      aligned=False,
      sampling_ratio=2,
      level_rule='torchvision',
      smooth_l1_beta=1.0 / 9.0,
      min_size=1e-2,
      log_scale_clip=(-math.inf, ops.BBOX_XFORM_CLIP),
    ),
  ),
}


def make_specs(
  convention: str = 'mmdet',
  rpn: Mapping[str, Any] | None = None,
  roi: Mapping[str, Any] | None = None,
) -> tuple[rpn_lib.RPNSpec, RoISpec]:
  """RPN and RoI settings of a convention ('mmdet' | 'torchvision'), with overrides.

  `rpn['anchors']` may be an AnchorGenerator or the keyword arguments of
  `AnchorGenerator.mmdet` (strides, ratios, scales).
  """
  if convention not in CONVENTIONS:
    raise ValueError(f'unknown detector convention {convention!r}; known: {", ".join(CONVENTIONS)}')
  rpn_base, roi_base = CONVENTIONS[convention]
  rpn = hashable(rpn or {})
  if isinstance(rpn.get('anchors'), Mapping):  # from a config: mmdetection's fields
    rpn['anchors'] = ops.AnchorGenerator.mmdet(**rpn['anchors'])
  return (
    rpn_lib.RPNSpec(**{**rpn_base, **rpn}),
    RoISpec(**{**roi_base, **hashable(roi or {})}),
  )


class BoxHead(nn.Module):
  """RoI features (B, K, h, w, C) -> class logits (B, K, C + 1), deltas (B, K, 4 | 4C).

  Regression is one box per RoI (`class_agnostic`) or one per foreground class. The
  convs' norm is `RoISpec.norm`; BatchNorm ('bn_<i>', statistics in 'batch_stats')
  normalises with the statistics of the RoIs `valid` marks when `train` and
  `bn_mode='batch'` (under a sharded jit: the global batch's), else its running ones.
  """

  num_classes: int
  class_agnostic: bool = True
  num_convs: int = 0
  conv_channels: int = 256
  num_fcs: int = 2
  fc_dim: int = 1024
  norm: str = 'gn'
  bn_mode: str = 'batch'
  dtype: Dtype = jnp.float32

  def _norm(self, i: int, x, valid, train: bool):
    if self.norm == 'gn':
      return nn.GroupNorm(32, epsilon=1e-5, dtype=self.dtype, name=f'gn_{i}')(x)
    batch_statistics = train and self.bn_mode == 'batch'
    return BatchNorm(use_batch_statistics=batch_statistics, dtype=self.dtype, name=f'bn_{i}')(
      x, valid
    )

  @nn.compact
  def __call__(self, roi_features, valid=None, train: bool = False):
    """`valid` (B, K): the RoIs whose BatchNorm statistics count (None: all)."""
    batch, rois = roi_features.shape[:2]
    x = roi_features.reshape((batch * rois,) + roi_features.shape[2:]).astype(self.dtype)
    valid = None if valid is None else jnp.asarray(valid, bool).reshape(batch * rois)
    for i in range(self.num_convs):
      x = nn.Conv(
        self.conv_channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=self.dtype,
        name=f'conv_{i}',
      )(x)
      x = nn.relu(self._norm(i, x, valid, train))
    x = x.reshape(batch, rois, -1)  # (h, w, C) order; importers permute torch's
    for i in range(self.num_fcs):
      x = nn.relu(
        nn.Dense(
          self.fc_dim,
          kernel_init=nn.initializers.xavier_uniform(),
          dtype=self.dtype,
          name=f'fc_{i}',
        )(x)
      )
    logits = nn.Dense(
      self.num_classes + 1,
      kernel_init=nn.initializers.normal(0.01),
      dtype=self.dtype,
      name='cls_score',
    )(x)
    deltas = nn.Dense(
      4 if self.class_agnostic else 4 * self.num_classes,
      kernel_init=nn.initializers.normal(0.001),
      dtype=self.dtype,
      name='bbox_pred',
    )(x)
    return logits.astype(jnp.float32), deltas.astype(jnp.float32)


def select_deltas(deltas, labels, num_classes: int):
  """(B, K, 4 | 4C) -> (B, K, 4): the deltas of `labels` (class-specific heads)."""
  if deltas.shape[-1] == 4:
    return deltas
  per_class = deltas.reshape(deltas.shape[:-1] + (num_classes, 4))
  index = jnp.clip(labels, 0, num_classes - 1)[..., None, None]
  return jnp.take_along_axis(per_class, index, axis=-2)[..., 0, :]


def clean_targets(
  boxes, labels, valid, ignore, image_shape, num_classes: int, min_size: float = 1e-2
):
  """Clipped boxes and the masks of usable targets: (boxes, labels, valid, ignore, dropped).

  A valid row stays valid if its box is finite and, clipped to the image, has both
  sides >= min_size, and (unless it is an ignore region) its label is a class.
  `dropped` (B,) counts the valid rows that were not.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  finite = jnp.all(jnp.isfinite(boxes), axis=-1)
  boxes = ops.clip_boxes(jnp.where(finite[..., None], boxes, 0.0), image_shape)
  labels = jnp.asarray(labels, jnp.int32)
  ignore = jnp.zeros_like(valid) if ignore is None else jnp.asarray(ignore, bool)
  known = ((labels >= 0) & (labels < num_classes)) | ignore
  usable = jnp.asarray(valid, bool) & finite & ops.min_size_mask(boxes, min_size) & known
  dropped = jnp.sum(jnp.asarray(valid, bool) & ~usable, axis=-1)
  return (boxes, jnp.clip(labels, 0, num_classes - 1), usable, ignore & usable, dropped)


def _shapes(images, image_shape):
  """(padded (H, W), image_shape (B, 2) float32: the whole image when None)."""
  padded = tuple(images.shape[1:3])
  if image_shape is None:
    image_shape = np.broadcast_to(np.asarray(padded, np.float32), (images.shape[0], 2))
  return padded, jnp.asarray(image_shape, jnp.float32)


class CascadeRCNN(nn.Module):
  """Two-stage detector with `roi.num_stages` cascaded RoI heads (see module docstring).

  `backbone` returns {'stage_i': map} with `return_features=True` (ResNet, Swin);
  `neck` (FPN) turns them into {'p<l>': map}; the RPN uses every level, the RoI heads
  the finest `roi.num_levels`.
  """

  backbone: nn.Module
  neck: nn.Module
  num_classes: int
  rpn: rpn_lib.RPNSpec = rpn_lib.RPNSpec()
  roi: RoISpec = RoISpec()
  dtype: Dtype = jnp.float32

  def setup(self):
    anchors_per_location = set(self.rpn.anchors.num_anchors_per_location)
    if len(anchors_per_location) != 1:
      raise ValueError(
        'CascadeRCNN: the shared RPN head needs the same number of anchors '
        f'on every level, got {self.rpn.anchors.num_anchors_per_location}'
      )
    self.rpn_head = rpn_lib.RPNHead(
      anchors_per_location.pop(), self.rpn.num_convs, dtype=self.dtype
    )
    self.box_heads = [
      BoxHead(
        self.num_classes,
        self.roi.class_agnostic,
        self.roi.num_convs,
        self.roi.conv_channels,
        self.roi.num_fcs,
        self.roi.fc_dim,
        self.roi.norm,
        self.roi.bn_mode,
        dtype=self.dtype,
      )
      for _ in range(self.roi.num_stages)
    ]

  # ---------------------------------------------------------------------- pieces

  def pyramid(self, images, *, train: bool) -> list[jax.Array]:
    """FPN levels, finest first."""
    if images.ndim != 4:
      raise ValueError(f'CascadeRCNN expects images (B, H, W, C), got shape {images.shape}')
    features = self.neck(self.backbone(images, train=train, return_features=True))
    return [features[k] for k in sorted(features, key=lambda k: int(k[1:]))]

  def propose(self, levels, image_shape, padded_shape, *, train: bool):
    """(Proposals, objectness logits (B, A), deltas (B, A, 4), anchors (A, 4)).

    `padded_shape`: the input's static (H, W); `image_shape` (B, 2) the content's.
    """
    objectness, deltas = self.rpn_head(levels)
    shapes = [tuple(x.shape[1:3]) for x in levels]
    anchors = rpn_lib.anchors_for(self.rpn, shapes, padded_shape)
    per_level = self.rpn.anchors.num_anchors_per_level(shapes)
    pre_nms, post_nms = self.rpn.top_n(train)
    proposals = rpn_lib.generate_proposals(
      objectness,
      deltas,
      anchors,
      per_level,
      image_shape,
      pre_nms_top_n=pre_nms,
      post_nms_top_n=post_nms,
      nms_threshold=self.rpn.nms_threshold,
      min_size=self.rpn.min_size,
      log_scale_clip=self.rpn.log_scale_clip,
    )
    return proposals, objectness, deltas, anchors

  def box_head(self, stage: int, levels, rois, padded_shape, valid=None, *, train=False):
    """Stage `stage`'s (class logits (B, K, C + 1), deltas (B, K, 4 | 4C)) for rois (B, K, 4).

    A level's scale is 1 / its stride, a power of two (torchvision infers it so).
    `valid` / `train`: the box head's (its BatchNorm's statistics).
    """
    roi = self.roi
    levels = levels[: roi.num_levels]
    scales = [2.0 ** round(math.log2(x.shape[1] / padded_shape[0])) for x in levels]
    level_index = ops.map_roi_levels(jax.lax.stop_gradient(rois), len(levels), rule=roi.level_rule)
    features = ops.multilevel_roi_align(
      levels,
      rois,
      level_index,
      roi.output_size,
      scales,
      roi.sampling_ratio,
      roi.aligned,
      max_sampling_ratio=roi.max_sampling_ratio,
    )
    return self.box_heads[stage](features, valid, train)

  def _decode(self, stage: int, deltas, rois, image_shape):
    return ops.decode_deltas(
      deltas,
      rois,
      stds=self.roi.box_stds[stage],
      log_scale_clip=self.roi.log_scale_clip,
      max_shape=image_shape,
    )

  # ------------------------------------------------------------------- inference

  def detect(self, images, image_shape=None) -> dict[str, jax.Array]:
    """{'boxes' (B, D, 4), 'scores' (B, D), 'labels' (B, D) int32, 'valid' (B, D)}."""
    padded_shape, image_shape = _shapes(images, image_shape)
    levels = self.pyramid(images, train=False)
    proposals, _, _, _ = self.propose(levels, image_shape, padded_shape, train=False)
    roi, num_classes = self.roi, self.num_classes
    rois, all_logits = proposals.boxes, []
    for stage in range(roi.num_stages):
      logits, deltas = self.box_head(stage, levels, rois, padded_shape)
      all_logits.append(logits)
      if stage < roi.num_stages - 1:  # the last stage's deltas make the detections
        labels = jnp.argmax(logits[..., :num_classes], axis=-1)
        rois = self._decode(stage, select_deltas(deltas, labels, num_classes), rois, image_shape)
    if roi.score_average == 'logits':
      probs = jax.nn.softmax(sum(all_logits) / len(all_logits), axis=-1)
    else:
      probs = sum(jax.nn.softmax(x, axis=-1) for x in all_logits) / len(all_logits)
    probs = probs[..., :num_classes]
    last = roi.num_stages - 1
    if roi.class_agnostic:
      boxes = self._decode(last, deltas, rois, image_shape)  # (B, K, 4)
      big = ops.min_size_mask(boxes, roi.min_size)[..., None]
    else:
      per_class = deltas.reshape(deltas.shape[:-1] + (num_classes, 4))
      boxes = self._decode(last, per_class, rois[..., None, :], image_shape)  # (B, K, C, 4)
      big = ops.min_size_mask(boxes, roi.min_size)
    probs = jnp.where(big & proposals.valid[..., None], probs, 0.0)
    max_candidates = roi.max_candidates or probs.shape[1] * num_classes
    boxes, scores, labels, valid = ops.multiclass_nms(
      boxes,
      probs,
      roi.score_threshold,
      roi.nms_threshold,
      roi.max_detections,
      max_candidates,
      proposals.valid,
    )
    return {'boxes': boxes, 'scores': scores, 'labels': labels, 'valid': valid}

  # -------------------------------------------------------------------- training

  def losses(self, images, image_shape, targets: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Weighted losses ('loss_*', to be summed) and statistics of one batch."""
    padded_shape, image_shape = _shapes(images, image_shape)
    roi, num_classes = self.roi, self.num_classes
    gt_boxes, gt_labels, gt_valid, gt_ignore, dropped = clean_targets(
      targets['boxes'],
      targets['labels'],
      targets['valid'],
      targets.get('ignore'),
      image_shape,
      num_classes,
    )
    rpn_key, *stage_keys = jax.random.split(self.make_rng('sampling'), 1 + roi.num_stages)

    levels = self.pyramid(images, train=True)
    proposals, objectness, rpn_deltas, anchors = self.propose(
      levels, image_shape, padded_shape, train=True
    )
    shapes = [tuple(x.shape[1:3]) for x in levels]
    anchor_valid = rpn_lib.trainable_anchors(self.rpn, anchors, shapes, padded_shape, image_shape)
    out = rpn_lib.rpn_loss(
      objectness,
      rpn_deltas,
      anchors,
      anchor_valid,
      gt_boxes,
      gt_valid,
      gt_ignore,
      rpn_key,
      self.rpn,
    )
    out['gt_dropped'] = jnp.sum(dropped).astype(jnp.float32)

    gt_object = gt_valid & ~gt_ignore
    num_gt = gt_boxes.shape[1]
    take = lambda x, index: jnp.take_along_axis(x, index, axis=1)
    rois, roi_valid = proposals.boxes, proposals.valid
    for stage in range(roi.num_stages):
      threshold = roi.iou_thresholds[stage]
      candidates = jnp.concatenate([gt_boxes, rois], axis=1)
      candidate_valid = jnp.concatenate([gt_object, roi_valid], axis=1)
      is_gt = np.arange(candidates.shape[1]) < num_gt
      assignment = ops.max_iou_assign(
        candidates,
        gt_boxes,
        gt_valid,
        gt_ignore,
        candidate_valid,
        pos_iou_thr=threshold,
        neg_iou_thr=threshold,
        min_pos_iou=threshold,
        ignore_iof_thr=roi.ignore_iof_thr,
      )
      sample = ops.sample_balanced(
        stage_keys[stage],
        assignment.positive,
        assignment.negative,
        roi.num_samples,
        roi.positive_fraction,
      )
      sampled = take(candidates, sample.indices[..., None])
      matched = take(assignment.gt_index, sample.indices)
      labels = jnp.where(sample.positive, take(gt_labels, matched), num_classes)
      logits, deltas = self.box_head(stage, levels, sampled, padded_shape, sample.valid, train=True)
      normalizer = jnp.sum(sample.valid)
      weight = roi.stage_weights[stage]
      out[f'loss_cls_{stage}'] = (
        weight
        * roi.cls_weight
        * ops.softmax_cross_entropy(logits, labels, sample.valid, normalizer)
      )
      out[f'loss_box_{stage}'] = (
        weight
        * roi.box_weight
        * self._box_loss(
          stage,
          select_deltas(deltas, labels, num_classes),
          sampled,
          take(gt_boxes, matched[..., None]),
          sample.positive,
          normalizer,
        )
      )
      correct = (jnp.argmax(logits, axis=-1) == labels) & sample.valid
      out[f'accuracy_{stage}'] = jnp.sum(correct) / jnp.maximum(normalizer, 1)
      out[f'positives_{stage}'] = jnp.sum(sample.positive) / images.shape[0]
      if stage < roi.num_stages - 1:
        refine = jnp.where(sample.positive, labels, jnp.argmax(logits[..., :num_classes], axis=-1))
        rois = jax.lax.stop_gradient(
          self._decode(stage, select_deltas(deltas, refine, num_classes), sampled, image_shape)
        )
        roi_valid = sample.valid & ~jnp.asarray(is_gt)[sample.indices]
    return out

  def _box_loss(self, stage: int, deltas, rois, gt_boxes, positive, normalizer):
    """Stage `stage`'s unweighted box loss over the positives (`RoISpec.box_loss`)."""
    roi = self.roi
    if roi.box_loss == 'giou':
      # Decoded without clipping to the image, as mmdetection's loss does.
      boxes = ops.decode_deltas(
        deltas, rois, stds=roi.box_stds[stage], log_scale_clip=roi.log_scale_clip
      )
      return ops.giou_loss(boxes, gt_boxes, positive, normalizer)
    targets = ops.encode_deltas(gt_boxes, rois, stds=roi.box_stds[stage])
    return ops.smooth_l1_loss(deltas, targets, positive, normalizer, beta=roi.smooth_l1_beta)

  # ------------------------------------------------------------------------ entry

  def __call__(
    self, images, image_shape=None, targets: Mapping[str, jax.Array] | None = None, *, train: bool
  ):
    """Losses (`train=True`, needs `targets` and a 'sampling' rng) or detections."""
    if train:
      if targets is None:
        raise ValueError('CascadeRCNN(train=True) needs targets (boxes, labels, valid)')
      return self.losses(images, image_shape, targets)
    return self.detect(images, image_shape)


def build_cascade_rcnn(
  backbone: str,
  num_classes: int,
  *,
  convention: str = 'mmdet',
  backbone_overrides: Mapping[str, Any] | None = None,
  neck: Mapping[str, Any] | None = None,
  rpn: Mapping[str, Any] | None = None,
  roi: Mapping[str, Any] | None = None,
  dtype: Dtype = jnp.float32,
) -> CascadeRCNN:
  """A CascadeRCNN from names and field overrides (configs and checkpoint import).

  Args:
    backbone: a `detector_backbone.build_backbone` arch ('resnet50', 'swin_l', ...).
    convention: 'mmdet' or 'torchvision' (`CONVENTIONS`), before the overrides.
    backbone_overrides, neck: fields of the backbone / `detector_backbone.build_neck`.
    rpn, roi: fields of `RPNSpec` / `RoISpec`.
  """
  rpn_settings, roi_settings = make_specs(convention, rpn, roi)
  return CascadeRCNN(
    backbone=detector_backbone.build_backbone(
      backbone, dtype=dtype, **hashable(backbone_overrides or {})
    ),
    neck=detector_backbone.build_neck(dtype=dtype, **hashable(neck or {})),
    num_classes=num_classes,
    rpn=rpn_settings,
    roi=roi_settings,
    dtype=dtype,
  )
