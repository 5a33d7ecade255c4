"""NMS: the kept boxes and their order of torchvision.ops.nms / batched_nms."""

import functools

import jax
import numpy as np
import pytest
import torch
import torchvision

from tps_jax import ops

METHODS = ['greedy', 'tiled']


def clustered_boxes(rng, n, objects=6):
  """Jittered proposals around a few objects: many overlaps near the threshold."""
  centre = rng.uniform(20, 180, size=(objects, 2))
  size = rng.uniform(20, 80, size=(objects, 2))
  which = rng.integers(0, objects, n)
  ctr = centre[which] + rng.normal(size=(n, 2)) * size[which] * 0.15
  wh = size[which] * np.exp(rng.normal(size=(n, 2)) * 0.15)
  return np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)


def kept(indices, valid):
  return np.asarray(indices)[np.asarray(valid)]


@functools.cache
def jitted_nms(method, threshold, max_outputs):
  return jax.jit(
    functools.partial(
      ops.nms, iou_threshold=threshold, max_outputs=max_outputs, method=method, tile=16
    )
  )


@pytest.mark.parametrize('method', METHODS)
def test_matches_torchvision_nms(method):
  rng = np.random.default_rng(0)
  for seed, threshold in [(0, 0.5), (1, 0.7), (2, 0.3)]:
    boxes = clustered_boxes(np.random.default_rng(seed), 90)
    scores = rng.random(90).astype(np.float32)
    scores[10:20] = scores[5]  # ties keep the input order (stable sort)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    indices, valid = jitted_nms(method, threshold, 90)(boxes, scores)
    np.testing.assert_array_equal(kept(indices, valid), ref)
    # Fewer output slots: the first max_outputs kept boxes.
    indices, valid = jitted_nms(method, threshold, 4)(boxes, scores)
    np.testing.assert_array_equal(kept(indices, valid), ref[:4])


@pytest.mark.parametrize('method', METHODS)
def test_iou_exactly_at_the_threshold_is_not_suppressed(method):
  # IoU 50 / 100 = 0.5 exactly: kept at threshold 0.5 (torchvision suppresses IoU > t).
  half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
  # IoU 30 / 100 = float32(0.3) = 0.30000001, above the double 0.3 that torchvision
  # compares with: suppressed at 0.3 (a threshold rounded to float32 would keep it).
  third = np.array([[0, 0, 10, 10], [0, 0, 10, 3]], np.float32)
  scores = np.array([0.9, 0.8], np.float32)
  for boxes, threshold, expected in [
    (half, 0.5, [0, 1]),
    (half, 0.49, [0]),
    (third, 0.3, [0]),
    (third, 0.31, [0, 1]),
  ]:
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
    assert ref.tolist() == expected
    np.testing.assert_array_equal(
      kept(*ops.nms(boxes, scores, threshold, 2, method=method)), expected
    )


@pytest.mark.parametrize('method', METHODS)
def test_invalid_and_nan_entries_are_never_selected(method):
  boxes = clustered_boxes(np.random.default_rng(3), 20)
  scores = np.random.default_rng(4).random(20).astype(np.float32)
  scores[3] = np.nan
  valid = scores > 0.3  # a score threshold as a mask
  indices, out_valid = ops.nms(boxes, scores, 0.5, 20, valid, method=method)
  chosen = kept(indices, out_valid)
  assert valid[chosen].all() and 3 not in chosen
  masked = np.where(valid & ~np.isnan(scores))[0]
  ref = masked[
    torchvision.ops.nms(
      torch.from_numpy(boxes[masked]), torch.from_numpy(scores[masked]), 0.5
    ).numpy()
  ]
  np.testing.assert_array_equal(chosen, ref)
  assert (np.asarray(indices)[~np.asarray(out_valid)] == 0).all()
  none = ops.nms(boxes, scores, 0.5, 5, np.zeros(20, bool), method=method)
  assert not np.asarray(none[1]).any()
  empty = ops.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, 3, method=method)
  assert empty[0].shape == (3,) and not np.asarray(empty[1]).any()


@pytest.mark.parametrize('method', METHODS)
def test_batched_nms_matches_torchvision(method):
  rng = np.random.default_rng(5)
  boxes = clustered_boxes(rng, 60, objects=3)
  scores = rng.random(60).astype(np.float32)
  labels = rng.integers(0, 3, 60)
  ref = torchvision.ops.batched_nms(
    torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5
  ).numpy()
  got = jax.jit(lambda b, s, c: ops.batched_nms(b, s, c, 0.5, 60, method=method))(
    boxes, scores, labels
  )
  np.testing.assert_array_equal(kept(*got), ref)


def test_leading_dims_and_vmap_give_per_image_results():
  rng = np.random.default_rng(6)
  boxes = np.stack([clustered_boxes(rng, 30) for _ in range(3)])
  scores = rng.random((3, 30)).astype(np.float32)
  batched = ops.nms(boxes, scores, 0.5, 12)
  mapped = jax.vmap(lambda b, s: ops.nms(b, s, 0.5, 12))(boxes, scores)
  for image in range(3):
    single = ops.nms(boxes[image], scores[image], 0.5, 12)
    for got in (batched, mapped):
      np.testing.assert_array_equal(np.asarray(got[0][image]), np.asarray(single[0]))
      np.testing.assert_array_equal(np.asarray(got[1][image]), np.asarray(single[1]))


def test_multiclass_nms_by_hand():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
  # Box 1 overlaps box 0 (IoU 81 / 119): class 0 keeps box 0, class 1 keeps box 1,
  # which then suppresses box 0's class-1 candidate; box 2's 0.02 is under the threshold.
  scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.02, 0.6]], np.float32)
  out_boxes, out_scores, labels, valid = ops.multiclass_nms(
    boxes, scores, score_threshold=0.05, iou_threshold=0.5, max_outputs=5, max_candidates=6
  )
  assert np.asarray(valid).tolist() == [True, True, True, False, False]
  np.testing.assert_allclose(np.asarray(out_scores), [0.9, 0.7, 0.6, 0.0, 0.0])
  assert np.asarray(labels).tolist() == [0, 1, 1, 0, 0]
  np.testing.assert_array_equal(np.asarray(out_boxes)[:3], boxes)
  assert (np.asarray(out_boxes)[3:] == 0).all()
  # Per-class boxes (N, C, 4) and a validity mask on the inputs.
  per_class = np.repeat(boxes[:, None], 2, axis=1)
  _, out_scores, _, valid = ops.multiclass_nms(
    per_class, scores, 0.05, 0.5, 5, 6, valid=np.array([False, True, True])
  )
  np.testing.assert_allclose(np.asarray(out_scores)[np.asarray(valid)], [0.8, 0.7, 0.6])
