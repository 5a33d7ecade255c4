"""Reading, validating and writing challenge submissions and ground truth.

Files (shared/kinetics_tps.md): `pred_vid_result.json` / `pred_part_result.json`
(a part holds parallel lists `box`, `verb` of proposals) and `gt_vid_result.json` /
`gt_part_result.json` (a part holds one `box` and one `verb`).

Every problem is reported as one line `file: video/frame/human/part: problem`.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Mapping

PARTS = ("head", "torso", "left_arm", "right_arm", "left_hand", "right_hand",
         "left_leg", "right_leg", "left_foot", "right_foot")
MAX_HUMANS = 10
MAX_PROPOSALS = 5
PRED_FILES = ("pred_vid_result.json", "pred_part_result.json")
GT_FILES = ("gt_vid_result.json", "gt_part_result.json")


class SubmissionError(ValueError):
  """A file that cannot be read or a submission that breaks the challenge's limits."""


def load_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise SubmissionError(f"{path}: no such file")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise SubmissionError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def load_pair(directory: str, kind: str) -> tuple[dict, dict]:
  """Loads (vid_result, part_result) of kind 'pred' or 'gt' from a directory."""
  vid_name, part_name = PRED_FILES if kind == "pred" else GT_FILES
  vid = load_json(os.path.join(directory, vid_name))
  part = load_json(os.path.join(directory, part_name))
  for name, obj in ((vid_name, vid), (part_name, part)):
    if not isinstance(obj, dict):
      raise SubmissionError(f"{os.path.join(directory, name)}: top level must be an object "
                            "keyed by video name")
  return vid, part


def _box_problem(box) -> str | None:
  if not isinstance(box, (list, tuple)) or len(box) != 4:
    return f"box must be 4 numbers [x1, y1, x2, y2], got {box!r}"
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
    return f"box must hold numbers, got {box!r}"
  if not all(math.isfinite(v) for v in box):
    return f"box is not finite: {box!r}"
  if box[0] > box[2] or box[1] > box[3]:
    return f"box is inverted (x1 > x2 or y1 > y2): {box!r}"
  return None


def validate(vid_result: Mapping, part_result: Mapping, *, kind: str = "pred",
             file_name: str = "", actions=None) -> list[str]:
  """All problems of a submission (kind 'pred') or ground truth (kind 'gt'), one per line."""
  problems = []
  where = file_name or (PRED_FILES[1] if kind == "pred" else GT_FILES[1])

  def report(path, problem):
    problems.append(f"{where}: {path}: {problem}")

  for video, action in vid_result.items():
    if not isinstance(action, str):
      problems.append(f"{where.replace('part', 'vid')}: {video}: action must be a class name")
    elif actions is not None and action not in actions:
      problems.append(f"{where.replace('part', 'vid')}: {video}: unknown action {action!r}")
  for video, frames in part_result.items():
    if not isinstance(frames, dict):
      report(video, "must map frame names to frames")
      continue
    for frame_name, frame in frames.items():
      path = f"{video}/{frame_name}"
      humans = frame.get("humans") if isinstance(frame, dict) else None
      if not isinstance(humans, list):
        report(path, "missing 'humans' list")
        continue
      if kind == "pred" and len(humans) > MAX_HUMANS:
        report(path, f"{len(humans)} humans, at most {MAX_HUMANS} allowed")
      for h, human in enumerate(humans):
        hpath = f"{path}/human {human.get('number', h + 1) if isinstance(human, dict) else h + 1}"
        if not isinstance(human, dict):
          report(hpath, "must be an object")
          continue
        if (p := _box_problem(human.get("box"))):
          report(hpath, p)
        parts = human.get("parts", {})
        if not isinstance(parts, dict):
          report(hpath, "'parts' must map part names to parts")
          continue
        for name, part in parts.items():
          ppath = f"{hpath}/{name}"
          if name not in PARTS:
            report(ppath, f"unknown part name (expected one of {', '.join(PARTS)})")
            continue
          if not isinstance(part, dict):
            report(ppath, "must be an object")
            continue
          problems.extend(f"{where}: {ppath}: {p}" for p in _part_problems(part, kind))
  return problems


def _part_problems(part: Mapping, kind: str) -> list[str]:
  box, verb = part.get("box"), part.get("verb")
  if kind == "gt":
    problems = [p] if (p := _box_problem(box)) else []
    if not isinstance(verb, str):
      problems.append(f"verb must be a state name, got {verb!r}")
    return problems
  if not isinstance(box, list) or not isinstance(verb, list):
    return ["a predicted part holds lists 'box' and 'verb'"]
  problems = []
  if len(box) != len(verb):
    problems.append(f"{len(box)} boxes but {len(verb)} verbs")
  if len(box) > MAX_PROPOSALS:
    problems.append(f"{len(box)} proposals, at most {MAX_PROPOSALS} allowed")
  problems += [f"proposal {i + 1}: {p}" for i, b in enumerate(box) if (p := _box_problem(b))]
  problems += [f"proposal {i + 1}: verb must be a state name, got {v!r}"
               for i, v in enumerate(verb) if not isinstance(v, str)]
  return problems


def coverage_warnings(gt_vid: Mapping, gt_part: Mapping, pred_vid: Mapping,
                      pred_part: Mapping) -> list[str]:
  """Videos/frames of the ground truth absent from the submission (they score 0)."""
  warnings = []
  missing = [v for v in gt_vid if v not in pred_vid]
  if missing:
    warnings.append(f"{len(missing)} video(s) missing from {PRED_FILES[0]} "
                    f"(e.g. {missing[0]}): counted as wrong")
  frames = [(v, f) for v, fr in gt_part.items() for f in fr if f not in (pred_part.get(v) or {})]
  if frames:
    warnings.append(f"{len(frames)} frame(s) missing from {PRED_FILES[1]} "
                    f"(e.g. {frames[0][0]}/{frames[0][1]}): scored 0")
  return warnings


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary file in the same folder, then renames it into place."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_submission(out_dir: str, vid_result: Mapping, part_result: Mapping) -> None:
  """Validates, then writes pred_vid_result.json and pred_part_result.json atomically."""
  problems = validate(vid_result, part_result, kind="pred")
  if problems:
    raise SubmissionError(f"refusing to write an invalid submission ({len(problems)} "
                          f"problem(s)); first: {problems[0]}")
  write_json_atomic(os.path.join(out_dir, PRED_FILES[0]), dict(vid_result))
  write_json_atomic(os.path.join(out_dir, PRED_FILES[1]), dict(part_result))
