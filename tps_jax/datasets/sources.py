"""The videos a dataset is built from (`VideoEntry`): a Kinetics-TPS root's annotated
train videos (`list_kinetics_tps`; frames read from extracted frame folders where there
are any) or a folder of class sub-folders of videos (`scan_video_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from tps_jax.data import kinetics_tps as tps


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  """A video to build from: its class, where its frames are, its annotated frames (read
  when its examples are made, so that memory does not grow with the dataset)."""

  name: str
  action: str
  label: int
  video_path: str
  frames_dir: str | None = None  # folder of img_XXXXX.jpg, used when set
  num_frames: int | None = None  # the flist's count (frame folders need it)
  annotation_dir: str | None = None
  annotated: tuple[int, ...] = ()  # indices of the annotated frames

  def annotation_path(self, index: int) -> str:
    return os.path.join(self.annotation_dir, tps.frame_name(index))


def record_problem(problems: list[str] | None, error: Exception) -> None:
  """Raises `error` (strict) or appends its one-line message (keep going)."""
  if problems is None:
    raise error
  problems.append(str(error))


def find_frames_dir(
  frames_root: str | None, action: str, name: str, split: str = 'train'
) -> str | None:
  """The frame folder of a video under FRAMES_ROOT, when it exists.

  Accepts `python -m data_prep.extract_frames`'s layout FRAMES_ROOT/<split>/<action>/
  <video> as well as FRAMES_ROOT/<action>/<video> and FRAMES_ROOT/<video>.
  """
  if not frames_root:
    return None
  for folder in (
    os.path.join(frames_root, split, action, name),
    os.path.join(frames_root, action, name),
    os.path.join(frames_root, name),
  ):
    if os.path.isdir(folder):
      return folder
  return None


def check_frames_root(frames_root: str | None) -> None:
  """Refuses frames extracted at another size: the annotations' boxes are in the
  videos' pixels (extract_frames records its settings in extract_frames.json)."""
  if not frames_root:
    return
  if not os.path.isdir(frames_root):
    raise tps.AnnotationError(f'{frames_root}: no such frames folder')
  for folder in (frames_root, os.path.dirname(os.path.abspath(frames_root))):
    settings_path = os.path.join(folder, 'extract_frames.json')
    if os.path.isfile(settings_path):
      with open(settings_path) as f:
        short_side = json.load(f).get('short_side')
      if short_side:
        raise tps.AnnotationError(
          f'{settings_path}: frames were resized (short_side={short_side}); the '
          "annotations' boxes are in the videos' pixels: extract without --short_side"
        )
      return


def list_kinetics_tps(
  root: str, vocab: tps.Vocab, *, frames_root: str | None = None, problems: list[str] | None = None
) -> list[VideoEntry]:
  """The annotated train videos of a Kinetics-TPS root; an annotation file past the
  video's frame count (list/video_train_flist.csv) is a problem."""
  annotations = os.path.join(root, 'train_annotations')
  check_frames_root(frames_root)
  if not os.path.isdir(annotations):
    raise tps.AnnotationError(
      f'{annotations}: no such folder (a Kinetics-TPS root has '
      'train_videos/, train_annotations/ and list/)'
    )
  entries = []
  for video in tps.iter_videos(root, 'train', problems=problems):
    annotated = []
    for index in video.annotated_frames():
      if index > video.num_frames:
        record_problem(
          problems,
          tps.AnnotationError(
            f"{video.annotation_path(index)}: frame {index} is past the video's "
            f'{video.num_frames} frames'
          ),
        )
      else:
        annotated.append(index)
    entries.append(
      VideoEntry(
        name=video.name,
        action=video.action,
        label=vocab.action_ids[video.action],
        video_path=video.video_path,
        frames_dir=find_frames_dir(frames_root, video.action, video.name),
        num_frames=video.num_frames,
        annotation_dir=video.annotation_dir,
        annotated=tuple(annotated),
      )
    )
  return entries


def scan_video_folder(
  folder: str, *, exclude: str | None = None
) -> tuple[list[str], list[VideoEntry]]:
  """(class names, videos) of a folder of class sub-folders of videos; `exclude` (the
  output folder, when it lies inside) is not a class."""
  if not os.path.isdir(folder):
    raise tps.AnnotationError(f'{folder}: no such folder')
  excluded = os.path.realpath(exclude) if exclude else None
  actions = sorted(
    d.name
    for d in os.scandir(folder)
    if d.is_dir() and not d.name.startswith('.') and os.path.realpath(d.path) != excluded
  )
  entries, seen = [], {}
  for label, action in enumerate(actions):
    for item in sorted(os.scandir(os.path.join(folder, action)), key=lambda e: e.name):
      if item.is_file() and item.name.lower().endswith(tps.VIDEO_EXTENSIONS):
        name = tps.video_name_of(item.name)
        if name in seen:
          raise tps.AnnotationError(f'{item.path}: video name {name!r} also in {seen[name]}')
        seen[name] = item.path
        entries.append(VideoEntry(name=name, action=action, label=label, video_path=item.path))
  if not entries:
    raise tps.AnnotationError(
      f'{folder}: no videos ({", ".join(tps.VIDEO_EXTENSIONS)}) in class sub-folders'
    )
  return actions, entries
