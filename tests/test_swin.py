"""Swin ops and model behaviour (parity with torchvision: tests/test_convert_swin.py)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import swin_transformer as tv_swin
from torchvision.models.video import swin_transformer as tv_swin3d

from tps_jax.models import swin

# Small Swins for behaviour tests (few blocks: compilation dominates their time).
FOUR_STAGES = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), num_classes=5)
TWO_STAGES = dict(
  embed_dim=16, depths=(2, 2), num_heads=(1, 2), num_classes=5, window_size=(3, 3)
)  # 2 blocks a stage: the second one shifted
ONE_STAGE = dict(embed_dim=16, depths=(2,), num_heads=(2,), num_classes=5, window_size=(3, 3))


def _init(model, shape, seed=0):
  """(input, variables): random parameters of the model's shapes (no compiled init)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

  def draw(path, leaf):
    name = path[-1].key
    centre = 1.0 if name == 'scale' else 0.0
    return (centre + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)

  return x, jax.tree_util.tree_map_with_path(draw, abstract)


@functools.partial(jax.jit, static_argnames=('model', 'train', 'return_features'))
def _apply(model, variables, x, *, train, return_features=False, rngs=None):
  """Jitted `model.apply`, compiled once per model (op-by-op would compile every op)."""
  return model.apply(variables, x, train=train, return_features=return_features, rngs=rngs)


@pytest.mark.parametrize('window', [(7, 7), (8, 7, 7), (2, 3, 4)])
def test_relative_position_index_matches_torchvision(window):
  if len(window) == 2:
    reference = tv_swin.ShiftedWindowAttention(8, list(window), [0, 0], 2)
    expected = reference.relative_position_index.reshape(math.prod(window), -1)
  else:
    reference = tv_swin3d.ShiftedWindowAttention3d(8, list(window), [0, 0, 0], 2)
    expected = reference.relative_position_index
  np.testing.assert_array_equal(swin.relative_position_index(window), expected.numpy())
  # A clipped window reads the leading block of the full index, as the references.
  np.testing.assert_array_equal(
    swin.window_bias_index(window, (1,) * (len(window) - 1) + (window[-1] - 1,)),
    expected.numpy()[: window[-1] - 1, : window[-1] - 1],
  )


@pytest.mark.parametrize(
  'padded,window,shift',
  [
    ((1, 14, 21), (1, 7, 7), (0, 3, 3)),  # 2D (leading axis of one)
    ((1, 14, 21), (1, 7, 7), (0, 0, 3)),  # shifted along one axis only
    ((8, 14, 14), (4, 7, 7), (2, 3, 3)),  # 3D
  ],
)
def test_shift_mask_matches_torchvision(padded, window, shift):
  reference = tv_swin3d._compute_attention_mask_3d(torch.zeros(1), padded, window, shift)
  mask = swin.shifted_window_mask(padded, window, shift)
  np.testing.assert_array_equal(mask, reference.numpy())
  assert swin.shifted_window_mask(padded, window, (0, 0, 0)) is None


@pytest.mark.parametrize('grid,window', [((14, 21), (7, 7)), ((4, 6, 9), (2, 3, 3))])
def test_partition_and_merge_windows_round_trip(grid, window):
  x = np.arange(2 * math.prod(grid) * 3, dtype=np.float32).reshape(2, *grid, 3)
  windows = swin.partition_windows(jnp.asarray(x), window)
  num_windows = math.prod(g // w for g, w in zip(grid, window))
  assert windows.shape == (2 * num_windows, math.prod(window), 3)
  # Window 0 is the grid's leading corner, tokens row-major inside it.
  corner = x[(0, *[slice(0, w) for w in window])].reshape(-1, 3)
  np.testing.assert_array_equal(windows[0], corner)
  # Window 1 is the next one along the last axis.
  next_corner = x[
    (0, *[slice(0, w) for w in window[:-1]], slice(window[-1], 2 * window[-1]))
  ].reshape(-1, 3)
  np.testing.assert_array_equal(windows[1], next_corner)
  np.testing.assert_array_equal(swin.merge_windows(windows, window, grid), x)


def test_window_and_shift_rules():
  # Clips: the window clipped to the grid, no shift there (official Video Swin, swin3d).
  assert swin.window_and_shift((2, 14, 5), (8, 7, 7), (4, 3, 3)) == ((2, 7, 5), (0, 3, 0))
  # Images: the window kept (the grid is padded up to it), no shift there (torchvision).
  assert swin.window_and_shift((7, 8), (7, 7), (3, 3)) == ((7, 7), (0, 3))
  assert swin.window_and_shift((4, 5), (7, 7), (3, 3)) == ((7, 7), (0, 0))


def _attention_params(reference) -> dict:
  """torch attention weights -> `WindowAttention` params."""
  as_numpy = lambda t: t.detach().numpy()
  return {
    'relative_position_bias_table': as_numpy(reference.relative_position_bias_table),
    **{
      name: {'kernel': as_numpy(layer.weight).T, 'bias': as_numpy(layer.bias)}
      for name, layer in (('qkv', reference.qkv), ('proj', reference.proj))
    },
  }


@pytest.mark.parametrize(
  'grid,window',
  [
    ((4, 5), (7, 7)),  # smaller than the window: padded up to it, not shifted
    ((9, 5), (7, 7)),  # shifted along H only
    ((8, 13), (4, 4)),  # padded and shifted along both
    ((3, 4, 9), (8, 7, 7)),  # clips: the window clipped along T and H, shifted along W
  ],
)
def test_window_attention_matches_torchvision(grid, window):
  channels, heads = 8, 2
  shift = [w // 2 for w in window]
  if len(grid) == 2:
    reference = tv_swin.ShiftedWindowAttention(channels, list(window), shift, heads)
  else:
    reference = tv_swin3d.ShiftedWindowAttention3d(channels, list(window), shift, heads)
  with torch.no_grad():  # a bias table far from its near-zero initial values
    reference.relative_position_bias_table.normal_(generator=torch.Generator().manual_seed(0))
  x = np.random.default_rng(0).normal(size=(2, *grid, channels)).astype(np.float32)
  expected = reference.eval()(torch.from_numpy(x)).detach().numpy()
  attention = swin.WindowAttention(heads, window, tuple(shift))
  got = jax.jit(functools.partial(attention.apply, train=False))(
    {'params': _attention_params(reference)}, x
  )
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_merge_patches_order_matches_torchvision():
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 7, 4)).astype(np.float32)
  expected = tv_swin._patch_merging_pad(torch.from_numpy(x)).numpy()
  np.testing.assert_array_equal(swin.merge_patches(jnp.asarray(x)), expected)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_layer_norm_values_and_hand_written_gradients(dtype):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 16)) * 4 + 10).astype(np.float32)  # large mean: two-pass
  scale, bias = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
  expected = F.layer_norm(
    torch.from_numpy(x), (16,), torch.from_numpy(scale), torch.from_numpy(bias), swin.LAYER_NORM_EPS
  ).numpy()
  got = swin.layer_norm(jnp.asarray(x, dtype), scale, bias, swin.LAYER_NORM_EPS)
  assert got.dtype == dtype
  np.testing.assert_allclose(
    np.asarray(got, np.float32), expected, atol=1e-5 if dtype == jnp.float32 else 0.05
  )

  def autodiff_layer_norm(x, scale, bias):  # the plain formula, differentiated by JAX
    x = x.astype(jnp.float32)
    centred = x - x.mean(-1, keepdims=True)
    return (
      centred / jnp.sqrt((centred**2).mean(-1, keepdims=True) + swin.LAYER_NORM_EPS) * scale + bias
    )

  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  loss = lambda f: lambda *args: jnp.sum(f(*args).astype(jnp.float32) * weights)
  args = (jnp.asarray(x, dtype), jnp.asarray(scale), jnp.asarray(bias))
  got = jax.grad(loss(lambda *a: swin.layer_norm(*a, swin.LAYER_NORM_EPS)), argnums=(0, 1, 2))(
    *args
  )
  expected = jax.grad(loss(autodiff_layer_norm), argnums=(0, 1, 2))(*args)
  assert got[0].dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2  # x dtype's rounding
  for g, e in zip(got, expected):
    e = np.asarray(e, np.float32)
    np.testing.assert_allclose(
      np.asarray(g, np.float32), e, rtol=0, atol=tolerance * np.abs(e).max()
    )


@pytest.mark.parametrize(
  'arch,reference,classes',
  [('swin_t', tv_swin.swin_t, 1000), ('swin3d_t', tv_swin3d.swin3d_t, 400)],
)
def test_parameter_count_matches_torchvision(arch, reference, classes):
  model = swin.build_swin(arch, num_classes=classes)
  shape = (1, 32, 32, 3) if arch == 'swin_t' else (1, 2, 32, 32, 3)
  params = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False),
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )['params']
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  assert count == sum(p.numel() for p in reference().parameters())


def test_arch_table_and_overrides():
  assert {
    'swin_t',
    'swin_s',
    'swin_b',
    'swin_l',
    'swin_b_384',
    'swin_l_384',
    'swin3d_t',
    'swin3d_s',
    'swin3d_b',
  } <= set(swin.SWIN_ARCHS)
  model = swin.build_swin('swin3d_b', window_size=(16, 7, 7), num_classes=3)
  assert model.window_size == (16, 7, 7) and model.embed_dim == 128
  with pytest.raises(ValueError, match="unknown Swin arch 'swin_x'; supported: swin_t"):
    swin.build_swin('swin_x')


@pytest.mark.parametrize(
  'shape,grids',
  [
    ((2, 64, 40, 3), [(16, 10), (8, 5), (4, 3), (2, 2)]),
    ((1, 5, 32, 36, 3), [(3, 8, 9), (3, 4, 5), (3, 2, 3), (3, 1, 2)]),
  ],
)
def test_features_strides_and_head(shape, grids):
  patch, window = ((4, 4), (3, 3)) if len(shape) == 4 else ((2, 4, 4), (2, 3, 3))
  model = swin.SwinTransformer(**FOUR_STAGES, patch_size=patch, window_size=window)
  x, variables = _init(model, shape)
  features = _apply(model, variables, x, train=False, return_features=True)
  for i, grid in enumerate(grids):
    assert features[f'stage_{i + 1}'].shape == (shape[0], *grid, 16 * 2**i)
  assert features['pooled'].shape == (shape[0], 128)
  assert features['logits'].shape == (shape[0], 5)
  np.testing.assert_allclose(
    features['pooled'], features['stage_4'].reshape(shape[0], -1, 128).mean(1), atol=1e-6
  )
  headless = swin.SwinTransformer(
    **{**FOUR_STAGES, 'num_classes': 0}, patch_size=patch, window_size=window
  )
  params = {k: v for k, v in variables['params'].items() if k != 'head'}
  # Without a head (and without return_features) the pooled features come back.
  np.testing.assert_allclose(
    _apply(headless, {'params': params}, x, train=False), features['pooled'], atol=1e-6
  )


def test_feature_norms_normalise_early_stages():
  model = swin.SwinTransformer(**TWO_STAGES, feature_norms=True)
  x, variables = _init(model, (1, 48, 48, 3))
  assert set(variables['params']) == {
    'patch_embed',
    'layers_0',
    'layers_1',
    'feature_norm_1',
    'norm',
    'head',
  }
  got = _apply(model, variables, x, train=False, return_features=True)['stage_1']
  plain = _apply(model.clone(feature_norms=False), variables, x, train=False, return_features=True)[
    'stage_1'
  ]
  norm = variables['params']['feature_norm_1']
  normalised = (plain - plain.mean(-1, keepdims=True)) / np.sqrt(
    plain.var(-1, keepdims=True) + swin.LAYER_NORM_EPS
  )
  np.testing.assert_allclose(got, normalised * norm['scale'] + norm['bias'], atol=1e-5)


def test_wrong_rank_is_an_error():
  model = swin.SwinTransformer(**FOUR_STAGES)
  with pytest.raises(ValueError, match=r'expected input of rank 4 \(B, H, W, C\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 2, 32, 32, 3)), train=False)


def test_bfloat16_compute_close_to_float32():
  model = swin.SwinTransformer(**TWO_STAGES)
  x, variables = _init(model, (2, 24, 24, 3))
  expected = _apply(model, variables, x, train=False, return_features=True)
  bf16 = model.clone(dtype=jnp.bfloat16)
  got = _apply(bf16, variables, x, train=False, return_features=True)
  assert got['logits'].dtype == jnp.float32 and got['stage_1'].dtype == jnp.bfloat16
  for key in ('stage_1', 'pooled', 'logits'):
    scale = float(jnp.abs(expected[key]).max())
    assert float(jnp.abs(got[key].astype(jnp.float32) - expected[key]).max()) < 0.05 * scale
  # Parameters stay float32 whatever the compute dtype.
  bf16_params = jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, train=False))
  assert {p.dtype for p in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.float32)}


def test_remat_gives_same_values_and_gradients():
  model = swin.SwinTransformer(**ONE_STAGE, drop_path_rate=0.3)
  x, variables = _init(model, (2, 24, 24, 3))

  @functools.partial(jax.jit, static_argnums=1)
  def value_and_grad(params, m):
    def loss(params):
      logits = m.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)})
      return jnp.sum(logits**2)

    return jax.value_and_grad(loss)(params)

  value, grads = value_and_grad(variables['params'], model)
  remat_value, remat_grads = value_and_grad(variables['params'], model.clone(remat=True))
  np.testing.assert_allclose(remat_value, value, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat_grads, grads
  )


def test_drop_path_drops_whole_examples_in_train_only():
  x = jnp.ones((64, 3, 2))
  drop_path = swin.DropPath(0.25)
  np.testing.assert_array_equal(drop_path.apply({}, x, train=False), x)  # no rng needed
  kept = drop_path.apply({}, x, train=True, rngs={'dropout': jax.random.key(0)})
  per_example = np.unique(np.asarray(kept).reshape(64, -1), axis=1)
  assert per_example.shape == (64, 1)  # one decision per example
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75])
  assert 0 < (per_example == 0).sum() < 64


def test_dropouts_only_in_train():
  model = swin.SwinTransformer(**ONE_STAGE, drop_path_rate=0.5, drop_rate=0.1, attn_drop_rate=0.1)
  x, variables = _init(model, (4, 24, 24, 3))
  evaluated = _apply(model, variables, x, train=False)  # deterministic, no rng needed
  train = lambda seed: _apply(
    model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)}
  )
  assert not np.allclose(train(0), evaluated, atol=1e-4)
  assert not np.allclose(train(0), train(1), atol=1e-4)
  np.testing.assert_array_equal(train(2), train(2))
