"""End-to-end parsing: the four trained networks composed, one jitted program per frame batch.

```
frames (B, H, W, 3) uint8 on the human detector's canvas, frame sizes (B, 2)
  └─ human detector ──► top `max_humans` humans per frame (padded + valid)
       └─ context crops resized on device (tps_jax/inference/geometry.py) ──►
            part detector on all B x M crops at once ──► per part the top-k proposals
            part-state network on the same crops, the k-th proposals of the ten parts
            as one set, with the video's action ──► one state per proposal
  ──► humans (B, M, 4) + scores + valid; parts (B, M, 10, k, 4) + scores + states +
      valid, all in frame pixels (inclusive)
```
`Pipeline.parse_frames(variables, frames, image_shape, action)` is that program: static
shapes, no host round-trip inside. The action recogniser runs per video before it
(tps_jax/inference/parse.py: its clips x crops views and the ensemble of
tps_jax/tasks/action_views.py), so the part-state network gets the *predicted* action.

Oracles (for ablations and for testing the plumbing): any subset of ORACLES replaces
that stage's output by the ground truth, given as padded arrays (`frame_truth`):
- 'humans': the ground-truth human boxes instead of the detector's;
- 'parts': each human's ground-truth parts (one proposal per part) instead of the
  part detector's, taken from the ground-truth human it overlaps most (IoU > 0.5;
  with 'humans' that is itself);
- 'states': every proposal of a part gets that part's ground-truth state (same
  matching), where the ground truth has the part;
- 'action': the video's ground-truth action (`truth['action']`) instead of the
  recogniser's (`action`) for the part-state network, and in the submission.
With all four the written submission scores the maximum, 0.9999.
`parse_frames_variants` computes several oracle sets in one program, each network once
per distinct input: the ablation table in one pass (tps_jax/inference/ablation.py).

Views and ensembles (test-time augmentation; options human_scales, part_scales,
human_flip, part_flip, part_state_flip, box_merge; tps_jax/inference/views.py): each
detector may also run at other scales of its input (each its own static shape in the
same program: the human detector on the canvas resampled, the part detector on crops
cut from the frame at that size) and on the mirrored input (in the same batch, boxes
mirrored back, the left / right part labels exchanged as training's flip exchanges
them); the views' detections merge by NMS over their union or weighted box fusion
(tps_jax/ops/box_merge.py) into the slots of one view. The part-state network may
also see the mirrored crop (boxes mirrored, parts exchanged), its logits averaged
back in the parts' order. A stage given several exports (same model, vocabularies and
preprocessing) runs them vmapped over their stacked variables: detections merged as
views, logits averaged. Views that would not fit in memory are refused before
compiling (pipeline_checks.py `check_view_memory`). With the defaults (one scale, no flip, one export)
the program is the one without views.

Sharding: `Pipeline.compile(mesh)` splits the frame batch over the mesh's `data` axis
(`shard_map`; variables replicated): each device parses its frames alone, and the
outputs equal a single device's (boxes and scores up to float reassociation).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import geometry
from tps_jax.inference import views as views_lib
from tps_jax.inference.export import Export
from tps_jax.inference.pipeline_checks import check_ensembles, check_view_memory, check_vocabularies
from tps_jax.inference.pipeline_options import PipelineOptions
from tps_jax.ops.boxes import box_iou, to_edges

PyTree = Any
ORACLES = ('humans', 'parts', 'states', 'action')
NUM_PARTS = len(tps.PARTS)


def parse_oracle(text: str | Sequence[str]) -> frozenset[str]:
  """'humans,parts' (or a list) -> a frozenset of ORACLES; unknown names raise."""
  names = [n.strip() for n in (text.split(',') if isinstance(text, str) else text)]
  names = [n for n in names if n]
  unknown = sorted(set(names) - set(ORACLES))
  if unknown:
    raise ValueError(
      f'--oracle: unknown stage(s) {", ".join(unknown)} (choose from {", ".join(ORACLES)})'
    )
  return frozenset(names)


# ---------------------------------------------------------------------- the program


@dataclasses.dataclass(frozen=True, eq=False)
class _Networks:
  """The static half of `parse_frames`: models and their preprocessing."""

  humans: Any
  parts: Any
  states: Any
  canvas: tuple[int, int]
  part_size: tuple[int, int]
  part_context: float
  state_size: tuple[int, int]
  state_resize: int
  state_context: float
  human_norm: tuple[np.ndarray, np.ndarray]
  part_norm: tuple[np.ndarray, np.ndarray]
  state_norm: tuple[np.ndarray, np.ndarray]
  # Members of each stage's ensemble (same model): variables stacked on a leading axis.
  human_members: int = 1
  part_members: int = 1
  state_members: int = 1


def _normalize(frames, norm):
  mean, std = norm
  return (frames.astype(jnp.float32) - mean) / std


def _top_humans(det, options: PipelineOptions):
  """The detector's best `max_humans` people: edge boxes (B, M, 4), scores, valid."""
  score = jnp.where(
    det['valid'] & (det['labels'] == 0) & (det['scores'] >= options.human_score_threshold),
    det['scores'],
    -1.0,
  )
  top, index = jax.lax.top_k(score, options.max_humans)
  boxes = jnp.take_along_axis(det['boxes'], index[..., None], axis=1)
  valid = top >= 0.0
  return jnp.where(valid[..., None], boxes, 0.0), jnp.maximum(top, 0.0), valid


def _top_proposals(det, options: PipelineOptions):
  """Per part the best k proposals: edge boxes (N, 10, k, 4), scores, valid."""
  parts = jnp.arange(NUM_PARTS)[None, :, None]
  ok = (
    det['valid'][:, None]
    & (det['labels'][:, None] == parts)
    & (det['scores'][:, None] >= options.part_score_threshold)
  )
  score = jnp.where(ok, det['scores'][:, None], -1.0)  # (N, 10, D)
  k = min(options.proposals_per_part, score.shape[-1])
  top, index = jax.lax.top_k(score, k)
  boxes = jnp.take_along_axis(det['boxes'][:, None], index[..., None], axis=2)
  valid = top >= 0.0
  return jnp.where(valid[..., None], boxes, 0.0), jnp.maximum(top, 0.0), valid


def _match_truth(human_edges, human_valid, truth, options: PipelineOptions):
  """(B, M) index of the ground-truth human each human overlaps most (IoU above
  `human_match_iou`), and whether there is one."""
  iou = box_iou(human_edges, to_edges(truth['human_boxes']))  # (B, M, G)
  iou = jnp.where(truth['human_valid'][:, None, :], iou, -1.0)
  best = iou.argmax(-1)
  matched = human_valid & (iou.max(-1) > options.human_match_iou)
  return best, matched


def _gather_humans(values, index):
  """values (B, G, ...) at index (B, M) -> (B, M, ...)."""
  return jax.vmap(lambda v, i: v[i])(values, index)


@dataclasses.dataclass
class _Frames:
  """One batch's inputs and canvas geometry, shared by every stage."""

  frames: jax.Array  # (B, H, W, 3) uint8
  frame_hw: jax.Array  # (B, 2) float32
  content: jax.Array  # (B, 2) the frames' content on the canvas
  canvas_scale: jax.Array  # (B, 2) frame -> canvas (y, x)

  @property
  def batch(self) -> int:
    return self.frames.shape[0]


def _merge(views, options: PipelineOptions):
  return views_lib.merge_detections(
    views, method=options.box_merge, iou_threshold=options.box_merge_iou
  )


def _humans(
  nets: _Networks, options: PipelineOptions, variables, batch: _Frames, truth, oracle: bool
):
  """(edge boxes (B, M, 4) in frame pixels, scores, valid): detected (every member of
  the ensemble on every scale and flip, merged) or the truth's."""
  if oracle:
    return (
      to_edges(truth['human_boxes']),
      truth['human_valid'].astype(jnp.float32),
      truth['human_valid'],
    )
  frames = _normalize(batch.frames, nets.human_norm)
  views = views_lib.detector_views(
    nets.humans,
    variables['humans'],
    functools.partial(views_lib.scaled_inputs, frames, batch.content),
    scales=options.human_scales,
    flip=options.human_flip,
    members=nets.human_members,
  )
  det = _merge(views, options)
  det = {**det, 'boxes': geometry.scale_boxes(det['boxes'], 1.0 / batch.canvas_scale[:, None])}
  return _top_humans(det, options)


def _truth_parts(options: PipelineOptions, humans, truth):
  """The ground-truth parts (boxes, valid, states) of the truth's human that each
  human overlaps most: (B, M, 10, ...)."""
  edges, _, valid = humans
  match, matched = _match_truth(edges, valid, truth, options)
  return (
    _gather_humans(truth['part_boxes'], match),
    _gather_humans(truth['part_valid'], match) & matched[..., None],
    _gather_humans(truth['part_states'], match),
  )


def _flat(x):
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _parts(
  nets: _Networks, options: PipelineOptions, variables, batch: _Frames, humans, truth_parts
):
  """(edge boxes (B, M, 10, k, 4) in frame pixels, scores, valid): the part
  detector's top-k per part on every human's crop (every member on every scale and
  flip, merged), or (truth_parts given) the truth's parts as the first proposal."""
  human_edges, _, human_valid = humans
  k = options.proposals_per_part
  if truth_parts is not None:
    boxes, valid, _ = truth_parts
    first = (jnp.arange(k) == 0)[None, None, None, :]
    part_valid = first & valid[..., None]
    return (
      jnp.where(part_valid[..., None], to_edges(boxes)[:, :, :, None], 0.0),
      part_valid.astype(jnp.float32),
      part_valid,
    )
  num_humans = human_edges.shape[1]
  regions = geometry.context_regions(
    human_edges - jnp.array([0.0, 0.0, 1.0, 1.0]), batch.frame_hw[:, None], nets.part_context
  )
  frames = _normalize(batch.frames, nets.part_norm)
  crops_at = lambda scale: geometry.fitted_crops(
    frames, batch.canvas_scale, regions, geometry.scaled_size(nets.part_size, scale)
  )
  crops, content, crop_scale = crops_at(1.0)

  def inputs_at(scale):  # each scale cut from the frame; boxes wanted on the scale-1 crop
    if scale == 1.0:
      return _flat(crops), _flat(content), None
    scaled, scaled_content, scaled_scale = crops_at(scale)
    return _flat(scaled), _flat(scaled_content), _flat(scaled_scale / crop_scale)

  views = views_lib.detector_views(
    nets.parts,
    variables['parts'],
    inputs_at,
    scales=options.part_scales,
    flip=options.part_flip,
    members=nets.part_members,
    mirror_labels=views_lib.PART_MIRROR,
  )
  unflat = lambda x: x.reshape((batch.batch, num_humans) + x.shape[1:])
  edges, scores, valid = map(unflat, _top_proposals(_merge(views, options), options))
  edges = geometry.crop_to_frame(edges, regions[:, :, None, None], crop_scale[:, :, None, None])
  return edges, scores, valid & human_valid[:, :, None, None]


def _states(
  nets: _Networks, options: PipelineOptions, variables, batch: _Frames, humans, parts, action
):
  """(B, M, 10, k) int32 state of every proposal: the part-state network on each
  human's crop, the k-th proposals of the ten parts as one set, with the action (every
  member of the ensemble, with the mirrored crop too when part_state_flip: logits
  averaged)."""
  human_edges = humans[0]
  part_edges, _, part_valid = parts
  num_humans = human_edges.shape[1]
  regions = geometry.context_regions(
    human_edges - jnp.array([0.0, 0.0, 1.0, 1.0]), batch.frame_hw[:, None], nets.state_context
  )
  crops, crop_scale, offset = geometry.squeezed_crops(
    _normalize(batch.frames, nets.state_norm),
    batch.canvas_scale,
    regions,
    nets.state_resize,
    nets.state_size,
  )
  sets = jnp.swapaxes(part_edges, 2, 3)  # (B, M, k, 10, 4)
  boxes, visible = geometry.boxes_into_window(
    sets, regions[:, :, None], crop_scale[:, :, None], offset, nets.state_size
  )
  set_valid = jnp.swapaxes(part_valid, 2, 3) & visible
  logits = views_lib.state_logits(
    nets.states,
    variables['states'],
    _flat(crops),
    _flat(jnp.where(set_valid[..., None], boxes, 0.0)),
    _flat(set_valid),
    jnp.repeat(jnp.asarray(action, jnp.int32), num_humans),
    flip=options.part_state_flip,
    members=nets.state_members,
  )
  states = logits.argmax(-1).reshape(set_valid.shape)
  return jnp.swapaxes(states, 2, 3).astype(jnp.int32)


def _frames(nets: _Networks, frames, image_shape) -> _Frames:
  frame_hw = jnp.asarray(image_shape, jnp.float32)
  content = geometry.fit_content(frame_hw, nets.canvas)
  return _Frames(frames, frame_hw, content, content / frame_hw)


def parse_frames_variants(
  nets: _Networks,
  options: PipelineOptions,
  variables: Mapping[str, PyTree],
  frames,
  image_shape,
  action,
  truth: Mapping[str, jax.Array] | None = None,
  *,
  variants: Sequence[frozenset[str]] = (frozenset(),),
) -> tuple[dict[str, jax.Array], ...]:
  """`parse_frames` for several oracle sets at once, each stage computed once per
  distinct input (e.g. the part detector runs on the detected and on the true humans,
  not once per variant): the ablation table in one pass. Returns one output dict per
  variant, in order."""
  batch = _frames(nets, frames, image_shape)
  cache = {}

  def once(key, make):
    if key not in cache:
      cache[key] = make()
    return cache[key]

  outputs = []
  for oracle in variants:
    h = 'humans' in oracle
    humans = once(('humans', h), lambda: _humans(nets, options, variables, batch, truth, h))
    truth_parts = None
    if oracle & {'parts', 'states'}:
      truth_parts = once(('truth_parts', h), lambda: _truth_parts(options, humans, truth))
    p = 'parts' in oracle
    parts = once(
      ('parts', h, p),
      lambda: _parts(nets, options, variables, batch, humans, truth_parts if p else None),
    )
    a = 'action' in oracle
    states = once(
      ('states', h, p, a),
      lambda: _states(
        nets, options, variables, batch, humans, parts, truth['action'] if a else action
      ),
    )
    if 'states' in oracle:
      _, true_valid, true_states = truth_parts
      known = true_valid & (true_states >= 0)
      states = jnp.where(known[..., None], true_states[..., None], states)
    outputs.append(_assemble(humans, parts, states))
  return tuple(outputs)


def _assemble(humans, parts, states) -> dict[str, jax.Array]:
  human_edges, human_scores, human_valid = humans
  part_edges, part_scores, part_valid = parts
  inclusive = jnp.array([0.0, 0.0, 1.0, 1.0])
  return {
    'human_boxes': (human_edges - inclusive) * human_valid[..., None],
    'human_scores': human_scores * human_valid,
    'human_valid': human_valid,
    'part_boxes': (part_edges - inclusive) * part_valid[..., None],
    'part_scores': part_scores * part_valid,
    'part_states': jnp.where(part_valid, states, -1),
    'part_valid': part_valid,
  }


def parse_frames(
  nets: _Networks,
  options: PipelineOptions,
  variables: Mapping[str, PyTree],
  frames,
  image_shape,
  action,
  truth: Mapping[str, jax.Array] | None = None,
  *,
  oracle: frozenset[str] = frozenset(),
) -> dict[str, jax.Array]:
  """One frame batch through the three per-frame networks (module docstring).

  Args:
    variables: {'humans', 'parts', 'states'}: each network's variables.
    frames: (B, H, W, 3) uint8 frames on the canvas (`prepare_frame`).
    image_shape: (B, 2) the frames' (height, width) before the canvas.
    action: (B,) int32 action of each frame's video (the part-state vocabulary).
    truth: `frame_truth` arrays, needed by any oracle.
  Returns:
    human_boxes (B, M, 4), human_scores (B, M), human_valid (B, M); part_boxes
    (B, M, 10, k, 4), part_scores, part_states (int32, -1 where invalid), part_valid
    (B, M, 10, k); boxes inclusive, in frame pixels.
  """
  return parse_frames_variants(
    nets, options, variables, frames, image_shape, action, truth, variants=(frozenset(oracle),)
  )[0]


# ------------------------------------------------------------------------ host side


def prepare_frame(image: np.ndarray, canvas: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
  """A decoded RGB frame -> (canvas uint8 (H, W, 3), its (height, width)): the human
  detector's training resize (`augment.resize_pad`), done by the host input stage."""
  resized, _, _ = augment.resize_pad(image, np.zeros((0, 4), np.float32), canvas)
  return resized, image.shape[:2]


def frame_truth(
  frame: Mapping | None, states: Sequence[str], max_humans: int, action: int = 0
) -> dict[str, np.ndarray]:
  """A ground-truth frame in the challenge's schema ({'humans': [...]}, or None) and
  its video's action index -> padded arrays for the oracles: human_boxes (M, 4),
  human_valid (M,), part_boxes (M, 10, 4), part_valid (M, 10), part_states (M, 10)
  (index in `states`, -1 unknown), action (). Humans past `max_humans` are left out."""
  state_ids = {name: i for i, name in enumerate(states)}
  out = {
    'action': np.int32(action),
    'human_boxes': np.zeros((max_humans, 4), np.float32),
    'human_valid': np.zeros(max_humans, bool),
    'part_boxes': np.zeros((max_humans, NUM_PARTS, 4), np.float32),
    'part_valid': np.zeros((max_humans, NUM_PARTS), bool),
    'part_states': np.full((max_humans, NUM_PARTS), -1, np.int32),
  }
  for h, human in enumerate((frame or {}).get('humans', [])[:max_humans]):
    out['human_boxes'][h] = human['box']
    out['human_valid'][h] = True
    for name, part in human.get('parts', {}).items():
      if name in tps.PARTS:
        p = tps.PARTS.index(name)
        out['part_boxes'][h, p] = part['box']
        out['part_valid'][h, p] = True
        out['part_states'][h, p] = state_ids.get(part['verb'], -1)
  return out


def frame_json(outputs: Mapping[str, np.ndarray], states: Sequence[str]) -> dict:
  """One frame's `parse_frames` outputs (numpy, no batch dim) -> the submission's
  {'humans': [...]} (inclusive boxes rounded to 0.01 pixel; parts with proposals)."""
  humans = []
  for h in np.flatnonzero(outputs['human_valid']):
    parts = {}
    for p, name in enumerate(tps.PARTS):
      keep = np.flatnonzero(outputs['part_valid'][h, p])
      if keep.size:
        parts[name] = {
          'number': len(parts) + 1,
          'name': name,
          'box': [_box(outputs['part_boxes'][h, p, j]) for j in keep],
          'verb': [states[int(outputs['part_states'][h, p, j])] for j in keep],
        }
    humans.append(
      {'number': len(humans) + 1, 'box': _box(outputs['human_boxes'][h]), 'parts': parts}
    )
  return {'humans': humans}


def _box(box) -> list[float]:
  x1, y1, x2, y2 = (round(float(v), 2) for v in box)
  return [x1, y1, max(x2, x1), max(y2, y1)]


def _ensemble(exports: Export | Sequence[Export]) -> list[Export]:
  return [exports] if isinstance(exports, Export) else list(exports)


class Pipeline:
  """The four networks of a bundle (tps_jax/inference/bundle.py) and their options.
  `humans`, `parts`, `states` and `actions` are lists: each stage's ensemble (an
  Export alone is a one-member ensemble)."""

  def __init__(
    self,
    humans: Export | Sequence[Export],
    parts: Export | Sequence[Export],
    states: Export | Sequence[Export],
    actions: Sequence[Export],
    options: PipelineOptions,
  ):
    humans, parts, states = _ensemble(humans), _ensemble(parts), _ensemble(states)
    check_ensembles(humans, parts, states)
    check_vocabularies(humans[0], parts[0], states[0], actions)
    self.humans, self.parts, self.states = humans, parts, states
    self.actions = list(actions)
    self.options = options
    norm = lambda e: tuple(
      np.asarray(e.preprocessing['normalization'][k], np.float32) for k in ('mean', 'std')
    )
    first_parts, first_states = parts[0], states[0]
    self.nets = _Networks(
      humans=humans[0].model,
      parts=first_parts.model,
      states=first_states.model,
      canvas=tuple(humans[0].preprocessing['image_size']),
      part_size=tuple(first_parts.preprocessing['image_size']),
      part_context=float(first_parts.preprocessing['context']),
      state_size=tuple(first_states.preprocessing['image_size']),
      state_resize=int(first_states.preprocessing['resize']),
      state_context=float(first_states.preprocessing['context']),
      human_norm=norm(humans[0]),
      part_norm=norm(first_parts),
      state_norm=norm(first_states),
      human_members=len(humans),
      part_members=len(parts),
      state_members=len(states),
    )
    check_view_memory(self.nets, options)
    self.state_names = tuple(first_states.vocab['states'])
    self.action_names = tuple(first_states.vocab['actions'])

  @property
  def canvas(self) -> tuple[int, int]:
    return self.nets.canvas

  @property
  def variables(self) -> dict[str, PyTree]:
    one_or_all = lambda exports: (  # an ensemble's variables stacked (views.apply_members)
      exports[0].variables
      if len(exports) == 1
      else jax.tree.map(lambda *xs: np.stack(xs), *[e.variables for e in exports])
    )
    return {
      'humans': one_or_all(self.humans),
      'parts': one_or_all(self.parts),
      'states': one_or_all(self.states),
    }

  def parse_frames(
    self,
    variables,
    frames,
    image_shape,
    action,
    truth=None,
    *,
    oracle: frozenset[str] = frozenset(),
  ):
    """`parse_frames` with this pipeline's networks and options (jittable)."""
    return parse_frames(
      self.nets,
      self.options,
      variables,
      frames,
      image_shape,
      action,
      truth,
      oracle=frozenset(oracle),
    )

  def compile(
    self, mesh: Mesh | None = None, *, variants: Sequence[frozenset[str]] = (frozenset(),)
  ):
    """A jitted `(frames, image_shape, action, truth=None) -> (outputs per variant)`
    with the variables on device (`parse_frames_variants`). Frames are split over
    `mesh`'s 'data' axis (default: all local devices) and each device parses its share
    alone (`shard_map`: frames never talk to each other), so the outputs equal a single
    device's. `truth` is needed when a variant has an oracle."""
    mesh = mesh or Mesh(np.asarray(jax.local_devices()), ('data',))
    variants = tuple(frozenset(v) for v in variants)
    needs_truth = any(variants)
    variables = jax.device_put(self.variables, NamedSharding(mesh, P()))
    split = P('data')

    def body(variables, frames, image_shape, action, truth=None):
      return parse_frames_variants(
        self.nets, self.options, variables, frames, image_shape, action, truth, variants=variants
      )

    specs = (P(), split, split, split) + ((split,) if needs_truth else ())
    program = jax.jit(
      jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=split, check_vma=False)
    )

    def run(frames, image_shape, action, truth=None):
      if needs_truth and truth is None:
        raise ValueError('an oracle needs the ground truth (truth=frame_truth arrays)')
      args = (frames, image_shape, action) + ((truth,) if needs_truth else ())
      return program(variables, *args)

    return run


def compile_stages(pipeline: Pipeline):
  """`pipeline.compile()`'s program (no oracle, one device) cut into its three stages,
  each jitted alone, the outputs fetched to the host between them: what fusing them
  into one program saves, with the same views (bench/bench_pipeline.py)."""
  nets, options = pipeline.nets, pipeline.options
  variables = jax.device_put(pipeline.variables)
  humans = jax.jit(
    lambda v, f, s: _humans(nets, options, v, _frames(nets, f, s), None, oracle=False)
  )
  parts = jax.jit(lambda v, f, s, h: _parts(nets, options, v, _frames(nets, f, s), h, None))
  states = jax.jit(lambda v, f, s, h, p, a: _states(nets, options, v, _frames(nets, f, s), h, p, a))

  def run(frames, image_shape, action):
    found = jax.device_get(humans(variables, frames, image_shape))
    proposals = jax.device_get(parts(variables, frames, image_shape, found))
    return _assemble(
      found,
      proposals,
      jax.device_get(states(variables, frames, image_shape, found, proposals, action)),
    )

  return run
