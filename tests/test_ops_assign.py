"""Assigners, sampler and FPN level mapping: torchvision's Matcher / LevelMapper and hand cases."""

import jax
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import Matcher
from torchvision.ops.poolers import LevelMapper

from tps_jax import ops


def random_boxes(rng, n, size=(10, 60)):
  xy = rng.uniform(0, 100, size=(n, 2))
  wh = rng.uniform(*size, size=(n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def torchvision_matches(anchors, gt, high=0.7, low=0.3, low_quality=True):
  iou = torchvision.ops.box_iou(torch.from_numpy(gt), torch.from_numpy(anchors))
  return Matcher(high, low, allow_low_quality_matches=low_quality)(iou).numpy()


def as_matches(assignment):
  """Assignment -> torchvision's encoding: GT index, -1 negative, -2 between."""
  return np.where(assignment.positive, assignment.gt_index, np.where(assignment.negative, -1, -2))


@pytest.mark.parametrize('low_quality', [True, False])
def test_max_iou_assign_matches_torchvision_matcher(low_quality):
  rng = np.random.default_rng(0)
  anchors = random_boxes(rng, 300)
  anchors[150:] = anchors[:150]  # duplicated anchors: ties for a GT's best anchor
  gt = random_boxes(rng, 7, size=(5, 80))
  expected = torchvision_matches(anchors, gt, low_quality=low_quality)
  assert ((expected >= 0).sum(), (expected == -1).sum(), (expected == -2).sum()) > (0, 0, 0)
  # Padding rows in the GT must change nothing.
  padded = np.concatenate([gt, np.zeros((3, 4), np.float32)])
  valid = np.arange(10) < 7
  assign = jax.jit(
    lambda a, g, v: ops.max_iou_assign(
      a,
      g,
      v,
      pos_iou_thr=0.7,
      neg_iou_thr=0.3,
      low_quality_matches='torchvision' if low_quality else None,
    )
  )
  got = assign(anchors, padded, valid)
  np.testing.assert_array_equal(as_matches(got), expected)
  iou = np.asarray(ops.box_iou(anchors, gt))
  np.testing.assert_allclose(np.asarray(got.max_iou), iou.max(1), rtol=1e-6)


def test_low_quality_matches_mmdet_versus_torchvision_by_hand():
  anchors = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
  # a0 has IoU 0.5 with g0 and 0.4 with g1: it is the best anchor of both GTs.
  gt = np.array([[0, 0, 10, 20], [0, 0, 25, 10]], np.float32)
  valid = np.ones(2, bool)
  common = dict(pos_iou_thr=0.7, neg_iou_thr=0.3)
  without = ops.max_iou_assign(anchors, gt, valid, **common)
  assert as_matches(without).tolist() == [-2, -1]
  # torchvision: a0 keeps its own argmax GT (g0); mmdetection: the last GT it is best for.
  tv = ops.max_iou_assign(anchors, gt, valid, low_quality_matches='torchvision', **common)
  assert as_matches(tv).tolist() == [0, -1]
  mm = ops.max_iou_assign(anchors, gt, valid, low_quality_matches='mmdet', **common)
  assert as_matches(mm).tolist() == [1, -1]
  # min_pos_iou 0.45: g1's best IoU (0.4) is too low to claim a0.
  mm = ops.max_iou_assign(
    anchors, gt, valid, low_quality_matches='mmdet', min_pos_iou=0.45, **common
  )
  assert as_matches(mm).tolist() == [0, -1]


def test_ignore_regions_padding_and_no_ground_truth():
  anchors = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [60, 0, 70, 10], [0, 0, 1, 1]], np.float32)
  gt = np.array([[0, 0, 10, 10], [18, 0, 32, 10], [0, 0, 0, 0]], np.float32)
  valid = np.array([True, True, False])
  ignore = np.array([False, True, False])
  box_valid = np.array([True, True, True, False])
  kwargs = dict(pos_iou_thr=0.5, neg_iou_thr=0.5)
  plain = ops.max_iou_assign(anchors, gt, valid, None, box_valid, **kwargs)
  assert as_matches(plain).tolist() == [0, 1, -1, -2]  # the ignore box used as a GT
  ignored = ops.max_iou_assign(anchors, gt, valid, ignore, box_valid, ignore_iof_thr=0.5, **kwargs)
  assert as_matches(ignored).tolist() == [0, -2, -1, -2]  # a1 lies inside the ignore box
  # An ignore region over a would-be positive takes it out too (mmdetection's rule).
  over = ops.max_iou_assign(
    anchors,
    np.array([[0, 0, 10, 10], [-5, -5, 12, 12]], np.float32),
    np.ones(2, bool),
    np.array([False, True]),
    ignore_iof_thr=0.5,
    **kwargs,
  )
  assert as_matches(over).tolist()[:3] == [-2, -1, -1]
  # No valid GT at all: every valid anchor is a negative, with IoU 0.
  empty = ops.max_iou_assign(anchors, gt, np.zeros(3, bool), low_quality_matches='mmdet', **kwargs)
  assert as_matches(empty).tolist() == [-1, -1, -1, -1]
  assert (np.asarray(empty.max_iou) == 0).all()
  none = ops.max_iou_assign(anchors, np.zeros((0, 4), np.float32), np.zeros(0, bool), **kwargs)
  assert as_matches(none).tolist() == [-1, -1, -1, -1]
  # A zero-area GT overlaps nothing: it must not claim every anchor as a low-quality match.
  point = ops.max_iou_assign(
    anchors,
    np.array([[5, 5, 5, 5]], np.float32),
    np.ones(1, bool),
    low_quality_matches='torchvision',
    **kwargs,
  )
  assert as_matches(point).tolist() == [-1, -1, -1, -1]


def test_shared_anchors_against_a_batch_of_ground_truth():
  rng = np.random.default_rng(1)
  anchors = random_boxes(rng, 50)
  gt = np.stack([random_boxes(rng, 4) for _ in range(3)])
  valid = np.ones((3, 4), bool)
  batched = ops.max_iou_assign(anchors, gt, valid, pos_iou_thr=0.5, neg_iou_thr=0.4)
  assert batched.positive.shape == (3, 50)
  for image in range(3):
    single = ops.max_iou_assign(anchors, gt[image], valid[image], pos_iou_thr=0.5, neg_iou_thr=0.4)
    np.testing.assert_array_equal(as_matches(batched)[image], as_matches(single))


# ATSS on two levels: four 8x8 anchors along x (stride 8), two 16x16 ones (stride 16).
ATSS_ANCHORS = np.array(
  [[0, 0, 8, 8], [8, 0, 16, 8], [16, 0, 24, 8], [24, 0, 32, 8], [0, 0, 16, 16], [16, 0, 32, 16]],
  np.float32,
)


def test_atss_by_hand():
  # g0 = anchor 0. Candidates (top 2 per level by centre distance): a0, a1 | a4, a5,
  # IoUs 1, 0, 1/4, 0: mean 0.3125 + std 0.4732 = 0.786 -> a0 only.
  # g1 (centre (24, 8)): a2, a3 | a5, a4, IoUs 0.2, 0.2, 0.8, 0.0588: threshold 0.645 -> a5.
  # g2 = anchor 5: a2, a3 | a5, a4, IoUs 0.25, 0.25, 1, 0: threshold 0.808 -> a5, which goes
  # to g2 (IoU 1 beats g1's 0.8).
  gt = np.array([[0, 0, 8, 8], [14, 0, 34, 16], [16, 0, 32, 16], [0, 0, 0, 0]], np.float32)
  valid = np.array([True, True, True, False])
  got = ops.atss_assign(ATSS_ANCHORS, (4, 2), gt, valid, topk=2)
  assert as_matches(got).tolist() == [0, -1, -1, -1, -1, 2]
  np.testing.assert_allclose(np.asarray(got.max_iou)[[0, 5]], [1.0, 1.0])
  # Without g2, a5 is g1's.
  got = ops.atss_assign(ATSS_ANCHORS, (4, 2), gt[:2], valid[:2], topk=2)
  assert as_matches(got).tolist() == [0, -1, -1, -1, -1, 1]
  # An ignore box over a0: a0 is neither, and g0 finds no other positive.
  ignore_gt = np.concatenate([gt[:2], [[-1, -1, 9, 9]]]).astype(np.float32)
  got = ops.atss_assign(
    ATSS_ANCHORS,
    (4, 2),
    ignore_gt,
    np.ones(3, bool),
    np.array([False, False, True]),
    ignore_iof_thr=0.5,
    topk=2,
  )
  assert as_matches(got).tolist() == [-2, -1, -1, -1, -1, 1]


def reference_atss(anchors, per_level, gt, topk):
  """ATSS written from the paper's algorithm with loops (distinct distances assumed)."""
  iou = np.asarray(ops.box_iou(anchors, gt), np.float64)
  centres = (anchors[:, :2] + anchors[:, 2:]) / 2
  best = np.full(len(anchors), -np.inf)
  assigned = np.full(len(anchors), -1)
  for g, box in enumerate(gt):
    distance = np.linalg.norm(centres - (box[:2] + box[2:]) / 2, axis=1)
    candidates, start = [], 0
    for count in per_level:
      candidates += list(start + np.argsort(distance[start : start + count])[:topk])
      start += count
    values = iou[candidates, g]
    threshold = values.mean() + values.std(ddof=1)
    for a, value in zip(candidates, values):
      inside = min(*(centres[a] - box[:2]), *(box[2:] - centres[a])) > 0.01
      if value >= threshold and inside and value > best[a]:
        best[a], assigned[a] = value, g
  return assigned


def test_atss_matches_a_loop_reference():
  rng = np.random.default_rng(2)
  generator = ops.AnchorGenerator.mmdet(strides=(8, 16, 32), ratios=(1.0,), scales=(4,))
  shapes = [(8, 8), (4, 4), (2, 2)]
  anchors = np.concatenate(generator.grid_anchors(shapes)) + rng.uniform(-0.5, 0.5, (84, 4))
  anchors = anchors.astype(np.float32)
  gt = np.concatenate([rng.uniform(0, 40, (5, 2)), rng.uniform(50, 80, (5, 2))], 1)
  gt = gt.astype(np.float32)
  got = jax.jit(lambda a, g: ops.atss_assign(a, (64, 16, 4), g, np.ones(5, bool), topk=3))(
    anchors, gt
  )
  expected = reference_atss(anchors, (64, 16, 4), gt, 3)
  assert (expected >= 0).sum() >= 5
  np.testing.assert_array_equal(np.where(got.positive, got.gt_index, -1), expected)
  np.testing.assert_array_equal(np.asarray(got.negative), expected < 0)


def test_sample_balanced_counts_order_and_sets():
  positive = np.zeros(200, bool)
  positive[[3, 50, 60, 70, 80, 90, 100, 110, 120, 130]] = True
  negative = ~positive
  negative[:20] = False  # some ignored candidates
  key = jax.random.key(0)
  sample = jax.jit(lambda k, p, n: ops.sample_balanced(k, p, n, 16, 0.25))(key, positive, negative)
  indices, valid, is_pos = map(np.asarray, sample)
  assert valid.all() and is_pos.tolist() == [True] * 4 + [False] * 12
  assert positive[indices[:4]].all() and negative[indices[4:]].all()
  assert len(set(indices.tolist())) == 16
  # Few positives: negatives fill the rest; too few candidates: trailing slots invalid.
  few = ops.sample_balanced(
    key, positive & (np.arange(200) < 60), negative & (np.arange(200) < 30), 16, 0.25
  )
  assert np.asarray(few.valid).tolist() == [True] * 12 + [False] * 4
  assert np.asarray(few.positive).sum() == 2
  capped = ops.sample_balanced(
    key, positive & (np.arange(200) < 60), negative, 16, 0.5, neg_pos_ub=3
  )
  assert np.asarray(capped.valid).sum() == 2 + 6
  # Different keys, different subsets; a leading image axis splits the key.
  other = ops.sample_balanced(jax.random.key(1), positive, negative, 16, 0.25)
  assert set(np.asarray(other.indices).tolist()) != set(indices.tolist())
  batched = ops.sample_balanced(key, np.stack([positive] * 3), np.stack([negative] * 3), 16, 0.25)
  assert batched.indices.shape == (3, 16)
  assert len({tuple(row) for row in np.asarray(batched.indices).tolist()}) == 3


def test_sample_balanced_is_uniform_over_candidates():
  positive = np.zeros(12, bool)
  positive[:6] = True
  keys = jax.random.split(jax.random.key(3), 3000)
  sample = jax.jit(jax.vmap(lambda k: ops.sample_balanced(k, positive, ~positive, 4, 0.5)))(keys)
  counts = np.bincount(np.asarray(sample.indices).reshape(-1), minlength=12)
  np.testing.assert_allclose(counts / 3000, np.full(12, 2 / 6), atol=0.04)


def test_map_roi_levels_matches_level_mapper_and_mmdet_rule():
  sides = np.array([0.0, 20.0, 111.9, 112.0, 223.9, 224.0, 447.0, 448.0, 900.0, 5000.0])
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1).astype(np.float32)
  boxes = np.concatenate([boxes, [[10, 10, 60, 300], [50, 50, 40, 40]]]).astype(np.float32)
  mapper = LevelMapper(k_min=2, k_max=5)
  expected = mapper([torch.from_numpy(boxes[:-1])]).numpy()
  got = np.asarray(ops.map_roi_levels(boxes, 4, rule='torchvision'))
  np.testing.assert_array_equal(got[:-1], expected)
  # mmdetection: floor(log2(scale / 56 + 1e-6)): <112 -> 0, <224 -> 1, <448 -> 2, else 3.
  got = np.asarray(ops.map_roi_levels(boxes, 4))
  assert got.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 1, 0]
  with pytest.raises(ValueError, match='rule'):
    ops.map_roi_levels(boxes, 4, rule='detectron')
