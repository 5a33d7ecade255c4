"""One-stage detector inference speed: jitted JAX RetinaNet (and GFL) against torchvision.

  python bench/bench_one_stage.py [--size 512] [--batch 1] [--repeats 5] [--warmup 2]

One run, same machine, same thread count (torch gets as many threads as XLA's CPU pool:
the CPUs this process may run on), same input: scikit-image's astronaut resized to
`--size` x `--size`, normalised. Detectors, all on a ResNet-50 FPN (P3-P7):
- torchvision's retinanet_resnet50_fpn (random-initialised, eval, no_grad), its
  transform set to keep the size (no resize, no padding beyond the multiple of 32);
- the same weights imported into tps_jax (`retinanet_resnet50_fpn`), jitted: the ratio;
- a tps_jax GFL R-50 (mmdetection's settings) with random weights, jitted, for scale
  (no torchvision counterpart).
A random-initialised head scores every (anchor, class) ~0.01, under the 0.05 threshold,
which would leave the post-processing idle; as in tests/test_retinanet_gfl.py the head
convs are re-drawn He-normal with a class bias that lets a few hundred candidates
through, so both sides do their top-k, decoding and NMS. Each figure is the median of
`--repeats` timed calls after `--warmup` calls (compilation excluded); JAX and torch
calls alternate so that both see the same load.
"""
import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from skimage import data as skimage_data
from skimage.transform import resize

import tps_jax.convert.one_stage  # noqa: F401  (registers the one-stage converters)
from tps_jax.convert import convert_state_dict
from tps_jax.models.gfl import build_gfl

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CLASS_BIAS = -6.2


def photograph(size: int, batch: int) -> np.ndarray:
  image = resize(skimage_data.astronaut(), (size, size), anti_aliasing=True)
  return np.repeat(((image.astype(np.float32) - MEAN) / STD)[None], batch, axis=0)


def busy_head(model: torch.nn.Module) -> torch.nn.Module:
  """He-normal head convs and a class bias that passes a few hundred candidates."""
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in model.head.modules():
      if isinstance(module, torch.nn.Conv2d):
        module.weight.normal_(0.0, math.sqrt(2.0 / module.weight[0].numel()),
                              generator=generator)
        module.bias.zero_()
    model.head.classification_head.cls_logits.bias.fill_(CLASS_BIAS)
  return model


def random_gfl(size: int):
  """A GFL R-50 (80 classes) with He-normal kernels and a class bias as `busy_head`'s."""
  model = build_gfl("resnet50", 80)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, size, size, 3)), train=False))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    names = [k.key for k in path]
    if names[-1] == "kernel":
      fan_in = math.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
    if names[-1] in ("scale", "var") or names[-1].startswith("scale_"):
      return np.ones(leaf.shape, np.float32)
    if names[-2:] == ["cls_logits", "bias"]:
      return np.full(leaf.shape, CLASS_BIAS, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return model, jax.tree_util.tree_map_with_path(fill, abstract)


def alternating_medians(fns, repeats: int, warmup: int) -> list[float]:
  """Median seconds per call of each function, calls interleaved."""
  for fn in fns:
    for _ in range(warmup):
      fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, record in zip(fns, times):
      start = time.perf_counter()
      fn()
      record.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=512, help="image side (multiple of 32)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  if args.size % 32:
    parser.error("--size must be a multiple of 32 (no padding on either side)")

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {threads} threads each", flush=True)

  torch.manual_seed(0)
  reference = busy_head(torchvision.models.detection.retinanet_resnet50_fpn(
      weights=None, weights_backbone=None).eval())
  reference.transform.min_size, reference.transform.max_size = (args.size,), args.size
  reference.transform.image_mean, reference.transform.image_std = [0.0] * 3, [1.0] * 3
  conversion = convert_state_dict({k: v.numpy() for k, v in reference.state_dict().items()},
                                  "retinanet_resnet50_fpn")
  detectors = [(conversion.model, conversion.variables()), random_gfl(args.size)]

  x = photograph(args.size, args.batch)
  x_jax = jnp.asarray(x)
  x_torch = list(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  calls, counts = [], []
  for model, variables in detectors:
    detect = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))
    variables = jax.device_put(variables)
    start = time.perf_counter()
    out = jax.block_until_ready(detect(variables, x_jax))
    print(f"compiled JAX {type(model).__name__} in {time.perf_counter() - start:.1f} s",
          flush=True)
    counts.append(int(out["valid"].sum()))
    calls.append(lambda d=detect, v=variables: jax.block_until_ready(d(v, x_jax)))

  def torch_detect():
    with torch.no_grad():
      return reference(x_torch)
  counts.append(sum(len(d["scores"]) for d in torch_detect()))
  calls.append(torch_detect)

  seconds = alternating_medians(calls, args.repeats, args.warmup)
  rate = [args.batch / s for s in seconds]
  shape = f"{args.batch}x3x{args.size}x{args.size}"
  print(f"\n{'detector':38} {'input':14} {'images/s':>9} {'vs torch':>9} {'dets':>5}")
  names = ["JAX RetinaNet R-50 FPN", "JAX GFL R-50 FPN", "torchvision retinanet_resnet50_fpn"]
  for name, r, count in zip(names, rate, counts):
    print(f"{name:38} {shape:14} {r:9.3f} {r / rate[-1]:8.2f}x {count:5d}")


if __name__ == "__main__":
  main()
