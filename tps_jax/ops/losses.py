"""Detection losses with masks / weights and an explicit normaliser.

Every loss returns sum(elementwise_loss * weights) / normalizer, a float32 scalar.
`weights` (bool masks or floats) broadcast against the loss from the left: per
anchor weights (N,) apply to a per-class loss (N, C) or a per-coordinate loss
(N, 4). Elements whose weight is 0 are zeroed before the sum, so garbage in
padded rows never reaches the result. `normalizer` is typically the number of
positives (mmdetection's `avg_factor`, torchvision's division by the sampled
count); a normaliser <= 0 is replaced by 1 (then every weight is 0 in practice).
Masked rows may hold any finite or infinite values (not NaN: a NaN input poisons
the gradient through the mask).

Label conventions: class labels in [0, num_classes); any label outside that range
(mmdetection's background = num_classes, or -1) is background for the sigmoid
losses (an all-zero target row) and is ignored by `softmax_cross_entropy`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tps_jax.ops.boxes import box_overlaps


def weighted_sum(losses, weights=None, normalizer=1.0):
  """sum(losses * weights) / normalizer with left-aligned broadcasting of weights."""
  losses = losses.astype(jnp.float32)
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
    weights = weights.reshape(weights.shape + (1,) * (losses.ndim - weights.ndim))
    losses = jnp.where(weights != 0, losses, 0.0) * weights
  normalizer = jnp.asarray(normalizer, jnp.float32)
  return jnp.sum(losses) / jnp.where(normalizer > 0, normalizer, 1.0)


def _bce_with_logits(logits, targets):
  """Numerically stable binary cross-entropy (torch's formulation)."""
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_focal_loss(
  logits, targets, weights=None, normalizer=1.0, *, alpha: float = 0.25, gamma: float = 2.0
):
  """Focal loss (Lin et al. 2017), torchvision.ops.sigmoid_focal_loss per element.

  Args:
    logits: (..., C) per-class logits (no background column).
    targets: (..., C) float targets in [0, 1], e.g. jax.nn.one_hot(labels, C) (a
      background label C gives an all-zero row).
    alpha: weight of positives, 1 - alpha of negatives; < 0 disables.
    gamma: focusing exponent; gamma=0 and alpha=-1 is plain sigmoid BCE.
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  prob = jax.nn.sigmoid(logits)
  p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
  loss = _bce_with_logits(logits, targets)
  if gamma:  # with gamma = 0, d/dp (1 - p_t)^0 is 0 * inf = NaN at a saturated logit
    loss = loss * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
  return weighted_sum(loss, weights, normalizer)


def quality_focal_loss(logits, labels, quality, weights=None, normalizer=1.0, *, beta: float = 2.0):
  """Quality focal loss of GFL (Li et al. 2020): BCE(x, y) * |y - sigmoid(x)|^beta.

  The soft target y is `quality` (the IoU of the decoded box with its GT) at the
  label's class and 0 elsewhere (everywhere for background).

  Args:
    logits: (..., C) joint classification-quality logits.
    labels: (..., ) int; outside [0, C) is background.
    quality: (..., ) float target scores in [0, 1].
    weights: (...,) per anchor, or (..., C).
  """
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1]) * jnp.asarray(quality, jnp.float32)[..., None]
  scale = jnp.abs(targets - jax.nn.sigmoid(logits)) ** beta
  return weighted_sum(_bce_with_logits(logits, targets) * scale, weights, normalizer)


def distribution_focal_loss(logits, targets, weights=None, normalizer=1.0):
  """Distribution focal loss of GFL: cross-entropy to the two bins around the target.

  Args:
    logits: (..., n + 1) logits over the integer distances 0..n (GFL: n = reg_max,
      one distribution per box side).
    targets: (...,) float distances, clipped to [0, n].
  """
  logits = logits.astype(jnp.float32)
  top = logits.shape[-1] - 1
  targets = jnp.clip(jnp.asarray(targets, jnp.float32), 0.0, float(top))
  left = jnp.floor(targets)
  weight_left = left + 1.0 - targets
  weight_right = targets - left
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  pick = lambda index: jnp.take_along_axis(log_probs, index.astype(jnp.int32)[..., None], axis=-1)[
    ..., 0
  ]
  loss = -(pick(left) * weight_left + pick(jnp.minimum(left + 1.0, top)) * weight_right)
  return weighted_sum(loss, weights, normalizer)


def smooth_l1_loss(pred, target, weights=None, normalizer=1.0, *, beta: float = 1.0):
  """Smooth L1 (Huber / beta): 0.5 d^2 / beta below beta, |d| - 0.5 beta above.

  beta=0 is the L1 loss. torchvision's R-CNN uses beta=1/9; mmdetection's Cascade
  R-CNN uses beta=1/9 (RPN) and 1.0 (heads).
  """
  diff = jnp.abs(pred.astype(jnp.float32) - jnp.asarray(target, jnp.float32))
  if beta > 0:  # min(): the unused branch stays finite for huge (masked) differences
    loss = jnp.where(diff < beta, 0.5 * jnp.minimum(diff, beta) ** 2 / beta, diff - 0.5 * beta)
  else:
    loss = diff
  return weighted_sum(loss, weights, normalizer)


def l1_loss(pred, target, weights=None, normalizer=1.0):
  """|pred - target| (smooth_l1_loss with beta=0)."""
  return smooth_l1_loss(pred, target, weights, normalizer, beta=0.0)


def giou_loss(pred_boxes, target_boxes, weights=None, normalizer=1.0):
  """1 - GIoU of aligned box pairs (..., 4) (Rezatofighi et al. 2019)."""
  giou = box_overlaps(
    pred_boxes.astype(jnp.float32), jnp.asarray(target_boxes, jnp.float32), 'giou', aligned=True
  )
  return weighted_sum(1.0 - giou, weights, normalizer)


def softmax_cross_entropy(
  logits, labels, weights=None, normalizer=1.0, *, label_smoothing: float = 0.0
):
  """Softmax cross-entropy with integer labels; labels outside [0, C) are ignored.

  Args:
    logits: (..., C) (R-CNN heads: C = num_classes + 1, background last).
    labels: (...,) int.
    label_smoothing: mass spread uniformly over the C classes.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  labels = jnp.asarray(labels, jnp.int32)
  in_range = (labels >= 0) & (labels < num_classes)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  loss = -jnp.sum(targets * log_probs, axis=-1)
  weights = in_range if weights is None else jnp.asarray(weights, jnp.float32) * in_range
  return weighted_sum(loss, weights, normalizer)
