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

Views and ensembles (test-time augmentation; settings human_scales, part_scales,
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
compiling (`check_view_memory`). With the defaults (one scale, no flip, one export)
the program is the one without views.

Sharding: `Pipeline.compile(mesh)` splits the frame batch over the mesh's `data` axis
(`shard_map`; variables replicated): each device parses its frames alone, and the
outputs equal a single device's (boxes and scores up to float reassociation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tps_jax.data import augment, submission
from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import geometry
from tps_jax.inference import views as views_lib
from tps_jax.inference.export import Export, ExportError
from tps_jax.ops import box_merge
from tps_jax.ops.boxes import box_iou, to_edges

PyTree = Any
ORACLES = ('humans', 'parts', 'states', 'action')
NUM_PARTS = len(tps.PARTS)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the networks' outputs become a submission (stored in a bundle's
  pipeline.json; `python -m tps_jax.export_pipeline` sets them)."""

  max_humans: int = 10  # humans per frame, <= 10
  proposals_per_part: int = 1  # k, <= 5; each extra proposal divides the credit
  human_score_threshold: float = 0.5  # detector score a human needs
  part_score_threshold: float = 0.3  # ... and a part proposal
  human_match_iou: float = 0.5  # oracles: a human takes the ground truth's parts
  frame_batch: int = 8  # frames per compiled call
  action_clips: int = 4  # action recogniser views: clips x crops
  action_crops: int = 3
  action_average: str = 'logits'  # 'logits' | 'probs' (tps_jax/tasks/action_views.py)
  action_views_per_forward: int = 0  # views per forward pass (0: all at once)
  # Test-time views of the per-frame networks (module docstring, 'Views and ensembles').
  human_scales: tuple[float, ...] = (1.0,)  # factors of the human detector's canvas
  part_scales: tuple[float, ...] = (1.0,)  # ... and of the part detector's input
  human_flip: bool = False  # also the mirrored frame
  part_flip: bool = False  # also the mirrored crop, left/right parts exchanged
  part_state_flip: bool = False  # logits averaged with the mirrored crop's
  box_merge: str = 'nms'  # 'nms' | 'wbf': how the views' detections merge (ops/box_merge.py)
  box_merge_iou: float = 0.5  # detections overlapping more are one
  view_memory_gb: float = 0.0  # what the views' inputs may take (0: the device's memory)

  def __post_init__(self):
    for name in _SCALE_FIELDS:  # lists (JSON, flags) as the declared tuple
      object.__setattr__(self, name, parse_scales(name, getattr(self, name)))
    most_humans, most_proposals = submission.MAX_HUMANS, submission.MAX_PROPOSALS
    checks = [
      (1 <= self.max_humans <= most_humans, f'max_humans must be in 1..{most_humans}'),
      (
        1 <= self.proposals_per_part <= most_proposals,
        f'proposals_per_part must be in 1..{most_proposals}',
      ),
      (0.0 <= self.human_score_threshold <= 1.0, 'human_score_threshold in [0, 1]'),
      (0.0 <= self.part_score_threshold <= 1.0, 'part_score_threshold in [0, 1]'),
      (self.frame_batch >= 1, 'frame_batch must be positive'),
      (
        self.action_clips >= 1 and self.action_crops >= 1,
        'action_clips and action_crops must be positive',
      ),
      (self.action_average in ('logits', 'probs'), "action_average must be 'logits' or 'probs'"),
      (
        all(s > 0 for s in self.human_scales + self.part_scales),
        f'human_scales {list(self.human_scales)} and part_scales {list(self.part_scales)} '
        'must be positive factors',
      ),
      (
        len(self.human_scales) >= 1 and len(self.part_scales) >= 1,
        'human_scales and part_scales need at least one factor',
      ),
      (
        self.box_merge in box_merge.METHODS,
        f'box_merge must be one of {", ".join(box_merge.METHODS)}, got {self.box_merge!r}',
      ),
      (0.0 < self.box_merge_iou < 1.0, 'box_merge_iou in (0, 1)'),
      (self.view_memory_gb >= 0.0, 'view_memory_gb must be >= 0 (0: the device memory)'),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f'pipeline settings: {message}')

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> Settings:
    """Settings from JSON-like values (pipeline.json, --set), each checked against the
    type its field declares (`typed_value`; scales also as '0.8,1,1.2'); ValueError
    names the first bad field."""
    if not isinstance(values, Mapping):
      raise ValueError(f'pipeline settings: expected an object of fields, got {_short(values)}')
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(
        f'pipeline settings: unknown field(s) {", ".join(map(str, unknown))} '
        f'(known: {", ".join(sorted(known))})'
      )
    values = {n: parse_scales(n, v) if n in _SCALE_FIELDS else v for n, v in values.items()}
    return cls(**{name: typed_value(value, hints[name], name) for name, value in values.items()})

  def to_dict(self) -> dict[str, Any]:
    """The fields as JSON has them (tuples as lists), so that a dict read back from
    pipeline.json or a run's record compares equal."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_SCALE_FIELDS = ('human_scales', 'part_scales')


def parse_scales(name: str, value) -> tuple[float, ...]:
  """'0.8,1,1.2', [0.8, 1, 1.2] or 1.2 (JSON, --set, flags) -> (0.8, 1.0, 1.2)."""
  items = value.split(',') if isinstance(value, str) else value
  items = items if isinstance(items, (list, tuple)) else [items]
  try:
    return tuple(float(v) for v in items if not (isinstance(v, str) and not v.strip()))
  except (TypeError, ValueError):
    raise ValueError(f'pipeline settings: {name} must be numbers, got {value!r}') from None


def _short(value: Any, limit: int = 40) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + '...'


def _type_name(hint: Any) -> str:
  names = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}
  if hint in names or hint is type(None):
    return names.get(hint, 'null')
  if typing.get_origin(hint) in (tuple, list):
    items = [_type_name(a) for a in typing.get_args(hint) if a is not ...]
    return f'a list, each item {" / ".join(dict.fromkeys(items))}'
  return ' or '.join(_type_name(a) for a in typing.get_args(hint)) or str(hint)


def typed_value(value: Any, hint: Any, name: str) -> Any:
  """`value` (as JSON holds it) as the declared type `hint` -- bool, int, float (an
  integer is taken), str, None, tuple[X, ...] / tuple[X, Y] / list[X] of these, or a
  union -- or a ValueError naming the field `name`. Bools are not integers here, and
  floats must be finite."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  wrong = ValueError(f'pipeline settings: {name} must be {_type_name(hint)}, got {_short(value)}')
  if origin in (typing.Union, types.UnionType):
    for arm in args:
      try:
        return typed_value(value, arm, name)
      except ValueError:
        pass
    raise wrong
  if origin in (tuple, list):
    if not isinstance(value, (list, tuple)):
      raise wrong
    arms = args[:1] * len(value) if origin is list or args[1:] == (...,) else args
    if len(arms) != len(value):
      raise wrong
    items = [typed_value(v, a, f'{name}[{i}]') for i, (v, a) in enumerate(zip(value, arms))]
    return origin(items)
  if hint is type(None) or hint is None:
    if value is None:
      return None
  elif hint is bool or hint is str:
    if isinstance(value, hint):
      return value
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      return float(value)
  else:
    raise TypeError(f'Settings.{name}: field type {hint} has no JSON check')
  raise wrong


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


def _top_humans(det, settings: Settings):
  """The detector's best `max_humans` people: edge boxes (B, M, 4), scores, valid."""
  score = jnp.where(
    det['valid'] & (det['labels'] == 0) & (det['scores'] >= settings.human_score_threshold),
    det['scores'],
    -1.0,
  )
  top, index = jax.lax.top_k(score, settings.max_humans)
  boxes = jnp.take_along_axis(det['boxes'], index[..., None], axis=1)
  valid = top >= 0.0
  return jnp.where(valid[..., None], boxes, 0.0), jnp.maximum(top, 0.0), valid


def _top_proposals(det, settings: Settings):
  """Per part the best k proposals: edge boxes (N, 10, k, 4), scores, valid."""
  parts = jnp.arange(NUM_PARTS)[None, :, None]
  ok = (
    det['valid'][:, None]
    & (det['labels'][:, None] == parts)
    & (det['scores'][:, None] >= settings.part_score_threshold)
  )
  score = jnp.where(ok, det['scores'][:, None], -1.0)  # (N, 10, D)
  k = min(settings.proposals_per_part, score.shape[-1])
  top, index = jax.lax.top_k(score, k)
  boxes = jnp.take_along_axis(det['boxes'][:, None], index[..., None], axis=2)
  valid = top >= 0.0
  return jnp.where(valid[..., None], boxes, 0.0), jnp.maximum(top, 0.0), valid


def _match_truth(human_edges, human_valid, truth, settings: Settings):
  """(B, M) index of the ground-truth human each human overlaps most (IoU above
  `human_match_iou`), and whether there is one."""
  iou = box_iou(human_edges, to_edges(truth['human_boxes']))  # (B, M, G)
  iou = jnp.where(truth['human_valid'][:, None, :], iou, -1.0)
  best = iou.argmax(-1)
  matched = human_valid & (iou.max(-1) > settings.human_match_iou)
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


def _merge(views, settings: Settings):
  return views_lib.merge_detections(
    views, method=settings.box_merge, iou_threshold=settings.box_merge_iou
  )


def _humans(nets: _Networks, settings: Settings, variables, batch: _Frames, truth, oracle: bool):
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
    scales=settings.human_scales,
    flip=settings.human_flip,
    members=nets.human_members,
  )
  det = _merge(views, settings)
  det = {**det, 'boxes': geometry.scale_boxes(det['boxes'], 1.0 / batch.canvas_scale[:, None])}
  return _top_humans(det, settings)


def _truth_parts(settings: Settings, humans, truth):
  """The ground-truth parts (boxes, valid, states) of the truth's human that each
  human overlaps most: (B, M, 10, ...)."""
  edges, _, valid = humans
  match, matched = _match_truth(edges, valid, truth, settings)
  return (
    _gather_humans(truth['part_boxes'], match),
    _gather_humans(truth['part_valid'], match) & matched[..., None],
    _gather_humans(truth['part_states'], match),
  )


def _flat(x):
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _parts(nets: _Networks, settings: Settings, variables, batch: _Frames, humans, truth_parts):
  """(edge boxes (B, M, 10, k, 4) in frame pixels, scores, valid): the part
  detector's top-k per part on every human's crop (every member on every scale and
  flip, merged), or (truth_parts given) the truth's parts as the first proposal."""
  human_edges, _, human_valid = humans
  k = settings.proposals_per_part
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
    scales=settings.part_scales,
    flip=settings.part_flip,
    members=nets.part_members,
    mirror_labels=views_lib.PART_MIRROR,
  )
  unflat = lambda x: x.reshape((batch.batch, num_humans) + x.shape[1:])
  edges, scores, valid = map(unflat, _top_proposals(_merge(views, settings), settings))
  edges = geometry.crop_to_frame(edges, regions[:, :, None, None], crop_scale[:, :, None, None])
  return edges, scores, valid & human_valid[:, :, None, None]


def _states(nets: _Networks, settings: Settings, variables, batch: _Frames, humans, parts, action):
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
    flip=settings.part_state_flip,
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
  settings: Settings,
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
    humans = once(('humans', h), lambda: _humans(nets, settings, variables, batch, truth, h))
    truth_parts = None
    if oracle & {'parts', 'states'}:
      truth_parts = once(('truth_parts', h), lambda: _truth_parts(settings, humans, truth))
    p = 'parts' in oracle
    parts = once(
      ('parts', h, p),
      lambda: _parts(nets, settings, variables, batch, humans, truth_parts if p else None),
    )
    a = 'action' in oracle
    states = once(
      ('states', h, p, a),
      lambda: _states(
        nets, settings, variables, batch, humans, parts, truth['action'] if a else action
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
  settings: Settings,
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
    nets, settings, variables, frames, image_shape, action, truth, variants=(frozenset(oracle),)
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
  """The four networks of a bundle (tps_jax/inference/bundle.py) and their settings.
  `humans`, `parts`, `states` and `actions` are lists: each stage's ensemble (an
  Export alone is a one-member ensemble)."""

  def __init__(
    self,
    humans: Export | Sequence[Export],
    parts: Export | Sequence[Export],
    states: Export | Sequence[Export],
    actions: Sequence[Export],
    settings: Settings,
  ):
    humans, parts, states = _ensemble(humans), _ensemble(parts), _ensemble(states)
    check_ensembles(humans, parts, states)
    check_vocabularies(humans[0], parts[0], states[0], actions)
    self.humans, self.parts, self.states = humans, parts, states
    self.actions = list(actions)
    self.settings = settings
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
    check_view_memory(self.nets, settings)
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
    """`parse_frames` with this pipeline's networks and settings (jittable)."""
    return parse_frames(
      self.nets,
      self.settings,
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
        self.nets, self.settings, variables, frames, image_shape, action, truth, variants=variants
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
  nets, settings = pipeline.nets, pipeline.settings
  variables = jax.device_put(pipeline.variables)
  humans = jax.jit(
    lambda v, f, s: _humans(nets, settings, v, _frames(nets, f, s), None, oracle=False)
  )
  parts = jax.jit(lambda v, f, s, h: _parts(nets, settings, v, _frames(nets, f, s), h, None))
  states = jax.jit(
    lambda v, f, s, h, p, a: _states(nets, settings, v, _frames(nets, f, s), h, p, a)
  )

  def run(frames, image_shape, action):
    found = jax.device_get(humans(variables, frames, image_shape))
    proposals = jax.device_get(parts(variables, frames, image_shape, found))
    return _assemble(
      found,
      proposals,
      jax.device_get(states(variables, frames, image_shape, found, proposals, action)),
    )

  return run


def check_vocabularies(
  humans: Export, parts: Export, states: Export, actions: Sequence[Export]
) -> None:
  """Refuses, in one line naming both sides, exports that do not fit together."""
  kinds = [(humans, 'human_detector'), (parts, 'part_detector'), (states, 'part_state')]
  kinds += [(a, 'action') for a in actions]
  for export, kind in kinds:
    if export.kind != kind:
      raise ExportError(f'{export.path}: a {export.kind} export where a {kind} is needed')
  if len(humans.vocab['classes']) != 1:
    raise ExportError(
      f'{humans.path}: a human detector has one class, this one has '
      f'{len(humans.vocab["classes"])} ({", ".join(humans.vocab["classes"])})'
    )
  if tuple(parts.vocab['classes']) != tps.PARTS:
    raise ExportError(
      f'{parts.path}: part detector classes {parts.vocab["classes"]} '
      f'are not the ten parts in order {list(tps.PARTS)} '
      f'({states.path} expects them)'
    )
  if tuple(states.vocab['parts']) != tps.PARTS:
    raise ExportError(f'{states.path}: parts {states.vocab["parts"]} are not {list(tps.PARTS)}')
  for action in actions:
    if tuple(action.vocab['actions']) != tuple(states.vocab['actions']):
      raise ExportError(
        f'{action.path}: action classes {action.vocab["actions"]} differ '
        f"from the part-state network's {states.vocab['actions']} "
        f'({states.path})'
      )


def check_ensembles(*ensembles: Sequence[Export]) -> None:
  """Refuses, in one line naming both, members of a stage's ensemble whose kind,
  vocabularies, preprocessing or model differ from the first member's (their outputs
  are merged or averaged as one network's; their variables are stacked)."""
  for members in ensembles:
    first = members[0]
    for other in members[1:]:
      for what, mine, theirs in (
        ('kind', other.kind, first.kind),
        ('vocabularies', other.vocab, first.vocab),
        ('preprocessing', other.preprocessing, first.preprocessing),
        ('model', other.config.model.to_dict(), first.config.model.to_dict()),
      ):
        if mine != theirs:
          raise ExportError(
            f'{other.path}: not the same {what} as {first.path} in the same ensemble '
            f'({_difference(mine, theirs)})'
          )


def _difference(mine, theirs) -> str:
  if isinstance(mine, dict) and isinstance(theirs, dict):
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return '; '.join(f'{k}: {mine.get(k)!r} vs {theirs.get(k)!r}' for k in keys)
  return f'{mine!r} vs {theirs!r}'


# A rough bound of what a detector keeps alive per input pixel at inference in float32
# (a ResNet-50 FPN or Swin stage-1 feature map is 12-16 floats per pixel, a few live
# at once): the views' inputs times this is what `check_view_memory` compares.
VIEW_BYTES_PER_PIXEL = 512


def view_memory_gb(nets: _Networks, settings: Settings) -> float:
  """Gigabytes the detectors' and the part-state network's views of one frame batch
  take by VIEW_BYTES_PER_PIXEL: every member x scale x flip, the part detector and
  the part-state network on all max_humans crops."""
  area = lambda size, scales: sum(np.prod(geometry.scaled_size(size, s)) for s in scales)
  flips = lambda flip: 2 if flip else 1
  humans = (
    nets.human_members * flips(settings.human_flip) * area(nets.canvas, settings.human_scales)
  )
  parts = nets.part_members * flips(settings.part_flip) * area(nets.part_size, settings.part_scales)
  states = nets.state_members * flips(settings.part_state_flip) * np.prod(nets.state_size)
  crops = settings.max_humans * (parts + settings.proposals_per_part * states)
  return float(settings.frame_batch * (humans + crops) * VIEW_BYTES_PER_PIXEL / 2**30)


def _device_memory_gb() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return stats['bytes_limit'] / 2**30
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30


def check_view_memory(nets: _Networks, settings: Settings) -> None:
  """Refuses, in one line before anything compiles, views (more than one network
  pass per stage) whose inputs at this frame batch need more than `view_memory_gb`
  (0: the device's memory) by `view_memory_gb`'s estimate. One view per stage is the
  program without test-time views and is not checked here."""
  one_view = (
    nets.human_members == nets.part_members == nets.state_members == 1
    and settings.human_scales == settings.part_scales == (1.0,)
    and not (settings.human_flip or settings.part_flip or settings.part_state_flip)
  )
  if one_view:
    return
  limit = settings.view_memory_gb or _device_memory_gb()
  need = view_memory_gb(nets, settings)
  if need > limit:
    raise ValueError(
      f'pipeline settings: the test-time views need about {need:.1f} GB at '
      f'frame_batch={settings.frame_batch} (human_scales {list(settings.human_scales)}, '
      f'part_scales {list(settings.part_scales)}, flips {settings.human_flip}/'
      f'{settings.part_flip}/{settings.part_state_flip}, ensembles {nets.human_members}/'
      f'{nets.part_members}/{nets.state_members}), more than the {limit:.1f} GB allowed '
      '(view_memory_gb); lower frame_batch or the views'
    )
