r"""Checks a Kinetics-TPS root: layout, lists, frame counts, every annotation, every video.

  report = validate(ROOT, splits=('train', 'test'), video_mode='full', box_tolerance=0,
                    jobs=1, progress=False)
  print(format_summary(report))

Command line: `python -m data_prep.validate --data_root ROOT` (data_prep/validate.py).

What is checked (docs/dataset.md):
- layout: `<split>_videos/`, `train_annotations/`, `list/body_part.txt`, `part_stat.txt`,
  `object.txt`, `list/video_<split>_flist.csv` (extra entries in the root are allowed);
- the lists (body_part.txt holds the 10 parts; names are unique) and the flist CSVs;
- every video listed has a file and every file is listed, once; every video of an
  annotated split has an annotation folder and every annotation folder has its video
  (in the same class folder); test classes are train classes;
- every video decodes (video_mode 'full': decoded to the end, since a video with a
  damaged index opens and then yields nothing; 'quick': opened, its header's frame
  count read, and its first frame decoded; 'none': not opened) and its frame count
  equals the CSV's;
- every annotation file parses with the reader's schema (tps_jax.data.kinetics_tps in its
  problem-collecting mode): boxes finite with x1 < x2 and y1 < y2, part names among the
  10 parts, part states in list/part_stat.txt, object names in list/object.txt, integer
  `number`s, and boxes inside the image whose size is read from the video. A box may
  reach x2 = W, y2 = H (one pixel past the last column and row in the inclusive-pixel
  convention: exclusive corners); `box_tolerance` T accepts T more pixels on the right
  and bottom (the messages then name the widened size). Annotation files must be named
  img_XXXXX.json with an index within the video's frame count.

Every problem is a line `path: problem` of `Report.problems`, found in one whole run
(nothing stops at the first; the command line exits 1 when there is any). Warnings
(`path: warning: ...`, in `Report.warnings`) flag what is legal but suspicious:
scored frames (1, 6, 11, ...) without an annotation file, two humans of a frame with
the same number. The summary (`format_summary`) counts videos, frames (the CSVs'),
annotated frames, humans, parts and objects per split; with `stats=True` also the
videos per action and the parts per state.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable, Sequence

import av

from tps_jax.data import kinetics_tps as tps
from tps_jax.data.video import VideoError
from tps_jax.datasets import processes

VIDEO_MODES = ('full', 'quick', 'none')
LIST_FILES = ('body_part.txt', 'part_stat.txt', 'object.txt')
_VIDEO_MODE_WORDS = {
  'full': 'decoded to the end',
  'quick': 'opened, first frame decoded',
  'none': 'not opened',
}


@dataclasses.dataclass
class SplitStats:
  """What a split holds; frames are the flist CSV's counts."""

  videos: int = 0
  frames: int = 0
  annotated_frames: int = 0
  humans: int = 0
  parts: int = 0
  objects: int = 0
  actions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  states: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, other: SplitStats) -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass
class VideoReport:
  problems: list[str]
  warnings: list[str]
  stats: SplitStats


@dataclasses.dataclass
class Report:
  """The outcome of validate(): problems and warnings in the order found, per-split
  statistics, and notes on what was not checked."""

  root: str
  video_mode: str
  problems: list[str]
  warnings: list[str]
  splits: dict[str, SplitStats]
  notes: list[str]

  @property
  def ok(self) -> bool:
    return not self.problems


# ---------------------------------------------------------------------------- videos


def probe_video(path: str, *, full: bool = True) -> tuple[int, int, int]:
  """(number of frames, width, height) of a video's first video stream.

  full: decodes every frame and counts them. Otherwise reads the count from the
  container's header (counting packets when the header has none) and decodes the first
  frame only. Raises VideoError when the file cannot be opened or no frame decodes.
  """
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f'{path}: no video stream')
      stream = container.streams.video[0]
      header_frames = stream.frames
      frames = container.decode(stream)
      first = next(frames, None)
      if first is None:
        raise VideoError(f'{path}: no frame decodes (the file may be truncated)')
      if full:
        count = 1 + sum(1 for _ in frames)
      elif header_frames > 0:
        count = header_frames
      else:
        container.seek(0)
        count = sum(1 for packet in container.demux(stream) if packet.size)
      return count, first.width, first.height
  except av.FFmpegError as e:
    reason = getattr(e, 'strerror', None) or e
    raise VideoError(f'{path}: cannot decode ({reason})') from None
  except OSError as e:
    raise VideoError(f'{path}: unreadable ({e})') from None


# ------------------------------------------------------------------------ one video


@dataclasses.dataclass(frozen=True)
class _VideoJob:
  video: tps.Video
  flist_path: str
  vocab: tps.Vocab | None
  video_mode: str
  box_tolerance: float


def check_video(job: _VideoJob) -> VideoReport:
  """Decodes one video and checks its annotation folder (runs in a worker process)."""
  video = job.video
  problems, warnings = [], []
  stats = SplitStats(
    videos=1, frames=video.num_frames, actions=collections.Counter({video.action: 1})
  )
  image_size = None
  if job.video_mode != 'none':
    try:
      count, width, height = probe_video(video.video_path, full=job.video_mode == 'full')
    except VideoError as e:
      problems.append(str(e))
    else:
      tolerance = job.box_tolerance
      tolerance = int(tolerance) if float(tolerance).is_integer() else tolerance
      image_size = (width + tolerance, height + tolerance)
      if count != video.num_frames:
        how = 'decoded' if job.video_mode == 'full' else "in the container's header"
        problems.append(
          f'{video.video_path}: {count} frames {how}, but {job.flist_path} lists {video.num_frames}'
        )
  if video.annotation_dir is not None:
    _check_annotations(job, image_size, problems, warnings, stats)
  return VideoReport(problems=problems, warnings=warnings, stats=stats)


def _check_annotations(job, image_size, problems, warnings, stats) -> None:
  video = job.video
  folder = video.annotation_dir
  indices = video.annotated_frames()
  readable = {tps.frame_name(i) for i in indices}
  for entry in sorted(os.listdir(folder)):
    if entry.endswith('.json') and entry not in readable:
      problems.append(
        f'{os.path.join(folder, entry)}: not named img_XXXXX.json (the reader ignores it)'
      )
  if not indices:
    problems.append(f'{folder}: no annotation files')
    return
  missing = sorted(set(tps.sampled_frames(video.num_frames)) - set(indices))
  if missing:
    warnings.append(
      f'{folder}: warning: scored frames without an annotation file: '
      f'{", ".join(tps.frame_name(i) for i in missing)}'
    )
  for index in indices:
    path = video.annotation_path(index)
    if not 1 <= index <= video.num_frames:
      problems.append(
        f"{path}: frame {index} is outside the video's frames 1.."
        f'{video.num_frames} ({job.flist_path})'
      )
    frame = tps.load_frame(path, vocab=job.vocab, image_size=image_size, problems=problems)
    if frame is None:
      continue
    stats.annotated_frames += 1
    stats.humans += len(frame.humans)
    stats.objects += len(frame.objects)
    for human in frame.humans:
      stats.parts += len(human.parts)
      stats.states.update(part.verb for part in human.parts.values())
    numbers = collections.Counter(h.number for h in frame.humans if h.number is not None)
    for number, times in sorted(numbers.items()):
      if times > 1:
        warnings.append(f'{path}: warning: humans: {times} humans have number {number}')


# --------------------------------------------------------------------- whole dataset


def check_layout(root: str, splits: Sequence[str]) -> list[str]:
  """Problems with the folders and list files the given splits need."""
  folders = [f'{split}_videos' for split in splits] + ['list']
  if 'train' in splits:
    folders.append('train_annotations')
  problems = [
    f'{os.path.join(root, name)}: no such folder'
    for name in folders
    if not os.path.isdir(os.path.join(root, name))
  ]
  files = list(LIST_FILES) + [f'video_{split}_flist.csv' for split in splits]
  problems += [
    f'{os.path.join(root, "list", name)}: no such file'
    for name in files
    if not os.path.isfile(os.path.join(root, 'list', name))
  ]
  return problems


def load_vocab(root: str, problems: list[str]) -> tps.Vocab | None:
  """The root's vocabulary; when a list is broken, its problem is recorded and the part
  states alone are still read, so that annotations are checked against them. None when
  list/part_stat.txt itself is unusable."""
  try:
    return tps.Vocab.from_root(root)
  except tps.AnnotationError as e:
    problems.append(str(e))
  states_path = os.path.join(root, 'list', 'part_stat.txt')
  try:
    states = tps.read_list(states_path)
  except tps.AnnotationError as e:
    problems.append(str(e))
    return None
  if not states:
    problems.append(f'{states_path}: empty')
    return None
  return tps.Vocab(parts=tps.PARTS, states=tuple(states), actions=())


def video_files(root: str, split: str) -> dict[str, list[str]]:
  """video name -> the class folders that hold a file of it."""
  videos_dir = os.path.join(root, f'{split}_videos')
  found: dict[str, list[str]] = collections.defaultdict(list)
  for action in tps.action_folders(root, split):
    for entry in os.scandir(os.path.join(videos_dir, action)):
      if (
        entry.is_file()
        and not entry.name.startswith('.')
        and entry.name.lower().endswith(tps.VIDEO_EXTENSIONS)
      ):
        found[tps.video_name_of(entry.name)].append(action)
  return found


def check_annotation_folders(root: str, split: str, videos: dict[str, list[str]]) -> list[str]:
  """Annotation folders without their video (or beside the video's class), given
  video_files(root, split)."""
  annotations_root = os.path.join(root, f'{split}_annotations')
  if not os.path.isdir(annotations_root):
    return []
  problems = []
  video_dir = os.path.join(root, f'{split}_videos')
  for action in sorted(os.listdir(annotations_root)):
    action_dir = os.path.join(annotations_root, action)
    if action.startswith('.') or not os.path.isdir(action_dir):
      continue
    for name in sorted(os.listdir(action_dir)):
      path = os.path.join(action_dir, name)
      if name.startswith('.') or not os.path.isdir(path):
        continue
      actions = videos.get(name)
      if not actions:
        problems.append(
          f'{path}: annotation folder without a video (no {name}.* under {video_dir})'
        )
      elif action not in actions:
        problems.append(
          f'{path}: annotation folder in class {action!r}, but the video is '
          f'in {", ".join(repr(a) for a in actions)}'
        )
  return problems


def validate(
  root: str,
  splits: Iterable[str] = tps.SPLITS,
  *,
  video_mode: str = 'full',
  box_tolerance: float = 0.0,
  jobs: int = 1,
  progress: bool = False,
) -> Report:
  """Checks the dataset under `root` (see the module docstring); never raises on bad data.

  video_mode: 'full' (decode every frame), 'quick' (open, header count, first frame) or
  'none' (videos not opened: frame counts and image bounds not checked). jobs: worker
  processes checking videos.
  """
  if video_mode not in VIDEO_MODES:
    raise ValueError(f'video_mode must be one of {VIDEO_MODES}, got {video_mode!r}')
  splits = list(splits)
  problems = check_layout(root, splits)
  notes, warnings = [], []
  vocab = load_vocab(root, problems)
  if vocab is None:
    notes.append('part states and object names not checked (no usable list/part_stat.txt)')
  if video_mode == 'none':
    notes.append('videos not opened: frame counts and boxes against the image size not checked')
  video_jobs, stats = [], {}
  for split in splits:
    flist_path = os.path.join(root, 'list', f'video_{split}_flist.csv')
    try:
      files = video_files(root, split)
      videos = list(tps.iter_videos(root, split, problems=problems))
    except tps.AnnotationError as e:
      problems.append(str(e))
      notes.append(f'{split}: not checked (see the problem above)')
      continue
    stats[split] = SplitStats()
    if vocab is not None and vocab.actions and split != 'train':
      problems += [
        f'{os.path.join(root, f"{split}_videos", action)}: class not among the train_videos classes'
        for action in tps.action_folders(root, split)
        if action not in vocab.action_ids
      ]
    problems += check_annotation_folders(root, split, files)
    if not os.path.isdir(os.path.join(root, f'{split}_annotations')):
      notes.append(
        f'{split}: no {split}_annotations/ folder (the real test split has '
        'none); its annotations not checked'
      )
    video_jobs += [
      (split, _VideoJob(video, flist_path, vocab, video_mode, box_tolerance)) for video in videos
    ]
  found = [0]

  def count(report: VideoReport) -> str:
    found[0] += len(report.problems)
    return f'problems={found[0]}'

  reports = processes.parallel_map(
    check_video,
    [job for _, job in video_jobs],
    jobs=jobs,
    desc='validate',
    progress=progress,
    on_result=count,
  )
  for (split, _), report in zip(video_jobs, reports):
    problems += report.problems
    warnings += report.warnings
    stats[split].add(report.stats)
  return Report(
    root=root,
    video_mode=video_mode,
    problems=list(dict.fromkeys(problems)),
    warnings=warnings,
    splits=stats,
    notes=notes,
  )


# ---------------------------------------------------------------------------- report


def format_summary(report: Report, *, stats: bool = False) -> str:
  """A table of counts per split, optional histograms, notes and the verdict."""
  lines = [f'Kinetics-TPS root {report.root}: videos {_VIDEO_MODE_WORDS[report.video_mode]}']
  columns = ('videos', 'frames', 'annotated_frames', 'humans', 'parts', 'objects')
  rows = [('split',) + columns]
  rows += [
    (split,) + tuple(str(getattr(s, c)) for c in columns) for split, s in report.splits.items()
  ]
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines += [
    '  '.join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
    for row in rows
  ]
  if stats:
    for split, s in report.splits.items():
      lines.append(f'{split} videos per action: ' + _histogram(s.actions))
      lines.append(f'{split} parts per state: ' + _histogram(s.states))
  lines += [f'note: {note}' for note in report.notes]
  if report.warnings:
    lines.append(f'{len(report.warnings)} warning(s)')
  lines.append(
    f'FAILED: {len(report.problems)} problem(s)' if report.problems else 'OK: no problems'
  )
  return '\n'.join(lines)


def _histogram(counter: collections.Counter) -> str:
  return (
    ', '.join(f'{name} {n}' for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
    or '-'
  )
