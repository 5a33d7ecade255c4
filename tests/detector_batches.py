"""Shared by the detector tests: hand-made batches of two 96 x 128 images, and a brief\ntraining run of a tiny config evaluated through its command."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_module
from tps_jax.datasets import build

TINY_SHAPE = (2, 96, 128, 3)
FULL = np.array([[96.0, 128.0]] * 2, np.float32)  # image_shape: no padding
OBJECTS = [[(10, 12, 60, 70), (70, 20, 120, 90)], [(30, 30, 90, 80)]]


def fill_random(abstract, seed=0, *, norms='unit'):
  """Random variables of the shapes in `abstract` (no `init` compile): He-normal kernels;
  norm scales, variances and level scales (`scale_i`) with biases and means as `norms`
  says: 'unit' (1 and 0), 'near_unit' (1 + N(0, 0.1) and N(0, 0.1)) or 'spread'
  (U(0.5, 1.5) and N(0, 0.1): statistics well away from the identity)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = math.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * math.sqrt(1.0 / fan_in)).astype(np.float32)
    if norms == 'unit':
      one = name in ('scale', 'var') or name.startswith('scale_')
      return np.full(leaf.shape, float(one), np.float32)
    if name in ('scale', 'var') or name.startswith('scale_'):
      if norms == 'spread':
        return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
      return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def random_variables(model, shape, seed=0, *, norms='unit'):
  """`fill_random` of `model`'s variables for inputs of `shape`."""
  init = lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False)
  return fill_random(jax.eval_shape(init), seed, norms=norms)


def images(seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(TINY_SHAPE), jnp.float32)


def targets(boxes, labels=None, ignore=None, max_boxes=4):
  """Padded targets of two images: boxes is a list (one list of xyxy per image)."""
  out = {
    'boxes': np.zeros((2, max_boxes, 4), np.float32),
    'labels': np.zeros((2, max_boxes), np.int32),
    'valid': np.zeros((2, max_boxes), bool),
    'ignore': np.zeros((2, max_boxes), bool),
  }
  for b, image_boxes in enumerate(boxes):
    for i, box in enumerate(image_boxes):
      out['boxes'][b, i] = box
      out['valid'][b, i] = True
      out['labels'][b, i] = 0 if labels is None else labels[b][i]
      out['ignore'][b, i] = False if ignore is None else ignore[b][i]
  return out


def total(losses):
  """The sum of a detector's weighted losses (its `loss_*` entries)."""
  return sum(v for k, v in losses.items() if k.startswith('loss_'))


def train_and_evaluate_briefly(
  config: str, root, tmp_path, dataset: str, steps: int, *, subprocess_: bool = False
) -> dict:
  """`run_train.py --config=CONFIG` for `steps` steps on the synthetic root (in this
  process), then `python -m tps_jax.evaluate_detector` on its export (in a fresh process
  if `subprocess_`): asserts both succeed, the losses are finite and the command's AP is
  the run's final eval_AP; returns the run's final metrics record."""
  tfds_dir = tmp_path / 'tfds'
  build.build_datasets(str(root), out=str(tfds_dir), datasets=[dataset], progress=False)
  workdir = tmp_path / 'run'
  data_flags = [f'--config.data.root={root}', f'--config.data.tfds_dir={tfds_dir}']
  steps_flags = [f'--config.{name}={steps}' for name in ('total_steps', 'eval_steps')]
  proc = run_module(
    'run_train',
    f'--config={config}',
    f'--workdir={workdir}',
    *steps_flags,
    f'--config.checkpoint_steps={steps}',
    '--config.batch_size=2',
    '--config.log_steps=1',
    *data_flags,
    timeout=900,
  )
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert os.path.isdir(workdir / 'export')
  flags = ['--config', config, '--export', workdir / 'export', '--split', 'val']
  proc = run_module(
    'tps_jax.evaluate_detector',
    *flags,
    '--batch_size',
    '2',
    *data_flags,
    subprocess_=subprocess_,
  )
  last = proc.stdout.strip().splitlines()[-1].split()
  assert last[0] == 'AP' and float(last[1]) == pytest.approx(records[-1]['eval_AP'], abs=1e-6)
  return records[-1]
