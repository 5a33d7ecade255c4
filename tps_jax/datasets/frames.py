r"""Extracts the frames of Kinetics-TPS videos as JPEG files (mmaction2's rawframes).

  report = extract(ROOT, out=None, splits=('train', 'test'), jobs=1, short_side=None,
                   jpeg_quality=95, only_annotated=False, progress=False)

Command line: `python -m data_prep.extract_frames --data_root ROOT` (data_prep/).
Writes `<out>/<split>/<class>/<video>/img_00001.jpg, img_00002.jpg, ...` (frames numbered
from 1, as the annotation files; `out` defaults to ROOT/frames). Every frame is decoded
and written unless `only_annotated`, which writes the frames that have an annotation
file (the scored frames 1, 6, 11, ... for a video without annotations, as in the test
split). `short_side` S resizes so the shorter side is S pixels; the annotations' boxes
are in the original pixels, so a reader of such frames scales them by the ratio.

Resumable: a video is written into `<class>/.tmp-<video>` and renamed to `<video>` once
all its frames are written, so a folder named after a video is always complete. A rerun
skips finished videos and deletes what a killed run left half-written. The options are
recorded in `<out>/extract_frames.json`; a rerun with other options is refused, so that
frames of two settings never mix.

The number of decoded frames should equal the video's count in list/video_<split>_flist.csv;
a difference is a warning (all decoded frames are written). A video that cannot be
decoded is an error: its folder is not written, the others go on, and the errors are
listed in the report (`path: problem`; the command line exits 1). Bad options, and
options other than those recorded, raise `SettingsError`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterable, Sequence

import av

from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.data.video import VideoError
from tps_jax.datasets import processes

SETTINGS_FILE = 'extract_frames.json'
TMP_PREFIX = '.tmp-'
FRAME_EXT = '.jpg'


class SettingsError(ValueError):
  """Options the extractor refuses, or an output folder that holds frames extracted with
  other options; the message is one line."""


def frames_dir(out: str, split: str, action: str, video_name: str) -> str:
  """The folder of a video's frames: <out>/<split>/<class>/<video>."""
  return os.path.join(out, split, action, video_name)


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
  """(width, height) after scaling the shorter side to short_side (None: unchanged)."""
  if not short_side:
    return width, height
  scale = short_side / min(width, height)
  return max(1, round(width * scale)), max(1, round(height * scale))


def wanted_frames(video: tps.Video, only_annotated: bool) -> list[int] | None:
  """The frame indices to write (None: all): with only_annotated, the annotated frames,
  or the scored frames for a video without annotation files."""
  if not only_annotated:
    return None
  return video.annotated_frames() or tps.sampled_frames(video.num_frames)


def extract_video(
  video_path: str,
  out_dir: str,
  *,
  frames: Iterable[int] | None = None,
  short_side: int | None = None,
  jpeg_quality: int = 95,
) -> tuple[int, list[int]]:
  """Decodes a video to the end and writes frames (all, or the given indices) as
  out_dir/img_XXXXX.jpg; returns (number of frames decoded, indices written).

  Raises VideoError when the video cannot be opened or decoded, or yields no frame.
  """
  wanted = None if frames is None else set(frames)
  written, count = [], 0
  try:
    with av.open(video_path) as container:
      if not container.streams.video:
        raise VideoError(f'{video_path}: no video stream')
      for count, frame in enumerate(container.decode(container.streams.video[0]), 1):
        if wanted is not None and count not in wanted:
          continue
        size = output_size(frame.width, frame.height, short_side)
        image = (
          frame.to_image()
          if size == (frame.width, frame.height)
          else frame.to_image(width=size[0], height=size[1], interpolation='AREA')
        )
        path = os.path.join(out_dir, tps.frame_name(count, FRAME_EXT))
        try:
          image.save(path, format='JPEG', quality=jpeg_quality)
        except OSError as e:
          raise VideoError(f'{path}: cannot write ({e})') from None
        written.append(count)
  except av.FFmpegError as e:
    where = f' after frame {count}' if count else ''
    raise VideoError(
      f'{video_path}: cannot decode{where} ({getattr(e, "strerror", None) or e})'
    ) from None
  if not count:
    raise VideoError(f'{video_path}: no frame decodes (the file may be truncated)')
  return count, written


@dataclasses.dataclass(frozen=True)
class _Job:
  video: tps.Video
  out_dir: str  # the video's final frames folder
  flist_path: str
  frames: tuple[int, ...] | None
  short_side: int | None
  jpeg_quality: int


@dataclasses.dataclass
class VideoResult:
  frames_written: int = 0
  warnings: list[str] = dataclasses.field(default_factory=list)
  error: str | None = None


def extract_one(job: _Job) -> VideoResult:
  """Extracts one video into a temporary folder, renamed into place when complete."""
  video = job.video
  parent, name = os.path.split(job.out_dir)
  tmp = os.path.join(parent, TMP_PREFIX + name)
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    decoded, written = extract_video(
      video.video_path,
      tmp,
      frames=job.frames,
      short_side=job.short_side,
      jpeg_quality=job.jpeg_quality,
    )
  except VideoError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    return VideoResult(error=str(e))
  warnings = []
  if decoded != video.num_frames:
    warnings.append(
      f'{video.video_path}: warning: {decoded} frames decoded, but '
      f'{job.flist_path} lists {video.num_frames}'
    )
  if job.frames is not None:
    absent = sorted(set(job.frames) - set(written))
    if absent:
      names = ', '.join(tps.frame_name(i, FRAME_EXT) for i in absent)
      warnings.append(
        f'{video.video_path}: warning: frames past the {decoded} decoded ones not written: {names}'
      )
  os.replace(tmp, job.out_dir)
  return VideoResult(frames_written=len(written), warnings=warnings)


@dataclasses.dataclass
class ExtractReport:
  out: str
  extracted: int = 0  # videos written in this run
  skipped: int = 0  # videos already finished
  frames: int = 0  # frames written in this run
  removed_leftovers: int = 0  # half-written folders of an interrupted run, deleted
  warnings: list[str] = dataclasses.field(default_factory=list)
  errors: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.errors

  def summary(self) -> str:
    return (
      f'{self.out}: {self.extracted} video(s) extracted ({self.frames} frames), '
      f'{self.skipped} already done, {self.removed_leftovers} unfinished folder(s) '
      f'of an interrupted run removed; {len(self.warnings)} warning(s), '
      f'{len(self.errors)} error(s)'
    )


def check_settings(out: str, settings: dict) -> None:
  """Records the options in <out>/extract_frames.json; raises SettingsError when the
  folder holds frames extracted with other options."""
  path = os.path.join(out, SETTINGS_FILE)
  if os.path.exists(path):
    previous = submission.load_json(path)
    if previous != settings:
      raise SettingsError(
        f'{path}: frames there were extracted with {previous}, not '
        f'{settings}; choose another output folder or delete it'
      )
  else:
    submission.write_json_atomic(path, settings)


def remove_leftovers(split_dir: str) -> int:
  """Deletes the '.tmp-*' folders of an interrupted run under <out>/<split>/<class>/."""
  removed = 0
  if not os.path.isdir(split_dir):
    return removed
  for action in os.scandir(split_dir):
    if not action.is_dir():
      continue
    for entry in os.scandir(action.path):
      if entry.name.startswith(TMP_PREFIX):
        shutil.rmtree(entry.path) if entry.is_dir() else os.remove(entry.path)
        removed += 1
  return removed


def extract(
  root: str,
  out: str | None = None,
  splits: Sequence[str] = tps.SPLITS,
  *,
  jobs: int = 1,
  short_side: int | None = None,
  jpeg_quality: int = 95,
  only_annotated: bool = False,
  progress: bool = False,
) -> ExtractReport:
  """Extracts the frames of every video of the splits (see the module docstring) with
  `jobs` worker processes."""
  if not os.path.isdir(root):
    raise SettingsError(f'{root}: no such folder')
  if short_side is not None and short_side < 1:
    raise SettingsError(f'short_side={short_side}: must be positive')
  if not 1 <= jpeg_quality <= 100:
    raise SettingsError(f'jpeg_quality={jpeg_quality}: must be in 1..100')
  out = out or os.path.join(root, 'frames')
  # The key stays "quality": folders extracted before the flag was named jpeg_quality.
  check_settings(
    out, {'short_side': short_side, 'quality': jpeg_quality, 'only_annotated': only_annotated}
  )
  report = ExtractReport(out=out)
  video_jobs = []
  for split in splits:
    report.removed_leftovers += remove_leftovers(os.path.join(out, split))
    flist_path = os.path.join(root, 'list', f'video_{split}_flist.csv')
    try:
      videos = list(tps.iter_videos(root, split, problems=report.errors))
    except tps.AnnotationError as e:
      report.errors.append(f'{e} (the {split} split was not extracted)')
      continue
    for video in videos:
      out_dir = frames_dir(out, split, video.action, video.name)
      if os.path.isdir(out_dir):
        report.skipped += 1
        continue
      os.makedirs(os.path.dirname(out_dir), exist_ok=True)
      frames = wanted_frames(video, only_annotated)
      video_jobs.append(
        _Job(
          video=video,
          out_dir=out_dir,
          flist_path=flist_path,
          frames=None if frames is None else tuple(frames),
          short_side=short_side,
          jpeg_quality=jpeg_quality,
        )
      )
  failed = [0]

  def count(result: VideoResult) -> str:
    failed[0] += result.error is not None
    return f'errors={failed[0]}'

  for result in processes.parallel_map(
    extract_one, video_jobs, jobs=jobs, desc='extract frames', progress=progress, on_result=count
  ):
    report.warnings += result.warnings
    if result.error is not None:
      report.errors.append(result.error)
    else:
      report.extracted += 1
      report.frames += result.frames_written
  return report
