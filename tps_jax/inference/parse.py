"""`parse_video`: decoded videos -> the challenge's per-video results, through a Pipeline.

Per video the action recogniser runs first (every member of the ensemble on its
clips x crops views, averaged as tps_jax/inference/action.py does), so that the
part-state network gets the *predicted* action (or the ground truth's with the
'action' oracle). Then the video's scored frames join a queue that is cut into
fixed-size batches for the compiled `parse_frames`, across video boundaries, the last
batch padded: one compiled program serves every video, and the device gets the next
batch while the host turns the previous one's outputs into JSON.

`VideoParser.run(stream)` takes `(item, DecodedVideo)` pairs and yields `VideoResult`s
as each video's last frame comes back.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping

import jax
import numpy as np

from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import action as action_lib
from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.inference.videos import DecodedVideo, VideoItem


@dataclasses.dataclass
class VideoResult:
  name: str
  action: str                                   # predicted (or the oracle's) class
  frames: dict[str, dict]                       # 'img_00001.json' -> {'humans': [...]}
  action_scores: list[float] | None = None      # ensemble scores over the classes


@dataclasses.dataclass
class GroundTruth:
  """The challenge-format ground truth the oracles read (gt_vid, gt_part)."""
  vid: Mapping[str, str]
  part: Mapping[str, Mapping[str, dict]]


def _member(export) -> action_lib.Member:
  return action_lib.Member(name=export.path, model=export.model, variables=export.variables,
                           config=export.config, class_names=tuple(export.vocab['actions']))


class VideoParser:
  """Runs `pipeline` (with `oracle`) over decoded videos; see the module docstring."""

  def __init__(self, pipeline: pipeline_lib.Pipeline, *, oracle=frozenset(),
               truth: GroundTruth | None = None, mesh=None):
    self.pipeline, self.settings = pipeline, pipeline.settings
    self.oracle = frozenset(oracle)
    if self.oracle and truth is None:
      raise ValueError(f'oracle {",".join(sorted(self.oracle))}: no ground truth for these '
                       'videos')
    self.truth = truth
    devices = mesh.shape['data'] if mesh is not None else jax.local_device_count()
    if self.settings.frame_batch % devices:
      raise ValueError(f'frame_batch={self.settings.frame_batch} is not divisible by the '
                       f'{devices} data devices')
    self.program = pipeline.compile(mesh, oracle=self.oracle)
    self.members = [_member(e) for e in pipeline.actions]
    self.scorers = ([] if 'action' in self.oracle else
                    [m.scorer(average=self.settings.action_average,
                              views_per_forward=self.settings.action_views_per_forward)
                     for m in self.members])
    self.frames_parsed = 0

  # --- per video ---------------------------------------------------------------

  def video_action(self, video: DecodedVideo) -> tuple[int, list[float] | None]:
    """(index in the part-state network's actions, ensemble scores or None)."""
    names = self.pipeline.action_names
    if 'action' in self.oracle:
      action = self.truth.vid.get(video.item.name)
      if action not in names:
        raise ValueError(f'{video.item.name}: ground-truth action {action!r} is not one of '
                         'the networks\' classes')
      return names.index(action), None
    scores = []
    for member, scorer in zip(self.members, self.scorers):
      views = action_lib.video_views(video.clip_frames, member.settings,
                                     clips=self.settings.action_clips,
                                     crops=self.settings.action_crops)
      scores.append(np.asarray(scorer(augment.normalize(views[None])))[0])
    ensemble = np.asarray(action_lib.ensemble_scores(scores))
    return int(ensemble.argmax()), ensemble.tolist()

  def _frame_truth(self, name: str, frame_index: int) -> dict[str, np.ndarray]:
    frames = self.truth.part.get(name, {}) if self.truth else {}
    return pipeline_lib.frame_truth(frames.get(tps.frame_name(frame_index)),
                                    self.pipeline.state_names, self.settings.max_humans)

  # --- the stream ----------------------------------------------------------------

  def run(self, stream: Iterable[DecodedVideo]) -> Iterator[VideoResult]:
    """VideoResults in the order the videos finish (module docstring)."""
    size = self.settings.frame_batch
    height, width = self.pipeline.canvas
    open_videos: dict[int, list] = {}       # slot -> [VideoResult, frames left]
    queue: list[tuple[int, DecodedVideo, int, int]] = []   # (slot, video, row, action)
    in_flight = None

    def launch(rows):
      frames = np.zeros((size, height, width, 3), np.uint8)
      sizes = np.tile(np.int32([height, width]), (size, 1))
      actions = np.zeros(size, np.int32)
      truth = None
      if self.oracle - {'action'}:
        per_row = [self._frame_truth(v.item.name, v.frame_indices[r]) for _, v, r, _ in rows]
        per_row += [pipeline_lib.frame_truth(None, (), self.settings.max_humans)] * (
            size - len(rows))
        truth = {k: np.stack([t[k] for t in per_row]) for k in per_row[0]}
      for i, (_, video, row, action) in enumerate(rows):
        frames[i], sizes[i], actions[i] = video.canvases[row], video.frame_sizes[row], action
      return self.program(frames, sizes, actions, truth), rows

    def collect(flight) -> Iterator[VideoResult]:
      outputs, rows = flight
      outputs = jax.device_get(outputs)
      for i, (slot, video, row, _) in enumerate(rows):
        result = open_videos[slot]
        result[0].frames[tps.frame_name(video.frame_indices[row])] = pipeline_lib.frame_json(
            {k: v[i] for k, v in outputs.items()}, self.pipeline.state_names)
        result[1] -= 1
        if not result[1]:
          del open_videos[slot]
          yield result[0]
      self.frames_parsed += len(rows)

    def flush(rows) -> Iterator[VideoResult]:
      nonlocal in_flight
      previous, in_flight = in_flight, launch(rows)   # the device starts on this batch
      if previous is not None:
        yield from collect(previous)

    for slot, video in enumerate(stream):
      action, scores = self.video_action(video)
      result = VideoResult(video.item.name, self.pipeline.action_names[action], {}, scores)
      open_videos[slot] = [result, len(video.frame_indices)]
      queue.extend((slot, video, row, action) for row in range(len(video.frame_indices)))
      while len(queue) >= size:
        yield from flush(queue[:size])
        del queue[:size]
    if queue:
      yield from flush(queue)
    if in_flight is not None:
      yield from collect(in_flight)
