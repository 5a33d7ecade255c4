"""bench/bench_train_step.py: synthetic batches as the pipelines' and one real step."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tps_jax.input import pipelines
from tps_jax.tasks import base as tasks_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO_ROOT, 'bench', 'bench_train_step.py')


def _load_bench():
  spec = importlib.util.spec_from_file_location('bench_train_step', BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench = _load_bench()


def _tiny_task(name: str, **overrides):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config('tiny')
  config.update(overrides)
  task = tasks_lib.get_task(config.task, config)
  bench.provide_vocabularies(task, num_states=7, num_actions=5)
  return task


@pytest.mark.parametrize('name', ['part_state', 'action', 'human_detector', 'part_detector'])
def test_synthetic_batch_is_a_valid_pipeline_batch(name):
  task = _tiny_task(name)
  dataset = bench.pipeline_dataset(task)
  settings = pipelines.data_fields(dataset, task.config)
  counts = bench.label_counts(task)
  batch = bench.synthetic_batch(dataset, settings, 3, counts)

  spec = pipelines.output_spec(dataset, settings)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    k: ((3, *shape), np.dtype(dtype)) for k, (shape, dtype) in spec.items()
  }
  height, width = settings.image_size
  if dataset == 'part_states':
    assert counts == {'states': 7, 'actions': 5}
    boxes, valid, states = batch['part_boxes'], batch['part_valid'], batch['part_state']
    assert valid[:, 0].all() and not valid.all()
    np.testing.assert_array_equal(states < 0, ~valid)
    assert states.max() < 7 and 0 <= batch['action'].min() and batch['action'].max() < 5
  elif dataset == 'action_clips':
    assert counts == {'classes': 5}
    assert 0 <= batch['label'].min() and batch['label'].max() < 5
    return
  else:
    boxes, valid = batch['boxes'], batch['valid']
    assert valid[:, 0].all()
    # Valid boxes come first, as the pipeline pads them.
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()
    assert batch['labels'].max() < len(task.class_names) and not batch['ignore'].any()
    np.testing.assert_array_equal(batch['image_size'], [[height, width]] * 3)
  inside = boxes[valid]
  assert (inside[:, 0] >= 0).all() and (inside[:, 1] >= 0).all()
  assert (inside[:, 2] > inside[:, 0]).all() and (inside[:, 3] > inside[:, 1]).all()
  assert (inside[:, 2] <= width - 1).all() and (inside[:, 3] <= height - 1).all()
  assert (boxes[~valid] == 0).all()


def test_vocabularies_come_from_the_dataset_when_a_root_is_set():
  module = importlib.import_module('configs.part_state')
  config = module.get_config('tiny')
  config.data.root = '/nonexistent/Kinetics-TPS'
  task = tasks_lib.get_task(config.task, config)
  bench.provide_vocabularies(task, num_states=7, num_actions=5)
  with pytest.raises(FileNotFoundError, match='/nonexistent/Kinetics-TPS'):
    task.vocab  # pylint: disable=pointless-statement


def test_flop_loops_names_loops_but_not_the_prng():
  def step(x, key):
    x = x * jax.random.uniform(key, x.shape)
    return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=4)[0]

  compiled = jax.jit(step).lower(np.ones((8, 8), np.float32), jax.random.PRNGKey(0)).compile()
  loops = bench.flop_loops(compiled.as_text())
  assert len(loops) == 1 and loops[0].endswith('(4 trips)')


@pytest.mark.slow
def test_cli_runs_one_step_of_a_tiny_config():
  proc = subprocess.run(
    [
      sys.executable,
      BENCH,
      '--config=configs/part_detector_gfl.py:tiny',
      '--batch_size',
      '2',
      '--steps',
      '1',
      '--warmup',
      '0',
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  assert any(line.startswith('step ') for line in lines[:-1])
  assert result['finite'] and len(result['losses']) == 1
  assert result['batch_size'] == 2 and result['input_shapes']['image'][0] == [2, 128, 96, 3]
  assert result['flops_per_step'] > 0 and result['peak_rss_bytes'] > 0
  assert result['examples_per_s'] == pytest.approx(2 / result['step_s'])
  # The parameter count of the model the config builds.
  task = _tiny_task('part_detector_gfl')
  shapes = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))['params']
  assert result['params'] == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
