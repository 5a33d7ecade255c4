"""The options of the end-to-end pipeline (`PipelineOptions`): how the networks' outputs
become a submission, and the test-time views. Checked when built, read from JSON with
each field's declared type (a bundle's pipeline.json, `--set`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from tps_jax.data import submission
from tps_jax.ops import box_merge


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """How the networks' outputs become a submission (a bundle's pipeline.json stores them
  under "settings"; `python -m tps_jax.export_pipeline` sets them)."""

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
  # Test-time views of the per-frame networks (tps_jax/inference/pipeline.py, 'Views and ensembles').
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
  def from_dict(cls, values: Mapping[str, Any]) -> PipelineOptions:
    """Options from JSON-like values (pipeline.json, --set), each checked against the
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
    raise TypeError(f'PipelineOptions.{name}: field type {hint} has no JSON check')
  raise wrong
