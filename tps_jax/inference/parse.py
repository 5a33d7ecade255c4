"""Decoded videos -> the challenge's per-video results, through a Pipeline.

Per video the action recogniser runs first (every member of the ensemble on its
clips x crops views, averaged as tps_jax/tasks/action_views.py does), so that the
part-state network gets the *predicted* action (the ground truth's in variants with
the 'action' oracle). Then the video's scored frames join a queue that is cut into
fixed-size batches for the compiled program, across video boundaries, the last batch
padded: one compiled program serves every video, and the device works on the next
batch while the host turns the previous one's outputs into JSON.

A parser runs one or more *variants* (oracle sets, tps_jax/inference/pipeline.py): one
program computes all of them, each network once per distinct input, and every
`VideoResult` holds one submission entry per variant -- the ablation table in one pass.
`VideoParser.run(stream)` takes DecodedVideos and yields VideoResults as each video's
last frame comes back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.inference.videos import DecodedVideo
from tps_jax.tasks import action_views as action_lib


@dataclasses.dataclass
class VideoResult:
  name: str
  actions: list[str]  # per variant: the class written
  frames: list[dict[str, dict]]  # per variant: 'img_00001.json' -> frame
  action_scores: list[float] | None = None  # the recogniser ensemble's scores


@dataclasses.dataclass
class GroundTruth:
  """The challenge-format ground truth the oracles read (gt_vid, gt_part)."""

  vid: Mapping[str, str]
  part: Mapping[str, Mapping[str, dict]]


def _member(export) -> action_lib.Member:
  return action_lib.Member(
    name=export.path,
    model=export.model,
    variables=export.variables,
    config=export.config,
    class_names=tuple(export.vocab['actions']),
  )


class VideoParser:
  """Runs `pipeline` over decoded videos for each oracle set of `variants` (one
  compiled program computes them all, sharing what they share); module docstring."""

  def __init__(
    self,
    pipeline: pipeline_lib.Pipeline,
    *,
    variants: Sequence[frozenset[str]] = (frozenset(),),
    truth: GroundTruth | None = None,
    mesh=None,
  ):
    self.pipeline, self.options = pipeline, pipeline.options
    self.variants = tuple(frozenset(v) for v in variants)
    if any(self.variants) and truth is None:
      raise ValueError('an oracle needs the ground truth of the videos')
    self.truth = truth
    devices = mesh.shape['data'] if mesh is not None else jax.local_device_count()
    if self.options.frame_batch % devices:
      raise ValueError(
        f'frame_batch={self.options.frame_batch} is not divisible by the {devices} data devices'
      )
    self.program = pipeline.compile(mesh, variants=self.variants)
    self.members = [_member(e) for e in pipeline.actions]
    needs_recogniser = any('action' not in v for v in self.variants)
    self.scorers = (
      [
        m.scorer(
          average=self.options.action_average,
          views_per_forward=self.options.action_views_per_forward,
        )
        for m in self.members
      ]
      if needs_recogniser
      else []
    )
    self.frames_parsed = 0

  # --- per video ---------------------------------------------------------------

  def true_action(self, name: str) -> int:
    """The video's ground-truth action index (0 when unknown and no oracle needs it)."""
    names = self.pipeline.action_names
    action = self.truth.vid.get(name) if self.truth else None
    if action in names:
      return names.index(action)
    if any('action' in v for v in self.variants):
      raise ValueError(
        f'{name}: ground-truth action {action!r} is not one of the '
        f"networks' classes ({', '.join(names)})"
      )
    return 0

  def video_action(self, video: DecodedVideo) -> tuple[int, list[float] | None]:
    """(index in the networks' actions, ensemble scores): the recogniser's prediction
    (every member on its clips x crops views), or (-1, None) when no variant needs it."""
    if not self.scorers:
      return -1, None
    scores = []
    for member, scorer in zip(self.members, self.scorers):
      views = action_lib.video_views(
        video.clip_frames,
        member.settings,
        clips=self.options.action_clips,
        crops=self.options.action_crops,
      )
      scores.append(np.asarray(scorer(augment.normalize(views[None])))[0])
    ensemble = np.asarray(action_lib.ensemble_scores(scores))
    return int(ensemble.argmax()), ensemble.tolist()

  def _frame_truth(self, name: str, frame_index: int, action: int) -> dict[str, np.ndarray]:
    frames = self.truth.part.get(name, {}) if self.truth else {}
    return pipeline_lib.frame_truth(
      frames.get(tps.frame_name(frame_index)),
      self.pipeline.state_names,
      self.options.max_humans,
      action,
    )

  # --- the stream ----------------------------------------------------------------

  def run(self, stream: Iterable[DecodedVideo]) -> Iterator[VideoResult]:
    """VideoResults in the order the videos finish (module docstring)."""
    size = self.options.frame_batch
    height, width = self.pipeline.canvas
    names = self.pipeline.action_names
    open_videos: dict[int, list] = {}  # slot -> [VideoResult, frames left]
    queue: list[tuple[int, DecodedVideo, int, int, int]] = []  # slot, video, row, actions
    in_flight = None

    def launch(rows):
      frames = np.zeros((size, height, width, 3), np.uint8)
      sizes = np.tile(np.int32([height, width]), (size, 1))  # padding rows: whole canvas
      actions = np.zeros(size, np.int32)
      truth = None
      if any(self.variants):
        per_row = [
          self._frame_truth(v.item.name, v.frame_indices[r], true) for _, v, r, _, true in rows
        ]
        per_row += [pipeline_lib.frame_truth(None, (), self.options.max_humans)] * (
          size - len(rows)
        )
        truth = {k: np.stack([t[k] for t in per_row]) for k in per_row[0]}
      for i, (_, video, row, predicted, _) in enumerate(rows):
        frames[i], sizes[i] = video.canvases[row], video.frame_sizes[row]
        actions[i] = max(predicted, 0)
      return self.program(frames, sizes, actions, truth), rows

    def collect(flight) -> Iterator[VideoResult]:
      outputs, rows = flight
      outputs = jax.device_get(outputs)
      for i, (slot, video, row, _, _) in enumerate(rows):
        result = open_videos[slot]
        frame = tps.frame_name(video.frame_indices[row])
        for frames, out in zip(result[0].frames, outputs):
          frames[frame] = pipeline_lib.frame_json(
            {k: v[i] for k, v in out.items()}, self.pipeline.state_names
          )
        result[1] -= 1
        if not result[1]:
          del open_videos[slot]
          yield result[0]
      self.frames_parsed += len(rows)

    def flush(rows) -> Iterator[VideoResult]:
      nonlocal in_flight
      previous, in_flight = in_flight, launch(rows)  # the device starts on this batch
      if previous is not None:
        yield from collect(previous)

    for slot, video in enumerate(stream):
      predicted, scores = self.video_action(video)
      true = self.true_action(video.item.name)
      actions = [names[true if 'action' in v else predicted] for v in self.variants]
      result = VideoResult(video.item.name, actions, [{} for _ in self.variants], scores)
      open_videos[slot] = [result, len(video.frame_indices)]
      queue.extend((slot, video, row, predicted, true) for row in range(len(video.frame_indices)))
      while len(queue) >= size:
        yield from flush(queue[:size])
        del queue[:size]
    if queue:
      yield from flush(queue)
    if in_flight is not None:
      yield from collect(in_flight)
