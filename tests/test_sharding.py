"""Mesh and shardings; 8 simulated devices train like 1 for the same global batch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests import toy_task as toy
from tps_jax.train import checkpointing, sharding, trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _run_on_8_devices(workdir, *flags):
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=os.environ['XLA_FLAGS'] + ' --xla_force_host_platform_device_count=8',
  )
  proc = subprocess.run(
    [
      sys.executable,
      'run_train.py',
      '--config=tests/toy_task.py:tiny',
      f'--workdir={workdir}',
      '--config.total_steps=5',
      '--config.log_steps=1',
      '--config.eval_steps=5',
      *flags,
    ],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_8_devices_match_1_device(tmp_path):
  config = toy.get_config('tiny')
  config.total_steps, config.log_steps, config.eval_steps = 5, 1, 5
  trainer.train_and_evaluate(config, str(tmp_path / 'one'))
  expected = _losses(tmp_path / 'one')
  _run_on_8_devices(tmp_path / 'data8')
  np.testing.assert_allclose(_losses(tmp_path / 'data8'), expected, rtol=1e-5)
  # 4 data x 2 model: the toy's hidden layers are split over `model`.
  _run_on_8_devices(tmp_path / 'model2', '--config.mesh.model=2', '--config.grad_accum_steps=2')
  metadata = checkpointing.make_manager(str(tmp_path / 'model2'), keep=1).item_metadata(5)
  kernel = metadata['state'].tree['params']['layer_0']['kernel']
  assert tuple(kernel.sharding.partition_spec) == (None, 'model')
  config.grad_accum_steps = 2
  trainer.train_and_evaluate(config, str(tmp_path / 'one_accum'))
  np.testing.assert_allclose(
    _losses(tmp_path / 'model2'), _losses(tmp_path / 'one_accum'), rtol=1e-5
  )
