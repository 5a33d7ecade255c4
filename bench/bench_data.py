"""Input pipeline throughput: examples/s of each dataset's train pipeline (augmentation on).

  python bench/bench_data.py [--data_root DIR] [--videos 24] [--sizes full|tiny]
      [--batch_size 8] [--batches 20] [--worker_count 0,2] [--read_threads 2]

Without --data_root it writes a synthetic dataset (tps_jax.datasets.synthetic, `--videos`
videos of 160x120 frames) and its four TFDS datasets (tps_jax.datasets.build) to a
temporary folder, timing the build. Each pipeline is measured after two warm-up
batches, with and without grain worker processes (`data.worker_count`).

Each pipeline reads the `data` of the stage config that trains on it (full or `:tiny`),
with `SIZES` in place of its sizes. `--sizes full`: the full configs' outputs (detectors
800x1344 with rotation and crop, part states 224 from 256, clips 32x224x224 with stride
2); `tiny`: the CPU configs' (128x160, 64 from 72, 8x64x64).
"""

import os
import tempfile
import time

from absl import flags

from configs import action, human_detector, part_detector, part_state
from tps_jax import cli
from tps_jax.datasets import build, synthetic
from tps_jax.input import pipelines

# The stage config whose `data` each dataset's pipeline is measured with.
STAGE_CONFIGS = {
  'humans': human_detector,
  'parts': part_detector,
  'part_states': part_state,
  'action_clips': action,
}

SIZES = {
  'full': {
    'humans': {
      'image_size': (800, 1344),
      'max_boxes': 32,
      'random_rotation': 10.0,
      'random_crop': True,
    },
    'parts': {
      'image_size': (512, 384),
      'max_boxes': 16,
      'random_rotation': 10.0,
      'random_crop': True,
    },
    'part_states': {'image_size': 224, 'resize': 256},
    'action_clips': {'num_frames': 32, 'frame_stride': 2, 'image_size': 224},
  },
  'tiny': {
    'humans': {
      'image_size': (128, 160),
      'max_boxes': 8,
      'random_rotation': 10.0,
      'random_crop': True,
    },
    'parts': {
      'image_size': (128, 96),
      'max_boxes': 16,
      'random_rotation': 10.0,
      'random_crop': True,
    },
    'part_states': {'image_size': 64, 'resize': 72},
    'action_clips': {'num_frames': 8, 'frame_stride': 2, 'image_size': 64},
  },
}


def examples_per_second(
  root, dataset, data, *, variant, batch_size, batches, workers, read_threads
):
  config = STAGE_CONFIGS[dataset].get_config(variant)
  config.data.update(
    root=root, tfds_dir='', worker_count=workers, read_threads=read_threads, **data
  )
  iterator = pipelines.make_pipeline(
    dataset, config, 'train', train=True, seed=0, batch_size=batch_size
  )
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  if workers:
    iterator.close()
  return batches * batch_size / elapsed


flags.DEFINE_string(
  'data_root', None, 'A dataset root with tfds/ built (default: a synthetic one).'
)
flags.DEFINE_integer('videos', 24, 'Videos of the synthetic dataset.')
flags.DEFINE_enum('sizes', 'full', sorted(SIZES), "The configs' output sizes.")
flags.DEFINE_integer('batch_size', 8, 'Examples per batch.')
flags.DEFINE_integer('batches', 20, 'Timed batches.')
flags.DEFINE_list('worker_count', ['0', '2'], 'Grain worker process counts to time.')
flags.DEFINE_integer('read_threads', 2, 'Grain read threads.')


def main(argv):
  del argv
  args = flags.FLAGS
  with tempfile.TemporaryDirectory(prefix='bench_data_') as tmp:
    root = args.data_root
    if root is None:
      root = os.path.join(tmp, 'synthetic')
      start = time.perf_counter()
      synthetic.write_synthetic(
        root, videos=args.videos, frames=32, seed=0, size=(160, 120), actions=6, progress=False
      )
      made = time.perf_counter() - start
      start = time.perf_counter()
      build.build_datasets(root, progress=False, say=lambda line: None)
      print(
        f'synthetic dataset ({args.videos} videos): {made:.1f} s; '
        f'the four TFDS datasets: {time.perf_counter() - start:.1f} s'
      )
    workers = [int(w) for w in args.worker_count]
    print(
      f'train pipelines, sizes={args.sizes}, batch {args.batch_size}, '
      f'{args.batches} batches, read_threads={args.read_threads}, '
      f'{os.cpu_count()} CPU cores'
    )
    print(
      f'{"dataset":<14}' + ''.join(f'{f"workers={w}":>14}' for w in workers) + '   (examples/s)'
    )
    variant = 'tiny' if args.sizes == 'tiny' else None
    for dataset, data in SIZES[args.sizes].items():
      rates = [
        examples_per_second(
          root,
          dataset,
          data,
          variant=variant,
          batch_size=args.batch_size,
          batches=args.batches,
          workers=w,
          read_threads=args.read_threads,
        )
        for w in workers
      ]
      print(f'{dataset:<14}' + ''.join(f'{r:>14.1f}' for r in rates))


if __name__ == '__main__':
  cli.run(main)
