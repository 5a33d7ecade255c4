"""Mesh and shardings; 8 simulated devices train like 1 for the same global batch, and
the tiny part-state network trains with its kernels split over a `model` axis."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import part_state as part_state_config
from tests import toy_task as toy
from tests.conftest import run_on_devices
from tests.test_part_state import inputs, micro_batch
from tps_jax.data.kinetics_tps import PARTS
from tps_jax.datasets import build
from tps_jax.inference.export import read_config, read_variables
from tps_jax.tasks.part_state import PartStateTask
from tps_jax.train import checkpointing, sharding, trainer


def test_spec_for_first_matching_rule_else_replicated():
  rules = ((r'layer_\d+/kernel', P(None, 'model')), (r'bias', P('model')))
  assert sharding.spec_for('params/layer_3/kernel', 2, rules) == P(None, 'model')
  assert sharding.spec_for('opt_state/1/0/mu/layer_3/kernel', 2, rules) == P(None, 'model')
  assert sharding.spec_for('params/head/bias', 1, rules) == P('model')
  assert sharding.spec_for('params/head/kernel', 2, rules) == P()
  assert sharding.spec_for('step', 0, rules) == P()  # spec longer than the leaf


def test_tree_shardings_replicate_without_model_axis():
  mesh = sharding.make_mesh(1)
  tree = {'layer_0': {'kernel': jax.ShapeDtypeStruct((4, 4), np.float32)}}
  shardings = sharding.tree_shardings(mesh, tree, ((r'kernel', P(None, 'model')),))
  assert shardings['layer_0']['kernel'].spec == P()


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f]


def toy_config():
  config = toy.get_config('tiny')
  config.total_steps, config.log_steps, config.eval_steps = 5, 1, 5
  return config


def part_state_tiny(root, tfds_dir):
  """configs/part_state.py:tiny on the synthetic fixture: 4 steps of 4 crops of 48²,
  evaluated, checkpointed and exported at step 4, kernels over a `model` axis of 2."""
  config = part_state_config.get_config('tiny')
  config.data.update(root=str(root), tfds_dir=str(tfds_dir), image_size=48, resize=54)
  config.update(total_steps=4, batch_size=4, log_steps=2, eval_steps=4, checkpoint_steps=4)
  config.mesh.model = 2
  return config


# One process with 8 simulated devices (a device count is fixed when JAX starts) trains
# the toy data-parallel, the toy over 4 data x 2 model devices with gradient
# accumulation, and the tiny part-state network over 4 x 2.
_EIGHT_DEVICE_RUNS = """
from tests import test_sharding as t
from tps_jax.train import trainer
workdir, root, tfds_dir = ARGS
config = t.toy_config()
trainer.train_and_evaluate(config, f'{workdir}/data8')
config.mesh.model, config.grad_accum_steps = 2, 2
trainer.train_and_evaluate(config, f'{workdir}/model2')
trainer.train_and_evaluate(t.part_state_tiny(root, tfds_dir), f'{workdir}/part_state')
"""


@pytest.fixture(scope='module')
def on_8_devices(tmp_path_factory, synthetic_root):
  """The workdir holding data8/, model2/ and part_state/ (read-only)."""
  workdir = tmp_path_factory.mktemp('eight_devices')
  tfds_dir = workdir / 'tfds'
  build.build_datasets(
    str(synthetic_root), out=str(tfds_dir), datasets=['part_states'], progress=False
  )
  args = [str(path) for path in (workdir, synthetic_root, tfds_dir)]
  proc = run_on_devices(f'ARGS = {args!r}' + _EIGHT_DEVICE_RUNS, 8)
  assert proc.returncode == 0, proc.stderr
  return workdir


def _kernel_spec(workdir, step, name):
  metadata = checkpointing.make_manager(str(workdir), keep=1).item_metadata(step)
  node = metadata['state'].tree['params']
  for key in name.split('/'):
    node = node[key]
  return tuple(node.sharding.partition_spec)


@pytest.mark.slow
def test_8_devices_match_1_device(on_8_devices, tmp_path):
  trainer.train_and_evaluate(toy_config(), str(tmp_path / 'one'))
  expected = _losses(tmp_path / 'one')
  np.testing.assert_allclose(_losses(on_8_devices / 'data8'), expected, rtol=1e-5)
  # 4 data x 2 model: the toy's hidden layers are split over `model`; accumulating 2
  # micro-batches matches the whole batch (test_trainer.py: within this tolerance).
  assert _kernel_spec(on_8_devices / 'model2', 5, 'layer_0/kernel') == (None, 'model')
  np.testing.assert_allclose(_losses(on_8_devices / 'model2'), expected, rtol=1e-5)


@pytest.mark.slow
def test_part_state_tiny_config_trains_with_kernels_split(on_8_devices, synthetic_root):
  """metrics.jsonl, the kernels split as the rules say, the export, and the exported
  states predicted."""
  workdir = on_8_devices / 'part_state'
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in records] == [2, 4]
  assert all(np.isfinite(r['loss']) for r in records)
  assert 0 <= records[-1]['eval_top1'] <= 1
  assert {f'eval_top1_{part}' for part in PARTS} <= set(records[-1])
  spec = _kernel_spec(workdir, 4, 'backbone/layers_0/blocks_0/mlp/fc1/kernel')
  assert spec == (None, 'model')
  variables = read_variables(str(workdir / 'export'))
  config = read_config(str(workdir / 'export'))
  assert config['task'] == 'part_state'
  task = PartStateTask(part_state_config.get_config('tiny'))
  task.config.data.root = str(synthetic_root)
  task.config.data.image_size = 48
  out = jax.jit(task.predict_states)(variables, *inputs(micro_batch()))
  assert out['state'].shape == (2, len(PARTS))
