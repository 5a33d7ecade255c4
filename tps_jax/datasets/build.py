r"""Builds the TFDS (ArrayRecord) datasets the four networks train on: `build_datasets`.

  problems = build_datasets(data_root=ROOT, out=None, datasets=DATASETS, val_fraction=0.1,
                            seed=0, jobs=1, keep_going=False, overwrite=False)
  problems = build_datasets(video_folder=DIR, name='my_videos', ...)

Command line: `python -m data_prep.build --data_root ROOT` (data_prep/build.py; its
flags are these keyword arguments).

From a Kinetics-TPS root (docs/dataset.md) it writes `tps_humans`, `tps_parts`,
`tps_part_states` and `tps_action_clips` under `out` (default ROOT/tfds), each as
OUT/<name>/1.0.0/ with splits `train` and `val`: the root's train videos split by video,
deterministic from `seed`, the same for every dataset (the val videos are listed in
each dataset's metadata). tps_jax/data/tfds_layout.py documents the features.

Frames are decoded from the videos with PyAV, or read from extracted frame folders
(`img_00001.jpg` ..., from `python -m data_prep.extract_frames`) under `frames_dir`,
as FRAMES_DIR/<action>/<video>/ or FRAMES_DIR/<video>/; a video without a folder there
is decoded. `pseudo_labels` (a JSON file, `python -m data_prep.pseudo_label`) adds the
parts a detector found to `tps_parts`: scoring above `pseudo_positive` as positives,
in [`pseudo_low`, `pseudo_positive`] as ignore regions.

`video_folder=DIR, name=NAME` builds one dataset with tps_action_clips' features from
class sub-folders of videos (DIR/<class>/<video>.mp4; classes in sorted order), for
pre-training the action recogniser; `out` defaults to DIR/tfds.

Bad input (a malformed annotation, an undecodable video) raises its one-line error
naming the file (`ERRORS`), or with `keep_going` is skipped and returned in the list of
problems. A finished dataset is kept (not rebuilt) unless `overwrite`; a finished
dataset built with other settings (split, crop margin, ...) is a `BuildError` until
`overwrite`. What it does is reported line by line through `say` (default print).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow_datasets as tfds

from tps_jax.data import kinetics_tps as tps
from tps_jax.data import tfds_dirs, tfds_layout
from tps_jax.data import video as video_lib
from tps_jax.datasets import examples, sources, tfds_builder, val_split
from tps_jax.datasets import pseudo_labels as pseudo_lib


class BuildError(ValueError):
  """A build that cannot go on (bad arguments, a dataset built otherwise); one line."""


# Every error build_datasets raises for bad arguments or bad input (one line each).
ERRORS = (BuildError, tps.AnnotationError, video_lib.VideoError)


def check_arguments(
  *,
  data_root: str | None,
  video_folder: str | None,
  name: str | None,
  datasets: Sequence[str],
  val_fraction: float,
  frames_dir: str | None,
  jpeg_quality: int,
  pseudo_labels: str | None,
  pseudo_positive: float,
  pseudo_low: float,
  jobs: int,
) -> None:
  """Raises BuildError naming the first argument build_datasets cannot use."""
  unknown = [d for d in datasets if d not in tfds_layout.DATASETS]
  problems = [
    (
      bool(data_root) == bool(video_folder),
      'give one dataset source: data_root (a Kinetics-TPS root) or video_folder',
    ),
    (bool(video_folder) and not name, 'video_folder needs a dataset name'),
    (
      bool(name) and not video_folder,
      f'name={name}: only for video_folder (Kinetics-TPS datasets are named tps_<dataset>)',
    ),
    (
      bool(video_folder) and bool(frames_dir or pseudo_labels),
      'frames_dir and pseudo_labels are for a Kinetics-TPS data_root',
    ),
    (
      bool(unknown) or not datasets,
      f'datasets: unknown dataset(s) {", ".join(unknown) or "(none)"}; choose from '
      f'{",".join(tfds_layout.DATASETS)}',
    ),
    (not 0.0 <= val_fraction < 1.0, f'val_fraction={val_fraction}: must be in [0, 1)'),
    (jobs < 1, f'jobs={jobs}: must be at least 1'),
    (not 1 <= jpeg_quality <= 100, f'jpeg_quality={jpeg_quality}: must be in 1..100'),
    (
      not 0.0 <= pseudo_low <= pseudo_positive,
      f'pseudo_low={pseudo_low}, pseudo_positive={pseudo_positive}: need 0 <= pseudo_low '
      '<= pseudo_positive',
    ),
  ]
  for bad, message in problems:
    if bad:
      raise BuildError(message)


def build_datasets(
  data_root: str | None = None,
  *,
  video_folder: str | None = None,
  name: str | None = None,
  out: str | None = None,
  datasets: Sequence[str] = tfds_layout.DATASETS,
  val_fraction: float = 0.1,
  seed: int = 0,
  frames_dir: str | None = None,
  context: float = 0.1,
  clip_short_side: int = 256,
  jpeg_quality: int = 90,
  pseudo_labels: str | None = None,
  pseudo_positive: float = 0.4,
  pseudo_low: float = 0.1,
  jobs: int = 1,
  keep_going: bool = False,
  overwrite: bool = False,
  progress: bool = True,
  say: Callable[[str], None] = print,
) -> list[str]:
  """Builds the requested datasets (module docstring); returns the problems skipped
  with keep_going (empty otherwise).

  Args:
    data_root: a Kinetics-TPS root (train_videos/, train_annotations/, list/).
    video_folder: instead, a folder of class sub-folders of videos; with `name`.
    name: the dataset name of a video_folder build (e.g. 'my_videos').
    out: the output folder (default DATA_ROOT/tfds or VIDEO_FOLDER/tfds).
    datasets: which of tfds_layout.DATASETS to build from data_root.
    val_fraction: fraction of the train videos held out as the val split.
    seed: seed of the train/val split.
    frames_dir: extracted frame folders to read instead of decoding the videos.
    context: human crops' margin around the box, fraction of its size.
    clip_short_side: action clips' frames downscaled so the short side is at most this
      (0: kept).
    jpeg_quality: JPEG quality 1..100.
    pseudo_labels: a pseudo-label JSON merged into tps_parts (format: pseudo_labels.py).
    pseudo_positive: pseudo-labels scoring above this are positives.
    pseudo_low: pseudo-labels scoring in [pseudo_low, pseudo_positive] are ignore regions.
    jobs: worker processes decoding and encoding videos.
    keep_going: skip bad annotations and videos, return them.
    overwrite: rebuild finished datasets.
    progress: progress bars.
    say: receives each line of the report (datasets kept, built, pseudo-label counts).
  """
  check_arguments(
    data_root=data_root,
    video_folder=video_folder,
    name=name,
    datasets=datasets,
    val_fraction=val_fraction,
    frames_dir=frames_dir,
    jpeg_quality=jpeg_quality,
    pseudo_labels=pseudo_labels,
    pseudo_positive=pseudo_positive,
    pseudo_low=pseudo_low,
    jobs=jobs,
  )
  problems: list[str] | None = [] if keep_going else None
  options = examples.BuildOptions(
    context=context, clip_short_side=clip_short_side, jpeg_quality=jpeg_quality, progress=progress
  )
  if video_folder:
    out = out or os.path.join(video_folder, 'tfds')
    actions, entries = sources.scan_video_folder(video_folder, exclude=out)
    todo_names = [(name, 'action_clips')]
    vocab = None
    source = os.path.abspath(video_folder)
  else:
    out = out or os.path.join(data_root, 'tfds')
    vocab = tps.Vocab.from_root(data_root)
    entries = sources.list_kinetics_tps(data_root, vocab, frames_root=frames_dir, problems=problems)
    actions = vocab.actions
    todo_names = [(tfds_layout.TFDS_NAMES[dataset], dataset) for dataset in datasets]
    source = os.path.abspath(data_root)
  val_videos = val_split.split_videos([(e.name, e.action) for e in entries], val_fraction, seed)
  shared = {
    'val_videos': val_videos,
    'val_fraction': val_fraction,
    'seed': seed,
    'jpeg_quality': jpeg_quality,
  }
  pseudo = (
    {
      'pseudo_labels': os.path.abspath(pseudo_labels),
      'pseudo_positive': pseudo_positive,
      'pseudo_low': pseudo_low,
    }
    if pseudo_labels
    else {}
  )
  todo = []
  for tfds_name, dataset in todo_names:
    settings = _settings(
      dataset, shared, context=context, pseudo=pseudo, clip_short_side=clip_short_side
    )
    if _reuse(out, tfds_name, settings, overwrite):
      say(
        f'{tfds_layout.dataset_dir(out, tfds_name)}: already built, kept (--overwrite to rebuild)'
      )
    else:
      todo.append((tfds_name, dataset, settings))
  if not todo:
    return problems or []
  labels = None
  if pseudo_labels and any(dataset == 'parts' for _, dataset, _ in todo):
    labels = _pseudo_labels(pseudo_labels, entries, set(val_videos), say)
  maker = examples.ExampleMaker(
    options,
    vocab=vocab,
    keep_going=keep_going,
    pseudo_labels=labels,
    positive=pseudo_positive,
    low=pseudo_low,
  )
  found: list[str] = []
  tfds.disable_progress_bar()
  with tfds_builder.worker_pool(maker, jobs) as pool:
    for tfds_name, dataset, settings in todo:
      metadata = {
        'settings': settings,
        'source': source,
        'actions': list(actions),
        'states': list(vocab.states if vocab else ()),
        'parts': list(tps.PARTS),
        'version': tfds_layout.VERSION,
      }
      builder = tfds_builder.builder_class(tfds_name, dataset)(
        entries=entries,
        val_videos=val_videos,
        maker=maker,
        pool=pool,
        problems=found,
        metadata=metadata,
        data_dir=out,
        file_format='array_record',
      )
      # TFDS prints its own lines while preparing; shown only with the progress bars.
      with (
        tempfile.TemporaryDirectory(prefix='tps_build_') as download_dir,
        contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO()),
      ):
        builder.download_and_prepare(download_dir=download_dir)
      directory = tfds_layout.dataset_dir(out, tfds_name)
      if dataset == 'part_states':
        tfds_layout.write_state_tables(directory)
      counts = ', '.join(
        f'{split} {info.num_examples}' for split, info in sorted(builder.info.splits.items())
      )
      say(f'{directory}: {counts} examples')
  return list(dict.fromkeys((problems or []) + found))


def _settings(
  dataset: str,
  shared: dict[str, Any],
  *,
  context: float,
  pseudo: dict[str, Any],
  clip_short_side: int,
) -> dict[str, Any]:
  """The build settings a finished dataset must match to be reused."""
  settings = {'dataset': dataset, **shared}
  if dataset in ('parts', 'part_states'):
    settings['context'] = context
  if dataset == 'parts':
    settings.update(pseudo)
  if dataset == 'action_clips':
    settings['clip_short_side'] = clip_short_side
  return settings


def _reuse(out: str, name: str, settings: dict, overwrite: bool) -> bool:
  """True when `name` is built with `settings` and kept; removes it for overwrite."""
  directory = tfds_layout.dataset_dir(out, name)
  if not tfds_layout.is_built(out, name):
    return False
  if overwrite:
    shutil.rmtree(directory)
    return False
  built = dict(tfds_dirs.builder_from_directory(directory).info.metadata.get('settings', {}))
  if 'stage' in built:  # built before the key was renamed
    built['dataset'] = built.pop('stage')
  differs = sorted(k for k in set(built) | set(settings) if built.get(k) != settings.get(k))
  if differs:
    raise BuildError(
      f'{directory}: built with other settings ({", ".join(differs)}); '
      'pass --overwrite to rebuild it'
    )
  return True


def _pseudo_labels(
  path: str,
  entries: Sequence[sources.VideoEntry],
  val_videos: set[str],
  say: Callable[[str], None],
) -> pseudo_lib.PseudoLabels:
  """The pseudo-labels of the train videos' annotated frames (val keeps its ground
  truth only); says how many entries are used and why the others are not."""
  labels = pseudo_lib.load_pseudo_labels(path)
  frames = {(e.name, index) for e in entries if e.name not in val_videos for index in e.annotated}
  used = {key: value for key, value in labels.items() if key[:2] in frames}
  in_val = sum(1 for key in labels if key[0] in val_videos)
  unmatched = len(labels) - len(used) - in_val
  say(
    f'pseudo-labels: {len(used)} humans of annotated train frames'
    + (f'; {in_val} of val videos not used' if in_val else '')
    + (f'; {unmatched} match no annotated frame' if unmatched else '')
  )
  return used
