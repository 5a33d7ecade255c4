"""Detection losses: torchvision / torch references and hand-computed GFL cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from tps_jax import ops


@pytest.fixture
def logits_and_targets():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, size=(20, 5)).astype(np.float32)
  labels = rng.integers(0, 6, 20)  # 5 = background
  return logits, labels, np.asarray(jax.nn.one_hot(labels, 5))


def test_sigmoid_focal_loss_matches_torchvision(logits_and_targets):
  logits, _, targets = logits_and_targets
  targets = targets.copy()
  ref = lambda **kw: torchvision.ops.sigmoid_focal_loss(
    torch.from_numpy(logits), torch.from_numpy(targets), **kw
  )
  got = jax.jit(ops.sigmoid_focal_loss)(logits, targets)
  assert float(got) == pytest.approx(float(ref(reduction='sum')), rel=1e-5)
  assert float(ops.sigmoid_focal_loss(logits, targets, normalizer=logits.size)) == pytest.approx(
    float(ref(reduction='mean')), rel=1e-5
  )
  for alpha, gamma in [(-1, 0.0), (0.5, 1.5)]:
    got = ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    assert float(got) == pytest.approx(
      float(ref(alpha=alpha, gamma=gamma, reduction='sum')), rel=1e-5
    )
  # Per-anchor weights broadcast over classes, and a normaliser (e.g. #positives).
  weights = np.arange(20) % 3 == 0
  expected = (ref(reduction='none').numpy() * weights[:, None]).sum() / 7.0
  got = ops.sigmoid_focal_loss(logits, targets, weights, 7.0)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_quality_focal_loss_by_hand():
  # logit 0: sigmoid 0.5, and BCE(0, y) = log 2 for any target y.
  logits = np.zeros((2, 3), np.float32)
  labels = np.array([1, 3])  # anchor 1 is background (3 classes)
  quality = np.array([0.8, 0.0], np.float32)
  # Anchor 0: class 1 has target 0.8 -> log2 * 0.3^2; classes 0, 2: log2 * 0.5^2 each.
  # Anchor 1: three classes at target 0 -> 3 * log2 * 0.25.
  expected = math.log(2) * (0.09 + 0.25 * 2 + 0.25 * 3)
  assert float(ops.quality_focal_loss(logits, labels, quality)) == pytest.approx(expected, rel=1e-6)
  weighted = ops.quality_focal_loss(logits, labels, quality, np.array([1.0, 0.0]), 2.0)
  assert float(weighted) == pytest.approx(math.log(2) * 0.59 / 2, rel=1e-6)
  # A confident correct prediction costs (almost) nothing: sigmoid(x) = y.
  exact = np.array([[math.log(0.8 / 0.2), -30.0, -30.0]], np.float32)
  assert float(ops.quality_focal_loss(exact, np.array([0]), np.array([0.8]))) < 1e-10


def test_distribution_focal_loss_by_hand():
  # Uniform logits over 5 bins: -log(1/5) whatever the target.
  assert float(ops.distribution_focal_loss(np.zeros((1, 5)), np.array([2.7]))) == pytest.approx(
    math.log(5), rel=1e-6
  )
  # Target 1.3: 0.7 * CE(bin 1) + 0.3 * CE(bin 2).
  logits = np.array([[0.5, 2.0, 1.0, -1.0]], np.float32)
  log_p = logits[0] - np.log(np.exp(logits[0]).sum())
  expected = -(0.7 * log_p[1] + 0.3 * log_p[2])
  assert float(ops.distribution_focal_loss(logits, np.array([1.3]))) == pytest.approx(
    expected, rel=1e-5
  )
  # Integer target and the top bin: all weight on one bin; beyond the top is clipped.
  assert float(ops.distribution_focal_loss(logits, np.array([3.0]))) == pytest.approx(
    -log_p[3], rel=1e-5
  )
  assert float(ops.distribution_focal_loss(logits, np.array([7.0]))) == pytest.approx(
    -log_p[3], rel=1e-5
  )
  # Per-side weights (N, 4) and GFL's normaliser.
  logits4 = np.broadcast_to(logits, (2, 4, 4))
  got = ops.distribution_focal_loss(logits4, np.full((2, 4), 1.3), np.array([1.0, 0.0]), 4.0)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_regression_losses_match_torch():
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(2, 30, 4)).astype(np.float32)
  for beta in (1.0, 1 / 9):
    ref = F.smooth_l1_loss(
      torch.from_numpy(pred), torch.from_numpy(target), beta=beta, reduction='sum'
    )
    assert float(ops.smooth_l1_loss(pred, target, beta=beta)) == pytest.approx(float(ref), rel=1e-5)
  ref = F.l1_loss(torch.from_numpy(pred), torch.from_numpy(target), reduction='sum')
  assert float(ops.l1_loss(pred, target)) == pytest.approx(float(ref), rel=1e-5)
  mask = np.arange(30) < 10
  ref = F.l1_loss(torch.from_numpy(pred[:10]), torch.from_numpy(target[:10]), reduction='sum') / 10
  assert float(ops.l1_loss(pred, target, mask, 10)) == pytest.approx(float(ref), rel=1e-5)


def test_giou_loss_matches_torchvision():
  rng = np.random.default_rng(2)
  xy = rng.uniform(0, 50, size=(2, 30, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, 40, size=(2, 30, 2))], -1).astype(np.float32)
  ref = torchvision.ops.generalized_box_iou_loss(
    torch.from_numpy(boxes[0]), torch.from_numpy(boxes[1]), reduction='sum'
  )
  assert float(ops.giou_loss(boxes[0], boxes[1])) == pytest.approx(float(ref), rel=1e-5)


def test_softmax_cross_entropy_matches_torch(logits_and_targets):
  logits, labels, _ = logits_and_targets
  labels = np.where(labels == 5, -1, labels)  # -1: ignored
  for smoothing in (0.0, 0.1):
    ref = F.cross_entropy(
      torch.from_numpy(logits),
      torch.from_numpy(labels),
      ignore_index=-1,
      label_smoothing=smoothing,
      reduction='sum',
    )
    got = ops.softmax_cross_entropy(logits, labels, label_smoothing=smoothing)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
  weights = np.linspace(0, 1, 20).astype(np.float32)
  ref = (
    F.cross_entropy(
      torch.from_numpy(logits), torch.from_numpy(labels), ignore_index=-1, reduction='none'
    ).numpy()
    * weights
  ).sum() / 3.0
  got = ops.softmax_cross_entropy(logits, labels, weights, 3.0)
  assert float(got) == pytest.approx(ref, rel=1e-5)


def test_masked_garbage_and_zero_normaliser_give_finite_losses_and_gradients():
  pred = jnp.zeros((3, 4))
  target = jnp.array([[1.0, 2, 3, 4], [np.inf, -np.inf, 1e30, 0], [0.0, 0, 0, 0]])
  mask = jnp.array([True, False, True])
  for beta in (1.0, 0.0):
    value, grad = jax.jit(
      jax.value_and_grad(lambda p: ops.smooth_l1_loss(p, target, mask, 0.0, beta=beta))
    )(pred)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  # Degenerate predicted and target boxes (padding): GIoU loss stays finite.
  boxes = jnp.zeros((2, 4))
  value, grad = jax.jit(
    jax.value_and_grad(lambda b: ops.giou_loss(b, boxes, jnp.array([1.0, 0.0])))
  )(boxes)
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  for loss in (
    lambda x: ops.sigmoid_focal_loss(x, jnp.zeros((3, 2)), normalizer=0.0),
    lambda x: ops.quality_focal_loss(x, jnp.array([0, 2, 1]), jnp.ones(3)),
    lambda x: ops.distribution_focal_loss(x, jnp.array([0.0, 1.0, 1.0])),
    lambda x: ops.softmax_cross_entropy(x, jnp.array([-1, -1, -1])),
  ):
    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.array([[80.0, -80.0]] * 3))
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


def test_sigmoid_focal_loss_gamma_zero_has_finite_gradient_at_saturation():
  logits = jnp.array([[60.0, -60.0]])
  targets = jnp.array([[1.0, 0.0]])
  grad = jax.grad(lambda x: ops.sigmoid_focal_loss(x, targets, gamma=0.0, alpha=-1))(logits)
  assert np.isfinite(np.asarray(grad)).all()
