r"""Draws a video's parsing: each human, its part boxes coloured by part with the state
tag, and the video's action (the ground truth beside it when known).

  python -m tps_jax.visualize --pred PRED_DIR --data_root DATA --video NAME --out FILE
      [--gt GT_DIR] [--show_gt] [--scale S] [--max_frames N]
  python -m tps_jax.visualize --pred PRED_DIR --video_path FILE.mp4 --out FILE

PRED_DIR holds pred_vid_result.json and pred_part_result.json (a submission). FILE's
extension picks the picture:
- .png: a contact sheet, a grid of up to --max_frames (default 16) of the predicted
  frames, spread evenly over the video;
- .gif or .mp4 (H.264): the predicted frames in order (only those: the scored frames
  1, 6, 11, ...), shown at the video's fps divided by the gap between them (fps / 5),
  so the video plays at its own speed.

The video is looked up by name under DATA/{train,test}_videos/<class>/, or read from
--video_path (a video outside a dataset). Ground truth: --gt GT_DIR (gt_vid_result.json,
gt_part_result.json) when given, else the dataset: the class folder is the action, the
<split>_annotations/ files the boxes; --video_path alone has none. --show_gt draws the
ground-truth boxes dashed and adds the GT state to a tag whose state is wrong.
Small videos are upscaled by an integer factor (--scale) so that the tags can be read.
"""

from __future__ import annotations

import fractions
import math
import os
import re
import sys

import av
import numpy as np
from absl import flags
from PIL import Image

from tps_jax import cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.data import video as video_lib
from tps_jax.metrics import drawing

OUTPUT_EXTENSIONS = ('.png', '.gif', '.mp4')
SHEET_FRAMES = 16  # default frames of a contact sheet
SHEET_MAX_SIDE = 2400  # an automatic scale keeps the sheet within this
_FRAME_KEY = re.compile(r'^img_(\d+)\.json$')

_PRED = flags.DEFINE_string(
  'pred', None, 'Folder with pred_vid_result.json, pred_part_result.json.'
)
_DATA_ROOT = flags.DEFINE_string('data_root', None, 'Kinetics-TPS root holding the video.')
_VIDEO = flags.DEFINE_string('video', None, "Video name (default: --video_path's name).")
_VIDEO_PATH = flags.DEFINE_string(
  'video_path', None, "A video file outside a dataset root (then no ground truth but --gt's)."
)
_GT = flags.DEFINE_string(
  'gt',
  None,
  'Folder with gt_vid_result.json, gt_part_result.json '
  "(ground truth instead of the dataset's annotations).",
)
_OUT = flags.DEFINE_string('out', None, 'Output: .png (contact sheet), .gif or .mp4.')
_SHOW_GT = flags.DEFINE_bool(
  'show_gt', False, 'Draw the ground-truth boxes dashed and the GT state on wrong tags.'
)
_SCALE = flags.DEFINE_float(
  'scale',
  0,
  'Display pixels per video pixel (0: an integer '
  f'upscaling to >= {drawing.MIN_DISPLAY_WIDTH} px wide; a .png '
  f'sheet is kept within about {SHEET_MAX_SIDE} px).',
)
_MAX_FRAMES = flags.DEFINE_integer(
  'max_frames', 0, 'Predicted frames drawn, spread evenly (0: 16 for a .png, all for .gif / .mp4).'
)


class UsageError(ValueError):
  """A user mistake; the message is one line."""


def main(argv) -> int:
  del argv
  try:
    out = _check_flags()
    name = _VIDEO.value or tps.video_name_of(_VIDEO_PATH.value)
    pred_action, pred_frames = load_prediction(_PRED.value, name)
    video_path, gt_action, gt_frames = locate_video(name, pred_frames)
    indices = choose_frames(sorted(pred_frames), _max_frames(out))
    frames = decode_frames(video_path, indices)
    pictures = draw_pictures(
      frames,
      pred_frames,
      pred_action,
      gt_action,
      gt_frames if _SHOW_GT.value else None,
      sheet=_is_sheet(out),
    )
    height, width = write_output(
      out,
      pictures,
      name=name,
      video_path=video_path,
      predicted=len(pred_frames),
      indices=sorted(frames),
    )
  except (UsageError, submission.SubmissionError, tps.AnnotationError, video_lib.VideoError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {out}: {len(frames)} frame(s) of {name}, {width}x{height}')
  return 0


def _check_flags() -> str:
  """The output path, after the checks a user mistake fails."""
  if not _PRED.value:
    raise UsageError('--pred is required (a folder with pred_part_result.json)')
  if not _OUT.value:
    raise UsageError('--out is required (.png, .gif or .mp4)')
  ext = os.path.splitext(_OUT.value)[1].lower()
  if ext not in OUTPUT_EXTENSIONS:
    raise UsageError(
      f'--out {_OUT.value}: unsupported extension {ext or "(none)"!r}; '
      f'use {", ".join(OUTPUT_EXTENSIONS)}'
    )
  if bool(_DATA_ROOT.value) == bool(_VIDEO_PATH.value):
    raise UsageError('give either --data_root (with --video) or --video_path')
  if _DATA_ROOT.value and not _VIDEO.value:
    raise UsageError('--video NAME is required with --data_root')
  if _VIDEO_PATH.value and not os.path.isfile(_VIDEO_PATH.value):
    raise UsageError(f'--video_path {_VIDEO_PATH.value}: no such file')
  if _SCALE.value < 0 or _MAX_FRAMES.value < 0:
    raise UsageError('--scale and --max_frames must not be negative')
  return _OUT.value


def _max_frames(out: str) -> int | None:
  if _MAX_FRAMES.value:
    return _MAX_FRAMES.value
  return SHEET_FRAMES if _is_sheet(out) else None


def _is_sheet(out: str) -> bool:
  return out.lower().endswith('.png')


def load_prediction(pred_dir: str, name: str) -> tuple[str | None, dict[int, list]]:
  """(predicted action or None, {frame index: humans}) of one video of a submission."""
  vid_path, part_path = (os.path.join(pred_dir, f) for f in submission.PRED_FILES)
  vid_result, part_result = submission.load_json(vid_path), submission.load_json(part_path)
  if not isinstance(part_result, dict) or name not in part_result:
    raise UsageError(f'{part_path}: no prediction for video {name!r}')
  action = vid_result.get(name) if isinstance(vid_result, dict) else None
  if action is None:
    print(f'warning: {vid_path}: no action for video {name!r}', file=sys.stderr)
  frames = _frames_by_index(part_result[name], part_path, name, 'pred')
  if not frames:
    raise UsageError(f'{part_path}: video {name!r} has no predicted frame')
  return action, frames


def _frames_by_index(frames, path: str, name: str, kind: str) -> dict[int, list]:
  """{frame index: humans list} of one video's frames, after the submission's checks."""
  problems = submission.validate({}, {name: frames}, kind=kind, file_name=path)
  if isinstance(frames, dict):
    problems += [
      f'{path}: {name}/{key}: not a frame name img_XXXXX.json'
      for key in frames
      if not _FRAME_KEY.match(key)
    ]
  if problems:
    more = f' (and {len(problems) - 1} more problem(s))' if len(problems) > 1 else ''
    raise UsageError(problems[0] + more)
  return {int(_FRAME_KEY.match(key).group(1)): frame['humans'] for key, frame in frames.items()}


def locate_video(name: str, pred_frames) -> tuple[str, str | None, dict[int, list]]:
  """(video file, GT action or None, {frame index: GT humans}) from the flags."""
  gt_action, gt_frames = None, {}
  if _VIDEO_PATH.value:
    video_path = _VIDEO_PATH.value
  else:
    video = find_video(_DATA_ROOT.value, name)
    video_path, gt_action = video.video_path, video.action
    gt_frames = annotation_frames(video, pred_frames)
  if _GT.value:
    gt_action, gt_frames = gt_dir_frames(_GT.value, name)
  return video_path, gt_action, gt_frames


def find_video(root: str, name: str) -> tps.Video:
  """The dataset's video called `name`, from either split."""
  searched, problems = [], []
  for split in tps.SPLITS:
    videos_dir = os.path.join(root, f'{split}_videos')
    if not os.path.isdir(videos_dir):
      continue
    searched.append(videos_dir)
    for video in tps.iter_videos(root, split, problems=problems):
      if video.name == name:
        return video
  if not searched:
    raise UsageError(f'--data_root {root}: no train_videos/ or test_videos/ folder')
  skipped = next((p for p in problems if name in p), None)
  if skipped:
    raise UsageError(f'video {name!r} skipped: {skipped}')
  raise UsageError(f'video {name!r} not found in {" or ".join(searched)}')


def annotation_frames(video: tps.Video, pred_frames) -> dict[int, list]:
  """{frame index: GT humans} of the dataset's annotation files for the predicted frames."""
  frames, problems = {}, []
  for index in pred_frames:
    path = video.annotation_path(index)
    if path and os.path.exists(path):
      frame = tps.load_frame(path, problems=problems)
      if frame is not None:
        frames[index] = tps.frame_to_json(frame, objects=False)['humans']
  for problem in problems:
    print(f'warning: {problem}', file=sys.stderr)
  return frames


def gt_dir_frames(gt_dir: str, name: str) -> tuple[str | None, dict[int, list]]:
  """(GT action, {frame index: GT humans}) of one video from a ground-truth folder."""
  gt_vid, gt_part = submission.load_pair(gt_dir, 'gt')
  if name not in gt_vid and name not in gt_part:
    print(f'warning: {gt_dir}: no ground truth for video {name!r}', file=sys.stderr)
  path = os.path.join(gt_dir, submission.GT_FILES[1])
  return gt_vid.get(name), _frames_by_index(gt_part.get(name, {}), path, name, 'gt')


def choose_frames(indices: list[int], max_frames: int | None) -> list[int]:
  """At most `max_frames` of the sorted `indices`, spread evenly, first and last kept."""
  if max_frames is None or len(indices) <= max_frames:
    return indices
  picks = np.linspace(0, len(indices) - 1, max_frames).round().astype(int)
  return [indices[i] for i in sorted(set(picks))]


def decode_frames(video_path: str, indices: list[int]) -> dict[int, np.ndarray]:
  """{index: RGB uint8 frame} of the wanted frames that the video has."""
  frames = dict(video_lib.iter_video_frames(video_path, wanted=set(indices), last=max(indices)))
  missing = [i for i in indices if i not in frames]
  if not frames:
    raise UsageError(
      f'{video_path}: none of the predicted frames {indices[0]}...{indices[-1]} is in the video'
    )
  if missing:
    print(
      f'warning: {video_path}: {len(missing)} predicted frame(s) past its last frame '
      f'(from {missing[0]}) not drawn',
      file=sys.stderr,
    )
  return frames


def draw_pictures(
  frames: dict[int, np.ndarray], pred_frames, pred_action, gt_action, gt_frames, *, sheet: bool
) -> list[np.ndarray]:
  """One picture per decoded frame: the parsing drawn at the display scale, a header."""
  height, width = next(iter(frames.values())).shape[:2]
  scale = _SCALE.value or drawing.auto_scale(width)
  if sheet and not _SCALE.value:
    columns, rows = sheet_grid(len(frames))
    scale = min(scale, SHEET_MAX_SIDE / (columns * width), SHEET_MAX_SIDE / (rows * height))
  font_size = drawing.font_size_for(round(height * scale), round(width * scale))
  action = drawing.action_segments(pred_action, gt_action)
  pictures = []
  for index, frame in sorted(frames.items()):
    picture = drawing.draw_frame(
      frame,
      pred_frames[index],
      scale=scale,
      font_size=font_size,
      gt_humans=None if gt_frames is None else gt_frames.get(index, []),
    )
    pictures.append(
      drawing.add_header(
        picture, action, [(f'frame {index}', drawing.TEXT_COLOUR)], font_size=font_size
      )
    )
  return pictures


def sheet_grid(count: int) -> tuple[int, int]:
  """(columns, rows) of a near-square contact sheet."""
  columns = math.ceil(math.sqrt(count))
  return columns, math.ceil(count / columns)


def write_output(
  out: str,
  pictures: list[np.ndarray],
  *,
  name: str,
  video_path: str,
  predicted: int,
  indices: list[int],
) -> tuple[int, int]:
  """Writes the pictures to `out` (by its extension) through a temporary file; returns
  the (height, width) written."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  ext = os.path.splitext(out)[1].lower()
  tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f'.tmp-{os.path.basename(out)}')
  try:
    if ext == '.png':
      sheet = drawing.contact_sheet(pictures, sheet_grid(len(pictures))[0])
      font_size = drawing.font_size_for(*pictures[0].shape[:2])
      sheet = drawing.add_header(
        sheet,
        [(name, drawing.TEXT_COLOUR)],
        [(f'{len(indices)} of {predicted} predicted frames', drawing.TEXT_COLOUR)],
        font_size=font_size,
      )
      Image.fromarray(sheet).save(tmp, format='PNG')
      size = sheet.shape[:2]
    else:
      size = pictures[0].shape[:2]
      fps = video_fps(video_path) / frame_gap(indices)
      (write_gif if ext == '.gif' else write_mp4)(tmp, pictures, fps)
    os.replace(tmp, out)
    return size
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def frame_gap(indices: list[int]) -> int:
  """The most common step between the drawn frames (5 for scored frames; 5 for one)."""
  steps = np.diff(indices)
  return int(np.bincount(steps).argmax()) if len(steps) else tps.FRAME_STRIDE


def video_fps(path: str) -> fractions.Fraction:
  """The video stream's average frame rate (30 when the file does not say)."""
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate
  except (av.FFmpegError, OSError, IndexError) as e:
    raise video_lib.VideoError(f'{path}: cannot read the frame rate ({e})') from None
  return fractions.Fraction(rate) if rate else fractions.Fraction(30)


def write_gif(path: str, pictures: list[np.ndarray], fps: fractions.Fraction) -> None:
  images = [Image.fromarray(p) for p in pictures]
  images[0].save(
    path,
    format='GIF',
    save_all=True,
    append_images=images[1:],
    duration=10 * round(100 / fps),
    loop=0,
  )  # GIF counts 1/100 s


def write_mp4(path: str, pictures: list[np.ndarray], fps: fractions.Fraction) -> None:
  """H.264 (yuv420p, so even sides: an odd side gains a row / column) at `fps`."""
  height, width = pictures[0].shape[:2]
  even_height, even_width = height + height % 2, width + width % 2
  with av.open(path, 'w', format='mp4') as container:
    codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
    stream = container.add_stream(codec, rate=fps)
    stream.time_base = 1 / fps
    stream.width, stream.height, stream.pix_fmt = even_width, even_height, 'yuv420p'
    if codec == 'libx264':
      stream.options = {'crf': '18'}
    for t, picture in enumerate(pictures):
      padded = np.pad(
        picture, ((0, even_height - height), (0, even_width - width), (0, 0)), mode='edge'
      )
      frame = av.VideoFrame.from_ndarray(padded, format='rgb24')
      frame.pts = t
      container.mux(stream.encode(frame))
    container.mux(stream.encode())


if __name__ == '__main__':
  cli.run(main)
