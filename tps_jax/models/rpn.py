"""Region Proposal Network (Ren et al. 2015) on FPN levels: head, proposals, loss.

The head is `num_convs` 3x3 convs + ReLU shared over the levels (one in mmdetection and
torchvision's v1, two in torchvision's fasterrcnn_resnet50_fpn_v2), then 1x1 convs giving an
objectness logit and (dx, dy, dw, dh) per anchor. Outputs of all levels are flattened
in the anchors' order (tps_jax/ops/anchors.py: row-major cells, then the cell's
anchors) and concatenated, finest level first.

Everything is static-shape and batched:
- `generate_proposals`: per level the `pre_nms_top_n` best anchors, decoded, clipped
  to each image, tiny boxes dropped, NMS at `nms_threshold` per level (levels never
  suppress each other, as torchvision and mmdetection), the `post_nms_top_n` best
  kept, padded with a validity mask.
- `rpn_loss`: max-IoU assignment of anchors (IoU >= 0.7 positive, < 0.3 negative,
  each GT's best anchors positive too), anchors covered by an ignore region neither,
  256 anchors sampled half positive, binary cross-entropy on the sample and smooth-L1
  on the positives, both normalised by the sample size (torchvision, mmdetection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tps_jax import ops

Dtype = Any

# Both libraries initialise the RPN convs from N(0, 0.01) with zero bias.
rpn_init = nn.initializers.normal(0.01)


@dataclasses.dataclass(frozen=True)
class RPNSpec:
  """The RPN's hyper-parameters, static (hashable, so a module field).

  Defaults are mmdetection's Cascade R-CNN (equal to torchvision's Faster R-CNN apart
  from `low_quality_matches`, `min_pos_iou`, `allowed_border` and `log_scale_clip`).
  """

  anchors: ops.AnchorGenerator = ops.AnchorGenerator.mmdet(
    strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8,)
  )
  num_convs: int = 1  # 3x3 conv + ReLU layers of the head
  # Proposals: per-level candidates, then kept after NMS (train / test).
  pre_nms_top_n_train: int = 2000
  post_nms_top_n_train: int = 2000
  pre_nms_top_n_test: int = 1000
  post_nms_top_n_test: int = 1000
  nms_threshold: float = 0.7
  min_size: float = 1e-3  # proposals need both sides >= this (pixels)
  # Clamp of the decoded log-scale: c -> [-c, c] (mmdetection); (lo, hi) (torchvision:
  # (-inf, log(1000/16))).
  log_scale_clip: float | tuple[float, float] = ops.BBOX_XFORM_CLIP
  # Training targets.
  pos_iou_thr: float = 0.7
  neg_iou_thr: float = 0.3
  min_pos_iou: float = 0.3  # a GT's best anchor is positive if IoU >= this
  low_quality_matches: str | None = 'mmdet'
  # Anchors must lie inside the image by this margin to train (None: any anchor whose
  # cell is inside the image; mmdetection's allowed_border -1 / 0).
  allowed_border: float | None = 0.0
  ignore_iof_thr: float = 0.5  # anchors this much inside an ignore box: neither
  num_samples: int = 256
  positive_fraction: float = 0.5
  smooth_l1_beta: float = 1.0 / 9.0
  cls_weight: float = 1.0
  box_weight: float = 1.0

  def top_n(self, train: bool) -> tuple[int, int]:
    """(pre_nms_top_n, post_nms_top_n) of the mode."""
    if train:
      return self.pre_nms_top_n_train, self.post_nms_top_n_train
    return self.pre_nms_top_n_test, self.post_nms_top_n_test


class RPNHead(nn.Module):
  """`num_convs` x (3x3 conv + ReLU), then objectness (A) and box deltas (4A) per
  location, all levels; the convs are 'conv', 'conv_1', ..."""

  num_anchors: int = 3
  num_convs: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Levels (B, H_l, W_l, C) -> objectness (B, N) and deltas (B, N, 4), float32."""
    channels = features[0].shape[-1]
    convs = [
      nn.Conv(
        channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=rpn_init,
        dtype=self.dtype,
        name='conv' if i == 0 else f'conv_{i}',
      )
      for i in range(self.num_convs)
    ]
    objectness = nn.Conv(
      self.num_anchors, (1, 1), kernel_init=rpn_init, dtype=self.dtype, name='objectness'
    )
    box_deltas = nn.Conv(
      4 * self.num_anchors, (1, 1), kernel_init=rpn_init, dtype=self.dtype, name='box_deltas'
    )
    logits, deltas = [], []
    for x in features:
      hidden = x.astype(self.dtype)
      for conv in convs:
        hidden = nn.relu(conv(hidden))
      batch = x.shape[0]
      logits.append(objectness(hidden).reshape(batch, -1))
      deltas.append(box_deltas(hidden).reshape(batch, -1, 4))
    return (
      jnp.concatenate(logits, axis=1).astype(jnp.float32),
      jnp.concatenate(deltas, axis=1).astype(jnp.float32),
    )


class Proposals(NamedTuple):
  boxes: jax.Array  # (B, N, 4) xyxy input pixels, best first
  scores: jax.Array  # (B, N) objectness probability
  valid: jax.Array  # (B, N) bool


def anchors_for(settings: RPNSpec, feature_shapes, padded_shape) -> np.ndarray:
  """(total anchors, 4) float32 for the levels' (H, W) and the padded image (H, W)."""
  return np.concatenate(settings.anchors.grid_anchors(feature_shapes, padded_shape), axis=0)


def generate_proposals(
  objectness,
  deltas,
  anchors,
  num_anchors_per_level: Sequence[int],
  image_shape,
  *,
  pre_nms_top_n: int,
  post_nms_top_n: int,
  nms_threshold: float,
  min_size: float,
  log_scale_clip=ops.BBOX_XFORM_CLIP,
) -> Proposals:
  """Per-level top-k, decode, clip, drop tiny boxes, per-level NMS, top-N.

  Args:
    objectness: (B, A) logits; deltas (B, A, 4); anchors (A, 4), levels in order.
    num_anchors_per_level: static counts summing to A.
    image_shape: (B, 2) (height, width) of each image's content, to clip to.
  """
  objectness = jax.lax.stop_gradient(objectness)
  deltas = jax.lax.stop_gradient(deltas)
  picks, level_ids, start = [], [], 0
  for level, count in enumerate(num_anchors_per_level):
    k = min(pre_nms_top_n, count)
    _, index = jax.lax.top_k(objectness[:, start : start + count], k)
    picks.append(index + start)
    level_ids.append(np.full(k, level, np.int32))
    start += count
  picks = jnp.concatenate(picks, axis=1)  # (B, K)
  level_ids = jnp.asarray(np.concatenate(level_ids))
  scores = jax.nn.sigmoid(jnp.take_along_axis(objectness, picks, axis=1))
  boxes = ops.decode_deltas(
    jnp.take_along_axis(deltas, picks[..., None], axis=1),
    jnp.asarray(anchors)[picks],
    log_scale_clip=log_scale_clip,
    max_shape=image_shape,
  )
  keep_ok = ops.min_size_mask(boxes, min_size)
  levels = jnp.broadcast_to(level_ids, scores.shape)
  keep, keep_valid = ops.batched_nms(
    boxes, scores, levels, nms_threshold, min(post_nms_top_n, picks.shape[1]), keep_ok
  )
  boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
  scores = jnp.take_along_axis(scores, keep, axis=1)
  pad = post_nms_top_n - keep.shape[1]
  if pad > 0:  # fewer anchors than proposal slots (tiny images)
    boxes = jnp.pad(boxes, ((0, 0), (0, pad), (0, 0)))
    scores = jnp.pad(scores, ((0, 0), (0, pad)))
    keep_valid = jnp.pad(keep_valid, ((0, 0), (0, pad)))
  return Proposals(
    jnp.where(keep_valid[..., None], boxes, 0.0), jnp.where(keep_valid, scores, 0.0), keep_valid
  )


def trainable_anchors(
  settings: RPNSpec, anchors: np.ndarray, feature_shapes, padded_shape, image_shape
):
  """(B, A) bool: anchors that take part in training (mmdetection's inside flags)."""
  valid = settings.anchors.valid_mask(feature_shapes, image_shape, padded_shape)
  if settings.allowed_border is not None:
    border = settings.allowed_border
    image_shape = jnp.asarray(image_shape, jnp.float32)
    anchors = jnp.asarray(anchors)
    inside = (
      (anchors[:, 0] >= -border)
      & (anchors[:, 1] >= -border)
      & (anchors[:, 2] < image_shape[:, 1:2] + border)
      & (anchors[:, 3] < image_shape[:, 0:1] + border)
    )
    valid = valid & inside
  return valid


def sample_anchors(
  anchors, anchor_valid, gt_boxes, gt_valid, gt_ignore, key, settings: RPNSpec
) -> tuple[ops.Assignment, ops.Sample]:
  """Max-IoU assignment of anchors (A, 4) to the targets and the balanced sample.

  anchor_valid (B, A): anchors that may be sampled; gt_ignore rows are regions whose
  anchors are neither positive nor negative.
  """
  assignment = ops.max_iou_assign(
    jnp.asarray(anchors),
    gt_boxes,
    gt_valid,
    gt_ignore,
    anchor_valid,
    pos_iou_thr=settings.pos_iou_thr,
    neg_iou_thr=settings.neg_iou_thr,
    min_pos_iou=settings.min_pos_iou,
    low_quality_matches=settings.low_quality_matches,
    ignore_iof_thr=settings.ignore_iof_thr,
  )
  sample = ops.sample_balanced(
    key, assignment.positive, assignment.negative, settings.num_samples, settings.positive_fraction
  )
  return assignment, sample


def rpn_loss(
  objectness,
  deltas,
  anchors,
  anchor_valid,
  gt_boxes,
  gt_valid,
  gt_ignore,
  key,
  settings: RPNSpec,
) -> dict[str, jax.Array]:
  """{'loss_rpn_cls', 'loss_rpn_box', 'rpn_positives'} for one batch.

  Args:
    objectness (B, A), deltas (B, A, 4): the head's outputs; anchors (A, 4).
    anchor_valid, gt_boxes (B, G, 4), gt_valid, gt_ignore, key: as `sample_anchors`.
  """
  assignment, sample = sample_anchors(
    anchors, anchor_valid, gt_boxes, gt_valid, gt_ignore, key, settings
  )
  take = lambda x: jnp.take_along_axis(x, sample.indices, axis=1)
  normalizer = jnp.sum(sample.valid)
  # Plain BCE (not the focal loss at gamma 0, whose pow(0, 0) has a NaN gradient once a
  # logit saturates).
  loss_cls = ops.weighted_sum(
    optax.sigmoid_binary_cross_entropy(take(objectness), sample.positive.astype(jnp.float32)),
    sample.valid,
    normalizer,
  )
  matched = jnp.take_along_axis(gt_boxes, take(assignment.gt_index)[..., None], axis=1)
  targets = ops.encode_deltas(matched, jnp.asarray(anchors)[sample.indices])
  predicted = jnp.take_along_axis(deltas, sample.indices[..., None], axis=1)
  loss_box = ops.smooth_l1_loss(
    predicted, targets, sample.positive, normalizer, beta=settings.smooth_l1_beta
  )
  return {
    'loss_rpn_cls': settings.cls_weight * loss_cls,
    'loss_rpn_box': settings.box_weight * loss_box,
    'rpn_positives': jnp.sum(sample.positive) / max(gt_boxes.shape[0], 1),
  }
