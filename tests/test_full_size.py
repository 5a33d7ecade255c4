"""Every stage's full-size config, checked by shape; then one real step of the same
topology at reduced width and input.

By shape (`jax.eval_shape`, nothing computed): the trainer's own init and train step of
each config as `run_train.py` builds them, with the parameter count against the paper's
network, the metrics and new state the step returns, the optimiser state's structure,
every partition rule matching parameters (and their optimiser moments) whose sharded
axis divides a `model` axis of 8, and the relative-position offsets every Swin block
uses at the config's input size.

For real: the same depths, heads and stages (narrower channels, 64-pixel inputs), one
trainer step: the loss is finite, and every trainable parameter gets a gradient.

A real full-size step (memory, speed) is bench/bench_train_step.py's job:
  python bench/bench_train_step.py --config=configs/action.py --batch_size 1
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tps_jax.input import pipelines
from tps_jax.models import swin
from tps_jax.tasks import base as tasks_lib
from tps_jax.train import sharding, trainer
from tps_jax.train.optim import param_name

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
  'bench_train_step', os.path.join(REPO_ROOT, 'bench', 'bench_train_step.py')
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

MODEL_AXIS = 8  # the largest `model` axis the partition rules are written for
# Parameters (millions) of each full config's network, and where the count comes from.
# Backbones match their papers' (Swin-L 197 M and Video Swin-B 88 M with a 1000-class
# head; ResNet-50 25.6 M, ResNeXt-101 32x4d 44.2 M with theirs); the detectors are
# mmdetection's models of the same name with our class counts.
PARAMS_M = {
  # Cascade R-CNN R-50 FPN (mmdetection: 69.2 M with 80 classes), 1 class.
  'human_detector': 69.15,
  # The same Cascade R-CNN on Swin-L (195.0 M without its head), 10 parts.
  'part_detector': 240.42,
  # RetinaNet R-50 FPN (mmdetection: 37.7 M with 80 classes), 10 parts.
  'part_detector_retinanet': 36.52,
  # GFL X-101-32x4d FPN (mmdetection: 53.3 M with 80 classes), 10 parts.
  'part_detector_gfl': 50.90,
  # Swin-L (195.0 M) + RoIAlign projection + 2-layer encoder of width 768 + heads.
  'part_state': 220.78,
  # Table 3's first row: no action embedding, part crops instead of RoIAlign, no encoder.
  'part_state:no_action,no_roi,no_attention': 207.38,
  # Video Swin-B (88.0 M without its head), 24 actions.
  'action': 88.68,
  'action_pretrain': 88.68,
}
BACKBONE_PARAMS_M = {'swin_l': 195.0, 'swin3d_b': 88.63}
# (config, variant): every stage config and every variant that changes the network.
CONFIGS = [
  ('human_detector', None),
  ('part_detector', None),
  ('part_detector_retinanet', None),
  ('part_detector_gfl', None),
  ('part_state', None),
  ('part_state', 'no_action,no_roi,no_attention'),
  ('action', None),
  ('action_pretrain', None),
]
CONFIG_IDS = [name + (f':{variant}' if variant else '') for name, variant in CONFIGS]


def load_config(name: str, variant: str | None):
  return importlib.import_module(f'configs.{name}').get_config(variant)


def build(config):
  """(task, abstract train state, step function, abstract batch) as the trainer has them."""
  compute_dtype = jnp.bfloat16 if config.get('bf16', False) else jnp.float32
  task = tasks_lib.get_task(config.task, config, compute_dtype=compute_dtype)
  bench.provide_vocabularies(task, num_states=74, num_actions=24)
  _, abstract_state, _, tx, schedule, ema_decay = trainer.plan_train_state(
    task, config, sharding.make_mesh(1), jax.random.key(0)
  )
  step = trainer.make_train_step(
    task, tx, schedule, grad_accum_steps=config.get('grad_accum_steps', 1), ema_decay=ema_decay
  )
  dataset = bench.pipeline_dataset(task)
  spec = pipelines.output_spec(dataset, pipelines.data_fields(dataset, config))
  batch = {k: jax.ShapeDtypeStruct((2, *shape), dtype) for k, (shape, dtype) in spec.items()}
  return task, abstract_state, step, batch


def flat(tree) -> dict[str, jax.ShapeDtypeStruct]:
  return {param_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def record_windows(records: list):
  """A flax interceptor that records (configured window, window used) of every Swin
  attention call."""

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, swin.WindowAttention) and context.method_name == '__call__':
      grid = args[0].shape[1:-1]
      used, _ = swin.window_and_shift(grid, module.window_size, module.shift_size)
      records.append((tuple(module.window_size), used))
    return next_fun(*args, **kwargs)

  return interceptor


# ------------------------------------------------------------------------ by shape


@pytest.fixture(scope='module', params=CONFIGS, ids=CONFIG_IDS)
def full(request):
  """The full config's task, abstract state, and the abstract outputs of one step."""
  name, variant = request.param
  config = load_config(name, variant)
  task, state, step, batch = build(config)
  windows = []
  with nn.intercept_methods(record_windows(windows)):
    new_state, metrics, finite = jax.eval_shape(step, state, batch)
  return dict(
    id=name + (f':{variant}' if variant else ''),
    name=name,
    config=config,
    task=task,
    state=state,
    new_state=new_state,
    metrics=metrics,
    finite=finite,
    windows=windows,
  )


def test_parameter_count_is_the_papers(full):
  params = flat(full['state'].params)
  count = sum(leaf.size for leaf in params.values()) / 1e6
  assert count == pytest.approx(PARAMS_M[full['id']], abs=0.01), count
  for prefix, arch in (('backbone/', 'swin_l'), ('', 'swin3d_b')):
    arch_config = full['config'].model
    if arch in (
      arch_config.get('backbone'),
      arch_config.get('backbone_arch'),
      arch_config.get('arch'),
    ):
      backbone = sum(
        leaf.size
        for name, leaf in params.items()
        if name.startswith(prefix) and not name.startswith(('head/', 'neck', 'rpn', 'box_'))
      )
      assert backbone / 1e6 == pytest.approx(BACKBONE_PARAMS_M[arch], abs=0.5)


def test_one_step_keeps_every_shape_and_returns_scalar_metrics(full):
  state, new_state = full['state'], full['new_state']
  same = lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert all(jax.tree.leaves(jax.tree.map(same, state, new_state)))
  assert full['finite'].shape == () and full['finite'].dtype == jnp.bool_
  metrics = full['metrics']
  assert {'loss', 'grad_norm', 'learning_rate'} <= set(metrics)
  assert all(m.shape == () for m in metrics.values())
  # Parameters stay float32 whatever the compute dtype.
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


def test_optimizer_state_mirrors_the_trainable_parameters(full):
  """AdamW's two moments hold one leaf per trainable parameter, of its shape; frozen
  parameters (a detector's first ResNet stage) get none."""
  params = flat(full['state'].params)
  opt = flat(full['state'].opt_state)
  trainable = {n for n in params if full['task'].is_trainable(tuple(n.split('/')))}
  assert trainable, 'no trainable parameter'
  for moment in ('mu', 'nu'):
    moments = {n.split(f'{moment}/', 1)[1]: leaf for n, leaf in opt.items() if f'/{moment}/' in n}
    moments = {n: leaf for n, leaf in moments.items() if leaf.size}
    assert set(moments) == trainable, (moment, sorted(set(moments) ^ trainable)[:5])
    assert all(moments[n].shape == params[n].shape for n in trainable)
  frozen_stage = full['config'].model.get('backbone_overrides', {}).get('frozen_stages', -1)
  assert (len(trainable) < len(params)) == (frozen_stage >= 0)


def test_every_partition_rule_shards_parameters_that_divide(full):
  """Each rule matches some parameter (a renamed layer would silently replicate), the
  sharded axis divides a model axis of 8, the moments are sharded as their parameter,
  and the sharded kernels hold most of the parameters."""
  rules = full['task'].param_partition_rules()
  params = flat(full['state'].params)
  total = sum(leaf.size for leaf in params.values())
  sharded = 0
  if full['id'] == full['name']:  # the whole network (a variant may drop a rule's layers)
    for pattern, spec in rules:
      assert any(
        re.search(pattern, n) and sharding.spec_for(n, leaf.ndim, rules) == spec
        for n, leaf in params.items()
      ), f'partition rule {pattern!r} matches no parameter'
  for name, leaf in params.items():
    spec = sharding.spec_for(name, leaf.ndim, rules)
    for size, axis in zip(leaf.shape, spec):
      if axis == sharding.MODEL_AXIS:
        assert size % MODEL_AXIS == 0, (name, leaf.shape, spec)
        sharded += leaf.size
  if rules:
    assert sharded > 0.8 * total
  whole = flat(full['state'])
  for name, leaf in whole.items():
    if name.startswith('opt_state/') and leaf.ndim:
      param = name.split('/mu/', 1)[-1].split('/nu/', 1)[-1]
      if param in params:
        assert sharding.spec_for(name, leaf.ndim, rules) == sharding.spec_for(
          param, params[param].ndim, rules
        )


def test_every_swin_block_uses_every_relative_position_offset(full):
  """At the config's input size each attention call's window is the configured one, so
  its bias index reaches every row of the table (a clipped window would leave rows
  untrained)."""
  windows = full['windows']
  arch = full['config'].model.get('backbone') or full['config'].model.get('backbone_arch')
  arch = arch or full['config'].model.get('arch')
  if not str(arch).startswith('swin'):
    assert not windows
    return
  depths = {'swin_l': 24, 'swin3d_b': 24}[arch]
  if full['config'].model.get('part_feature') == 'crop':
    depths *= 2  # no_roi: the backbone also runs on the part crops
  assert len(windows) == depths, len(windows)
  for configured, used in windows:
    index = swin.window_bias_index(configured, used)
    rows = np.prod([2 * w - 1 for w in configured])
    assert used == configured and np.array_equal(np.unique(index), np.arange(rows)), (
      configured,
      used,
    )


# ------------------------------------------------------------- for real, narrower


def narrow(name: str, config) -> None:
  """The full config's depths, heads and stages with 8 channels per attention head and
  64-pixel inputs, batch 2, float32, no stochastic depth (it drops whole blocks)."""
  config.batch_size, config.bf16 = 2, False
  model = config.model
  if name == 'part_state':  # Swin-L: heads 6, 12, 24, 48
    model.backbone_overrides = {'embed_dim': 48, 'drop_path_rate': 0.0}
    model.update(roi_channels=16, hidden_dim=48, mlp_dim=96, dropout_rate=0.0)
    config.data.update(image_size=64, resize=72)
  else:  # Video Swin-B: heads 4, 8, 16, 32
    model.overrides = {'embed_dim': 32}
    model.update(drop_path_rate=0.0, head_drop_rate=0.0)
    config.data.update(num_frames=8, image_size=64, resize=64)


def host_drawn_variables(task, seed: int = 0) -> dict:
  """Variables of the task's shapes drawn on the host: normal with std 0.02 around 0, or
  around 1 for norm scales. The networks' own initialisers, compiled for these deep
  narrow networks, cost more than the step itself (13 s of XLA compilation for Swin-L's
  371 leaves, 16 s run op by op); what the step proves, a finite loss that reaches every
  parameter, does not depend on them (the tiny configs train from them in other tests)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    centre = 1.0 if param_name(path).endswith(('scale', 'var')) else 0.0
    return jnp.asarray(centre + 0.02 * rng.standard_normal(leaf.shape), leaf.dtype)

  shapes = jax.eval_shape(task.init_variables, jax.random.key(0))
  return dict(jax.tree_util.tree_map_with_path(draw, shapes))


# The Swin-L and Video Swin-B networks (the detectors' full-size backbones and heads are
# the ones their tiny configs train for real; their ResNet-50 is torchvision's, in
# tests/test_resnet_fpn.py).
@pytest.mark.parametrize('name', ['part_state', 'action'])
def test_one_real_step_at_reduced_width_trains_every_parameter(name):
  config = load_config(name, None)
  narrow(name, config)
  task = tasks_lib.get_task(config.task, config, compute_dtype=jnp.float32)
  bench.provide_vocabularies(task, num_states=74, num_actions=24)
  variables = host_drawn_variables(task)
  params = variables.pop('params')
  dataset = bench.pipeline_dataset(task)
  settings = pipelines.data_fields(dataset, config)
  batch = bench.synthetic_batch(dataset, settings, 2, bench.label_counts(task), seed=1)
  loss_and_grads = jax.jit(
    jax.value_and_grad(
      lambda p: task.loss_fn(p, batch, jax.random.key(1), variables, train=True), has_aux=True
    )
  )
  (loss, (metrics, _)), grads = loss_and_grads(params)
  assert np.isfinite(float(loss)) and float(loss) > 0, metrics
  flat_grads = flat(grads)
  assert len(flat_grads) == len(flat(params))
  assert all(np.isfinite(g).all() for g in flat_grads.values())
  # Every parameter is used: a block, norm or head the loss does not reach is a bug.
  untrained = [n for n, g in flat_grads.items() if not np.any(np.asarray(g))]
  assert not untrained, untrained[:10]
