"""Optimiser pieces: schedule, clipping, weight-decay mask, layer-wise lr decay, EMA."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tests import toy_task as toy
from tps_jax.tasks import base as tasks
from tps_jax.train import optim


def optim_config(**overrides):
  config = ml_collections.ConfigDict(
    {
      'learning_rate': 0.1,
      'warmup_steps': 10,
      'end_lr_ratio': 0.0,
      'weight_decay': 0.0,
      'grad_clip_norm': 0.0,
      'layer_decay': 1.0,
      'ema_decay': 0.0,
    }
  )
  config.update(overrides)
  return config


def test_warmup_cosine_schedule():
  schedule = optim.warmup_cosine_schedule(1.0, total_steps=110, warmup_steps=10, end_lr_ratio=0.1)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  # Halfway through the cosine: midway between peak and end.
  np.testing.assert_allclose(schedule(60), 0.55, atol=1e-6)
  np.testing.assert_allclose(schedule(110), 0.1, atol=1e-6)


def _one_step(config, params, grads, **kwargs):
  """The first update; jitted (one program instead of dozens of eager ones)."""
  tx, _ = optim.make_optimizer(config, params, total_steps=100, **kwargs)
  return jax.jit(lambda p, g: tx.update(g, tx.init(p), p)[0])(params, grads)


def test_global_norm_clipping_scales_every_leaf():
  params = {'a': jnp.ones(3), 'b': jnp.ones(4)}
  grads = {'a': jnp.full(3, 3.0), 'b': jnp.full(4, 4.0)}
  tx = optax.chain(optax.clip_by_global_norm(1.0))
  clipped, _ = tx.update(grads, tx.init(params))
  norm = np.sqrt(3 * 9 + 4 * 16)
  np.testing.assert_allclose(clipped['a'], 3.0 / norm, rtol=1e-6)
  np.testing.assert_allclose(optax.global_norm(clipped), 1.0, rtol=1e-6)
  # Through make_optimizer (warmup 0): Adam normalises, but clipped grads must
  # still give the same direction as unclipped ones on the first step.
  config = optim_config(grad_clip_norm=1.0, warmup_steps=0)
  np.testing.assert_allclose(_one_step(config, params, grads)['a'], -0.1, rtol=1e-5)


def test_weight_decay_mask_spares_norms_biases_and_position_tables():
  task_cls = tasks.Task
  params = {
    'block': {
      'kernel': jnp.ones((2, 2)),
      'bias': jnp.ones(2),
      'norm': {'scale': jnp.ones(2)},
      'relative_position_bias_table': jnp.ones((9, 3)),
    }
  }
  mask = optim.decay_mask_tree(params, lambda p, x: task_cls.decay_mask(None, p, x))
  assert mask == {
    'block': {
      'kernel': True,
      'bias': False,
      'norm': {'scale': False},
      'relative_position_bias_table': False,
    }
  }
  config = optim_config(weight_decay=0.5, warmup_steps=0)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = _one_step(
    config, params, zeros, decay_mask=lambda p, x: task_cls.decay_mask(None, p, x)
  )
  np.testing.assert_allclose(updates['block']['kernel'], -0.1 * 0.5 * 1.0, rtol=1e-6)
  for name in ('bias', 'relative_position_bias_table'):
    np.testing.assert_array_equal(updates['block'][name], 0.0)


def test_layer_decay_scales_each_layers_update():
  config = toy.get_config()
  task = toy.ToyTask(config)
  # Zeros of the parameters' shapes: without weight decay an update ignores their values.
  shapes = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))['params']
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  grads = jax.tree.map(jnp.ones_like, params)
  plain = _one_step(optim_config(warmup_steps=0), params, grads)
  decayed = _one_step(
    optim_config(warmup_steps=0, layer_decay=0.5),
    params,
    grads,
    layer_id=task.layer_id,
    num_layers=task.num_layers(),
  )
  # num_layers = 3: layer_0 -> id 1 (x0.25), layer_1 -> id 2 (x0.5), head -> 3 (x1).
  for module, scale in (('layer_0', 0.25), ('layer_1', 0.5), ('head', 1.0)):
    np.testing.assert_allclose(
      decayed[module]['kernel'], scale * plain[module]['kernel'], rtol=1e-6
    )


def test_ema_update():
  ema = optim.ema_update({'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([3.0, 6.0])}, 0.75)
  np.testing.assert_allclose(ema['w'], [1.5, 3.0])


def test_path_names():
  tree = {'a': [{'b': 1}], 'c': (2,)}
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  assert [optim.path_names(p) for p, _ in flat] == [('a', '0', 'b'), ('c', '0')]
  assert [optim.param_name(p) for p, _ in flat] == ['a/0/b', 'c/0']


def test_frozen_parameters_get_no_update_and_no_moments():
  params = {'backbone': {'kernel': jnp.ones((2, 2))}, 'head': {'kernel': jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  config = optim_config(weight_decay=0.5, warmup_steps=0, grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(
    config, params, total_steps=100, trainable=lambda path: path[0] != 'backbone'
  )
  opt_state = tx.init(params)
  updates, _ = tx.update(grads, opt_state, params)
  np.testing.assert_array_equal(updates['backbone']['kernel'], 0.0)  # no weight decay either
  assert np.all(np.asarray(updates['head']['kernel']) < 0)
  moments = [leaf.shape for leaf in jax.tree.leaves(opt_state) if np.ndim(leaf) == 2]
  assert moments == [(2, 2), (2, 2)]  # mu and nu of the head only
