"""The input stage of end-to-end parsing: which videos, decoded ahead of the device.

Sources (`list_videos`):
- a Kinetics-TPS root and a split: `test` / `train` (ROOT/<split>_videos, with their
  list/video_<split>_flist.csv), or `val`: the train videos that `python -m
  data_prep.build` held out (its datasets' metadata lists them);
- a folder of videos (class sub-folders, whose names are the ground-truth action, or
  videos directly in it);
- single video files (two with one name are refused: the submission is keyed by name).
Every video is a `VideoItem` (name, path, ground-truth action if known); a video that
is listed but has no file is a problem line, not an item.

`decode` turns one video into what the pipeline needs, in one PyAV pass: the scored
frames (1, 6, 11, ...) on the human detector's canvas (`pipeline.prepare_frame`) with
their sizes, and every frame with its short side scaled to the action recogniser's
`clip_short_side` (what its clips dataset was built from). `prefetch` decodes the next
videos in background threads while the device works on the current ones; a video
that cannot be read comes back as its one-line error, in order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from tps_jax.data import kinetics_tps as tps
from tps_jax.data import tfds_dirs
from tps_jax.data import video as video_lib


@dataclasses.dataclass(frozen=True)
class VideoItem:
  name: str
  path: str
  action: str | None = None  # ground truth, when the source tells it


@dataclasses.dataclass
class DecodedVideo:
  item: VideoItem
  frame_indices: list[int]  # the scored frames, 1-based
  canvases: np.ndarray  # (F, H, W, 3) uint8 on the canvas
  frame_sizes: np.ndarray  # (F, 2) int32 (height, width)
  clip_frames: list[np.ndarray]  # every frame, short side <= clip_short_side


def val_videos(root: str) -> list[str]:
  """The videos `data_prep.build` held out as `val` (any built dataset's metadata)."""
  folders = sorted(glob.glob(os.path.join(root, 'tfds', 'tps_*', '*', 'dataset_info.json')))
  for info in folders:
    settings = tfds_dirs.builder_from_directory(os.path.dirname(info)).info.metadata.get(
      'settings', {}
    )
    if 'val_videos' in settings:
      return list(settings['val_videos'])
  raise FileNotFoundError(
    f'{os.path.join(root, "tfds")}: no built dataset; the val split '
    f'is defined by python -m data_prep.build --data_root {root}'
  )


def list_videos(
  *,
  data_root: str = '',
  split: str = 'test',
  video_folder: str = '',
  video_files: Sequence[str] = (),
  problems: list[str],
) -> list[VideoItem]:
  """The videos to parse, sorted by name (module docstring); problems are appended."""
  if video_files:
    return _file_videos(video_files)
  if video_folder:
    return _folder_videos(video_folder, problems)
  annotation_split = 'train' if split == 'val' else split
  videos = list(tps.iter_videos(data_root, annotation_split, problems=problems))
  if split == 'val':
    keep = set(val_videos(data_root))
    videos = [v for v in videos if v.name in keep]
  return [VideoItem(v.name, v.video_path, v.action) for v in videos]


def _file_videos(paths: Sequence[str]) -> list[VideoItem]:
  """Videos given one by one; two with one name are refused (ValueError), since the
  submission holds one entry per name and one would be lost."""
  items = {}
  for path in paths:
    name = tps.video_name_of(path)
    if name in items:
      raise ValueError(
        f'--video {path}: video name {name!r} also given by --video {items[name].path}; '
        'the submission is keyed by name (rename one, or parse them in separate runs)'
      )
    items[name] = VideoItem(name, os.path.abspath(path))
  return list(items.values())


def split_ground_truth(data_root: str, split: str, problems: list[str]) -> tuple[dict, dict]:
  """(gt_vid_result, gt_part_result) of exactly the videos `list_videos` gives for
  `data_root` and `split` (`val`: the held-out train videos, not the whole train split,
  whose other videos would score 0 as missing); problems are appended, once each."""
  names = {v.name for v in list_videos(data_root=data_root, split=split, problems=problems)}
  annotation_split = 'train' if split == 'val' else split
  vid, part = tps.ground_truth(data_root, annotation_split, problems=problems)
  problems[:] = list(dict.fromkeys(problems))  # both passes list the same unreadable videos
  return (
    {k: v for k, v in vid.items() if k in names},
    {k: v for k, v in part.items() if k in names},
  )


def _folder_videos(folder: str, problems: list[str]) -> list[VideoItem]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{folder}: no such folder')
  items = {}
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    entries = [(None, entry)]
    if entry.is_dir() and not entry.name.startswith('.'):
      entries = [(entry.name, e) for e in sorted(os.scandir(entry.path), key=lambda e: e.name)]
    for action, file in entries:
      if file.is_file() and file.name.lower().endswith(tps.VIDEO_EXTENSIONS):
        name = tps.video_name_of(file.name)
        if name in items:
          problems.append(f'{file.path}: video name {name!r} also in {items[name].path}; skipped')
          continue
        items[name] = VideoItem(name, file.path, action)
  return sorted(items.values(), key=lambda v: v.name)


def decode(
  item: VideoItem, *, prepare: Callable, clip_short_side: int, frame_stride: int = tps.FRAME_STRIDE
) -> DecodedVideo:
  """One PyAV pass over the video (module docstring); VideoError if unreadable."""
  indices, canvases, sizes, clip_frames = [], [], [], []
  if not os.path.isfile(item.path):
    raise video_lib.VideoError(f'{item.path}: no such video file')
  for index, image in video_lib.iter_video_frames(item.path):
    clip_frames.append(video_lib.resize_short_side(image, clip_short_side))
    if (index - 1) % frame_stride == 0:
      canvas, size = prepare(image)
      indices.append(index)
      canvases.append(canvas)
      sizes.append(size)
  if not indices:
    raise video_lib.VideoError(f'{item.path}: no frame decoded')
  return DecodedVideo(item, indices, np.stack(canvases), np.asarray(sizes, np.int32), clip_frames)


def prefetch(
  items: Iterable[VideoItem],
  load: Callable[[VideoItem], DecodedVideo],
  *,
  ahead: int = 2,
  threads: int = 2,
) -> Iterator[tuple[VideoItem, DecodedVideo | None, str | None]]:
  """(item, decoded video or None, error line or None) in order, `ahead` videos decoded
  in the background (PyAV releases the GIL while decoding)."""
  pending = collections.deque()
  items = iter(items)
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:

    def submit():
      item = next(items, None)
      if item is not None:
        pending.append((item, pool.submit(load, item)))

    for _ in range(max(1, ahead)):
      submit()
    while pending:
      item, future = pending.popleft()
      submit()
      try:
        yield item, future.result(), None
      except (video_lib.VideoError, OSError) as e:
        yield item, None, str(e)
