"""Box geometry and coders: parity with torchvision and the mmdetection formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from tps_jax import ops


def random_boxes(rng, n, low=-20.0, high=200.0, max_size=120.0):
  xy = rng.uniform(low, high, size=(n, 2))
  wh = rng.uniform(0.0, max_size, size=(n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.fixture
def boxes_pair():
  rng = np.random.default_rng(0)
  a, b = random_boxes(rng, 13), random_boxes(rng, 9)
  a[0] = [5, 5, 5, 5]  # zero area
  a[1] = [10, 10, 10, 40]  # zero width
  b[0] = [5, 5, 5, 5]  # zero area against zero area: 0 / 0
  b[1] = a[2]  # identical box: IoU 1
  return a, b


def test_box_iou_and_giou_match_torchvision(boxes_pair):
  a, b = boxes_pair
  for ours, theirs in [
    (ops.box_iou, torchvision.ops.box_iou),
    (ops.generalized_box_iou, torchvision.ops.generalized_box_iou),
  ]:
    got = np.asarray(jax.jit(ours)(a, b))
    ref = theirs(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    finite = np.isfinite(ref)  # torchvision divides 0 / 0 for zero-area pairs
    assert not finite.all()
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()
  # Zero union: IoU 0; GIoU then is 0 - (enclosure - 0) / enclosure = -1 (0 for two
  # coincident points, whose enclosure is empty too).
  np.testing.assert_array_equal(np.asarray(ops.box_iou(a[:2], b[:1]))[:, 0], [0, 0])
  np.testing.assert_array_equal(np.asarray(ops.generalized_box_iou(a[:2], b[:1]))[:, 0], [0, -1])
  assert ops.box_iou(a, b)[2, 1] == pytest.approx(1.0)


def test_aligned_overlaps_are_the_diagonal_and_iof_is_over_the_first_box(boxes_pair):
  a, b = boxes_pair
  n = min(len(a), len(b))
  for mode in ('iou', 'giou', 'iof'):
    pairwise = np.asarray(ops.box_overlaps(a[:n], b[:n], mode))
    aligned = np.asarray(ops.box_overlaps(a[:n], b[:n], mode, aligned=True))
    np.testing.assert_allclose(aligned, np.diag(pairwise), rtol=1e-6)
  # A 10x10 box half covered by a big box: IoF 0.5 (IoU would be 50 / 10000).
  iof = ops.box_overlaps(
    np.array([[0, 0, 10, 10]], np.float32), np.array([[5, -50, 100, 50]], np.float32), 'iof'
  )
  assert float(iof[0, 0]) == pytest.approx(0.5)


def test_iou_gradients_are_finite_on_degenerate_boxes(boxes_pair):
  a, b = boxes_pair
  for mode in ('iou', 'giou'):
    grad = jax.grad(lambda x: ops.box_overlaps(x, b, mode).sum())(jnp.asarray(a))
    assert np.isfinite(np.asarray(grad)).all()


def test_clip_and_conversions_match_torchvision(boxes_pair):
  a, _ = boxes_pair
  ref = torchvision.ops.clip_boxes_to_image(torch.from_numpy(a), (60, 90)).numpy()
  np.testing.assert_array_equal(np.asarray(ops.clip_boxes(a, (60, 90))), ref)
  # Per-image shapes of a padded batch: (B, 2) against (B, K, 4).
  batch = np.stack([a, a])
  clipped = np.asarray(ops.clip_boxes(batch, np.array([[60, 90], [30, 200]])))
  np.testing.assert_array_equal(clipped[0], ref)
  np.testing.assert_array_equal(
    clipped[1], torchvision.ops.clip_boxes_to_image(torch.from_numpy(a), (30, 200)).numpy()
  )
  cxcywh = np.asarray(ops.box_xyxy_to_cxcywh(a))
  np.testing.assert_allclose(
    cxcywh,
    torchvision.ops.box_convert(torch.from_numpy(a), 'xyxy', 'cxcywh').numpy(),
    rtol=1e-6,
    atol=1e-5,
  )
  np.testing.assert_allclose(np.asarray(ops.box_cxcywh_to_xyxy(cxcywh)), a, atol=1e-4)
  keep = np.asarray(ops.min_size_mask(a, 10.0))
  np.testing.assert_array_equal(
    np.flatnonzero(keep), torchvision.ops.remove_small_boxes(torch.from_numpy(a), 10.0).numpy()
  )


def test_delta_coder_matches_torchvision_box_coder():
  rng = np.random.default_rng(1)
  anchors = random_boxes(rng, 50, max_size=100.0) + np.float32([0, 0, 4, 4])
  targets = random_boxes(rng, 50, max_size=100.0) + np.float32([0, 0, 1, 1])
  weights = (10.0, 10.0, 5.0, 5.0)
  stds = tuple(1.0 / w for w in weights)
  coder = BoxCoder(weights)
  ref = coder.encode_single(torch.from_numpy(targets), torch.from_numpy(anchors)).numpy()
  got = np.asarray(jax.jit(lambda t, a: ops.encode_deltas(t, a, stds=stds))(targets, anchors))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  deltas = rng.normal(0, 2, size=(50, 4)).astype(np.float32)
  deltas[:5, 2:] = 80.0  # beyond the log-scale clamp
  deltas[5:10, 2:] = -80.0  # torchvision clamps only above
  ref = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
  got = np.asarray(
    ops.decode_deltas(deltas, anchors, stds=stds, log_scale_clip=(-np.inf, ops.BBOX_XFORM_CLIP))
  )
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)


def mmdet_bbox2delta(proposals, gt, means, stds):
  """mmdetection DeltaXYWHBBoxCoder.encode, from its documentation."""
  px, py = (proposals[:, 0] + proposals[:, 2]) * 0.5, (proposals[:, 1] + proposals[:, 3]) * 0.5
  pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
  gx, gy = (gt[:, 0] + gt[:, 2]) * 0.5, (gt[:, 1] + gt[:, 3]) * 0.5
  gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
  deltas = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], 1)
  return (deltas - np.asarray(means)) / np.asarray(stds)


def mmdet_delta2bbox(rois, deltas, means, stds, max_shape, wh_ratio_clip=16 / 1000):
  """mmdetection DeltaXYWHBBoxCoder.decode, from its documentation."""
  d = deltas * np.asarray(stds) + np.asarray(means)
  max_ratio = abs(np.log(wh_ratio_clip))
  dw, dh = np.clip(d[:, 2], -max_ratio, max_ratio), np.clip(d[:, 3], -max_ratio, max_ratio)
  px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
  pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
  gw, gh = pw * np.exp(dw), ph * np.exp(dh)
  gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
  boxes = np.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], 1)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, max_shape[1])
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, max_shape[0])
  return boxes


@pytest.mark.parametrize(
  'means, stds',
  [((0, 0, 0, 0), (0.1, 0.1, 0.2, 0.2)), ((0.1, -0.2, 0.05, 0.0), (0.033, 0.033, 0.067, 0.067))],
)
def test_delta_coder_matches_mmdet_formula(means, stds):
  rng = np.random.default_rng(2)
  rois = random_boxes(rng, 40, max_size=80.0).astype(np.float64) + [0, 0, 2, 2]
  gt = random_boxes(rng, 40, max_size=80.0).astype(np.float64) + [0, 0, 2, 2]
  got = np.asarray(ops.encode_deltas(jnp.asarray(gt), jnp.asarray(rois), means, stds))
  np.testing.assert_allclose(got, mmdet_bbox2delta(rois, gt, means, stds), rtol=1e-4, atol=1e-4)
  deltas = rng.normal(0, 3, size=(40, 4))
  deltas[:4, 2:] = [[60, -60]] * 4  # both sides of the clamp
  ref = mmdet_delta2bbox(rois, deltas, means, stds, max_shape=(150, 170))
  got = np.asarray(
    ops.decode_deltas(jnp.asarray(deltas), jnp.asarray(rois), means, stds, max_shape=(150, 170))
  )
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-3)
  roundtrip = ops.decode_deltas(
    ops.encode_deltas(jnp.asarray(gt), jnp.asarray(rois), means, stds),
    jnp.asarray(rois),
    means,
    stds,
  )
  np.testing.assert_allclose(np.asarray(roundtrip), gt, atol=2e-3)


def test_coders_stay_finite_on_padding_and_vmap():
  zeros = jnp.zeros((2, 3, 4))
  anchors = jnp.broadcast_to(jnp.array([0.0, 0.0, 8.0, 8.0]), (2, 3, 4))
  deltas = jax.vmap(ops.encode_deltas)(zeros, anchors)
  assert np.isfinite(np.asarray(deltas)).all()
  grad = jax.grad(lambda a: ops.encode_deltas(zeros, a).sum())(zeros)
  assert np.isfinite(np.asarray(grad)).all()
  assert np.isfinite(np.asarray(ops.decode_deltas(jnp.full((3, 4), 1e4), zeros[0]))).all()


def test_distance_coder_hand_case():
  points = np.array([[10.0, 20.0], [0.0, 0.0]], np.float32)
  boxes = np.array([[4.0, 12.0, 30.0, 21.0], [-5.0, -5.0, 40.0, 1.0]], np.float32)
  dist = np.asarray(ops.encode_distances(points, boxes))
  np.testing.assert_allclose(dist, [[6, 8, 20, 1], [5, 5, 40, 1]])
  # GFL: in stride units, clamped to reg_max - 0.1.
  np.testing.assert_allclose(
    np.asarray(ops.encode_distances(points, boxes, 16.0)),
    [[6, 8, 15.9, 1], [5, 5, 15.9, 1]],
    rtol=1e-6,
  )
  np.testing.assert_allclose(np.asarray(ops.decode_distances(points, dist)), boxes)
  np.testing.assert_allclose(
    np.asarray(ops.decode_distances(points, dist, (15, 35))), [[4, 12, 30, 15], [0, 0, 35, 1]]
  )
  assert math.isclose(ops.BBOX_XFORM_CLIP, math.log(1000 / 16))
