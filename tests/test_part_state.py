"""The part-state network, its task (loss, metrics, layer ids, sharding) and configs."""

import functools
import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import part_state as part_state_config
from tps_jax.data.kinetics_tps import PARTS, Vocab
from tps_jax.models.part_state import PartStateNet
from tps_jax.tasks.part_state import (
  PartStateTask,
  part_state_loss,
  part_state_losses,
  part_state_metric_sums,
)
from tps_jax.train import sharding
from tps_jax.train.optim import layer_lr_scales, param_name, path_names

NUM_STATES, NUM_ACTIONS, SIZE = 7, 3, 32
MICRO_SWIN = flax.core.FrozenDict(
  embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(4, 4), drop_path_rate=0.0
)


def micro_model(**overrides):
  fields = dict(
    num_states=NUM_STATES,
    num_actions=NUM_ACTIONS,
    backbone_arch='swin_t',
    backbone_overrides=MICRO_SWIN,
    roi_stage=2,
    roi_output_size=2,
    roi_channels=4,
    crop_size=8,
    hidden_dim=16,
    num_layers=2,
    num_heads=2,
    mlp_dim=32,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
  )
  return PartStateNet(**{**fields, **overrides})


def micro_batch(batch=2, seed=0, sets=()):
  rng = np.random.default_rng(seed)
  corner = rng.uniform(0, SIZE - 12, (batch, *sets, len(PARTS), 2))
  boxes = np.concatenate([corner, corner + rng.uniform(4, 12, corner.shape)], -1)
  return {
    'image': rng.normal(size=(batch, SIZE, SIZE, 3)).astype(np.float32),
    'part_boxes': boxes.astype(np.float32),
    'part_valid': rng.random((batch, *sets, len(PARTS))) < 0.7,
    'part_state': rng.integers(0, NUM_STATES, (batch, *sets, len(PARTS))).astype(np.int32),
    'action': rng.integers(0, NUM_ACTIONS, (batch,)).astype(np.int32),
  }


def inputs(batch):
  return batch['image'], batch['part_boxes'], batch['part_valid'], batch['action']


def init(model, batch, seed=0):
  """Random parameters of the model's shapes (std 0.2, norm scales around 1): larger
  than the default init, so that interactions between parts are clearly visible."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs(batch), train=False))

  def draw(path, leaf):
    centre = 1.0 if path[-1].key == 'scale' else 0.0
    return (centre + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def jitted_apply(model):
  """`(params, batch, train=False, seed=0) -> logits` of `model`, jitted once per model
  for the whole module (params an argument: the tests share the compiled programs)."""

  def apply(params, batch, train=False, seed=0):
    rngs = {'dropout': jax.random.key(seed)}
    return model.apply({'params': params}, *inputs(batch), train=train, rngs=rngs)

  return jax.jit(apply, static_argnames='train')


@pytest.fixture(scope='module')
def micro():
  """The default micro model (RoIAlign, action, attention), its params and a batch."""
  model = micro_model()
  batch = micro_batch()
  return model, init(model, batch)['params'], batch


def masked_loss(logits, batch):
  return part_state_loss(logits, batch['part_state'], batch['part_valid'])[0]


# ------------------------------------------------------------------------------ model


@pytest.mark.parametrize(
  'use_action,part_feature,use_attention',
  list(itertools.product([True, False], ['roi_align', 'crop'], [True, False])),
)
def test_shapes_for_every_ablation_switch(use_action, part_feature, use_attention):
  model = micro_model(use_action=use_action, part_feature=part_feature, use_attention=use_attention)
  for sets in [(), (3,)]:
    batch = micro_batch(sets=sets)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs(batch), train=False))
    out = jax.eval_shape(
      lambda v: model.apply(v, *inputs(batch), train=True, rngs={'dropout': jax.random.key(1)}),
      variables,
    )
    assert out.shape == (2, *sets, len(PARTS), NUM_STATES) and out.dtype == jnp.float32
  params = variables['params']
  assert ('action_embedding' in params) == use_action
  assert ('roi_projection' in params) == (part_feature == 'roi_align')
  assert ('attention' in params['encoder_0']) == use_attention
  assert params['classifier_kernel'].shape == (len(PARTS), 16, NUM_STATES)


def test_unknown_part_feature_and_bad_shapes_are_errors():
  batch = micro_batch()
  with pytest.raises(ValueError, match='part_feature'):
    jax.eval_shape(
      lambda: micro_model(part_feature='pool').init(jax.random.key(0), *inputs(batch), train=False)
    )
  with pytest.raises(ValueError, match='part_boxes'):
    jax.eval_shape(
      lambda: micro_model().init(
        jax.random.key(0),
        batch['image'],
        batch['part_boxes'][:, :9],
        batch['part_valid'][:, :9],
        batch['action'],
        train=False,
      )
    )


@pytest.mark.parametrize('part_feature', ['roi_align', 'crop'])
def test_absent_parts_change_nothing_else_and_get_no_loss(part_feature):
  model = micro_model(part_feature=part_feature)
  batch = micro_batch()
  params = init(model, batch)['params']
  apply = functools.partial(jitted_apply(model), params)
  absent = ~batch['part_valid']
  assert absent.any() and batch['part_valid'].any()
  # Absent parts: move their boxes, change their labels (and mark some unlabelled).
  moved = dict(
    batch,
    part_boxes=np.where(absent[..., None], batch['part_boxes'][:, ::-1] + 3, batch['part_boxes']),
    part_state=np.where(absent, (batch['part_state'] + 1) % NUM_STATES, batch['part_state']),
  )
  moved['part_state'][0, np.flatnonzero(absent[0])[:1]] = -1
  logits, logits_moved = apply(batch), apply(moved)
  present = batch['part_valid']
  np.testing.assert_allclose(
    np.asarray(logits)[present], np.asarray(logits_moved)[present], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    masked_loss(logits, batch), masked_loss(logits_moved, moved), rtol=1e-6
  )
  # Control: moving a *present* part's box does change the other present parts.
  b, k = np.argwhere(present)[0]
  shifted = dict(batch, part_boxes=batch['part_boxes'].copy())
  shifted['part_boxes'][b, k] = [0, 0, SIZE, SIZE]
  others = present.copy()
  others[b, k] = False
  change = np.abs(np.asarray(apply(shifted)) - np.asarray(logits))[others]
  assert change.max() > 1e-4


def test_no_nan_when_a_human_has_no_part(micro):
  model, params, batch = micro

  @jax.jit
  def loss_and_grads(params, batch):
    def loss(p):
      logits = model.apply({'params': p}, *inputs(batch), train=False)
      return masked_loss(logits, batch), logits

    return jax.value_and_grad(loss, has_aux=True)(params)

  some = dict(batch, part_valid=np.zeros_like(batch['part_valid']))
  some['part_valid'][1, :3] = True  # the second human keeps three parts
  (value, logits), grads = loss_and_grads(params, some)
  assert np.isfinite(logits).all() and np.isfinite(value)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  nobody = dict(batch, part_valid=np.zeros_like(batch['part_valid']))
  (value, logits), grads = loss_and_grads(params, nobody)
  assert np.isfinite(logits).all() and float(value) == 0.0
  assert all(np.isfinite(g).all() and not np.any(g) for g in jax.tree.leaves(grads))


def test_gradients_reach_the_backbone_through_roi_align(micro):
  model, params, batch = micro

  def part_feature_sum(p):
    def run(m, images, boxes):
      features = m.backbone(images, train=False, return_features=True)
      return m.part_features(images, boxes, features, train=False).sum()

    return model.apply({'params': p}, batch['image'], batch['part_boxes'], method=run)

  grads = jax.jit(jax.grad(part_feature_sum))(params)['backbone']
  norm = lambda tree: float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(tree)))
  # roi_stage=2: the stage-2 map depends on the patch embedding and stages 1-2 only.
  for name in ['patch_embed', 'layers_0', 'layers_1', 'feature_norm_2']:
    assert norm(grads[name]) > 0, name
  assert norm(grads['layers_1']['blocks_0']) > 0
  assert norm(grads['layers_2']) == 0 and norm(grads['layers_1']['downsample']) == 0


def test_proposal_sets_equal_separate_calls(micro):
  """(B, K, 10, 4) boxes give the same logits as K calls with (B, 10, 4)."""
  model, params, _ = micro
  batch = micro_batch(sets=(3,), seed=1)
  apply = functools.partial(jitted_apply(model), params)
  together = np.asarray(apply(batch))
  for k in range(3):
    alone = apply(
      dict(batch, part_boxes=batch['part_boxes'][:, k], part_valid=batch['part_valid'][:, k])
    )
    np.testing.assert_allclose(together[:, k], alone, rtol=1e-5, atol=1e-5)


def test_action_and_dropout_are_used(micro):
  model, params, batch = micro
  apply = functools.partial(jitted_apply(model), params)
  other_action = dict(batch, action=(batch['action'] + 1) % NUM_ACTIONS)
  assert np.abs(apply(batch, False, 0) - apply(other_action, False, 0)).max() > 1e-3
  np.testing.assert_array_equal(apply(batch, False, 0), apply(batch, False, 1))
  assert np.abs(apply(batch, True, 0) - apply(batch, True, 1)).max() > 1e-3


def test_bf16_compute_keeps_float32_params(micro):
  model, params, batch = micro
  bf16 = model.clone(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), *inputs(batch), train=False))
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  logits, reference = jitted_apply(bf16)(params, batch), jitted_apply(model)(params, batch)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.05 * np.abs(reference).max())


# ------------------------------------------------------------------------------- task


@pytest.fixture(scope='module')
def tiny_task(synthetic_root):
  config = part_state_config.get_config('tiny')
  config.data.root = str(synthetic_root)
  config.data.image_size = SIZE
  return PartStateTask(config)


def test_config_variants_and_errors():
  full = part_state_config.get_config()
  assert (
    full.model.backbone_arch,
    full.data.image_size,
    full.data.resize,
    full.batch_size,
    full.optim.weight_decay,
  ) == ('swin_l', 224, 256, 512, 1e-8)
  assert full.data.balance_states and full.init_from.prefix == 'backbone/'
  for field in ('total_steps', 'batch_size', 'log_steps', 'checkpoint_steps', 'eval_steps'):
    assert field in full
  combined = part_state_config.get_config('tiny,no_action,no_roi,no_attention')
  assert combined.model.backbone_arch == 'swin_t' and combined.total_steps <= 1000
  assert (combined.model.use_action, combined.model.part_feature, combined.model.use_attention) == (
    False,
    'crop',
    False,
  )
  with pytest.raises(ValueError, match='unknown variant'):
    part_state_config.get_config('tiny,no_roi_pooling')


def test_vocabulary_comes_from_the_dataset(tiny_task, synthetic_root):
  vocab = Vocab.from_root(str(synthetic_root))
  assert tiny_task.model.num_states == len(vocab.states)
  assert tiny_task.model.num_actions == len(vocab.actions)
  config = part_state_config.get_config('tiny')
  config.data.root = str(synthetic_root) + '_missing'
  with pytest.raises(FileNotFoundError, match='_missing: no such dataset'):
    PartStateTask(config).build_model()


def test_loss_and_metrics_count_present_parts_only():
  rng = np.random.default_rng(0)
  num_states = NUM_STATES
  logits = rng.normal(size=(3, len(PARTS), num_states)).astype(np.float32)
  states = rng.integers(0, num_states, (3, len(PARTS))).astype(np.int32)
  valid = rng.random((3, len(PARTS))) < 0.6
  states[0, 0], valid[0, 0] = -1, True  # a box without a state label
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  present = valid & (states >= 0)
  nll = -np.take_along_axis(log_probs, np.maximum(states, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(part_state_losses(logits, states), nll, rtol=1e-5)
  smooth = part_state_losses(logits, states, 0.1)
  expected = 0.9 * nll - 0.1 * log_probs.mean(-1)
  np.testing.assert_allclose(smooth, expected, rtol=1e-5)

  example_mask = np.array([True, True, False])
  metrics = part_state_metric_sums(logits, states, valid, example_mask)
  counted = present & example_mask[:, None]
  correct = (logits.argmax(-1) == states) & counted
  assert metrics['top1'][1] == counted.sum() and metrics['top1'][0] == correct.sum()
  np.testing.assert_allclose(metrics['loss'][0], nll[counted].sum(), rtol=1e-5)
  for i, part in enumerate(PARTS):
    assert metrics[f'top1_{part}'] == (correct[:, i].sum(), counted[:, i].sum())
  loss, train_metrics = part_state_loss(logits, states, valid)
  np.testing.assert_allclose(loss, nll[present].mean(), rtol=1e-5)
  np.testing.assert_allclose(
    train_metrics['top1'], ((logits.argmax(-1) == states) & present).sum() / present.sum()
  )
  loss, _ = part_state_loss(logits, states, np.zeros_like(valid))
  assert float(loss) == 0.0


def test_layer_ids_cover_every_parameter(tiny_task):
  params = jax.eval_shape(tiny_task.init_variables, jax.random.key(0))['params']
  depths = tiny_task.backbone_depths()
  num_layers = tiny_task.num_layers()
  assert num_layers == sum(depths) + 1
  ids = {
    param_name(p): tiny_task.layer_id(path_names(p))
    for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  assert all(0 <= i <= num_layers for i in ids.values())
  assert ids['backbone/patch_embed/proj/kernel'] == 0
  assert ids['backbone/layers_0/blocks_0/attn/qkv/kernel'] == 1
  assert ids['backbone/layers_2/blocks_1/mlp/fc2/kernel'] == depths[0] + depths[1] + 2
  assert ids['backbone/layers_0/downsample/reduction/kernel'] == depths[0]
  assert ids['backbone/norm/scale'] == sum(depths)
  head = [name for name in ids if not name.startswith('backbone/')]
  assert head and all(ids[name] == num_layers for name in head)
  scales = layer_lr_scales(params, tiny_task.layer_id, num_layers, 0.5)
  assert scales['backbone']['patch_embed']['proj']['kernel'] == 0.5**num_layers
  with pytest.raises(ValueError, match='unexpected backbone parameter'):
    tiny_task.layer_id(('backbone', 'head', 'kernel'))


def test_predict_states_is_jittable(tiny_task):
  batch = micro_batch(sets=(2,))
  batch['action'] = batch['action'] % len(tiny_task.vocab.actions)
  variables = init(tiny_task.model, batch)
  out = jax.jit(tiny_task.predict_states)(variables, *inputs(batch))
  assert out['state'].shape == (2, 2, len(PARTS)) and out['state'].dtype == jnp.int32
  valid = batch['part_valid']
  assert (np.asarray(out['state'])[~valid] == -1).all()
  assert (np.asarray(out['state'])[valid] >= 0).all()
  np.testing.assert_allclose(np.asarray(out['probs']).sum(-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------- full size
# (The tiny config trained end to end, kernels over a `model` axis: tests/test_sharding.py.)


@pytest.mark.slow
def test_full_config_swin_l_layer_ids_and_partition_rules(synthetic_root):
  config = part_state_config.get_config()
  config.data.root = str(synthetic_root)
  task = PartStateTask(config, compute_dtype=jnp.bfloat16)
  params = jax.eval_shape(task.init_variables, jax.random.key(0))['params']
  assert task.num_layers() == 25  # Swin-L: 2 + 2 + 18 + 2 blocks, + the head
  leaves = {param_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert leaves['backbone/layers_3/blocks_1/mlp/fc1/kernel'].shape == (1536, 6144)
  assert task.layer_id(('backbone', 'layers_3', 'blocks_1', 'mlp', 'fc1', 'kernel')) == 24
  sharded = 0
  for name, leaf in leaves.items():
    assert 0 <= task.layer_id(tuple(name.split('/'))) <= 25
    spec = sharding.spec_for(name, leaf.ndim, task.param_partition_rules())
    for size, axis in zip(leaf.shape, spec):
      if axis == 'model':
        assert size % 8 == 0, (name, leaf.shape, spec)  # a model axis of up to 8
        sharded += leaf.size
  # The sharded kernels hold most of the parameters.
  assert sharded > 0.8 * sum(leaf.size for leaf in leaves.values())
