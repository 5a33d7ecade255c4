r"""COCO mAP of an exported detector on a dataset split.

  python -m tps_jax.evaluate_detector --export WORKDIR/export [--data_root DATA]
      [--split val] [--batch_size 8]
  python -m tps_jax.evaluate_detector --export WORKDIR/export \
      --config configs/human_detector.py:tiny [--config.<field>=<value> ...]

Builds the task of the config the export was trained with (its `config.json`; or of
`--config`, where any `--config.<field>=value` override applies) on `--data_root`
(default: that config's `data.root`), loads the exported variables, runs the jitted
detector over the split's eval pipeline and prints COCO AP, AP50, AP75, AP by size and
AP per class (pycocotools), then the line `AP <ap> AP50 <ap50> AP75 <ap75>`. Errors
(missing export or dataset, an export of another architecture) are one line on stderr
with exit status 1.
"""

from __future__ import annotations

import sys

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from tps_jax import cli
from tps_jax.tasks import base as tasks_lib
from tps_jax.train import checkpointing
from tps_jax.train.optim import param_name

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, "Detector config file[:variant] (default: the export's own config)."
)
_EXPORT = flags.DEFINE_string('export', None, 'Export directory of a training run.')
_DATA_ROOT = flags.DEFINE_string('data_root', '', "Dataset root (default: the config's data.root).")
_SPLIT = flags.DEFINE_string('split', 'val', 'Dataset split to evaluate.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Images per batch.')
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


def load_detector(config, export: str, split: str, data_root: str = ''):
  """(task, params, other variables) of an export, its parameters checked against the
  task's model; `config` None: the one the export was trained with; `split` of
  `data_root` (default: the config's) is the task's eval split."""
  variables, exported = checkpointing.load_export(export)
  config = ml_collections.ConfigDict(exported) if config is None else config
  with config.unlocked():
    config.data.eval_split = split
    config.data.root = data_root or config.data.root
  task = tasks_lib.get_task(config.task, config)
  variables = dict(variables)
  params = variables.pop('params')
  expected = jax.eval_shape(task.init_variables, jax.random.key(0))['params']
  problem = checkpointing.first_mismatch(_shapes(params), _shapes(expected))
  if problem:
    raise ValueError(f"{export}: the exported parameters do not fit the config's model: {problem}")
  return task, params, variables


def evaluate(config, export: str, split: str, batch_size: int, data_root: str = ''):
  """(DetectionReport, number of images) of the exported variables (`load_detector`)."""
  task, params, variables = load_detector(config, export, split, data_root)
  predict = jax.jit(task.eval_predictions)
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
    report, images = evaluate(
      _CONFIG.value, _EXPORT.value, _SPLIT.value, _BATCH_SIZE.value, _DATA_ROOT.value
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
