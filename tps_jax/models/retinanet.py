"""RetinaNet (Lin et al. 2017): backbone + FPN P3-P7 + a dense anchor head with focal loss.

The head is shared over the pyramid levels: two towers of `num_convs` 3x3 conv + ReLU
(classification and regression), then a 3x3 conv giving one logit per (anchor, class)
(no background column; sigmoid scores) and one (dx, dy, dw, dh) per anchor, with 9
anchors per location (3 scales x 3 aspect ratios). Outputs of all levels are flattened
in the anchors' order (tps_jax/ops/anchors.py: row-major cells, then the cell's anchors,
finest level first), which is torchvision's and mmdetection's order too.

Training (`train=True`, returns a dict of losses and statistics):
- targets are cleaned as in `cascade_rcnn.clean_targets` (clipped to the image;
  degenerate, non-finite and unlabelled boxes dropped and counted in 'gt_dropped');
- every anchor whose cell lies inside the image is assigned by max IoU (positive
  >= 0.5, negative < 0.4, each GT's best anchors positive too); anchors covered by an
  ignore region (pseudo-label 0.1-0.4 boxes) beyond `ignore_iof_thr` of their area are
  neither positive nor negative, so no loss sees them;
- sigmoid focal loss (alpha 0.25, gamma 2) over positives and negatives, and L1 (or
  smooth L1) on the encoded deltas of positives, both divided by the batch's number of
  positives (mmdetection; torchvision divides per image and averages, the same when
  images have equal positive counts).
Inference (`train=False`): per level the `pre_nms_top_n` best (anchor, class) pairs with
score > `score_threshold`, decoded and clipped to the image; class-aware NMS over all
levels; the best `max_detections`, padded with a validity mask. This is torchvision's
`postprocess_detections` and mmdetection's dense-head `_get_bboxes_single`.

The pieces every dense one-stage detector shares (`ConvTower`, `pyramid_levels`,
`image_shapes`, `level_strides`, `top_candidates`, `nms_detections`) live here;
tps_jax/models/gfl.py uses them. `CONVENTIONS` hold what differs between the two
libraries' RetinaNets (anchor sizes, extra FPN levels, the decoder's clamp, low-quality
matching).
Images are (B, H, W, 3), normalised, padded to a static size; `image_shape` (B, 2) is
each image's content (height, width) at the top-left (default: all of it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tps_jax import ops
from tps_jax.models import detector_backbone, hashable
from tps_jax.models.cascade_rcnn import clean_targets

Dtype = Any

# Both libraries initialise the dense heads' convs from N(0, 0.01) with zero bias.
head_init = nn.initializers.normal(0.01)

# Pyramid inputs of the one-stage detectors: C3-C5, plus two extra levels (P6, P7).
FPN_INPUTS = ('stage_2', 'stage_3', 'stage_4')


def prior_bias(prior_prob: float) -> float:
  """Classification bias making every initial sigmoid score `prior_prob`."""
  return -math.log((1.0 - prior_prob) / prior_prob)


def make_anchors(value) -> ops.AnchorGenerator:
  """An AnchorGenerator, or one from a config mapping of `AnchorGenerator.mmdet` args."""
  if isinstance(value, ops.AnchorGenerator):
    return value
  return ops.AnchorGenerator.mmdet(**hashable(value))


@dataclasses.dataclass(frozen=True)
class RetinaNetSpec:
  """The head's hyper-parameters, static (defaults: mmdetection's retinanet_r50_fpn_1x_coco)."""

  anchors: ops.AnchorGenerator = ops.AnchorGenerator.mmdet(
    strides=(8, 16, 32, 64, 128), ratios=(0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3
  )
  num_convs: int = 4
  feat_channels: int = 256
  prior_prob: float = 0.01
  box_means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
  box_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
  # Clamp of the decoded log-scale: c -> [-c, c] (mmdetection), (lo, hi) (torchvision).
  log_scale_clip: float | tuple[float, float] = ops.BBOX_XFORM_CLIP
  # Training.
  pos_iou_thr: float = 0.5
  neg_iou_thr: float = 0.4
  min_pos_iou: float = 0.0
  low_quality_matches: str | None = 'mmdet'
  ignore_iof_thr: float = 0.5  # anchors this much inside an ignore box: neither
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  box_loss: str = 'l1'  # 'l1' | 'smooth_l1'
  smooth_l1_beta: float = 0.11
  cls_weight: float = 1.0
  box_weight: float = 1.0
  # Inference.
  score_threshold: float = 0.05
  pre_nms_top_n: int = 1000  # per level, (anchor, class) pairs
  nms_threshold: float = 0.5
  max_detections: int = 100
  min_size: float | None = 0.0  # detections need both sides > this; None: keep all

  def __post_init__(self):
    object.__setattr__(self, 'anchors', make_anchors(self.anchors))
    if self.box_loss not in ('l1', 'smooth_l1'):
      raise ValueError(f"RetinaNetSpec.box_loss: {self.box_loss!r} is not 'l1' or 'smooth_l1'")
    if len(set(self.anchors.num_anchors_per_location)) != 1:
      raise ValueError(
        'RetinaNetSpec: the shared head needs the same number of anchors '
        f'on every level, got {self.anchors.num_anchors_per_location}'
      )


def torchvision_anchors() -> ops.AnchorGenerator:
  """torchvision's RetinaNet anchors: sizes (x, int(x 2^(1/3)), int(x 2^(2/3))), x = 32..512."""
  sizes = tuple(
    (x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512)
  )
  return ops.AnchorGenerator.torchvision(sizes, ((0.5, 1.0, 2.0),) * 5)


# convention -> (FPN fields, head settings) making the model compute what the library does.
CONVENTIONS = {
  'mmdet': (dict(extra='conv_on_input'), dict()),
  'torchvision': (
    dict(extra='conv_on_output', relu_between_extra=True),
    dict(
      anchors=torchvision_anchors(),
      log_scale_clip=(-math.inf, ops.BBOX_XFORM_CLIP),
      low_quality_matches='torchvision',
      max_detections=300,
      min_size=None,
    ),
  ),
}


# ------------------------------------------------------------ shared dense-head pieces


class ConvTower(nn.Module):
  """`num_convs` x (3x3 conv [+ GroupNorm] + ReLU); convs have a bias only without norm."""

  num_convs: int = 4
  channels: int = 256
  num_groups: int = 0  # GroupNorm groups; 0: no normalisation
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_convs):
      x = nn.Conv(
        self.channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=head_init,
        use_bias=not self.num_groups,
        dtype=self.dtype,
        name=f'conv_{i}',
      )(x)
      if self.num_groups:
        x = nn.GroupNorm(self.num_groups, epsilon=1e-5, dtype=self.dtype, name=f'gn_{i}')(x)
      x = nn.relu(x)
    return x


def image_shapes(images, image_shape):
  """(padded (H, W), image_shape (B, 2) float32: the whole image when None)."""
  if images.ndim != 4:
    raise ValueError(f'dense detector expects images (B, H, W, C), got shape {images.shape}')
  padded = tuple(images.shape[1:3])
  if image_shape is None:
    image_shape = np.broadcast_to(np.asarray(padded, np.float32), (images.shape[0], 2))
  return padded, jnp.asarray(image_shape, jnp.float32)


def level_strides(anchors: ops.AnchorGenerator, feature_shapes, padded_shape) -> np.ndarray:
  """(total anchors,) float32: the stride (x) of each anchor's level."""
  strides = anchors.level_strides(feature_shapes, padded_shape)
  counts = anchors.num_anchors_per_level(feature_shapes)
  return np.concatenate([np.full(n, sx, np.float32) for n, (_, sx) in zip(counts, strides)])


def pyramid_levels(
  backbone: nn.Module, neck: nn.Module, images, *, train: bool, num_levels: int
) -> list[jax.Array]:
  """The neck's levels on the backbone's stage features, finest first (`num_levels` of them,
  one per anchor level)."""
  features = neck(backbone(images, train=train, return_features=True))
  levels = [features[k] for k in sorted(features, key=lambda k: int(k[1:]))]
  if len(levels) != num_levels:
    raise ValueError(f'the neck gives {len(levels)} levels, the anchors have {num_levels}')
  return levels


def top_candidates(
  scores,
  num_anchors_per_level: Sequence[int],
  score_threshold: float,
  pre_nms_top_n: int,
  valid=None,
):
  """Per level, the `pre_nms_top_n` best (anchor, class) pairs scoring > threshold.

  Args:
    scores: (B, A, C) class scores, levels concatenated in order.
    num_anchors_per_level: static anchor counts (sum A).
    valid: optional (B, A) bool; False anchors never become candidates.

  Returns:
    anchor index (B, K) int32, label (B, K) int32, score (B, K), ok (B, K) bool, with
    K = sum over levels of min(pre_nms_top_n, A_l * C); within a level best first.
  """
  batch, _, num_classes = scores.shape
  ok = scores > score_threshold
  if valid is not None:
    ok = ok & valid[..., None]
  masked = jnp.where(ok, scores, -jnp.inf)
  picks, start = [], 0
  for count in num_anchors_per_level:
    level = masked[:, start : start + count].reshape(batch, count * num_classes)
    _, index = jax.lax.top_k(level, min(pre_nms_top_n, count * num_classes))
    picks.append(index + start * num_classes)
    start += count
  flat = jnp.concatenate(picks, axis=1)
  take = lambda x: jnp.take_along_axis(x.reshape(batch, -1), flat, axis=1)
  return (
    (flat // num_classes).astype(jnp.int32),
    (flat % num_classes).astype(jnp.int32),
    take(scores),
    take(ok),
  )


def nms_detections(
  boxes, scores, labels, valid, nms_threshold: float, max_detections: int
) -> dict[str, jax.Array]:
  """Class-aware NMS of candidates (B, K, ...) -> padded detections, best first.

  Returns {'boxes' (B, D, 4), 'scores' (B, D), 'labels' (B, D) int32, 'valid' (B, D)}
  with D = max_detections; invalid slots hold zeros.
  """
  keep, keep_valid = ops.batched_nms(boxes, scores, labels, nms_threshold, max_detections, valid)
  take = lambda x: jnp.take_along_axis(x, keep, axis=1)
  boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
  return {
    'boxes': jnp.where(keep_valid[..., None], boxes, 0.0),
    'scores': jnp.where(keep_valid, take(scores), 0.0),
    'labels': jnp.where(keep_valid, take(labels), 0).astype(jnp.int32),
    'valid': keep_valid,
  }


def big_enough(boxes, min_size: float | None):
  """(..., 4) -> (...,) bool: both sides > min_size (all True when min_size is None)."""
  if min_size is None:
    return jnp.ones(boxes.shape[:-1], bool)
  return ((boxes[..., 2] - boxes[..., 0]) > min_size) & ((boxes[..., 3] - boxes[..., 1]) > min_size)


def flatten_levels(outputs: Sequence[jax.Array], last: int) -> jax.Array:
  """Per-level (B, H, W, A * last) -> (B, sum H * W * A, last), levels in order."""
  return jnp.concatenate([x.reshape(x.shape[0], -1, last) for x in outputs], axis=1)


# ----------------------------------------------------------------------------- model


class RetinaHead(nn.Module):
  """Levels (B, H_l, W_l, C) -> logits (B, A, classes), deltas (B, A, 4), float32."""

  num_classes: int
  num_anchors: int = 9
  num_convs: int = 4
  feat_channels: int = 256
  prior_prob: float = 0.01
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    tower = lambda name: ConvTower(self.num_convs, self.feat_channels, 0, self.dtype, name=name)
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
    cls_logits = conv(
      self.num_anchors * self.num_classes, 'cls_logits', prior_bias(self.prior_prob)
    )
    bbox_pred = conv(self.num_anchors * 4, 'bbox_pred', 0.0)
    logits, deltas = [], []
    for x in levels:
      x = x.astype(self.dtype)
      logits.append(cls_logits(cls_tower(x)))
      deltas.append(bbox_pred(reg_tower(x)))
    return (
      flatten_levels(logits, self.num_classes).astype(jnp.float32),
      flatten_levels(deltas, 4).astype(jnp.float32),
    )


class OneStageDetector(nn.Module):
  """What the dense detectors (RetinaNet, GFL) share: backbone -> FPN levels -> the
  subclass's `head` (made in its `setup`) on every level; `losses` in training,
  `detect` otherwise.

  `backbone` returns {'stage_i': map} with `return_features=True` (ResNet, Swin);
  `neck` (FPN on stage_2..stage_4 with two extra levels) gives {'p3'..'p7'}.
  `settings` has `anchors` (an `ops.AnchorGenerator`) and the subclass's fields.
  """

  backbone: nn.Module
  neck: nn.Module
  num_classes: int
  settings: Any = None
  dtype: Dtype = jnp.float32

  def pyramid(self, images, *, train: bool) -> list[jax.Array]:
    """FPN levels, finest first."""
    return pyramid_levels(
      self.backbone, self.neck, images, train=train, num_levels=self.settings.anchors.num_levels
    )

  def head_outputs(self, images, *, train: bool = False):
    """(level (H, W) shapes, *the head's (B, A, ...) outputs) before decoding."""
    levels = self.pyramid(images, train=train)
    return [tuple(x.shape[1:3]) for x in levels], *self.head(levels)

  def targets_in_image(self, targets: Mapping[str, jax.Array], image_shape):
    """`clean_targets` of a batch's targets: (boxes, labels, valid, ignore, dropped)."""
    return clean_targets(
      targets['boxes'],
      targets['labels'],
      targets['valid'],
      targets.get('ignore'),
      image_shape,
      self.num_classes,
    )

  def __call__(
    self, images, image_shape=None, targets: Mapping[str, jax.Array] | None = None, *, train: bool
  ):
    """Losses (`train=True`, needs `targets`) or padded detections (`train=False`)."""
    if train:
      if targets is None:
        raise ValueError(f'{type(self).__name__}(train=True) needs targets (boxes, labels, valid)')
      return self.losses(images, image_shape, targets)
    return self.detect(images, image_shape)


class RetinaNet(OneStageDetector):
  """One-stage detector with anchors and focal loss (see the module docstring); head
  outputs: logits (B, A, classes), deltas (B, A, 4)."""

  settings: RetinaNetSpec = RetinaNetSpec()

  def setup(self):
    s = self.settings
    self.head = RetinaHead(
      self.num_classes,
      s.anchors.num_anchors_per_location[0],
      s.num_convs,
      s.feat_channels,
      s.prior_prob,
      dtype=self.dtype,
    )

  def anchor_boxes(self, feature_shapes, padded_shape) -> np.ndarray:
    """(A, 4) float32 anchors of every level, in the head's output order."""
    return np.concatenate(self.settings.anchors.grid_anchors(feature_shapes, padded_shape))

  def detect(self, images, image_shape=None) -> dict[str, jax.Array]:
    """{'boxes' (B, D, 4), 'scores' (B, D), 'labels' (B, D) int32, 'valid' (B, D)}."""
    s = self.settings
    padded_shape, image_shape = image_shapes(images, image_shape)
    shapes, logits, deltas = self.head_outputs(images, train=False)
    anchors = jnp.asarray(self.anchor_boxes(shapes, padded_shape))
    index, labels, scores, ok = top_candidates(
      jax.nn.sigmoid(logits),
      s.anchors.num_anchors_per_level(shapes),
      s.score_threshold,
      s.pre_nms_top_n,
    )
    boxes = ops.decode_deltas(
      jnp.take_along_axis(deltas, index[..., None], axis=1),
      anchors[index],
      s.box_means,
      s.box_stds,
      log_scale_clip=s.log_scale_clip,
      max_shape=image_shape,
    )
    return nms_detections(
      boxes, scores, labels, ok & big_enough(boxes, s.min_size), s.nms_threshold, s.max_detections
    )

  def losses(self, images, image_shape, targets: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """{'loss_cls', 'loss_box'} (weighted, to be summed) and statistics of one batch."""
    s = self.settings
    padded_shape, image_shape = image_shapes(images, image_shape)
    gt_boxes, gt_labels, gt_valid, gt_ignore, dropped = self.targets_in_image(targets, image_shape)
    shapes, logits, deltas = self.head_outputs(images, train=True)
    out = retinanet_loss(
      logits,
      deltas,
      self.anchor_boxes(shapes, padded_shape),
      s.anchors.valid_mask(shapes, image_shape, padded_shape),
      gt_boxes,
      gt_labels,
      gt_valid,
      gt_ignore,
      s,
    )
    out['gt_dropped'] = jnp.sum(dropped).astype(jnp.float32)
    return out


def retinanet_loss(
  logits,
  deltas,
  anchors,
  anchor_valid,
  gt_boxes,
  gt_labels,
  gt_valid,
  gt_ignore,
  settings: RetinaNetSpec,
) -> dict[str, jax.Array]:
  """RetinaNet's losses from head outputs and clean targets (see the module docstring).

  Args:
    logits (B, A, C), deltas (B, A, 4): head outputs; anchors (A, 4).
    anchor_valid: (B, A) anchors that take part (cell inside the image).
    gt_boxes (B, G, 4), gt_labels (B, G), gt_valid (B, G), gt_ignore (B, G): targets as
      `cascade_rcnn.clean_targets` returns them; ignore rows are regions, not objects.

  Returns:
    {'loss_cls', 'loss_box'} weighted by the settings, and 'positives' per image.
  """
  s, num_classes = settings, logits.shape[-1]
  assignment = ops.max_iou_assign(
    anchors,
    gt_boxes,
    gt_valid,
    gt_ignore,
    anchor_valid,
    pos_iou_thr=s.pos_iou_thr,
    neg_iou_thr=s.neg_iou_thr,
    min_pos_iou=s.min_pos_iou,
    low_quality_matches=s.low_quality_matches,
    ignore_iof_thr=s.ignore_iof_thr,
  )
  positive = assignment.positive
  take = lambda x, index: jnp.take_along_axis(x, index, axis=1)
  labels = jnp.where(positive, take(gt_labels, assignment.gt_index), num_classes)
  num_positive = jnp.sum(positive)
  loss_cls = ops.sigmoid_focal_loss(
    logits,
    jax.nn.one_hot(labels, num_classes),
    positive | assignment.negative,
    num_positive,
    alpha=s.focal_alpha,
    gamma=s.focal_gamma,
  )
  matched = take(gt_boxes, assignment.gt_index[..., None])
  box_targets = ops.encode_deltas(matched, jnp.asarray(anchors), s.box_means, s.box_stds)
  beta = s.smooth_l1_beta if s.box_loss == 'smooth_l1' else 0.0
  loss_box = ops.smooth_l1_loss(deltas, box_targets, positive, num_positive, beta=beta)
  return {
    'loss_cls': s.cls_weight * loss_cls,
    'loss_box': s.box_weight * loss_box,
    'positives': num_positive / logits.shape[0],
  }


def make_specs(
  convention: str = 'mmdet', head: Mapping[str, Any] | None = None
) -> tuple[dict, RetinaNetSpec]:
  """(FPN fields, head settings) of a convention ('mmdet' | 'torchvision'), with overrides."""
  if convention not in CONVENTIONS:
    raise ValueError(
      f'unknown RetinaNet convention {convention!r}; known: {", ".join(CONVENTIONS)}'
    )
  neck, base = CONVENTIONS[convention]
  head = hashable(head or {})
  return dict(neck), RetinaNetSpec(**{**base, **head})


def build_retinanet(
  backbone: str,
  num_classes: int,
  *,
  convention: str = 'mmdet',
  backbone_overrides: Mapping[str, Any] | None = None,
  neck: Mapping[str, Any] | None = None,
  head: Mapping[str, Any] | None = None,
  dtype: Dtype = jnp.float32,
) -> RetinaNet:
  """A RetinaNet from names and field overrides (configs and checkpoint import).

  Args:
    backbone: a `detector_backbone.build_backbone` arch ('resnet50', 'swin_l', ...).
    convention: 'mmdet' or 'torchvision' (`CONVENTIONS`), before the overrides.
    backbone_overrides: fields of the backbone.
    neck: fields of `detector_backbone.build_neck` (default: C3-C5 inputs, 2 extra levels).
    head: fields of `RetinaNetSpec` ('anchors' may be a mapping of
      `AnchorGenerator.mmdet` arguments).
  """
  neck_base, spec = make_specs(convention, head)
  neck_fields = {'in_keys': FPN_INPUTS, 'num_extra': 2, **neck_base, **hashable(neck or {})}
  return assemble(RetinaNet, backbone, num_classes, spec, neck_fields, backbone_overrides, dtype)


def assemble(cls, backbone: str, num_classes: int, spec, neck_fields, backbone_overrides, dtype):
  """A one-stage detector `cls` (RetinaNet, GFL): the backbone `backbone` with its
  overrides, the FPN of `neck_fields` and a head of `spec`."""
  return cls(
    backbone=detector_backbone.build_backbone(
      backbone, dtype=dtype, **hashable(backbone_overrides or {})
    ),
    neck=detector_backbone.build_neck(dtype=dtype, **neck_fields),
    num_classes=num_classes,
    settings=spec,
    dtype=dtype,
  )


def builder_fields(model_config) -> dict[str, Any]:
  """A one-stage builder's overrides from `config.model`: backbone_overrides, neck, head."""
  return {
    name: hashable(model_config.get(name)) or {} for name in ('backbone_overrides', 'neck', 'head')
  }


def from_config(model_config, num_classes: int, dtype=jnp.float32) -> RetinaNet:
  """The detection task's builder (`config.model.family = 'retinanet'`)."""
  return build_retinanet(
    model_config.backbone,
    num_classes,
    convention=model_config.get('convention', 'mmdet'),
    dtype=dtype,
    **builder_fields(model_config),
  )
