"""Time tps_jax.ops roi_align and nms against torchvision.ops on CPU, same thread count.

  python bench/bench_ops.py [--threads 1] [--repeats 7]

roi_align: N=2 images, C=256, a 50x68 map (stride 16 of 800x1088), K=512 RoIs per
image, 7x7, sampling 2 and adaptive (0); forward, and forward + feature gradient;
plus the 4-level FPN pooler (P2-P5 of 800x1088, torchvision's level mapping,
aligned=False) against MultiScaleRoIAlign.
nms: 1000 and 5000 boxes, uniform (most survive) and clustered (RPN-like: most
suppressed), IoU 0.7, max_outputs = N so that both sides do the full work.
Times are the median of `--repeats` runs after a warm-up (the JAX compile time is
printed separately). ratio = torchvision time / JAX time (> 1: JAX is faster).
"""

import os
import sys
import time

from absl import flags

from tps_jax import cli

flags.DEFINE_integer('threads', 1, "Threads of XLA's and torch's intra-op pools.")
flags.DEFINE_integer('repeats', 7, 'Timed calls.')
# Parsed before jax is imported: XLA reads its thread pool size from the environment.
cli.parse_flags(sys.argv)
ARGS = flags.FLAGS
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
  f'{str(ARGS.threads > 1).lower()} intra_op_parallelism_threads='
  f'{ARGS.threads}'
)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402

from tps_jax import ops  # noqa: E402

torch.set_num_threads(ARGS.threads)


def median_time(fn, repeats):
  return common.interleaved_medians([fn], repeats, warmup=0)[0]


def compare(name, torch_fn, jax_fns):
  """jax_fns: {label: (jitted fn, args)}; prints ms and ratios."""
  torch_fn()
  t_ref = median_time(torch_fn, ARGS.repeats)
  line = f'{name:<44} torchvision {t_ref * 1e3:8.2f} ms'
  for label, (fn, args) in jax_fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    t = median_time(lambda: jax.block_until_ready(fn(*args)), ARGS.repeats)
    line += f' | {label} {t * 1e3:8.2f} ms (x{t_ref / t:5.2f}, compile {compile_s:4.1f}s)'
  print(line, flush=True)


def random_rois(rng, num_images, num_rois, image_hw, min_side=8.0, max_side=400.0):
  sides = np.exp(rng.uniform(np.log(min_side), np.log(max_side), (num_images, num_rois, 2)))
  centres = rng.uniform(0, 1, (num_images, num_rois, 2)) * np.array(image_hw[::-1])
  return np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)


def bench_roi_align(rng):
  n, c, k = 2, 256, 512
  image = (800, 1088)
  features = rng.normal(size=(n, 50, 68, c)).astype(np.float32)
  boxes = random_rois(rng, n, k, image)
  t_features = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous()
  t_boxes = [torch.from_numpy(b) for b in boxes]
  j_features, j_boxes = jnp.asarray(features), jnp.asarray(boxes)
  for sampling in (2, 0):

    def torch_fn():
      return torchvision.ops.roi_align(t_features, t_boxes, 7, 1 / 16, sampling, True)

    jax_fns = {
      impl: (
        jax.jit(
          lambda f, b, impl=impl, s=sampling: ops.roi_align(f, b, 7, 1 / 16, s, True, impl=impl)
        ),
        (j_features, j_boxes),
      )
      for impl in ('gather', 'einsum')
    }
    compare(f'roi_align 2x50x68x256, 2x512 RoIs, s={sampling}', torch_fn, jax_fns)

  cotangent = rng.normal(size=(n, k, 7, 7, c)).astype(np.float32)
  t_cot = torch.from_numpy(cotangent.reshape(n * k, 7, 7, c)).permute(0, 3, 1, 2).contiguous()
  t_leaf = t_features.clone().requires_grad_()

  def torch_grad():
    t_leaf.grad = None
    (torchvision.ops.roi_align(t_leaf, t_boxes, 7, 1 / 16, 2, True) * t_cot).sum().backward()
    return t_leaf.grad

  # value_and_grad: the forward pass is needed too (jax.grad alone would skip it, the
  # gradient of this linear map not depending on the pooled values).
  j_cot = jnp.asarray(cotangent)
  jax_fns = {
    impl: (
      jax.jit(
        jax.value_and_grad(
          lambda f, b, g, impl=impl: jnp.vdot(ops.roi_align(f, b, 7, 1 / 16, 2, True, impl=impl), g)
        )
      ),
      (j_features, j_boxes, j_cot),
    )
    for impl in ('gather', 'einsum')
  }
  compare('roi_align forward + feature gradient, s=2', torch_grad, jax_fns)

  # FPN pooler: P2-P5 of an 800x1088 image, torchvision's level mapping.
  shapes = [(200, 272), (100, 136), (50, 68), (25, 34)]
  maps = [rng.normal(size=(n,) + s + (c,)).astype(np.float32) for s in shapes]
  pooler = MultiScaleRoIAlign(['p2', 'p3', 'p4', 'p5'], 7, 2)
  t_maps = {
    f'p{i + 2}': torch.from_numpy(m).permute(0, 3, 1, 2).contiguous() for i, m in enumerate(maps)
  }

  def torch_fpn():
    return pooler(t_maps, t_boxes, [image] * n)

  def fpn(maps, b, impl):
    levels = ops.map_roi_levels(b, 4, rule='torchvision')
    return ops.multilevel_roi_align(
      maps, b, levels, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, False, impl=impl
    )

  # Only 'gather': the dense 'einsum' form multiplies by the whole 200x272 P2 map per
  # RoI (~0.1 TFLOP here), an accelerator-only trade.
  j_maps = [jnp.asarray(m) for m in maps]
  jax_fns = {'gather': (jax.jit(lambda m, b: fpn(m, b, 'gather')), (j_maps, j_boxes))}
  compare('multilevel roi_align P2-P5, 2x512 RoIs', torch_fpn, jax_fns)


def nms_inputs(rng, num, clustered):
  if clustered:
    objects = 50
    centre = rng.uniform(0, 1000, (objects, 2))
    size = rng.uniform(30, 300, (objects, 2))
    which = rng.integers(0, objects, num)
    ctr = centre[which] + rng.normal(size=(num, 2)) * size[which] * 0.1
    wh = size[which] * np.exp(rng.normal(size=(num, 2)) * 0.1)
  else:
    ctr = rng.uniform(0, 1000, (num, 2))
    wh = rng.uniform(10, 200, (num, 2))
  boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)
  return boxes, rng.random(num).astype(np.float32)


def bench_nms(rng):
  for num in (1000, 5000):
    for clustered in (False, True):
      boxes, scores = nms_inputs(rng, num, clustered)
      t_boxes, t_scores = torch.from_numpy(boxes), torch.from_numpy(scores)
      kept = len(torchvision.ops.nms(t_boxes, t_scores, 0.7))
      jax_fns = {
        method: (
          jax.jit(lambda b, s, method=method: ops.nms(b, s, 0.7, num, method=method)),
          (jnp.asarray(boxes), jnp.asarray(scores)),
        )
        for method in ('greedy', 'tiled')
      }
      layout = 'clustered' if clustered else 'uniform'
      compare(
        f'nms {num} boxes {layout} ({kept} kept)',
        lambda: torchvision.ops.nms(t_boxes, t_scores, 0.7),
        jax_fns,
      )


def main(argv):
  del argv
  print(
    f'threads={ARGS.threads} jax {jax.__version__} ({jax.default_backend()}) '
    f'torch {torch.__version__} torchvision {torchvision.__version__}'
  )
  rng = np.random.default_rng(0)
  bench_roi_align(rng)
  bench_nms(rng)


if __name__ == '__main__':
  cli.run(main)
