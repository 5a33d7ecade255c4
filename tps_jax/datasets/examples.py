"""A video's frames and annotations made into each dataset's examples (`ExampleMaker`,
with the build's `BuildOptions`); the features are tps_jax/data/tfds_layout.py's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import video as video_lib
from tps_jax.datasets.pseudo_labels import PseudoLabels, pseudo_part_boxes
from tps_jax.datasets.sources import VideoEntry, record_problem


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  context: float = 0.1  # crop margin, fraction of the human box size
  clip_short_side: int = 256  # action clips: frames downscaled to this
  jpeg_quality: int = 90
  progress: bool = True


@dataclasses.dataclass
class _HumanCrop:
  image: np.ndarray
  region: tuple[int, int, int, int]
  number: int
  parts: dict[str, np.ndarray]  # part -> inclusive box in crop pixels
  states: dict[str, str]
  extra: list[tuple[str, np.ndarray, bool]]  # pseudo-label (part, crop box, ignore)


class ExampleMaker:
  """Turns a video's frames and annotations into a dataset's examples.

  Bad items raise (strict) or, with `keep_going`, are skipped and returned as problems
  (a video that cannot be decoded: all its examples). Each dataset decides on its own,
  so a dataset's content does not depend on which others are built with it. Picklable:
  worker processes run `examples` (see `tfds_builder.worker_pool`).
  """

  def __init__(
    self,
    options: BuildOptions,
    *,
    vocab: tps.Vocab | None = None,
    keep_going: bool = False,
    pseudo_labels: PseudoLabels | None = None,
    positive: float = 0.4,
    low: float = 0.1,
  ):
    """vocab: checks the annotations' states (and numbers them); None for video-folder
    datasets, which have no annotations."""
    self.options = options
    self.vocab = vocab
    self.keep_going = keep_going
    self.pseudo_labels = pseudo_labels or {}
    self.positive, self.low = positive, low

  def examples(self, dataset: str, entry: VideoEntry) -> tuple[list[tuple[str, dict]], list[str]]:
    """(every example of one video for `dataset`, the problems skipped)."""
    problems: list[str] | None = [] if self.keep_going else None
    try:
      if dataset == 'action_clips':
        return [self._clip(entry)], []
      out = []
      for index, image in self._frames(entry, list(entry.annotated)):
        height, width = image.shape[:2]
        annotation = tps.load_frame(
          entry.annotation_path(index),
          vocab=self.vocab,
          image_size=(width, height),
          problems=problems,
        )
        if annotation is not None:
          out += self._frame_examples(dataset, entry, index, image, annotation, problems)
      return out, problems or []
    except (video_lib.VideoError, tps.AnnotationError) as e:
      record_problem(problems, e)
      return [], problems

  def _frames(
    self, entry: VideoEntry, indices: list[int] | None
  ) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB) of the frames `indices` (None: all) of a video, from its frame
    folder when it has one, else decoded from the video file."""
    # A folder of only the annotated frames (extract_frames --only_annotated) cannot
    # serve a whole clip: then the video is decoded. A video without a frame count
    # (a plain folder of videos) is always decoded.
    if indices is not None:
      wanted = list(indices)
    elif entry.num_frames is not None:
      wanted = list(range(1, entry.num_frames + 1))
    else:
      wanted = None
    if (
      entry.frames_dir
      and wanted is not None
      and all(os.path.isfile(video_lib.frame_file(entry.frames_dir, i)) for i in wanted)
    ):
      yield from video_lib.iter_folder_frames(entry.frames_dir, wanted)
      return
    if indices is not None and not indices:
      return
    last = None if indices is None else max(indices)
    decoded = 0
    for index, image in video_lib.iter_video_frames(
      entry.video_path, None if indices is None else set(indices), last
    ):
      decoded = index
      yield index, image
    if last is not None and decoded < last:
      raise video_lib.VideoError(
        f'{entry.video_path}: the video ends before annotated frame {last}'
      )

  def _clip(self, entry: VideoEntry) -> tuple[str, dict]:
    frames = [
      video_lib.encode_jpeg(
        video_lib.resize_short_side(image, self.options.clip_short_side), self.options.jpeg_quality
      )
      for _, image in self._frames(entry, None)
    ]
    if not frames:
      raise video_lib.VideoError(f'{entry.video_path}: no frame decoded')
    return entry.name, {
      'video': entry.name,
      'label': entry.label,
      'num_frames': len(frames),
      'frames': np.array(frames, dtype=object),
    }

  def _frame_examples(
    self, dataset, entry, index, image, annotation, problems
  ) -> list[tuple[str, dict]]:
    key = f'{entry.name}/{index:05d}'
    common = {'video': entry.name, 'frame': index}
    if dataset == 'humans':
      boxes = np.array([h.box for h in annotation.humans], np.float32).reshape(-1, 4)
      return [
        (
          key,
          {
            **common,
            'image': self._jpeg(image),
            'action': entry.label,
            'boxes': boxes,
            'labels': np.zeros(len(boxes), np.int32),
            'ignore': np.zeros(len(boxes), bool),
          },
        )
      ]
    out = []
    for h, human in enumerate(annotation.humans):
      crop = self._crop(entry, index, image, human, h, problems)
      if dataset == 'part_states' and not crop.parts:
        continue
      example = {
        **common,
        'image': self._jpeg(crop.image),
        'human': crop.number,
        'action': entry.label,
        'crop_box': np.array(crop.region, np.float32),
      }
      out.append(
        (
          f'{key}/{h}',
          {
            **example,
            **(self._part_rows(crop) if dataset == 'part_states' else self._part_list(crop)),
          },
        )
      )
    return out

  def _crop(
    self, entry, index, image, human: tps.Human, position: int, problems: list[str] | None
  ) -> _HumanCrop:
    """The human's context crop with its part boxes (and pseudo-label boxes) in crop
    pixels; a part box outside the crop is a problem."""
    height, width = image.shape[:2]
    region = augment.context_region(human.box, width, height, self.options.context)
    left, top, right, bottom = region
    number = human.number if human.number is not None else position + 1

    last = np.array([right - left - 1, bottom - top - 1] * 2, np.float32)

    def to_crop(box):
      """The box in crop pixels, clipped; None when it does not overlap the crop."""
      shifted = np.array(box, np.float32) - np.array([left, top, left, top], np.float32)
      if (shifted[2:] < 0).any() or (shifted[:2] > last[:2]).any():
        return None
      return np.clip(shifted, 0, last)

    parts, states = {}, {}
    for name, part in human.parts.items():
      box = to_crop(part.box)
      if box is None:
        record_problem(
          problems,
          tps.AnnotationError(
            f'{entry.annotation_path(index)}: humans[{position}].parts.'
            f"{name}: box {list(part.box)} lies outside its human's crop {list(region)}"
          ),
        )
        continue
      parts[name], states[name] = box, part.verb
    extra = []
    proposals = self.pseudo_labels.get((entry.name, index, number))
    if proposals:
      for name, box, ignore in pseudo_part_boxes(
        human.parts, proposals, positive=self.positive, low=self.low
      ):
        crop_box = to_crop(box)
        if crop_box is not None:
          extra.append((name, crop_box, ignore))
    return _HumanCrop(
      image=image[top:bottom, left:right],
      region=region,
      number=number,
      parts=parts,
      states=states,
      extra=extra,
    )

  def _part_list(self, crop: _HumanCrop) -> dict:
    items = [(name, box, False) for name, box in crop.parts.items()] + crop.extra
    return {
      'boxes': np.array([b for _, b, _ in items], np.float32).reshape(-1, 4),
      'labels': np.array([tps.PARTS.index(n) for n, _, _ in items], np.int32),
      'ignore': np.array([i for _, _, i in items], bool),
    }

  def _part_rows(self, crop: _HumanCrop) -> dict:
    boxes = np.zeros((len(tps.PARTS), 4), np.float32)
    states = np.full(len(tps.PARTS), -1, np.int32)
    for name, box in crop.parts.items():
      row = tps.PARTS.index(name)
      boxes[row], states[row] = box, self.vocab.state_ids[crop.states[name]]
    return {'part_boxes': boxes, 'part_valid': states >= 0, 'part_state': states}

  def _jpeg(self, image: np.ndarray) -> bytes:
    return video_lib.encode_jpeg(np.ascontiguousarray(image), self.options.jpeg_quality)
