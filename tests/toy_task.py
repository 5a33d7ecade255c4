"""The trainer's tests' task and its config: an MLP classifier on synthetic data.

  python run_train.py --config=tests/toy_task.py[:tiny] --workdir=/tmp/toy

Expected: eval accuracy near 1.0 within a few hundred steps (the classes are linearly
separable). The data lives in memory (`data.root=''`) or in `<data.root>/toy.npz`
(arrays `x` (N, D) float32 and `y` (N,) int32), read by a grain pipeline so that the
data iterator's checkpointing is exercised. A test fixture, not shipped: the config
names the task `toy`, which this file registers when it is loaded (as a config file or
imported), since a task name never imports anything (tps_jax/tasks/base.py).
"""

from __future__ import annotations

import os

import grain
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from configs import common
from tps_jax.tasks import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.trainer(
    'toy',
    total_steps=200,
    batch_size=32,
    log_steps=10,
    checkpoint_steps=50,
    eval_steps=100,
    keep_checkpoints=2,
  )
  config.data = ml_collections.ConfigDict(
    {'root': '', 'num_train': 256, 'num_eval': 100, 'num_features': 8, 'num_classes': 4}
  )
  config.model = ml_collections.ConfigDict(
    {'hidden': 16, 'num_layers': 2, 'dropout': 0.0, 'batch_norm': False}
  )
  config.optim = ml_collections.ConfigDict(
    {
      'learning_rate': 1e-2,
      'warmup_steps': 10,
      'end_lr_ratio': 0.0,
      'b1': 0.9,
      'b2': 0.999,
      'eps': 1e-8,
      'weight_decay': 1e-4,
      'grad_clip_norm': 1.0,
      'layer_decay': 1.0,
      'ema_decay': 0.0,
    }
  )
  if arg == 'tiny':
    config.total_steps = 20
    config.log_steps = 5
    config.checkpoint_steps = 10
    config.eval_steps = 10
  elif arg:
    raise ValueError(f'tests/toy_task.py: unknown variant {arg!r} (known: tiny)')
  return config


class ToyMLP(nn.Module):
  """Dense layers `layer_0..layer_{n-1}` then `head`; optional dropout/batch norm."""

  hidden: int
  num_layers: int
  num_classes: int
  dropout: float = 0.0
  batch_norm: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i in range(self.num_layers):
      x = nn.Dense(self.hidden, dtype=self.dtype, name=f'layer_{i}')(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name=f'norm_{i}')(x)
      x = nn.gelu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)


def synthetic_data(num: int, num_features: int, num_classes: int, seed: int):
  """Gaussian blobs around fixed class centres (same centres for every split)."""
  centres = np.random.default_rng(1234).normal(size=(num_classes, num_features)) * 2
  rng = np.random.default_rng(seed)
  y = rng.integers(0, num_classes, num).astype(np.int32)
  x = (centres[y] + rng.normal(size=(num, num_features))).astype(np.float32)
  return x, y


class BalancedAccuracy(base.Evaluator):
  """Mean per-class recall: not a sum over examples, so computed on the host."""

  def __init__(self, num_classes: int):
    self.confusion = np.zeros((num_classes, num_classes), np.int64)

  def add(self, outputs):
    mask = outputs[base.EXAMPLE_MASK]
    np.add.at(self.confusion, (outputs['label'][mask], outputs['predicted'][mask]), 1)

  def result(self):
    per_class = self.confusion.sum(1)
    recall = np.diag(self.confusion)[per_class > 0] / per_class[per_class > 0]
    return {'balanced_accuracy': float(recall.mean()) if recall.size else 0.0}


@base.register_task('toy')
class ToyTask(base.Task):
  """Classification of synthetic blobs; loss = softmax cross-entropy."""

  def build_model(self):
    return ToyMLP(
      hidden=self.config.model.hidden,
      num_layers=self.config.model.num_layers,
      num_classes=self.config.data.num_classes,
      dropout=self.config.model.dropout,
      batch_norm=self.config.model.batch_norm,
      dtype=self.compute_dtype,
    )

  def init_inputs(self):
    return {'x': np.zeros((1, self.config.data.num_features), np.float32)}

  def loss_fn(self, params, batch, rng, model_state, *, train):
    mutable = list(model_state) if train and model_state else False
    out = self.model.apply(
      {'params': params, **model_state},
      batch['x'],
      train=train,
      rngs={'dropout': rng},
      mutable=mutable,
    )
    logits, new_state = out if mutable else (out, model_state)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()
    accuracy = (logits.argmax(-1) == batch['y']).mean()
    return loss, ({'accuracy': accuracy}, dict(new_state))

  def eval_metrics(self, params, model_state, batch):
    logits = self.model.apply({'params': params, **model_state}, batch['x'], train=False)
    mask = batch[base.EXAMPLE_MASK]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
    correct = logits.argmax(-1) == batch['y']
    count = mask.sum()
    return {
      'accuracy': (jnp.where(mask, correct, 0).sum(), count),
      'loss': (jnp.where(mask, loss, 0.0).sum(), count),
    }

  def eval_predictions(self, params, model_state, batch):
    logits = self.model.apply({'params': params, **model_state}, batch['x'], train=False)
    return {
      'predicted': logits.argmax(-1),
      'label': batch['y'],
      base.EXAMPLE_MASK: batch[base.EXAMPLE_MASK],
    }

  def make_evaluator(self):
    return BalancedAccuracy(self.config.data.num_classes)

  def layer_id(self, path):
    """layer_i -> i + 1, head -> num_layers + 1 (0 would be an embedding)."""
    module = path[0]
    if module == 'head':
      return self.num_layers()
    return int(module.split('_')[1]) + 1

  def num_layers(self):
    return self.config.model.num_layers + 1

  def param_partition_rules(self):
    """Hidden units over the `model` axis (used when config.mesh.model > 1)."""
    return ((r'layer_\d+/kernel', P(None, 'model')), (r'layer_\d+/bias', P('model')))

  def _arrays(self, split: str):
    data = self.config.data
    if data.root:
      path = os.path.join(data.root, 'toy.npz')
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: toy dataset not found (config.data.root)')
      with np.load(path) as f:
        x, y = f['x'], f['y']
      cut = len(x) - data.num_eval
      return (x[:cut], y[:cut]) if split == 'train' else (x[cut:], y[cut:])
    num = data.num_train if split == 'train' else data.num_eval
    return synthetic_data(
      num, data.num_features, data.num_classes, seed=0 if split == 'train' else 1
    )

  def train_iterator(self, *, seed, process_index, process_count, batch_size):
    x, y = self._arrays('train')
    dataset = (
      grain.MapDataset.range(len(x))[process_index::process_count]
      .shuffle(seed=seed)
      .repeat()
      .map(lambda i: {'x': x[i], 'y': y[i]})
      .batch(batch_size, drop_remainder=True)
    )
    return iter(dataset.to_iter_dataset())

  def eval_iterator(self, *, process_index, process_count, batch_size):
    x, y = self._arrays('eval')
    # Pad the eval set to a multiple of the process count so that every process
    # sees the same number of batches; padded rows are dropped via the mask below.
    per_process = -(-len(x) // process_count)
    start = process_index * per_process
    for lo in range(start, start + per_process, batch_size):
      hi = min(lo + batch_size, start + per_process, len(x))
      if hi <= lo:  # this process ran out: an empty batch keeps the counts equal
        yield {'x': x[:0], 'y': y[:0]}
        continue
      yield {'x': x[lo:hi], 'y': y[lo:hi]}
