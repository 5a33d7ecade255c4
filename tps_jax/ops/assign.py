"""Training-target assignment: max-IoU and ATSS assigners, balanced sampling, FPN levels.

Inputs are padded: ground truth `gt_boxes` (..., G, 4) with `gt_valid` (..., G) and
optionally `gt_ignore` (..., G) (valid rows that are ignore regions, e.g.
pseudo-label boxes scored 0.1-0.4, not objects); candidate boxes (anchors or RoIs)
(..., A, 4) with an optional `box_valid` (..., A). Leading dimensions are images.

An `Assignment` says, per candidate, whether it is a positive (with the GT row it
regresses to), a negative (background), or neither (ignored: between the IoU
thresholds, overlapping an ignore region by more than `ignore_iof_thr` of its own
area, or an invalid candidate). Ignore regions follow mmdetection: a candidate
whose intersection-over-its-area with any ignore box exceeds the threshold is
taken out before assignment, so it can be neither positive nor negative.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.ops.boxes import box_area, box_centers, box_iou, box_overlaps


class Assignment(NamedTuple):
  gt_index: jax.Array  # (..., A) int32 matched GT row; meaningful where positive
  max_iou: jax.Array  # (..., A) float32 IoU with the best object GT (0 without any)
  positive: jax.Array  # (..., A) bool
  negative: jax.Array  # (..., A) bool; neither positive nor negative = ignored


class Sample(NamedTuple):
  indices: jax.Array  # (..., num_samples) int32 candidate indices, positives first
  valid: jax.Array  # (..., num_samples) bool
  positive: jax.Array  # (..., num_samples) bool (valid and a positive)


def _defaults(boxes, gt_boxes, gt_valid, gt_ignore, box_valid):
  """Fills optional masks; a static G = 0 gets one invalid GT row (argmax needs one)."""
  gt_valid = jnp.asarray(gt_valid, bool)
  gt_ignore = (
    jnp.zeros_like(gt_valid) if gt_ignore is None else jnp.asarray(gt_ignore, bool) & gt_valid
  )
  box_valid = (
    jnp.ones(boxes.shape[:-1], bool) if box_valid is None else jnp.asarray(box_valid, bool)
  )
  # Targets carry no gradient (and sqrt / argmax would give useless ones).
  boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
  gt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
  if gt_boxes.shape[-2] == 0:
    gt_boxes = jnp.zeros(gt_boxes.shape[:-2] + (1, 4), jnp.float32)
    gt_valid = gt_ignore = jnp.zeros(gt_valid.shape[:-1] + (1,), bool)
  return boxes, gt_boxes, gt_valid, gt_ignore, box_valid


def _ignored(boxes, gt_boxes, is_ignore, ignore_iof_thr):
  """(A,) candidates covered beyond the threshold by an ignore region."""
  if ignore_iof_thr is None or ignore_iof_thr <= 0:
    return jnp.zeros(boxes.shape[:-1], bool)
  iof = box_overlaps(boxes, gt_boxes, 'iof')  # (A, G)
  return jnp.any(jnp.where(is_ignore[None], iof, 0.0) > ignore_iof_thr, axis=-1)


def _max_iou_single(
  boxes,
  gt_boxes,
  gt_valid,
  gt_ignore,
  box_valid,
  *,
  pos_iou_thr,
  neg_iou_thr,
  min_pos_iou,
  low_quality_matches,
  gt_max_assign_all,
  ignore_iof_thr,
):
  num_boxes, num_gt = boxes.shape[0], gt_boxes.shape[0]
  is_object = gt_valid & ~gt_ignore
  usable = box_valid & ~_ignored(boxes, gt_boxes, gt_ignore, ignore_iof_thr)
  iou = jnp.where(is_object[None], box_iou(boxes, gt_boxes), -1.0)  # (A, G)
  gt_index = jnp.argmax(iou, axis=1).astype(jnp.int32)
  best = jnp.max(iou, axis=1, initial=-1.0)
  max_iou = jnp.maximum(best, 0.0)  # no object GT: IoU 0 (all negatives)
  neg_lo, neg_hi = (0.0, neg_iou_thr) if np.isscalar(neg_iou_thr) else tuple(neg_iou_thr)
  negative = usable & (max_iou >= neg_lo) & (max_iou < neg_hi)
  positive = usable & (best >= 0.0) & (max_iou >= pos_iou_thr)
  if low_quality_matches is not None:
    # For each GT, its best candidates become positives (RPN: every GT gets one).
    candidate_iou = jnp.where(usable[:, None], iou, -1.0)
    gt_best = jnp.max(candidate_iou, axis=0, initial=-1.0)  # (G,)
    # gt_best > 0: a GT overlapping nothing (e.g. zero area) would otherwise claim
    # every candidate (all tied at IoU 0); torchvision refuses such boxes upstream.
    qualifies = is_object & (gt_best >= min_pos_iou) & (gt_best > 0)
    if gt_max_assign_all:
      hit = (candidate_iou == gt_best[None]) & usable[:, None]
    else:
      hit = jnp.arange(num_boxes)[:, None] == jnp.argmax(candidate_iou, axis=0)[None]
    hit = hit & qualifies[None]  # (A, G)
    any_hit = jnp.any(hit, axis=1)
    if low_quality_matches == 'mmdet':  # the GT it is best for; the last GT wins
      own = (num_gt - 1 - jnp.argmax(hit[:, ::-1], axis=1)).astype(jnp.int32)
      gt_index = jnp.where(any_hit, own, gt_index)
    positive = positive | any_hit  # torchvision keeps the argmax GT
    negative = negative & ~any_hit
  return gt_index, max_iou, positive, negative


def _vectorize(core, core_ndims: Sequence[int], *args):
  """Applies a single-image function over the broadcast leading dims of its arguments
  (e.g. anchors (A, 4) shared by a batch of GT (B, G, 4))."""
  lead = np.broadcast_shapes(*(a.shape[: a.ndim - n] for a, n in zip(args, core_ndims)))
  if args[0].shape[-2] == 0:  # no candidates: empty assignment
    empty = lambda dtype: jnp.zeros(lead + (0,), dtype)
    return empty(jnp.int32), empty(jnp.float32), empty(bool), empty(bool)
  args = [jnp.broadcast_to(a, lead + a.shape[a.ndim - n :]) for a, n in zip(args, core_ndims)]
  fn = core
  for _ in lead:
    fn = jax.vmap(fn)
  return fn(*args)


@functools.partial(
  jax.jit,
  static_argnames=(
    'pos_iou_thr',
    'neg_iou_thr',
    'min_pos_iou',
    'low_quality_matches',
    'gt_max_assign_all',
    'ignore_iof_thr',
  ),
)
def _max_iou_assign(boxes, gt_boxes, gt_valid, gt_ignore, box_valid, **settings):
  core = functools.partial(_max_iou_single, **settings)
  args = _defaults(boxes, gt_boxes, gt_valid, gt_ignore, box_valid)
  return Assignment(*_vectorize(core, (2, 2, 1, 1, 1), *args))


def max_iou_assign(
  boxes,
  gt_boxes,
  gt_valid,
  gt_ignore=None,
  box_valid=None,
  *,
  pos_iou_thr: float,
  neg_iou_thr: float | tuple[float, float],
  min_pos_iou: float = 0.0,
  low_quality_matches: str | None = None,
  gt_max_assign_all: bool = True,
  ignore_iof_thr: float | None = None,
) -> Assignment:
  """Max-IoU assignment (mmdetection's MaxIoUAssigner / torchvision's Matcher).

  Positive: max IoU >= pos_iou_thr. Negative: max IoU in [0, neg_iou_thr) (or in
  [lo, hi) for a pair). Between: ignored.

  Args:
    boxes: (..., A, 4) anchors or RoIs. For R-CNN heads, concatenate the valid GT
      boxes to the proposals first (mmdetection's `add_gt_as_proposals`).
    gt_boxes, gt_valid, gt_ignore: (..., G, 4), (..., G), (..., G).
    box_valid: (..., A), False for padding (neither positive nor negative).
    low_quality_matches: None (off: R-CNN stages), 'torchvision' (Matcher with
      allow_low_quality_matches: each GT's best candidates, ties included, become
      positive for their own argmax GT) or 'mmdet' (match_low_quality: they become
      positive for that GT, the later GT winning a candidate best for several).
      A GT takes part only if its best IoU >= min_pos_iou and > 0.
    gt_max_assign_all: all candidates tied at a GT's best IoU (True) or only the
      first one (mmdetection's option).
    ignore_iof_thr: candidates whose intersection with an ignore box exceeds this
      fraction of their area are ignored; None or <= 0 disables.
  """
  if low_quality_matches not in (None, 'torchvision', 'mmdet'):
    raise ValueError(
      "max_iou_assign: low_quality_matches must be None, 'torchvision' or "
      f"'mmdet', got {low_quality_matches!r}"
    )
  if not np.isscalar(neg_iou_thr):
    neg_iou_thr = tuple(float(t) for t in neg_iou_thr)
  return _max_iou_assign(
    boxes,
    gt_boxes,
    gt_valid,
    gt_ignore,
    box_valid,
    pos_iou_thr=pos_iou_thr,
    neg_iou_thr=neg_iou_thr,
    min_pos_iou=min_pos_iou,
    low_quality_matches=low_quality_matches,
    gt_max_assign_all=gt_max_assign_all,
    ignore_iof_thr=ignore_iof_thr,
  )


def _atss_single(
  anchors,
  gt_boxes,
  gt_valid,
  gt_ignore,
  anchor_valid,
  *,
  num_anchors_per_level,
  topk,
  ignore_iof_thr,
):
  num_gt = gt_boxes.shape[0]
  is_object = gt_valid & ~gt_ignore
  usable = anchor_valid & ~_ignored(anchors, gt_boxes, gt_ignore, ignore_iof_thr)
  iou = box_iou(anchors, gt_boxes)  # (A, G)
  centers = box_centers(anchors)
  offsets = centers[:, None, :] - box_centers(gt_boxes)[None]
  distance = jnp.where(usable[:, None], jnp.sqrt(jnp.sum(offsets**2, axis=-1)), jnp.inf)
  # 1. Per level, the topk anchors closest to each GT centre.
  candidates, start = [], 0
  for count in num_anchors_per_level:
    if count:
      _, index = jax.lax.top_k(-distance[start : start + count].T, min(topk, count))
      candidates.append(index + start)
    start += count
  candidates = jnp.concatenate(candidates, axis=1)  # (G, L * k)
  # 2. IoU threshold per GT: mean + std (unbiased, as torch; 0 for one candidate).
  candidate_iou = jnp.take_along_axis(iou.T, candidates, axis=1)
  ddof = 1 if candidates.shape[1] > 1 else 0
  threshold = jnp.mean(candidate_iou, axis=1) + jnp.std(candidate_iou, axis=1, ddof=ddof)
  # 3. Candidate centre strictly inside the GT (by more than 0.01 pixel).
  c = centers[candidates]  # (G, L * k, 2)
  sides = jnp.concatenate([c - gt_boxes[:, None, :2], gt_boxes[:, None, 2:] - c], axis=-1)
  chosen = (
    (candidate_iou >= threshold[:, None])
    & (jnp.min(sides, axis=-1) > 0.01)
    & usable[candidates]
    & is_object[:, None]
  )
  picked = (
    jnp.zeros((num_gt, anchors.shape[0]), bool)
    .at[jnp.arange(num_gt)[:, None], candidates]
    .set(chosen)
  )
  # 4. An anchor chosen by several GTs goes to the one it overlaps most.
  chosen_iou = jnp.where(picked.T, iou, -jnp.inf)
  positive = jnp.any(picked, axis=0)
  object_iou = jnp.where(is_object[None], iou, -1.0)
  gt_index = jnp.where(
    positive, jnp.argmax(chosen_iou, axis=1), jnp.argmax(object_iou, axis=1)
  ).astype(jnp.int32)
  max_iou = jnp.maximum(jnp.max(object_iou, axis=1, initial=-1.0), 0.0)
  max_iou = jnp.where(positive, jnp.max(chosen_iou, axis=1, initial=-jnp.inf), max_iou)
  return gt_index, max_iou, positive, usable & ~positive


@functools.partial(jax.jit, static_argnames=('num_anchors_per_level', 'topk', 'ignore_iof_thr'))
def _atss_assign(
  anchors,
  gt_boxes,
  gt_valid,
  gt_ignore,
  anchor_valid,
  *,
  num_anchors_per_level,
  topk,
  ignore_iof_thr,
):
  core = functools.partial(
    _atss_single,
    num_anchors_per_level=num_anchors_per_level,
    topk=topk,
    ignore_iof_thr=ignore_iof_thr,
  )
  args = _defaults(anchors, gt_boxes, gt_valid, gt_ignore, anchor_valid)
  return Assignment(*_vectorize(core, (2, 2, 1, 1, 1), *args))


def atss_assign(
  anchors,
  num_anchors_per_level: Sequence[int],
  gt_boxes,
  gt_valid,
  gt_ignore=None,
  anchor_valid=None,
  *,
  topk: int = 9,
  ignore_iof_thr: float | None = None,
) -> Assignment:
  """Adaptive Training Sample Selection (Zhang et al. 2020; mmdetection's ATSSAssigner).

  For each GT: on every level the `topk` anchors whose centres are closest to
  the GT centre are candidates; those with IoU >= mean + std of the candidates'
  IoUs and a centre inside the GT are positives. Every other usable anchor is a
  negative.

  Args:
    anchors: (..., A, 4), levels concatenated in order.
    num_anchors_per_level: static anchor count of each level (sums to A).
    gt_boxes, gt_valid, gt_ignore, anchor_valid, ignore_iof_thr: as `max_iou_assign`.
  """
  if sum(num_anchors_per_level) != anchors.shape[-2]:
    raise ValueError(
      f'atss_assign: num_anchors_per_level sums to '
      f'{sum(num_anchors_per_level)}, anchors have {anchors.shape[-2]}'
    )
  return _atss_assign(
    anchors,
    gt_boxes,
    gt_valid,
    gt_ignore,
    anchor_valid,
    num_anchors_per_level=tuple(int(n) for n in num_anchors_per_level),
    topk=topk,
    ignore_iof_thr=ignore_iof_thr,
  )


def _sample_single(key, positive, negative, *, num_samples, positive_fraction, neg_pos_ub):
  num = positive.shape[0]
  max_pos = int(num_samples * positive_fraction)
  negative = negative & ~positive
  pos_key, neg_key = jax.random.split(key)
  # A uniformly random subset = the top-k of uniform random priorities.
  pick = lambda k, mask, count: jax.lax.top_k(
    jnp.where(mask, jax.random.uniform(k, (num,)), -1.0), min(count, num)
  )[1]
  pad = lambda idx: jnp.pad(idx, (0, num_samples - idx.shape[0]))
  pos_index = pad(pick(pos_key, positive, max_pos))
  neg_index = pad(pick(neg_key, negative, num_samples))
  num_pos = jnp.minimum(jnp.sum(positive), max_pos)
  num_neg = jnp.minimum(jnp.sum(negative), num_samples - num_pos)
  if neg_pos_ub >= 0:
    num_neg = jnp.minimum(
      num_neg, jnp.floor(neg_pos_ub * jnp.maximum(num_pos, 1)).astype(num_neg.dtype)
    )
  slot = jnp.arange(num_samples)
  from_pos = slot < num_pos
  index = jnp.where(from_pos, pos_index, neg_index[jnp.maximum(slot - num_pos, 0)])
  valid = slot < num_pos + num_neg
  return jnp.where(valid, index, 0).astype(jnp.int32), valid, from_pos


@functools.partial(jax.jit, static_argnames=('num_samples', 'positive_fraction', 'neg_pos_ub'))
def sample_balanced(
  key, positive, negative, num_samples: int, positive_fraction: float, *, neg_pos_ub: float = -1
) -> Sample:
  """A fixed number of candidates, uniformly at random, positives first.

  mmdetection's RandomSampler / torchvision's BalancedPositiveNegativeSampler:
  up to int(num_samples * positive_fraction) positives, negatives fill the rest
  (at most neg_pos_ub * max(1, #positives) of them when neg_pos_ub >= 0). When
  there are not enough candidates, trailing slots are invalid.

  Args:
    key: a jax.random key; split per image for leading dims.
    positive, negative: (..., A) bool (e.g. from an `Assignment`).
  """
  positive = jnp.asarray(positive, bool)
  negative = jnp.asarray(negative, bool)
  lead = positive.shape[:-1]
  keys = jax.random.split(key, int(np.prod(lead))) if lead else key[None]
  core = functools.partial(
    _sample_single,
    num_samples=num_samples,
    positive_fraction=positive_fraction,
    neg_pos_ub=neg_pos_ub,
  )
  flat = lambda x: x.reshape((-1, x.shape[-1]))
  out = jax.vmap(core)(keys, flat(positive), flat(negative))
  return Sample(*(x.reshape(lead + (num_samples,)) for x in out))


@functools.partial(
  jax.jit,
  static_argnames=(
    'num_levels',
    'rule',
    'finest_scale',
    'canonical_scale',
    'canonical_level',
    'min_level',
  ),
)
def map_roi_levels(
  boxes,
  num_levels: int,
  *,
  rule: str = 'mmdet',
  finest_scale: float = 56.0,
  canonical_scale: float = 224.0,
  canonical_level: int = 4,
  min_level: int = 2,
):
  """FPN level (0 = finest) of each RoI (..., 4) -> (...,) int32.

  rule='mmdet' (SingleRoIExtractor): floor(log2(sqrt(area) / finest_scale + 1e-6)).
  rule='torchvision' (LevelMapper, Lin et al. 2017 eq. 1): floor(canonical_level +
  log2(sqrt(area) / canonical_scale) + 1e-6) - min_level, min_level being the
  pyramid level of the finest map (P2 -> 2).
  Both clamped to [0, num_levels - 1]; zero-area boxes map to level 0.
  """
  scale = jnp.sqrt(jnp.maximum(box_area(boxes.astype(jnp.float32)), 0.0))
  if rule == 'mmdet':
    level = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
  elif rule == 'torchvision':
    level = jnp.floor(canonical_level + jnp.log2(scale / canonical_scale) + 1e-6) - min_level
  else:
    raise ValueError(f"map_roi_levels: rule must be 'mmdet' or 'torchvision', got {rule!r}")
  return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)
