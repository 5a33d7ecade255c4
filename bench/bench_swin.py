"""Swin-T and Video Swin-T speed: JAX (jitted) against torchvision (eager), one run.

  python bench/bench_swin.py [--batch_size 8] [--size 224] [--video_batch_size 1]
      [--frames 8] [--repeats 5] [--models swin_t,swin3d_t] [--forward_only]
      [--clock wall|cpu]

Forward: eval mode (torch under no_grad), images/s for Swin-T and clips/s for Video
Swin-T. Train: one step of forward + backward (cross-entropy) + AdamW, drop-path on
both sides. torch uses as many threads as XLA's CPU pool (the CPUs this process may
run on; `taskset -c 0 python bench/bench_swin.py` compares one thread each). Warm-up
(and compilation) is excluded; each figure is the median of `--repeats` calls, JAX and
torch timed in turns so that both meet the same load on shared cores (the load average
is printed before and after). Same random-initialised weights on both sides.
"""

import os
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from absl import flags
from torchvision.models import swin_t
from torchvision.models.video import swin3d_t

from tps_jax import cli
from tps_jax.convert import convert_state_dict
from tps_jax.convert.io import unflatten

_TORCH_MODELS = {'swin_t': swin_t, 'swin3d_t': swin3d_t}


_CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def bench_model(arch: str, input_shape: tuple[int, ...], args) -> list[tuple]:
  """[(arch, mode, unit, jax items/s, torch items/s)] for one model."""
  torch.manual_seed(0)
  reference = _TORCH_MODELS[arch]()
  conversion = convert_state_dict(
    {k: v.numpy() for k, v in reference.state_dict().items()},
    arch,
    drop_path_rate=reference_drop_path(reference),
  )
  model = conversion.model
  params = jax.device_put(unflatten(conversion.params))
  x = np.random.default_rng(0).normal(size=input_shape).astype(np.float32)
  labels = np.zeros(input_shape[0], np.int32)
  x_jax, labels_jax = jnp.asarray(x), jnp.asarray(labels)
  x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
  labels_torch = torch.from_numpy(labels).long()
  items = input_shape[0]
  unit = 'images/s' if len(input_shape) == 4 else 'clips/s'

  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))

  def jax_forward():
    forward(params, x_jax).block_until_ready()

  def torch_forward():
    reference.eval()
    with torch.no_grad():
      reference(x_torch)

  jax_s, torch_s = common.interleaved_medians(
    [jax_forward, torch_forward], args.repeats, args.warmup, _CLOCKS[args.clock]
  )
  rows = [(arch, 'forward', unit, items / jax_s, items / torch_s)]
  if args.forward_only:
    return rows

  tx = optax.adamw(1e-4, weight_decay=0.05)

  @jax.jit
  def train_step(params, opt_state, x, labels, rng):
    def loss_fn(p):
      logits = model.apply({'params': p}, x, train=True, rngs={'dropout': rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = [params, tx.init(params), jax.random.key(0)]

  def jax_train():
    state[2], rng = jax.random.split(state[2])
    state[0], state[1], loss = train_step(state[0], state[1], x_jax, labels_jax, rng)
    loss.block_until_ready()

  optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-4, weight_decay=0.05)

  def torch_train():
    reference.train()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(reference(x_torch), labels_torch)
    loss.backward()
    optimizer.step()

  jax_s, torch_s = common.interleaved_medians(
    [jax_train, torch_train], args.repeats, args.warmup, _CLOCKS[args.clock]
  )
  rows.append((arch, 'train step', unit, items / jax_s, items / torch_s))
  return rows


def reference_drop_path(reference) -> float:
  """The torchvision model's last (largest) stochastic-depth rate."""
  rates = [m.p for m in reference.modules() if type(m).__name__ == 'StochasticDepth']
  return max(rates)


flags.DEFINE_integer('batch_size', 8, 'Swin-T images per batch.')
flags.DEFINE_integer('size', 224, 'Image / frame side.')
flags.DEFINE_integer('video_batch_size', 1, 'Video Swin-T clips per batch.')
flags.DEFINE_integer('frames', 8, 'Frames per clip.')
flags.DEFINE_integer('repeats', 5, 'Timed calls.')
flags.DEFINE_integer('warmup', 2, 'Untimed calls first.')
flags.DEFINE_list('models', ['swin_t', 'swin3d_t'], 'Models to time.')
flags.DEFINE_bool('forward_only', False, 'Time the forward pass only.')
flags.DEFINE_enum(
  'clock',
  'wall',
  sorted(_CLOCKS),
  'cpu: process CPU time, a steadier '
  'measure of one thread (taskset -c 0 ...) on a machine shared with other '
  'work.',
)


def main(argv):
  del argv
  args = flags.FLAGS
  common.match_torch_threads()
  print(f'{args.clock} clock; load average {os.getloadavg()[0]:.2f}')
  shapes = {
    'swin_t': (args.batch_size, args.size, args.size, 3),
    'swin3d_t': (args.video_batch_size, args.frames, args.size, args.size, 3),
  }
  rows = []
  for arch in args.models:
    rows += bench_model(arch, shapes[arch], args)
    print(f'{arch} done; load average {os.getloadavg()[0]:.2f}', flush=True)
  print(f'\n{"model":10} {"input":18} {"mode":11} {"JAX":>10} {"torch":>10} {"JAX/torch":>9}')
  for arch, mode, unit, jax_rate, torch_rate in rows:
    shape = 'x'.join(map(str, shapes[arch][:-1]))
    print(
      f'{arch:10} {shape:18} {mode:11} {jax_rate:10.2f} {torch_rate:10.2f} '
      f'{jax_rate / torch_rate:8.2f}x   ({unit})'
    )


if __name__ == '__main__':
  cli.run(main)
