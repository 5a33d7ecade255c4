"""Video and image coding helpers: PyAV decoding, frame folders, JPEG bytes.

Frames are numbered from 1 (mmaction2's rawframe convention, as the annotation files
`img_00001.json` ...). A frame folder holds `img_00001.jpg`, `img_00002.jpg`, ... (what
`python -m data_prep.extract_frames` writes). Every failure is a `VideoError` whose
message is one line, 'path: problem'.
"""

from __future__ import annotations

import io
import os
from collections.abc import Container, Iterator

import av
import numpy as np
from PIL import Image


class VideoError(ValueError):
  """A video or image that cannot be read; the message is 'path: problem'."""


def frame_file(folder: str, index: int) -> str:
  """FOLDER/img_00001.jpg for index 1."""
  return os.path.join(folder, f'img_{index:05d}.jpg')


def iter_video_frames(
  path: str, wanted: Container[int] | None = None, last: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
  """(index, RGB uint8 (H, W, 3)) of the decoded frames, in order, from index 1.

  Args:
    path: a video file.
    wanted: the indices to return (None: all); the others are decoded and dropped.
    last: stop after this index (None: the end of the video).
  """
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise VideoError(f'{path}: cannot open video ({_reason(e)})') from None
  with container:
    if not container.streams.video:
      raise VideoError(f'{path}: no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    try:
      for index, frame in enumerate(container.decode(stream), 1):
        if wanted is None or index in wanted:
          yield index, frame.to_ndarray(format='rgb24')
        if last is not None and index >= last:
          return
    except (av.FFmpegError, OSError) as e:
      raise VideoError(f'{path}: cannot decode video ({_reason(e)})') from None


def iter_folder_frames(folder: str, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
  """(index, RGB uint8) of the img_XXXXX.jpg files of a frame folder, for `indices`."""
  for index in indices:
    path = frame_file(folder, index)
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise VideoError(f'{path}: cannot read frame ({_reason(e)})') from None
    yield index, decode_jpeg(data, source=path)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
  """JPEG bytes of an RGB uint8 (H, W, 3) array."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def decode_jpeg(data: bytes, source: str = '<bytes>') -> np.ndarray:
  """RGB uint8 (H, W, 3) array of encoded image bytes (`source` names them in errors)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError) as e:
    raise VideoError(f'{source}: cannot decode image ({_reason(e)})') from None


def resize_short_side(image: np.ndarray, max_short_side: int) -> np.ndarray:
  """Downscales (never upscales) so that the shorter side is at most `max_short_side`."""
  height, width = image.shape[:2]
  short = min(height, width)
  if max_short_side <= 0 or short <= max_short_side:
    return image
  scale = max_short_side / short
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _reason(error: BaseException) -> str:
  """A one-line reason from an exception (without the file name FFmpeg appends)."""
  text = ' '.join(str(getattr(error, 'strerror', None) or error).split())
  return text or type(error).__name__
