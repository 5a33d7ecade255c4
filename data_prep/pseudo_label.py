r"""Pseudo-labels for the part detector (report section 2.2.2): a trained detector labels
the parts the training annotation lacks.

  python -m data_prep.pseudo_label --config configs/part_detector_gfl.py[:variant] \
      --export WORKDIR/export --data_root DATASET_ROOT --out FILE \
      [--pseudo_positive 0.4] [--pseudo_low 0.1] [--split train] [--batch_size 8] \
      [--noprogress] [--config.<field>=value ...]

Runs the exported part detector of `--config` (any family of the detection task:
'cascade_rcnn', 'retinanet', 'gfl') over the human crops of the built `tps_parts`
dataset (ROOT/tfds, `python -m data_prep.build --datasets parts`), each crop prepared as
the eval pipeline prepares it (tps_jax/input/pipelines.py), in jitted batches of one
static shape. Detections are mapped back to frame pixels (the crop's `crop_box`) and,
for each human, those of the parts its annotation (read from ROOT) lacks with score >=
`pseudo_low` are written to FILE in the pseudo-label JSON format that the TFDS
builder consumes (tps_jax/datasets/pseudo_labels.py):
```
{"<video>": {"img_00006.json": {"<human number>": {"<part>": [{"box": [x1, y1, x2, y2], "score": 0.7}, ...]}}}}
```
(scores rounded to 6 decimals, boxes to 0.01 pixel, inclusive-pixel frame coordinates as
the annotations). A predicted part whose class is already annotated for that human is
not written: a human has one part of each class, so such a box duplicates the annotated
one (or is a false positive). Then rebuild the part dataset with the same thresholds:

  python -m data_prep.build --data_root ROOT --datasets parts --overwrite \
      --pseudo_labels FILE --pseudo_positive 0.4 --pseudo_low 0.1

which adds, to each human, the written parts scoring > pseudo_positive as positives and
those scoring in [pseudo_low, pseudo_positive] as ignore regions (the detector losses neither
reward nor penalise anchors / RoIs inside them). The counts of both are printed.

Speed: one pass, decoding in grain threads and the detector jitted on fixed-size
batches; it writes FILE once, atomically, at the end (no partial file to resume from:
a pass over the training crops takes as long as an evaluation of the same size).
Errors (no export, no dataset, an export of another architecture, an annotation that
no longer matches the dataset) are one line on stderr with exit status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from tps_jax import cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import tfds_dirs
from tps_jax.inference import export as export_lib
from tps_jax.input import pipelines
from tps_jax.tasks import base as tasks_lib
from tps_jax.train import checkpointing
from tps_jax.train.optim import param_name

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Part detector config file[:variant].')
_EXPORT = flags.DEFINE_string('export', None, 'Export directory of the trained detector.')
_DATA_ROOT = flags.DEFINE_string(
  'data_root',
  None,
  'Kinetics-TPS root (annotations; datasets under ROOT/tfds unless --config.data.tfds_dir).',
)
_OUT = flags.DEFINE_string('out', None, 'Pseudo-label JSON file to write.')
_POSITIVE = flags.DEFINE_float('pseudo_positive', 0.4, 'Scores above this become positives.')
_LOW = flags.DEFINE_float(
  'pseudo_low',
  0.1,
  'Scores in [pseudo_low, pseudo_positive] become ignore regions; lower ones are not written.',
)
_SPLIT = flags.DEFINE_string('split', 'train', 'Split of tps_parts to label.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Crops per batch.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['config', 'export', 'data_root', 'out'])

# Per-crop fields carried beside the batch (the detector does not see them).
_IDS = ('video', 'frame', 'human', 'crop_box')


class PseudoLabelError(ValueError):
  """A run that cannot go on; the message is one line."""


@dataclasses.dataclass
class Summary:
  crops: int = 0  # crops labelled
  humans_labelled: int = 0  # humans with at least one written part
  positives: int = 0  # written boxes scoring > pseudo_positive
  ignores: int = 0  # written boxes scoring in [pseudo_low, pseudo_positive]
  annotated_skipped: int = 0  # boxes >= pseudo_low of parts the human has annotated

  def lines(self, out: str, pseudo_positive: float, pseudo_low: float) -> list[str]:
    return [
      f'{self.crops} crops: {self.positives} positive boxes (score > {pseudo_positive}) '
      'and '
      f'{self.ignores} ignore regions ({pseudo_low} <= score <= {pseudo_positive}) for '
      f'{self.humans_labelled} humans; {self.annotated_skipped} boxes of annotated parts '
      'left out',
      f'wrote {out}',
      'next: python -m data_prep.build --data_root ROOT --datasets parts --overwrite '
      f'--pseudo_labels {out} --pseudo_positive {pseudo_positive} --pseudo_low {pseudo_low}',
    ]


# ------------------------------------------------------------------------ the detector


def load_detector(config, export: str):
  """(task, params, model_state) of an export, checked against the config's model."""
  if not os.path.isdir(os.path.join(export, 'variables')):
    raise PseudoLabelError(f'{export}: no export (variables/ and config.json)')
  task = tasks_lib.get_task(config.task, config)
  variables = dict(export_lib.read_variables(export))
  params = variables.pop('params')
  expected = jax.eval_shape(task.init_variables, jax.random.key(0))['params']
  shapes = lambda tree: {
    param_name(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }
  problem = checkpointing.first_mismatch(shapes(params), shapes(expected))
  if problem:
    raise PseudoLabelError(
      f"{export}: the exported parameters do not fit the config's "
      f'{config.model.family} model: {problem}'
    )
  return task, params, variables


# ------------------------------------------------------------------------------ crops


def _prepare(raw: Mapping[str, Any], *, settings) -> dict[str, Any]:
  """A tps_parts record -> the eval pipeline's example, plus the crop's identity."""
  example = pipelines.detector_example(raw, None, settings=settings, swap_parts=True)
  video = raw['video']
  example.update(
    video=video.decode() if isinstance(video, bytes) else str(video),
    frame=int(raw['frame']),
    human=int(raw['human']),
    crop_box=np.asarray(raw['crop_box'], np.float32),
  )
  return example


def _collate(examples, *, spec, batch_size: int):
  """(batch padded to `batch_size` rows with EXAMPLE_MASK, [ids of the real rows])."""
  ids = [{k: e[k] for k in _IDS} for e in examples]
  batch = pipelines.collate([{k: e[k] for k in spec} for e in examples], spec=spec)
  rows = len(examples)
  batch = {
    k: np.concatenate([v, np.zeros((batch_size - rows, *v.shape[1:]), v.dtype)])
    for k, v in batch.items()
  }
  batch[tasks_lib.EXAMPLE_MASK] = np.arange(batch_size) < rows
  return batch, ids


def crop_batches(config, split: str, batch_size: int) -> tuple[Iterator, int]:
  """(iterator of (batch, ids), number of batches) over a split of tps_parts, in order."""
  settings = pipelines.data_fields('parts', config)
  directory = pipelines.dataset_path('parts', settings)
  builder = tfds_dirs.builder_from_directory(directory)
  if split not in builder.info.splits:
    raise PseudoLabelError(
      f'{directory}: no split {split!r} (splits: {", ".join(sorted(builder.info.splits))})'
    )
  source = builder.as_data_source(split)
  spec = pipelines.output_spec('parts', settings)
  dataset = (
    grain.MapDataset.source(source)
    .map(functools.partial(_prepare, settings=settings))
    .batch(batch_size, batch_fn=functools.partial(_collate, spec=spec, batch_size=batch_size))
  )
  iterator = iter(
    dataset.to_iter_dataset(
      grain.ReadOptions(
        num_threads=settings.read_threads, prefetch_buffer_size=settings.prefetch_batches
      )
    )
  )
  return iterator, math.ceil(len(source) / batch_size)


def to_frame(
  boxes: np.ndarray, scale: float, crop_box: np.ndarray, crop_size: np.ndarray
) -> np.ndarray:
  """Detections (N, 4) in input pixels of a resized crop -> frame pixels, inside the crop.

  The pipeline resized the crop (h, w) = `crop_size` by `scale`; crop pixel (x, y) is
  frame pixel (x + left, y + top) with (left, top) = crop_box[:2]. Detections have
  continuous edges; the annotations' inclusive pixels end one pixel before the edge.
  """
  height, width = float(crop_size[0]), float(crop_size[1])
  crop = boxes / scale - np.array([0.0, 0.0, 1.0, 1.0])
  crop[:, 2:] = np.maximum(crop[:, 2:], crop[:, :2])  # a box under a pixel wide
  crop = np.clip(crop, 0.0, [width - 1, height - 1, width - 1, height - 1])
  return crop + np.tile(crop_box[:2], 2)


# ------------------------------------------------------------------------ annotations


class Annotations:
  """Annotated part names of (video, frame, human number), read from the root on demand
  (both splits of the built datasets come from the root's train videos)."""

  def __init__(self, root: str):
    self.videos = {video.name: video for video in tps.iter_videos(root, 'train')}
    self.root = root
    # A cache per object (a cached method would keep every Annotations alive).
    self._frame = functools.lru_cache(maxsize=256)(self._read_frame)

  def _read_frame(self, video: str, frame: int) -> tps.FrameAnnotation:
    entry = self.videos.get(video)
    path = entry.annotation_path(frame) if entry is not None else None
    if path is None:
      raise PseudoLabelError(
        f'{self.root}: no annotation of {video} frame {frame}, which '
        'the dataset holds (rebuild it from this root)'
      )
    return tps.load_frame(path)

  def parts(self, video: str, frame: int, number: int) -> set[str]:
    humans = self._frame(video, frame).humans
    for position, human in enumerate(humans):
      if (human.number if human.number is not None else position + 1) == number:
        return set(human.parts)
    raise PseudoLabelError(
      f'{self.root}: {video} frame {frame} has no human number {number}, '
      'which the dataset holds (rebuild it from this root)'
    )


# ---------------------------------------------------------------------------- the run


def pseudo_labels(
  config,
  params,
  model_state,
  task,
  root: str,
  *,
  split: str = 'train',
  pseudo_positive: float = 0.4,
  pseudo_low: float = 0.1,
  batch_size: int = 8,
  progress: bool = True,
) -> tuple[dict, Summary]:
  """(pseudo-label JSON content, Summary) of a split's crops (see the module docstring)."""
  if not 0.0 <= pseudo_low <= pseudo_positive <= 1.0:
    raise PseudoLabelError(
      f'need 0 <= pseudo_low ({pseudo_low}) <= pseudo_positive ({pseudo_positive}) <= 1'
    )
  annotations = Annotations(root)
  batches, count = crop_batches(config, split, batch_size)
  predict = jax.jit(task.eval_predictions)
  labels: dict[str, dict[str, dict[str, dict[str, list]]]] = {}
  summary = Summary()
  for batch, ids in tqdm(
    batches, total=count, desc='pseudo-labels', disable=not progress, unit='batch'
  ):
    detections = jax.device_get(predict(params, model_state, batch))
    for row, crop in enumerate(ids):
      summary.crops += 1
      annotated = annotations.parts(crop['video'], crop['frame'], crop['human'])
      keep = np.asarray(detections['valid'][row], bool)
      boxes = to_frame(
        np.asarray(detections['boxes'][row])[keep],
        float(batch['scale'][row]),
        crop['crop_box'],
        batch['image_size'][row],
      )
      written = {}
      for box, score, label in zip(
        boxes,
        np.asarray(detections['scores'][row])[keep],
        np.asarray(detections['labels'][row])[keep],
      ):
        score = round(float(score), 6)
        if score < pseudo_low:
          continue
        part = tps.PARTS[int(label)]
        if part in annotated:
          summary.annotated_skipped += 1
          continue
        written.setdefault(part, []).append(
          {'box': [round(float(v), 2) for v in box], 'score': score}
        )
        if score > pseudo_positive:
          summary.positives += 1
        else:
          summary.ignores += 1
      if written:
        summary.humans_labelled += 1
        frames = labels.setdefault(crop['video'], {})
        frames.setdefault(tps.frame_name(crop['frame']), {})[str(crop['human'])] = written
  return labels, summary


def write_json(path: str, content: dict) -> None:
  """Writes `content` to a temporary sibling, then renames it to `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise PseudoLabelError(f'{directory}: no such directory')
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(content, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def main(argv) -> int:
  del argv
  config = _CONFIG.value
  with config.unlocked():
    config.data.root = _DATA_ROOT.value
  try:
    task, params, model_state = load_detector(config, _EXPORT.value)
    labels, summary = pseudo_labels(
      config,
      params,
      model_state,
      task,
      _DATA_ROOT.value,
      split=_SPLIT.value,
      pseudo_positive=_POSITIVE.value,
      pseudo_low=_LOW.value,
      batch_size=_BATCH_SIZE.value,
      progress=_PROGRESS.value,
    )
    write_json(_OUT.value, labels)
  except (
    PseudoLabelError,
    tps.AnnotationError,
    FileNotFoundError,
    ValueError,
    checkpointing.CheckpointError,
  ) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print('\n'.join(summary.lines(_OUT.value, _POSITIVE.value, _LOW.value)))
  return 0


if __name__ == '__main__':
  cli.run(main)
