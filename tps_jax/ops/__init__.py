"""Detection ops: pure jnp, jittable, static shapes, leading batch dims.

Boxes are xyxy absolute pixels, padded to a static count with a boolean validity
mask alongside. See each module's docstring for its conventions:
boxes (geometry, IoU, coders), anchors, roi_align, nms, assign (assigners,
sampler, FPN level mapping), losses.
"""

from tps_jax.ops.anchors import AnchorGenerator
from tps_jax.ops.assign import (
  Assignment,
  Sample,
  atss_assign,
  map_roi_levels,
  max_iou_assign,
  sample_balanced,
)
from tps_jax.ops.boxes import (
  BBOX_XFORM_CLIP,
  box_area,
  box_centers,
  box_cxcywh_to_xyxy,
  box_iou,
  box_overlaps,
  box_xyxy_to_cxcywh,
  clip_boxes,
  decode_deltas,
  decode_distances,
  encode_deltas,
  encode_distances,
  generalized_box_iou,
  min_size_mask,
)
from tps_jax.ops.losses import (
  distribution_focal_loss,
  giou_loss,
  l1_loss,
  quality_focal_loss,
  sigmoid_focal_loss,
  smooth_l1_loss,
  softmax_cross_entropy,
  weighted_sum,
)
from tps_jax.ops.nms import batched_nms, multiclass_nms, nms
from tps_jax.ops.roi_align import multilevel_roi_align, roi_align

__all__ = [
  'AnchorGenerator',
  'Assignment',
  'BBOX_XFORM_CLIP',
  'Sample',
  'atss_assign',
  'box_area',
  'box_centers',
  'box_cxcywh_to_xyxy',
  'box_iou',
  'box_overlaps',
  'box_xyxy_to_cxcywh',
  'batched_nms',
  'clip_boxes',
  'decode_deltas',
  'decode_distances',
  'distribution_focal_loss',
  'encode_deltas',
  'encode_distances',
  'generalized_box_iou',
  'giou_loss',
  'l1_loss',
  'map_roi_levels',
  'max_iou_assign',
  'min_size_mask',
  'multiclass_nms',
  'multilevel_roi_align',
  'nms',
  'quality_focal_loss',
  'roi_align',
  'sample_balanced',
  'sigmoid_focal_loss',
  'smooth_l1_loss',
  'softmax_cross_entropy',
  'weighted_sum',
]
