"""Pseudo-labels: the part boxes a detector found, merged into `tps_parts`
(`python -m data_prep.pseudo_label` writes them).

The file (`load_pseudo_labels` reads it) is JSON:
```
{"<video>": {"img_00006.json": {"<human number>": {
    "<part>": [{"box": [x1, y1, x2, y2], "score": 0.7}, ...], ...}}}}
```
(boxes in frame pixels; a part may hold one {box, score} instead of a list; the human
number is the annotation's `number`, or its 1-based position when it has none). For
each annotated human, `pseudo_part_boxes` adds the parts its annotation lacks: score >
`positive` -> a positive box, `low` <= score <= `positive` -> an `ignore` box (losses skip
it), lower -> nothing. Only `tps_parts` uses them (states of pseudo boxes are unknown),
and only in the train split (val keeps its ground truth).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tps_jax.data import kinetics_tps as tps

_FRAME_KEY = re.compile(r'^img_(\d{5,})\.json$')
PseudoLabels = dict[tuple[str, int, int], dict[str, list[tuple[tuple[float, ...], float]]]]


def load_pseudo_labels(path: str) -> PseudoLabels:
  """{(video, frame index, human number): {part: [(box, score), ...]}} from the JSON
  format of the module docstring; any malformed entry is an AnnotationError."""
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as e:
    raise tps.AnnotationError(f'{path}: unreadable ({e.strerror or e})') from None
  except json.JSONDecodeError as e:
    raise tps.AnnotationError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  if not isinstance(data, dict):
    raise tps.AnnotationError(f'{path}: top level must be an object keyed by video')
  labels: PseudoLabels = {}
  for video, frames in data.items():
    for frame, humans in _items(frames, f'{path}: {video}'):
      match = _FRAME_KEY.match(frame)
      if not match:
        raise tps.AnnotationError(
          f'{path}: {video}/{frame}: frame key must look like img_00006.json'
        )
      for human, parts in _items(humans, f'{path}: {video}/{frame}'):
        if not str(human).isdigit():
          raise tps.AnnotationError(
            f"{path}: {video}/{frame}/{human}: human key must be the human's number"
          )
        where = f'{path}: {video}/{frame}/{human}'
        entry = labels.setdefault((video, int(match.group(1)), int(human)), {})
        for part, proposals in _items(parts, where):
          if part not in tps.PARTS:
            raise tps.AnnotationError(f'{where}/{part}: unknown part name')
          entry[part] = [
            _proposal(p, f'{where}/{part}')
            for p in (proposals if isinstance(proposals, list) else [proposals])
          ]
  return labels


def _items(value: Any, where: str):
  if not isinstance(value, dict):
    raise tps.AnnotationError(f'{where}: must be an object, got {type(value).__name__}')
  return value.items()


def _proposal(raw: Any, where: str) -> tuple[tuple[float, ...], float]:
  box = raw.get('box') if isinstance(raw, dict) else None
  score = raw.get('score') if isinstance(raw, dict) else None
  if (
    not isinstance(box, list)
    or len(box) != 4
    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
    or not (box[0] <= box[2] and box[1] <= box[3])
  ):
    raise tps.AnnotationError(
      f'{where}: box must be 4 finite numbers x1 <= x2, y1 <= y2; got {raw!r}'
    )
  if not isinstance(score, (int, float)) or not math.isfinite(score):
    raise tps.AnnotationError(f'{where}: score must be a number, got {raw!r}')
  return tuple(float(v) for v in box), float(score)


def pseudo_part_boxes(
  annotated: Mapping[str, tps.Part],
  proposals: Mapping[str, Sequence[tuple[Sequence[float], float]]],
  *,
  positive: float = 0.4,
  low: float = 0.1,
) -> list[tuple[str, tuple[float, ...], bool]]:
  """(part, box, ignore) to add to a human: proposals for the parts its annotation
  lacks, positive when score > `positive`, ignore when `low` <= score <= `positive`."""
  extra = []
  for part in tps.PARTS:
    if part in annotated:
      continue
    for box, score in proposals.get(part, ()):
      if score > positive:
        extra.append((part, tuple(box), False))
      elif score >= low:
        extra.append((part, tuple(box), True))
  return extra
