"""Detector inference speed: jitted JAX Faster R-CNN / Cascade R-CNN against torchvision.

  python bench/bench_detector.py [--size 512] [--batch 1] [--repeats 5] [--warmup 2]

One run, same machine, same thread count (torch gets as many threads as XLA's CPU
pool: the CPUs this process may run on), same input: scikit-image's astronaut resized
to `--size` x `--size`, normalised. Three detectors on a ResNet-50 FPN:
- torchvision's fasterrcnn_resnet50_fpn (random-initialised, eval, no_grad), its
  transform set to keep the size (no resize, no padding beyond the multiple of 32);
- the same weights imported into tps_jax (one cascade stage, class-specific), jitted;
- a three-stage Cascade R-CNN (class-agnostic) whose stages all start from those
  weights, jitted: the cost of the two extra stages.
Each figure is the median of `--repeats` timed calls after `--warmup` calls
(compilation excluded); JAX and torch calls alternate so that both see the same load.
"""
import argparse
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

import tps_jax.convert.detection  # noqa: F401  (registers the detector converters)
from tps_jax.convert import convert_state_dict
from tps_jax.convert.io import unflatten
from tps_jax.models.cascade_rcnn import build_cascade_rcnn

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def photograph(size: int, batch: int) -> np.ndarray:
  image = resize(skimage_data.astronaut(), (size, size), anti_aliasing=True)
  return np.repeat(((image.astype(np.float32) - MEAN) / STD)[None], batch, axis=0)


def cascade_from(conversion) -> tuple:
  """A 3-stage class-agnostic cascade whose stages copy the 1-stage head (class 0's box)."""
  base = conversion.model
  model = build_cascade_rcnn("resnet50", base.num_classes, convention="mmdet")
  params = {k: v for k, v in conversion.params.items() if not k.startswith("box_heads_")}
  for stage in range(3):
    for path, value in conversion.params.items():
      if path.startswith("box_heads_0/"):
        if path.startswith("box_heads_0/bbox_pred/"):
          value = value[..., :4]
        params[path.replace("box_heads_0", f"box_heads_{stage}")] = value
  return model, {"params": unflatten(params), **unflatten(conversion.model_state)}


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
  reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
      weights=None, weights_backbone=None).eval()
  reference.transform.min_size, reference.transform.max_size = (args.size,), args.size
  reference.transform.image_mean, reference.transform.image_std = [0.0] * 3, [1.0] * 3
  conversion = convert_state_dict({k: v.numpy() for k, v in reference.state_dict().items()},
                                  "fasterrcnn_resnet50_fpn")
  faster = conversion.model, conversion.variables()
  cascade = cascade_from(conversion)

  x = photograph(args.size, args.batch)
  x_jax = jnp.asarray(x)
  x_torch = list(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  calls, counts = [], []
  for model, variables in (faster, cascade):
    detect = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))
    variables = jax.device_put(variables)
    start = time.perf_counter()
    out = jax.block_until_ready(detect(variables, x_jax))
    print(f"compiled {model.roi.num_stages}-stage JAX detector in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
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
  names = ["JAX Faster R-CNN R-50 FPN (1 stage)", "JAX Cascade R-CNN R-50 FPN (3 stages)",
           "torchvision fasterrcnn_resnet50_fpn"]
  for name, r, count in zip(names, rate, counts):
    print(f"{name:38} {shape:14} {r:9.3f} {r / rate[-1]:8.2f}x {count:5d}")


if __name__ == "__main__":
  main()
