"""What the side-by-side benchmarks share: interleaved timing, torch's thread count, and
the detector inference comparison and its flags (bench_detector.py, bench_one_stage.py).

The benchmarks run as `python bench/<name>.py`, so this module is imported by its
plain name (the script's folder is on sys.path).
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import flags

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def interleaved_medians(fns, repeats: int, warmup: int, clock=time.perf_counter) -> list[float]:
  """Median seconds per call of each of `fns`, timed in turns so that they share the
  machine's load alike (the cores may be shared); warm-up calls (and compilation)
  excluded."""
  for fn in fns:
    for _ in range(warmup):
      fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, record in zip(fns, times):
      start = clock()
      fn()
      record.append(clock() - start)
  return [statistics.median(t) for t in times]


def match_torch_threads() -> int:
  """Gives torch as many threads as XLA's CPU pool (the CPUs this process may run on)
  and prints the versions; returns the thread count."""
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  import torchvision  # pylint: disable=g-import-not-at-top

  print(
    f'jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, '
    f'torchvision {torchvision.__version__}, {threads} threads each',
    flush=True,
  )
  return threads


# ------------------------------------------------------------------- detector inference


def define_detector_flags() -> None:
  """--size (a multiple of 32), --batch_size, --repeats, --warmup (read by
  compare_detectors)."""
  flags.DEFINE_integer('size', 512, 'Image side (a multiple of 32).')
  flags.DEFINE_integer('batch_size', 1, 'Images per call.')
  flags.DEFINE_integer('repeats', 5, 'Timed calls.')
  flags.DEFINE_integer('warmup', 2, 'Untimed calls first.')
  flags.register_validator(
    'size', lambda size: size % 32 == 0, 'must be a multiple of 32 (no padding on either side)'
  )


def photograph(size: int, batch: int) -> np.ndarray:
  """(batch, size, size, 3) normalised copies of scikit-image's astronaut."""
  from skimage import data as skimage_data  # pylint: disable=g-import-not-at-top
  from skimage.transform import resize  # pylint: disable=g-import-not-at-top

  image = resize(skimage_data.astronaut(), (size, size), anti_aliasing=True)
  return np.repeat(((image.astype(np.float32) - MEAN) / STD)[None], batch, axis=0)


def keep_size(reference: torch.nn.Module, size: int) -> torch.nn.Module:
  """A torchvision detector whose transform neither resizes nor normalises `size` inputs
  (they come normalised, as the JAX side's)."""
  reference.transform.min_size, reference.transform.max_size = (size,), size
  reference.transform.image_mean, reference.transform.image_std = [0.0] * 3, [1.0] * 3
  return reference


def compare_detectors(detectors, reference, reference_name: str) -> None:
  """Times jitted JAX detectors [(name, model, variables)] against the torchvision
  `reference` (eval, no_grad) on the same photograph (define_detector_flags' sizes);
  prints images/s, the ratio to torch and the number of detections of each."""
  args = flags.FLAGS
  x = photograph(args.size, args.batch_size)
  x_jax = jnp.asarray(x)
  x_torch = list(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  calls, counts = [], []
  for name, model, variables in detectors:
    detect = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))
    variables = jax.device_put(variables)
    start = time.perf_counter()
    out = jax.block_until_ready(detect(variables, x_jax))
    print(f'compiled {name} in {time.perf_counter() - start:.1f} s', flush=True)
    counts.append(int(out['valid'].sum()))
    calls.append(lambda d=detect, v=variables: jax.block_until_ready(d(v, x_jax)))

  def torch_detect():
    with torch.no_grad():
      return reference(x_torch)

  counts.append(sum(len(d['scores']) for d in torch_detect()))
  calls.append(torch_detect)

  seconds = interleaved_medians(calls, args.repeats, args.warmup)
  rate = [args.batch_size / s for s in seconds]
  shape = f'{args.batch_size}x3x{args.size}x{args.size}'
  print(f'\n{"detector":38} {"input":14} {"images/s":>9} {"vs torch":>9} {"dets":>5}')
  names = [name for name, _, _ in detectors] + [reference_name]
  for name, r, count in zip(names, rate, counts):
    print(f'{name:38} {shape:14} {r:9.3f} {r / rate[-1]:8.2f}x {count:5d}')
