r"""One training step of any stage config: the trainer's real step on a synthetic batch.

  python bench/bench_train_step.py --config=configs/part_state.py[:variant] \
      [--batch_size 2] [--steps 3] [--warmup 1] [--bf16 | --nobf16] \
      [--peak_tflops X] [--num_states 74] [--num_actions 24] [--nocheck_memory] \
      [--config.field=value ...]

Builds the task from the config as `tps_jax.train.trainer` does (`tasks.get_task`,
compute dtype from `bf16`), the train state (parameters, optimiser state of
`make_optimizer` with the task's layer ids, decay mask and frozen parameters, EMA when
configured) on the trainer's mesh and shardings, and jits the trainer's own
`make_train_step` with the state donated. The batch is synthetic, with the shapes and
dtypes of the task's input pipeline (`pipelines.output_spec`): normal random
(normalised) images or clips, valid boxes inside the image, labels in range, masks
with some parts / boxes absent. No dataset is read, except that with
`--config.data.root=DATA` the task reads its vocabularies from DATA as in training;
without it the part-state vocabularies have `--num_states` states and
`--num_actions` actions and the action recogniser `--num_actions` classes
(Kinetics-TPS's 74 and 24 by default; SSv2 pre-training has 174). The detectors'
classes are fixed by `config.data.dataset`.

Reported, one line each, then everything as one JSON line: compile seconds (lowering
and XLA compilation, apart from the steps), the first (warm-up) step, seconds per
step (median of `--steps` timed steps, each until its outputs are ready),
examples/s, peak RSS of this process (getrusage; the init and compilation included),
XLA's temporary-buffer size of the step, device memory peak where the backend keeps
it (GPU), the parameter count, the step's FLOPs from XLA's cost analysis of the
compiled step (per device) and so the achieved FLOP/s, and with a known peak the
utilisation (achieved / peak): `--peak_tflops`, else the table PEAK_TFLOPS for the
device kind and compute dtype. XLA counts the body of a loop (`lax.scan`, `lax.map`,
`while_loop`: RoIAlign chunks and NMS in the detectors, gradient accumulation) once,
so with loops in the step the FLOPs are a lower bound, and the report says so.
The parameters are freshly initialised (`init_from` is not read: the speed does not
depend on their values). On CPU a step whose XLA buffers exceed the memory available
is refused with one line (`--nocheck_memory` runs it anyway).

The comparison with torchvision's training step (Video Swin-T against swin3d_t, same
threads, one run) is bench/bench_action_train.py.

Figures (the shared 2-core CPU; GPU figures where a machine was lent) are in the
report of issue 4.
"""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from tps_jax import cli
from tps_jax.data.kinetics_tps import PARTS, Vocab
from tps_jax.input import pipelines
from tps_jax.tasks import base as tasks_lib
from tps_jax.tasks.action import ActionTask
from tps_jax.tasks.detection import DetectionTask
from tps_jax.tasks.part_state import PartStateTask
from tps_jax.train import sharding
from tps_jax.train.trainer import make_train_step, plan_train_state

# Dense peak TFLOP/s by (device kind substring, compute dtype). fp32 is the peak
# without tensor cores: XLA may run float32 matmuls as TF32 on them, which can exceed it.
PEAK_TFLOPS = {
  ('H100', 'bfloat16'): 989.0,
  ('H100', 'float32'): 67.0,  # SXM; PCIe: 756 / 51
  ('H200', 'bfloat16'): 989.0,
  ('H200', 'float32'): 67.0,
  ('A100', 'bfloat16'): 312.0,
  ('A100', 'float32'): 19.5,
}
GB = 1024**3
# HLO text: a while instruction (`%w = (...) while(%init), ...`), its source op name
# and trip count, and the jax.random helpers whose loops are integer work.
_WHILE_OP = re.compile(r' while\(%')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TRIP_COUNT = re.compile(r'known_trip_count":\{"n":"(\d+)"')
_PRNG_OP = re.compile(r'threefry|random_bits|_uniform|_bernoulli|_normal|_gamma')


# ----------------------------------------------------------------------- the task


def provide_vocabularies(task: tasks_lib.Task, *, num_states: int, num_actions: int) -> None:
  """Gives a task synthetic class lists when `config.data.root` names no dataset.

  The tasks read them from the dataset lazily (cached properties), so setting them
  before the model is built stands in for the dataset.
  """
  if task.config.data.get('root'):
    return
  states = tuple(f'state_{i}' for i in range(num_states))
  actions = tuple(f'action_{i}' for i in range(num_actions))
  if isinstance(task, PartStateTask):
    task.vocab = Vocab(parts=PARTS, states=states, actions=actions)
  elif isinstance(task, ActionTask):
    task.class_names = actions


def pipeline_dataset(task: tasks_lib.Task) -> str:
  """The dataset a task's input pipeline reads ('part_states', 'action_clips', 'humans',
  'parts')."""
  if isinstance(task, PartStateTask):
    return 'part_states'
  if isinstance(task, ActionTask):
    return 'action_clips'
  if isinstance(task, DetectionTask):
    return task.config.data.dataset
  raise ValueError(f'config.task: no synthetic batch for task {type(task).__name__}')


def label_counts(task: tasks_lib.Task) -> dict[str, int]:
  """The class counts the synthetic labels are drawn from."""
  if isinstance(task, PartStateTask):
    return {'states': len(task.vocab.states), 'actions': len(task.vocab.actions)}
  if isinstance(task, ActionTask):
    return {'classes': task.num_classes}
  return {'classes': len(task.class_names)}


# ------------------------------------------------------------------- the batch


def random_boxes(
  rng: np.random.Generator, count_shape: tuple[int, ...], height: int, width: int
) -> np.ndarray:
  """(*count_shape, 4) inclusive-pixel boxes inside a height x width image, sides
  between 1/16 and 1/2 of the image's."""
  sides = rng.uniform(1 / 16, 1 / 2, (*count_shape, 2)) * np.array([width, height])
  sides = np.maximum(np.round(sides), 2.0)
  corner = rng.uniform(0, 1, (*count_shape, 2)) * (np.array([width, height]) - sides)
  corner = np.floor(corner)
  return np.concatenate([corner, corner + sides - 1], -1).astype(np.float32)


def present_mask(rng: np.random.Generator, shape: tuple[int, ...], fraction: float) -> np.ndarray:
  """Bool mask with about `fraction` True along the last axis, the first always True."""
  mask = rng.random(shape) < fraction
  mask[..., 0] = True
  return mask


def synthetic_batch(
  dataset: str, settings, batch_size: int, counts: dict[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
  """A batch like `pipelines.make_pipeline(dataset, ...)`'s, of random content."""
  spec = pipelines.output_spec(dataset, settings)
  rng = np.random.default_rng(seed)
  height, width = settings.image_size

  def normal(key):
    return rng.standard_normal((batch_size, *spec[key][0]), np.float32)

  if dataset == 'part_states':
    parts = spec['part_valid'][0]
    valid = present_mask(rng, (batch_size, *parts), 0.8)
    batch = {
      'image': normal('image'),
      'part_boxes': np.where(
        valid[..., None], random_boxes(rng, (batch_size, *parts), height, width), 0
      ),
      'part_valid': valid,
      'part_state': np.where(valid, rng.integers(0, counts['states'], valid.shape), -1),
      'action': rng.integers(0, counts['actions'], (batch_size,)),
    }
  elif dataset == 'action_clips':
    batch = {'clip': normal('clip'), 'label': rng.integers(0, counts['classes'], (batch_size,))}
  elif dataset in ('humans', 'parts'):
    boxes = spec['boxes'][0][0]
    # Valid boxes first, then padding, as the pipeline pads them.
    valid = np.arange(boxes) < rng.integers(1, boxes + 1, (batch_size, 1))
    batch = {
      'image': normal('image'),
      'boxes': np.where(valid[..., None], random_boxes(rng, (batch_size, boxes), height, width), 0),
      'labels': np.where(valid, rng.integers(0, counts['classes'], valid.shape), 0),
      'valid': valid,
      'ignore': np.zeros_like(valid),
      'image_size': np.tile(np.int32([height, width]), (batch_size, 1)),
      'scale': np.ones((batch_size,), np.float32),
    }
  else:
    raise ValueError(f'no synthetic batch for dataset {dataset!r}')
  if set(batch) != set(spec):
    raise ValueError(
      f'synthetic {dataset} batch has keys {sorted(batch)}, the pipeline {sorted(spec)}'
    )
  return {
    key: batch[key].astype(dtype, copy=False).reshape(batch_size, *shape)
    for key, (shape, dtype) in spec.items()
  }


# ---------------------------------------------------------------- the benchmark


def device_peak_tflops(device_kind: str, dtype_name: str) -> float:
  """PEAK_TFLOPS for the device kind (by substring) and compute dtype; 0 if unknown."""
  for (kind, dtype), peak in PEAK_TFLOPS.items():
    if kind in device_kind and dtype == dtype_name:
      return peak
  return 0.0


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))


def flop_loops(hlo_text: str) -> list[str]:
  """Where the step's while loops that may hold FLOPs come from, one entry a loop:
  'multilevel_roi_align (64 trips)', ...

  XLA's cost analysis counts a loop body once; the PRNG's loops (threefry rounds:
  integer work) are left out.
  """
  loops = []
  for line in hlo_text.splitlines():
    if not _WHILE_OP.search(line):
      continue
    name = _OP_NAME.search(line)
    name = name.group(1) if name else 'while'
    if _PRNG_OP.search(name):
      continue
    # Named after the innermost jitted helper (e.g. jit(_multilevel_roi_align)).
    helpers = [s[len('jit(') : -1] for s in name.split('/')[1:] if s.startswith('jit(')]
    where = helpers[-1].lstrip('_') if helpers else name
    trips = _TRIP_COUNT.search(line)
    loops.append(f'{where} ({trips.group(1) + " trips" if trips else "trips unknown"})')
  return loops


def _available_host_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (None where there is none)."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_host_memory(memory) -> None:
  """On CPU, refuses a step whose buffers (XLA's temporaries and outputs beyond the
  donated state) exceed the memory available now: a one-line error instead of
  the machine's OOM killer. Other backends report their own out-of-memory."""
  if jax.devices()[0].platform != 'cpu' or memory is None:
    return
  needed = memory.temp_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
  available = _available_host_bytes()
  if available is not None and needed > available:
    raise MemoryError(
      f'the step needs {needed / GB:.1f} GB beyond its arguments (XLA '
      f'temporaries {memory.temp_size_in_bytes / GB:.1f} GB), only '
      f'{available / GB:.1f} GB are available: not run'
    )


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def init_train_state(task: tasks_lib.Task, config, mesh):
  """(state, state shardings, tx, schedule, ema_decay): the trainer's initialisation."""
  rng = jax.random.PRNGKey(config.seed)
  init_state, _, state_shardings, tx, schedule, ema_decay = plan_train_state(
    task, config, mesh, rng
  )
  state = jax.jit(init_state, out_shardings=state_shardings)(rng)
  return state, state_shardings, tx, schedule, ema_decay


def benchmark(
  config,
  *,
  steps: int = 3,
  warmup: int = 1,
  peak_tflops: float = 0.0,
  num_states: int = 74,
  num_actions: int = 24,
  check_memory: bool = True,
) -> dict[str, Any]:
  """Times the trainer's step of `config` (its batch_size and bf16) on a synthetic
  batch; returns the figures (see the module docstring)."""
  if steps < 1:
    raise ValueError(f'--steps must be at least 1, got {steps}')
  load_before = os.getloadavg()
  compute_dtype = jnp.bfloat16 if config.get('bf16', False) else jnp.float32
  task = tasks_lib.get_task(config.task, config, compute_dtype=compute_dtype)
  provide_vocabularies(task, num_states=num_states, num_actions=num_actions)
  mesh = sharding.make_mesh(config.get('mesh', {}).get('model', 1))
  accum = config.get('grad_accum_steps', 1)
  data_devices = mesh.shape[sharding.DATA_AXIS]
  if config.batch_size % (data_devices * accum) or jax.process_count() > 1:
    raise ValueError(
      f'batch_size={config.batch_size} must be divisible by {data_devices} '
      f'data devices x grad_accum_steps={accum} (one process)'
    )

  dataset = pipeline_dataset(task)
  settings = pipelines.data_fields(dataset, config)
  local_batch = synthetic_batch(
    dataset, settings, config.batch_size, label_counts(task), seed=config.seed
  )
  batch = sharding.global_batch(local_batch, mesh)

  start = time.perf_counter()
  state, state_shardings, tx, schedule, ema_decay = init_train_state(task, config, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  params = jax.tree.leaves(state.params)
  num_params = sum(int(p.size) for p in params)

  train_step = jax.jit(
    make_train_step(task, tx, schedule, grad_accum_steps=accum, ema_decay=ema_decay),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
    out_shardings=(state_shardings, sharding.replicated(mesh), sharding.replicated(mesh)),
    donate_argnums=0,
  )
  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  if check_memory:
    check_host_memory(memory)
  flops = _cost_flops(compiled)
  loops = flop_loops(compiled.as_text())
  temp_bytes = int(getattr(memory, 'temp_size_in_bytes', 0) or 0)

  outputs, warmup_times, step_times = [], [], []
  for times, count in ((warmup_times, warmup), (step_times, steps)):
    for _ in range(count):
      start = time.perf_counter()
      state, metrics, finite = compiled(state, batch)
      jax.block_until_ready((state, metrics, finite))
      times.append(time.perf_counter() - start)
      outputs.append((metrics['loss'], finite))
  losses = [float(loss) for loss, _ in outputs]
  finite_all = all(bool(finite) for _, finite in outputs)

  step_s = statistics.median(step_times)
  device = jax.devices()[0]
  dtype_name = jnp.dtype(compute_dtype).name
  peak = peak_tflops or device_peak_tflops(device.device_kind, dtype_name)
  achieved = flops / step_s
  device_stats = device.memory_stats() or {}
  return {
    'task': config.task,
    'dataset': dataset,
    'batch_size': config.batch_size,
    'grad_accum_steps': accum,
    'compute_dtype': dtype_name,
    'input_shapes': {k: [list(v.shape), v.dtype.name] for k, v in local_batch.items()},
    'label_counts': label_counts(task),
    'device': f'{device.platform} ({device.device_kind})',
    'num_devices': jax.device_count(),
    'cpus': len(os.sched_getaffinity(0)),
    'load_average_before': [round(x, 2) for x in load_before],
    'load_average_after': [round(x, 2) for x in os.getloadavg()],
    'params': num_params,
    'init_s': init_s,
    'lower_s': lower_s,
    'compile_s': compile_s,
    'warmup_step_s': warmup_times,
    'step_times_s': step_times,
    'step_s': step_s,
    'examples_per_s': config.batch_size / step_s,
    'peak_rss_bytes': _peak_rss_bytes(),
    'xla_temp_bytes': temp_bytes,
    'device_peak_bytes': device_stats.get('peak_bytes_in_use'),
    'flops_per_step': flops,
    'flops_loops': loops,
    'achieved_tflops': achieved / 1e12,
    'peak_tflops': peak or None,
    'utilisation': achieved / (peak * 1e12) if peak else None,
    'losses': losses,
    'finite': finite_all,
  }


def format_lines(result: dict[str, Any], config_name: str) -> list[str]:
  """The readable report: one `name  value` line per measurement."""
  r = result
  shapes = '; '.join(f'{k} {tuple(s)} {d}' for k, (s, d) in r['input_shapes'].items())
  loops = collections.Counter(r['flops_loops'])
  flops_note = (
    ' (a lower bound: loop bodies counted once: '
    + ', '.join(f'{count} x {loop}' for loop, count in loops.items())
    + ')'
    if loops
    else ''
  )
  if r['utilisation'] is not None:
    utilisation = (
      f'{100 * r["utilisation"]:.1f}% of {r["peak_tflops"]:g} TFLOP/s {r["compute_dtype"]} peak'
    )
  else:
    utilisation = 'n/a (no peak known for this device: --peak_tflops)'
  device_peak = (
    f'; device peak {r["device_peak_bytes"] / GB:.2f} GB' if r['device_peak_bytes'] else ''
  )
  rows = [
    ('config', f'{config_name} (task {r["task"]}, dataset {r["dataset"]})'),
    (
      'device',
      f'{r["device"]} x{r["num_devices"]}, {r["cpus"]} CPUs; load average '
      f'{" ".join(map(str, r["load_average_before"]))} before, '
      f'{" ".join(map(str, r["load_average_after"]))} after',
    ),
    (
      'batch',
      f'{r["batch_size"]} (grad_accum_steps {r["grad_accum_steps"]}), compute '
      f'{r["compute_dtype"]}; classes {r["label_counts"]}',
    ),
    ('input', shapes),
    ('parameters', f'{r["params"] / 1e6:.2f} M'),
    ('init', f'{r["init_s"]:.1f} s'),
    (
      'compile',
      f'{r["lower_s"] + r["compile_s"]:.1f} s (lower {r["lower_s"]:.1f} s, XLA '
      f'{r["compile_s"]:.1f} s)',
    ),
    ('warm-up step', ', '.join(f'{t:.3f} s' for t in r['warmup_step_s']) or 'none'),
    (
      'step',
      f'{r["step_s"]:.3f} s/step (median of {len(r["step_times_s"])}: '
      f'{", ".join(f"{t:.3f}" for t in r["step_times_s"])})',
    ),
    ('throughput', f'{r["examples_per_s"]:.2f} examples/s'),
    (
      'memory',
      f'peak RSS {r["peak_rss_bytes"] / GB:.2f} GB; XLA temp buffers '
      f'{r["xla_temp_bytes"] / GB:.2f} GB{device_peak}',
    ),
    ('flops', f'{r["flops_per_step"] / 1e12:.4f} TFLOP/step{flops_note}'),
    ('achieved', f'{r["achieved_tflops"]:.4f} TFLOP/s'),
    ('utilisation', utilisation),
    (
      'loss',
      f'{", ".join(f"{x:.4f}" for x in r["losses"])}{"" if r["finite"] else " (NOT FINITE)"}',
    ),
  ]
  return [f'{name:<14}{value}' for name, value in rows]


def define_flags() -> None:
  """The command line (defined only when run as a script, so that tests can import
  this module beside other modules' absl flags)."""
  config_flags.DEFINE_config_file('config', None, 'Stage config file[:variant].', lock_config=True)
  flags.DEFINE_integer('batch_size', 0, "Global batch size (0: the config's).")
  flags.DEFINE_integer('steps', 3, 'Timed steps.')
  flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
  flags.DEFINE_bool('bf16', None, "bf16 compute (default: the config's bf16).")
  flags.DEFINE_float('peak_tflops', 0.0, 'Device peak TFLOP/s (0: PEAK_TFLOPS by device kind).')
  flags.DEFINE_integer('num_states', 74, 'Part states when config.data.root is empty.')
  flags.DEFINE_integer('num_actions', 24, 'Actions (classes) when config.data.root is empty.')
  flags.DEFINE_bool(
    'check_memory',
    True,
    'On CPU, refuse a step that needs more '
    'memory than is available (instead of meeting the OOM killer).',
  )
  flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  args = flags.FLAGS
  config = args.config
  if args.batch_size:
    config.batch_size = args.batch_size
  if args.bf16 is not None:
    config.bf16 = args.bf16
  config_name = config_flags.get_config_filename(args['config'])
  try:
    result = benchmark(
      config,
      steps=args.steps,
      warmup=args.warmup,
      peak_tflops=args.peak_tflops,
      num_states=args.num_states,
      num_actions=args.num_actions,
      check_memory=args.check_memory,
    )
  except (ValueError, FileNotFoundError, MemoryError) as e:
    sys.exit(f'error: {e}')
  result['config'] = config_name
  result['argv'] = sys.argv[1:]
  print('\n'.join(format_lines(result, config_name)), flush=True)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
