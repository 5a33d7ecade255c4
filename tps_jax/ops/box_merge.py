"""One set of detections from several views of an image (test-time views, ensembles).

The views' detections, already mapped back to the image's pixels, are concatenated
along the detection axis and merged into `max_outputs` static slots:
- 'nms': class-aware NMS over the union (mmdetection's test-time augmentation), the
  boxes and scores of the kept detections unchanged;
- 'wbf': weighted box fusion (Solovyev et al., 2021) with the clusters that NMS forms:
  every detection joins the kept detection of its class it overlaps most (IoU above
  the threshold), and each cluster becomes the score-weighted mean of its boxes with
  score sum / max(size, views): a box every view found keeps its mean score, one that
  a single view found out of V keeps 1 / V of it. (The original algorithm matches each
  box against the running fused box; matching against the NMS leader keeps the shapes
  static and the clusters the same whenever the views roughly agree.)
Leading batch dimensions are allowed (one merge per image).
"""

from __future__ import annotations

import jax.numpy as jnp

from tps_jax.ops.boxes import box_iou
from tps_jax.ops.nms import batched_nms

METHODS = ('nms', 'wbf')


def merge_views(
  boxes,
  scores,
  labels,
  valid,
  *,
  method: str,
  iou_threshold: float,
  max_outputs: int,
  num_views: int,
):
  """Detections of `num_views` views concatenated -> one set (module docstring).

  Args:
    boxes: (..., N, 4) xyxy edges; scores (..., N); labels (..., N) int; valid (..., N).
    method: 'nms' or 'wbf'.
    iou_threshold: detections overlapping a kept one of their class by more are merged.
    max_outputs: static number of output slots.
    num_views: the views the N detections came from (the 'wbf' score's denominator).

  Returns:
    boxes (..., max_outputs, 4), scores, labels (int32), valid: the merged detections
    (invalid slots hold zeros).
  """
  if method not in METHODS:
    raise ValueError(f'box merge must be one of {", ".join(METHODS)}, got {method!r}')
  labels = jnp.asarray(labels, jnp.int32)
  keep, kept = batched_nms(boxes, scores, labels, iou_threshold, max_outputs, valid)
  take = lambda x: jnp.take_along_axis(x, keep, axis=-1)
  lead_boxes = jnp.take_along_axis(boxes, keep[..., None], axis=-2)
  lead_scores, lead_labels = take(scores), take(labels)
  if method == 'wbf':
    iou = box_iou(lead_boxes, boxes)  # (..., K, N)
    joins = (
      (iou > iou_threshold)
      & (lead_labels[..., :, None] == labels[..., None, :])
      & kept[..., :, None]
      & valid[..., None, :]
    )
    best = jnp.argmax(jnp.where(joins, iou, -1.0), axis=-2)  # (..., N): its closest leader
    member = joins & (jnp.arange(max_outputs)[:, None] == best[..., None, :])
    weight = jnp.where(member, scores[..., None, :], 0.0)  # (..., K, N)
    total = weight.sum(-1)
    fused = (weight[..., None] * boxes[..., None, :, :]).sum(-2) / jnp.maximum(total, 1e-12)[
      ..., None
    ]
    lead_boxes = jnp.where(kept[..., None], fused, lead_boxes)
    size = member.sum(-1)
    lead_scores = total / jnp.maximum(size, num_views)
  return (
    jnp.where(kept[..., None], lead_boxes, 0.0),
    jnp.where(kept, lead_scores, 0.0),
    jnp.where(kept, lead_labels, 0),
    kept,
  )
