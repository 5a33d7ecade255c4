"""End-to-end parsing speed: the one jitted `parse_frames` against the same four networks
run stage by stage with host round-trips in between, in one run.

  python bench/bench_pipeline.py [--sizes tiny,full] [--frame_batch 8] [--max_humans 10]
      [--proposals_per_part 1] [--repeats 3] [--warmup 1] [--bf16] [--views flip_scales]

Sizes: `tiny` (the :tiny configs of the four stages, 160x120 frames) and `full` (the
report's networks: Cascade R-CNN R-50 FPN humans on an 800x1344 canvas, Cascade R-CNN
Swin-L parts on 768x512 crops, the Swin-L part-state network on 224 crops; 1280x720
frames). The networks are untrained (random variables, `export.write_random_export`)
and every detection is let through (score thresholds 0), so each frame carries the
full load of `max_humans` people and ten parts each.

Both sides get the same frames (already decoded and on the human detector's canvas):
- fused: `Pipeline.compile()` -- one XLA program per frame batch (crops resized on
  device, no host round-trip inside);
- staged: the human detector, the part detector and the part-state network as three
  jitted calls, the outputs fetched to the host after each, the humans' crops cut and
  resized on the host with PIL as the training pipelines do (tps_jax/data/augment.py),
  the boxes mapped on the host.
- with `--views` (test-time views: `flip` mirrors the frame, the crops and the
  part-state input; `flip_scales` also runs both detectors at 0.8, 1 and 1.2 x their
  input size): fused is the one program with the views, `stages` the same program cut
  into its three stages (`pipeline.compile_stages`: each jitted alone, the outputs
  fetched to the host between them), and the host-glued staged line is left out (it
  has no views).
Reported: compile seconds, seconds per batch (median, interleaved), frames/s and the
fused/staged ratio (> 1: fused faster), and the peak RSS of the process (and the
device's peak memory where the backend keeps it).
"""

import os
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import action, human_detector, part_detector, part_state  # pylint: disable=wrong-import-position
from tps_jax import cli  # pylint: disable=wrong-import-position
from tps_jax.data import augment  # pylint: disable=wrong-import-position
from tps_jax.data import kinetics_tps as tps  # pylint: disable=wrong-import-position
from tps_jax.inference import bundle as bundle_lib  # pylint: disable=wrong-import-position
from tps_jax.inference import export as export_lib  # pylint: disable=wrong-import-position
from tps_jax.inference import geometry  # pylint: disable=wrong-import-position
from tps_jax.inference import pipeline as pipeline_lib  # pylint: disable=wrong-import-position
from tps_jax.inference.pipeline_options import PipelineOptions  # pylint: disable=wrong-import-position

STATES = tuple(f'state_{i}' for i in range(74))  # Kinetics-TPS: 74 states, 24 actions
ACTIONS = tuple(f'action_{i}' for i in range(24))
SIZES = {
  'tiny': {
    'frame': (120, 160),
    'configs': {
      'human_detector': lambda: human_detector.get_config('tiny'),
      'part_detector': lambda: part_detector.get_config('tiny'),
      'part_state': lambda: part_state.get_config('tiny'),
      'action': lambda: action.get_config('tiny'),
    },
  },
  'full': {
    'frame': (720, 1280),
    'configs': {
      'human_detector': human_detector.get_config,
      'part_detector': part_detector.get_config,
      'part_state': part_state.get_config,
      'action': lambda: action.get_config('tiny'),
    },
  },  # not timed here
}


FLIPS = {'human_flip': True, 'part_flip': True, 'part_state_flip': True}
VIEWS = {
  'none': {},
  'flip': FLIPS,
  'flip_scales': {**FLIPS, 'human_scales': (0.8, 1.0, 1.2), 'part_scales': (0.8, 1.0, 1.2)},
}


def make_pipeline(size: str, args, folder: str) -> pipeline_lib.Pipeline:
  exports = {}
  for i, (kind, make_config) in enumerate(SIZES[size]['configs'].items()):
    config = make_config()
    metadata = export_lib.metadata_for(kind, config, states=STATES, actions=ACTIONS)
    exports[kind] = export_lib.write_random_export(
      os.path.join(folder, kind), config, metadata, seed=i
    )
  settings = PipelineOptions(
    **VIEWS[args.views],
    max_humans=args.max_humans,
    proposals_per_part=args.proposals_per_part,
    human_score_threshold=0.0,
    part_score_threshold=0.0,
    frame_batch=args.frame_batch,
  )
  path = bundle_lib.write_bundle(
    os.path.join(folder, 'bundle'),
    humans=exports['human_detector'],
    parts=exports['part_detector'],
    states=exports['part_state'],
    actions=[exports['action']],
    options=settings,
  )
  return bundle_lib.load_bundle(path, dtype=jnp.bfloat16 if args.bf16 else jnp.float32)


def frames_on_canvas(pipeline, frame_hw, batch: int, seed: int = 0):
  """(canvases uint8, frame sizes, the frames) of smooth random frames."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 255, (batch, 12, 16, 3), np.uint8)
  frames = [np.asarray(augment.resample(s, (0, 0, 16, 12), frame_hw)) for s in small]
  prepared = [pipeline_lib.prepare_frame(f, pipeline.canvas) for f in frames]
  return (np.stack([c for c, _ in prepared]), np.array([s for _, s in prepared], np.int32), frames)


def staged(pipeline: pipeline_lib.Pipeline):
  """The three per-frame networks as separate jitted calls, host glue in between."""
  nets, settings = pipeline.nets, pipeline.options
  variables = jax.device_put(pipeline.variables)
  humans = jax.jit(lambda v, x, s: nets.humans.apply(v, x, s, train=False))
  parts = jax.jit(lambda v, x, s: nets.parts.apply(v, x, s, train=False))
  states = jax.jit(lambda v, x, b, m, a: nets.states.apply(v, x, b, m, a, train=False))
  part_size, state_size = nets.part_size, nets.state_size
  resize, context = nets.state_resize, nets.part_context

  def run(canvases, sizes, frames, actions):
    content = np.asarray(geometry.fit_content(sizes, pipeline.canvas))
    det = jax.device_get(humans(variables['humans'], augment.normalize(canvases), content))
    part_inputs, part_shapes, state_inputs, owners = [], [], [], []
    part_scales, state_maps = [], []
    for b, frame in enumerate(frames):  # host: the humans' crops, as in training
      order = np.argsort(-np.where(det['valid'][b], det['scores'][b], -1))
      scale = content[b] / sizes[b]
      for d in order[: settings.max_humans]:
        edges = det['boxes'][b, d] / np.concatenate([scale[::-1], scale[::-1]])
        box = edges - [0, 0, 1, 1]
        region = augment.context_region(box, frame.shape[1], frame.shape[0], context)
        crop, _, _ = augment.crop(frame, np.zeros((0, 4)), region)
        image, _, _ = augment.resize_pad(crop, np.zeros((0, 4)), part_size)
        part_inputs.append(image)
        part_shapes.append(np.round(_fit_scale(crop, part_size) * crop.shape[1::-1])[::-1])
        k = np.array([resize / crop.shape[1], resize / crop.shape[0]])  # (x, y)
        off = (resize - np.array(state_size[::-1])) / 2
        window = (*(off / k), *((off + state_size[::-1]) / k))
        squeezed = augment.resample(crop, window, state_size)
        part_scales.append(_fit_scale(crop, part_size))
        state_maps.append((k, off))
        state_inputs.append(squeezed)
        owners.append(b)
    num = len(part_inputs)
    det_parts = jax.device_get(
      parts(
        variables['parts'],
        augment.normalize(np.stack(part_inputs)),
        np.asarray(part_shapes, np.float32),
      )
    )
    boxes = np.zeros((num, 1, len(tps.PARTS), 4), np.float32)
    valid = np.zeros((num, 1, len(tps.PARTS)), bool)
    for n in range(num):  # host: the best proposal of each part
      for p in range(len(tps.PARTS)):
        mine = np.flatnonzero(det_parts['valid'][n] & (det_parts['labels'][n] == p))
        if mine.size:  # part input -> crop -> state window
          (k, off), scale = state_maps[n], part_scales[n]
          edges = det_parts['boxes'][n, mine[0]] / np.tile(scale, 2) * np.tile(k, 2)
          boxes[n, 0, p] = edges - np.tile(off, 2) - [0, 0, 1, 1]
          valid[n, 0, p] = True
    logits = states(
      variables['states'],
      augment.normalize(np.stack(state_inputs)),
      boxes,
      valid,
      np.asarray(actions)[owners],
    )
    return jax.device_get(logits.argmax(-1))

  return run


def _fit_scale(crop, size):
  """resize_pad's (x, y) scale of a crop into `size`."""
  height, width = crop.shape[:2]
  scale = min(size[0] / height, size[1] / width)
  return np.array(
    [
      min(size[1], max(1, round(width * scale))) / width,
      min(size[0], max(1, round(height * scale))) / height,
    ]
  )


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench(size: str, args) -> None:
  with tempfile.TemporaryDirectory() as folder:
    pipeline = make_pipeline(size, args, folder)
    canvases, sizes, frames = frames_on_canvas(pipeline, SIZES[size]['frame'], args.frame_batch)
    actions = np.zeros(args.frame_batch, np.int32)
    fused_fn = pipeline.compile()
    if args.views != 'none':  # the host-glued stages have no views: the fused program cut
      stages_fn = pipeline_lib.compile_stages(pipeline)
      staged_fn = lambda canvases, sizes, frames, actions: stages_fn(canvases, sizes, actions)
    else:
      staged_fn = staged(pipeline)
    start = time.perf_counter()
    jax.block_until_ready(fused_fn(canvases, sizes, actions))
    fused_compile = time.perf_counter() - start
    start = time.perf_counter()
    staged_fn(canvases, sizes, frames, actions)
    staged_compile = time.perf_counter() - start
    fused_s, staged_s = interleaved_medians(
      [
        lambda: jax.block_until_ready(fused_fn(canvases, sizes, actions)),
        lambda: staged_fn(canvases, sizes, frames, actions),
      ],
      repeats=args.repeats,
      warmup=args.warmup,
    )
    batch = args.frame_batch
    print(
      f'{size}: {batch} frames/batch, {args.max_humans} humans x 10 parts x '
      f'{args.proposals_per_part} proposal(s), views {args.views}, {jax.devices()[0].platform}, '
      f'{"bf16" if args.bf16 else "fp32"}'
    )
    print(
      f'  fused  : compile {fused_compile:6.1f} s  {fused_s:8.3f} s/batch  '
      f'{batch / fused_s:8.2f} frames/s'
    )
    print(
      f'  {"stages" if args.views != "none" else "staged"} : first call {staged_compile:6.1f} s  {staged_s:8.3f} s/batch  '
      f'{batch / staged_s:8.2f} frames/s'
    )
    print(
      f'  fused / staged speed: {staged_s / fused_s:.2f}x; peak RSS {peak_rss_gb():.1f} GB'
      + (
        f'; device peak {stats["peak_bytes_in_use"] / 2**30:.1f} GB'
        if (stats := (jax.devices()[0].memory_stats() or {})).get('peak_bytes_in_use')
        else ''
      ),
      flush=True,
    )


flags.DEFINE_list('sizes', ['tiny'], f'Network sizes to time, from {", ".join(SIZES)}.')
flags.register_validator(
  'sizes', lambda sizes: set(sizes) <= set(SIZES), f'each size must be one of {", ".join(SIZES)}'
)
flags.DEFINE_integer('frame_batch', 8, 'Frames per call.')
flags.DEFINE_integer('max_humans', 10, 'PipelineOptions.max_humans.')
flags.DEFINE_integer('proposals_per_part', 1, 'PipelineOptions.proposals_per_part.')
flags.DEFINE_integer('repeats', 3, 'Timed calls.')
flags.DEFINE_integer('warmup', 1, 'Untimed calls first.')
flags.DEFINE_bool('bf16', False, 'bf16 compute.')
flags.DEFINE_enum('views', 'none', list(VIEWS), 'Test-time views of the per-frame networks.')


def main(argv):
  del argv
  for size in flags.FLAGS.sizes:
    bench(size, flags.FLAGS)


if __name__ == '__main__':
  cli.run(main)
