r"""COCO mAP of an exported detector on a dataset split.

  python -m tps_jax.evaluate_detector --export WORKDIR/export [--data_root DATA]
      [--split val] [--batch_size 8] [--scales 0.8,1,1.2] [--flip] [--box_merge nms|wbf]
      [--box_merge_iou 0.5]
  python -m tps_jax.evaluate_detector --export W1/export,W2/export ...   # an ensemble
  python -m tps_jax.evaluate_detector --export WORKDIR/export \
      --config configs/human_detector.py:tiny [--config.<field>=<value> ...]

Builds the task of the config the (first) export was trained with (its `config.json`;
or of `--config`, where any `--config.<field>=value` override applies) on `--data_root`
(default: that config's `data.root`), loads the exported variables, runs the jitted
detector over the split's eval pipeline and prints COCO AP, AP50, AP75, AP by size and
AP per class (pycocotools), then the line `AP <ap> AP50 <ap50> AP75 <ap75>`. `--scales`
/ `--flip` add test-time views (each scale a factor of the input size; the flip mirrors
the image and, for the part detector, exchanges left / right parts), merged by
`--box_merge` as the pipeline's human_scales / human_flip / box_merge settings merge
them (tps_jax/inference/views.py); so are the detections of several exports (an
ensemble, as the pipeline's). Errors (missing export or dataset, an export of another
architecture) are one line on stderr with exit status 1.
"""

from __future__ import annotations

import functools
import sys

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from tps_jax import cli
from tps_jax.inference import export as export_lib
from tps_jax.inference import views
from tps_jax.inference.pipeline_options import parse_scales
from tps_jax.tasks import base as tasks_lib
from tps_jax.tasks.detection import content_shape
from tps_jax.train import checkpointing
from tps_jax.train.optim import param_name

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, "Detector config file[:variant] (default: the export's own config)."
)
_EXPORT = flags.DEFINE_list('export', None, 'Export directory(ies): several are an ensemble.')
_DATA_ROOT = flags.DEFINE_string('data_root', '', "Dataset root (default: the config's data.root).")
_SPLIT = flags.DEFINE_string('split', 'val', 'Dataset split to evaluate.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Images per batch.')
_SCALES = flags.DEFINE_list('scales', ['1'], 'Test-time scales (factors of the input size).')
_FLIP = flags.DEFINE_bool('flip', False, 'Also the mirrored image (test-time view).')
_BOX_MERGE = flags.DEFINE_enum('box_merge', 'nms', ['nms', 'wbf'], "How the views' boxes merge.")
_BOX_MERGE_IOU = flags.DEFINE_float('box_merge_iou', 0.5, 'Boxes overlapping more are one.')
flags.mark_flags_as_required(['export'])


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """A short last batch padded to `size` rows, with the example mask."""
  rows = len(next(iter(batch.values())))
  padded = {
    k: np.concatenate([v, np.zeros((size - rows, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }
  padded[tasks_lib.EXAMPLE_MASK] = np.arange(size) < rows
  return padded


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {param_name(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def view_predictions(
  task, scales=(1.0,), flip=False, box_merge='nms', box_merge_iou=0.5, members: int = 1
):
  """`task.eval_predictions` with the detections of every view and member (variables
  stacked) merged (module docstring); the task's own with one scale of 1, no flip and
  one member."""
  if tuple(scales) == (1.0,) and not flip and members == 1:
    return task.eval_predictions
  mirror = views.PART_MIRROR if task.dataset == 'parts' else None

  def predict(params, model_state, batch):
    one = (params, model_state)
    if members > 1:  # the ground truth's fields come with any member's predictions
      one = jax.tree.map(lambda x: x[0], one)
    out = task.eval_predictions(*one, batch)
    inputs = functools.partial(views.scaled_inputs, batch['image'], content_shape(batch))
    detections = views.detector_views(
      task.model,
      {'params': params, **model_state},
      inputs,
      scales=scales,
      flip=flip,
      members=members,
      mirror_labels=mirror,
    )
    merged = views.merge_detections(detections, method=box_merge, iou_threshold=box_merge_iou)
    return {**out, **merged}

  return predict


def _fitted(task, export: str, variables):
  """(params, model state) of an export's variables, refused in one line when they do
  not fit the task's model."""
  variables = dict(variables)
  params = variables.pop('params')
  expected = jax.eval_shape(task.init_variables, jax.random.key(0))['params']
  problem = checkpointing.first_mismatch(_shapes(params), _shapes(expected))
  if problem:
    raise ValueError(f"{export}: the exported parameters do not fit the config's model: {problem}")
  return params, variables


def load_detector(config, export: str, split: str, data_root: str = ''):
  """(task, params, other variables) of an export, its parameters checked against the
  task's model; `config` None: the one the export was trained with; `split` of
  `data_root` (default: the config's) is the task's eval split."""
  variables = export_lib.read_variables(export)
  config = export_lib.read_config(export) if config is None else config
  with config.unlocked():
    config.data.eval_split = split
    config.data.root = data_root or config.data.root
  task = tasks_lib.get_task(config.task, config)
  return (task, *_fitted(task, export, variables))


def evaluate(
  config, export: str | list[str], split: str, batch_size: int, data_root: str = '', **view_settings
):
  """(DetectionReport, number of images) of the exported variables (`load_detector`);
  several exports are an ensemble (their detections merged as views); `view_settings`:
  `view_predictions`' test-time views."""
  exports = [export] if isinstance(export, str) else list(export)
  task, *first = load_detector(config, exports[0], split, data_root)
  others = [_fitted(task, p, export_lib.read_variables(p)) for p in exports[1:]]
  members = [tuple(first), *others]
  stack = lambda *trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  params, variables = members[0] if len(members) == 1 else stack(*members)
  predict = jax.jit(view_predictions(task, members=len(members), **view_settings))
  evaluator = task.make_evaluator()
  for batch in task.eval_iterator(process_index=0, process_count=1, batch_size=batch_size):
    outputs = predict(params, variables, _pad(batch, batch_size))
    evaluator.add(jax.device_get(outputs))
  if not evaluator.images:
    raise ValueError(f'split {split!r} holds no images')
  return evaluator.report(), evaluator.images


def main(argv) -> int:
  del argv
  try:
    scales = parse_scales('--scales', _SCALES.value)
    if not scales or min(scales) <= 0:
      raise ValueError(f'--scales must be positive factors, got {",".join(_SCALES.value)}')
    report, images = evaluate(
      _CONFIG.value,
      _EXPORT.value,
      _SPLIT.value,
      _BATCH_SIZE.value,
      _DATA_ROOT.value,
      scales=scales,
      flip=_FLIP.value,
      box_merge=_BOX_MERGE.value,
      box_merge_iou=_BOX_MERGE_IOU.value,
    )
  except (FileNotFoundError, NotADirectoryError, ValueError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{images} images of split {_SPLIT.value!r}')
  print(report.table())
  stats = report.stats
  print(f'AP {stats["AP"]:.4f} AP50 {stats["AP50"]:.4f} AP75 {stats["AP75"]:.4f}')
  return 0


if __name__ == '__main__':
  cli.run(main)
