"""RoIAlign: the numbers of torchvision.ops.roi_align (values and feature gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

from tps_jax import ops

N, H, W, C, K = 2, 11, 14, 3, 24
OUT = (3, 4)


def make_inputs(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(N, H, W, C)).astype(np.float32)
  xy = rng.uniform(-4, 16, size=(N, K, 2)) / scale
  wh = rng.uniform(0.5, 14, size=(N, K, 2)) / scale
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  boxes[0, :6] = (
    np.array(
      [
        [3, 3, 3, 3],  # degenerate: a point
        [5, 2, 2, 7],  # inverted (x2 < x1)
        [-30, -30, -10, -12],  # fully outside, above-left
        [12, 9, 40, 30],  # partly outside, bottom-right
        [1.2, 1.4, 1.5, 1.6],  # tiny
        [-1.5, -0.5, 13.9, 10.8],  # covers the whole map
      ]
    )
    / scale
  )
  return features, boxes


def torchvision_roi_align(features, boxes, scale, sampling_ratio, aligned, output=OUT):
  out = torchvision.ops.roi_align(
    torch.from_numpy(features).permute(0, 3, 1, 2),
    [torch.from_numpy(b) for b in boxes],
    output,
    scale,
    sampling_ratio,
    aligned,
  )
  return out.numpy().reshape(boxes.shape[:2] + (C,) + tuple(output)).transpose(0, 1, 3, 4, 2)


@pytest.mark.parametrize('impl', ['gather', 'einsum'])
@pytest.mark.parametrize('aligned', [False, True])
@pytest.mark.parametrize('sampling_ratio', [2, 0])
def test_matches_torchvision(impl, aligned, sampling_ratio):
  features, boxes = make_inputs()
  # sampling_ratio 0 is adaptive: the largest box (28 x 21 px over 4 x 3 bins)
  # needs 7 samples per bin, within the cap of 7, so the result is exact.
  fn = jax.jit(
    lambda f, b: ops.roi_align(
      f, b, OUT, 1.0, sampling_ratio, aligned, max_sampling_ratio=7, impl=impl
    )
  )
  got = np.asarray(fn(features, boxes))
  ref = torchvision_roi_align(features, boxes, 1.0, sampling_ratio, aligned)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  assert (got[0, 2] == 0).all()  # fully outside the map


@pytest.mark.parametrize('aligned', [False, True])
def test_spatial_scale_and_default_impl(aligned):
  features, boxes = make_inputs(seed=1, scale=0.25)
  got = np.asarray(ops.roi_align(jnp.asarray(features), jnp.asarray(boxes), 2, 0.25, 1, aligned))
  np.testing.assert_allclose(
    got, torchvision_roi_align(features, boxes, 0.25, 1, aligned, (2, 2)), rtol=1e-5, atol=1e-5
  )


def test_adaptive_sampling_beyond_the_cap_uses_the_cap():
  features, boxes = make_inputs(seed=2)
  big = np.array([[[0.0, 0.0, 14.0, 11.0]] * 2] * N, np.float32)  # ceil(14 / 2) = 7 > 3
  capped = ops.roi_align(features, big, 2, 1.0, 0, True, max_sampling_ratio=3)
  fixed = ops.roi_align(features, big, 2, 1.0, 3, True)
  np.testing.assert_allclose(np.asarray(capped), np.asarray(fixed), rtol=1e-6)
  exact = ops.roi_align(features, big, 2, 1.0, 0, True, max_sampling_ratio=7)
  np.testing.assert_allclose(
    np.asarray(exact),
    torchvision_roi_align(features, big, 1.0, 0, True, (2, 2)),
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize('impl', ['gather', 'einsum'])
def test_feature_gradients_match_torchvision(impl):
  features, boxes = make_inputs(seed=3)
  cotangent = np.random.default_rng(4).normal(size=(N, K) + OUT + (C,)).astype(np.float32)
  grad = jax.grad(
    lambda f: jnp.sum(ops.roi_align(f, boxes, OUT, 1.0, 2, True, impl=impl) * cotangent)
  )(jnp.asarray(features))
  reference = torch.from_numpy(features).permute(0, 3, 1, 2).requires_grad_()
  out = torchvision.ops.roi_align(
    reference, [torch.from_numpy(b) for b in boxes], OUT, 1.0, 2, True
  )
  (out * torch.from_numpy(cotangent.reshape(N * K, *OUT, C)).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_allclose(
    np.asarray(grad), reference.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5
  )
  box_grad = jax.grad(lambda b: ops.roi_align(features, b, OUT, 1.0, 2, True, impl=impl).sum())(
    jnp.asarray(boxes)
  )
  assert (np.asarray(box_grad) == 0).all()  # boxes are constants, as in torchvision


def test_multilevel_matches_torchvision_multiscale_roi_align():
  # torchvision's MultiScaleRoIAlign: LevelMapper (canonical 224 at level 4), aligned=False.
  rng = np.random.default_rng(5)
  image = (128, 192)
  shapes = [(32, 48), (16, 24), (8, 12), (4, 6)]
  maps = [rng.normal(size=(N,) + s + (C,)).astype(np.float32) for s in shapes]
  sides = rng.permutation(
    np.resize([20.0, 60.0, 120.0, 150.0, 250.0, 300.0, 500.0], N * 10)
  ).reshape(N, 10, 1)
  centres = rng.uniform(0, 190, size=(N, 10, 2))
  boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)
  pooler = MultiScaleRoIAlign(['p2', 'p3', 'p4', 'p5'], 3, 2)
  ref = pooler(
    {f'p{i + 2}': torch.from_numpy(m).permute(0, 3, 1, 2) for i, m in enumerate(maps)},
    [torch.from_numpy(b) for b in boxes],
    [image] * N,
  )
  ref = ref.numpy().reshape(N, 10, C, 3, 3).transpose(0, 1, 3, 4, 2)
  levels = ops.map_roi_levels(boxes, 4, rule='torchvision')
  assert set(np.unique(np.asarray(levels))) == {0, 1, 2, 3}
  for impl in ('gather', 'einsum'):
    got = ops.multilevel_roi_align(
      maps, boxes, levels, 3, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, False, impl=impl
    )
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def test_empty_boxes_and_vmap_over_a_leading_axis():
  features, boxes = make_inputs(seed=6)
  empty = ops.roi_align(features, np.zeros((N, 0, 4), np.float32), OUT, 1.0, 2, True)
  assert empty.shape == (N, 0) + OUT + (C,)
  # vmap over clips: (T, N, H, W, C) frames with their own boxes.
  stacked = jax.vmap(lambda f, b: ops.roi_align(f, b, OUT, 1.0, 2, True))(
    np.stack([features, features[::-1]]), np.stack([boxes, boxes])
  )
  np.testing.assert_allclose(
    np.asarray(stacked[0]), np.asarray(ops.roi_align(features, boxes, OUT, 1.0, 2, True)), rtol=1e-6
  )
  with pytest.raises(ValueError, match='boxes must be'):
    ops.roi_align(features, boxes[0], OUT)
