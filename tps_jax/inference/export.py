"""A trained network from its `export/` folder alone: `load_export(dir) -> Export`.

The one way an export is read: commands, bundles and evaluations rebuild every stage's
network with `load_export`; what needs only a part of an export (a detector evaluated
under another config, a test) reads it with `read_config` / `read_variables`.

The trainer writes every stage's `WORKDIR/export/` (tps_jax/train/checkpointing.py):
`variables/` (orbax: 'params' -- the EMA copy when trained with one -- and any model
state), `config.json` (the whole training config, the model's fields included) and
`metadata.json` (`Task.export_metadata`: the stage `kind`, the vocabularies in label
order and the preprocessing the network was trained with). `load_export` rebuilds the
model from these three: no config file, no dataset, no import of `configs/`. The
config's `task` must be a library task or one the caller's code registered
(`tasks.base.register_task`); an export never names a module to import (anything else
is refused naming config.json and the field), and detector families register inside
the library, so any export of any family loads.

Kinds and what their metadata holds:
- `human_detector` / `part_detector`: vocab {classes}; preprocessing {image_size (H, W)
  of the padded canvas, normalization, and for parts `context`: the human-crop margin};
- `part_state`: vocab {parts, states, actions}; preprocessing {image_size (S, S),
  resize R, context, normalization};
- `action`: vocab {actions}; preprocessing {num_frames, frame_stride, image_size,
  resize, clip_short_side, normalization}.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections

from tps_jax.tasks import base as tasks_lib
from tps_jax.train import checkpointing

PyTree = Any
KINDS = ('human_detector', 'part_detector', 'part_state', 'action')


class ExportError(ValueError):
  """An export that cannot be used (one line naming the file)."""


@dataclasses.dataclass
class Export:
  """One trained network: its model, numpy variables, training config and metadata."""

  path: str
  config: ml_collections.ConfigDict
  metadata: dict[str, Any]
  variables: PyTree
  task: tasks_lib.Task

  @property
  def kind(self) -> str:
    return self.metadata['kind']

  @property
  def model(self):
    return self.task.model

  @property
  def vocab(self) -> dict[str, list[str]]:
    return self.metadata['vocab']

  @property
  def preprocessing(self) -> dict[str, Any]:
    return self.metadata['preprocessing']


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
  except FileNotFoundError:
    raise ExportError(f'{path}: no such file (not a training export?)') from None
  except (OSError, json.JSONDecodeError) as e:
    raise ExportError(f'{path}: unreadable ({e})') from None
  if not isinstance(value, dict):
    raise ExportError(f'{path}: expected a JSON object')
  return value


def read_metadata(path: str) -> dict[str, Any]:
  """An export's metadata.json (its kind, vocabularies and preprocessing)."""
  file = os.path.join(os.path.abspath(path), checkpointing.METADATA_FILE)
  metadata = _read_json(file)
  for key in ('kind', 'vocab', 'preprocessing'):
    if key not in metadata:
      raise ExportError(f'{file}: no {key!r} entry')
  if metadata['kind'] not in KINDS:
    raise ExportError(f'{file}: kind {metadata["kind"]!r} is not one of {", ".join(KINDS)}')
  return metadata


def read_config(path: str) -> ml_collections.ConfigDict:
  """An export's config.json (the whole training config), its `task` checked to name a
  library task or a registered one before anything else is read: the field names code,
  which is never imported."""
  config_file = os.path.join(os.path.abspath(path), 'config.json')
  config = ml_collections.ConfigDict(_read_json(config_file))
  try:
    tasks_lib.task_class(config.get('task'))
  except ValueError as e:
    raise ExportError(f'{config_file}: field task: {e}') from None
  return config


def read_variables(path: str) -> PyTree:
  """An export's variables as numpy ('params' and any model state)."""
  variables_dir = os.path.join(os.path.abspath(path), 'variables')
  if not os.path.isdir(variables_dir):
    raise ExportError(f'{variables_dir}: no such directory (an unfinished export?)')
  try:
    return checkpointing.restore_numpy(variables_dir)
  except Exception as e:  # orbax / tensorstore raise many types for damaged files
    first_line = str(e).splitlines()[0] if str(e) else ''
    first_line = first_line.split(" [tensorstore_spec='")[0]  # a kilobyte of settings
    raise ExportError(f'{variables_dir}: unreadable ({type(e).__name__}: {first_line})') from None


def load_export(path: str, *, dtype=jnp.float32, kind: str | None = None) -> Export:
  """The network exported to `path` (see the module docstring), computing in `dtype`.

  `kind`: refuse an export of another kind (one line naming both).
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ExportError(f'{path}: no such export directory')
  config = read_config(path)
  metadata = read_metadata(path)
  if kind is not None and metadata['kind'] != kind:
    raise ExportError(f'{path}: a {metadata["kind"]} export, expected a {kind}')
  variables = read_variables(path)
  try:
    task = tasks_lib.get_task(config.task, config, compute_dtype=dtype, metadata=metadata)
  except (ValueError, KeyError, AttributeError) as e:
    raise ExportError(
      f'{os.path.join(path, "config.json")}: cannot build the model ({e})'
    ) from None
  return Export(path=path, config=config, metadata=metadata, variables=variables, task=task)


def metadata_for(
  kind: str, config, *, states=(), actions=(), context: float = 0.1, clip_short_side: int = 256
) -> dict[str, Any]:
  """The metadata a `kind` export of `config` would record after training on a dataset
  with these vocabularies and build settings (what `Task.export_metadata` reads from
  the dataset), for exports made without one (`write_random_export`)."""
  from tps_jax.data import augment  # pylint: disable=g-import-not-at-top
  from tps_jax.data import kinetics_tps as tps  # pylint: disable=g-import-not-at-top

  data = config.data
  size = data.image_size
  preprocessing = {
    'image_size': [size, size] if isinstance(size, int) else list(size),
    'normalization': augment.normalization(),
  }
  if kind == 'human_detector':
    return {'kind': kind, 'vocab': {'classes': ['person']}, 'preprocessing': preprocessing}
  if kind == 'part_detector':
    return {
      'kind': kind,
      'vocab': {'classes': list(tps.PARTS)},
      'preprocessing': {**preprocessing, 'context': context},
    }
  if kind == 'part_state':
    resize = data.get('resize', 0) or round(max(preprocessing['image_size']) * 8 / 7)
    return {
      'kind': kind,
      'vocab': {'parts': list(tps.PARTS), 'states': list(states), 'actions': list(actions)},
      'preprocessing': {**preprocessing, 'resize': resize, 'context': context},
    }
  if kind == 'action':
    return {
      'kind': kind,
      'vocab': {'actions': list(actions)},
      'preprocessing': {
        **preprocessing,
        'num_frames': data.num_frames,
        'frame_stride': data.frame_stride,
        'resize': data.get('resize', 0) or min(preprocessing['image_size']),
        'clip_short_side': clip_short_side,
      },
    }
  raise ValueError(f'kind must be one of {", ".join(KINDS)}, got {kind!r}')


def random_variables(shapes: PyTree, seed: int = 0) -> PyTree:
  """Host-side random values for a tree of ShapeDtypeStructs, without compiling the
  network's init: LeCun-normal kernels, zero biases and means, unit scales and
  variances. For tests and benchmarks that need a network, not a trained one."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, leaf.dtype)
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return (rng.standard_normal(leaf.shape, np.float32) / np.sqrt(max(fan_in, 1))).astype(
      leaf.dtype
    )

  return jax.tree_util.tree_map_with_path(value, shapes)


def write_random_export(workdir: str, config, metadata: dict[str, Any], seed: int = 0) -> str:
  """WORKDIR/export of an untrained network: `config` (a stage config) with random
  variables (`random_variables`) and the given metadata; returns the export's path."""
  import jax  # pylint: disable=g-import-not-at-top

  task = tasks_lib.get_task(config.task, config, metadata=metadata)
  shapes = jax.eval_shape(task.init_variables, jax.random.PRNGKey(seed))
  return checkpointing.export(workdir, random_variables(shapes, seed), config, metadata)
