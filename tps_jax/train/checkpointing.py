"""Checkpoints (orbax): train state + grain iterator, partial `init_from`, export.

Layout of a workdir:
  checkpoints/<step>/state   the TrainState            checkpoints/<step>/data  iterator
  export/variables           final {'params': ..., <model_state>}   export/config.json
  export/metadata.json       vocabularies and preprocessing (Task.export_metadata)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from tps_jax.train.optim import path_names

PyTree = Any
# (leaf name, source value, target shape) -> value of that shape, or None.
Adapter = Callable[[str, np.ndarray, tuple], 'np.ndarray | None']


METADATA_FILE = 'metadata.json'   # export/: Task.export_metadata


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (one line, names the directory and the leaf)."""


def make_manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      # cleanup_tmp_directories: a save cut short by SIGKILL leaves a tmp folder.
      options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an async save of the state and the iterator position at `step`."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator)))


def _flat_shapes(tree: PyTree) -> dict[str, tuple]:
  """{'a/b/kernel': shape} of the array leaves (empty optimiser states carry none)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(path_names(path)): tuple(leaf.shape)
          for path, leaf in flat if hasattr(leaf, 'shape')}


def first_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
  """A description of the first leaf that differs in name or shape, else None."""
  # Parameters first: they say more than their optimiser moments.
  for name in sorted(set(saved) | set(expected),
                     key=lambda n: (not n.startswith('params/'), n)):
    if name not in saved:
      return f'{name} missing from the checkpoint'
    if name not in expected:
      return f'{name} not in the model'
    if saved[name] != expected[name]:
      return f'{name} has shape {saved[name]}, the model expects {expected[name]}'
  return None


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """Restores the state (with the shardings of `abstract_state`) and the iterator."""
  metadata = manager.item_metadata(step)['state']
  saved = _flat_shapes(getattr(metadata, 'tree', metadata))
  expected = _flat_shapes(abstract_state)
  mismatch = first_mismatch(saved, expected)
  if mismatch:
    raise CheckpointError(
        f'{manager.directory}/{step}: checkpoint incompatible with this config: {mismatch} '
        '(use a fresh --workdir)')
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored['state']


def _resolve_source(path: str) -> str:
  """The orbax pytree directory behind an `init_from` path.

  Accepts a trainer workdir (latest checkpoint's state), an export directory, a
  single checkpoint step directory, or a plain orbax pytree directory such as the
  one `python -m tps_jax.convert` writes.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f'{path}: init_from directory does not exist')
  checkpoints = os.path.join(path, 'checkpoints')
  if os.path.isdir(checkpoints):
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    if not steps:
      raise CheckpointError(f'{checkpoints}: init_from workdir holds no checkpoint')
    return os.path.join(checkpoints, str(steps[-1]), 'state')
  for sub in ('variables', 'state'):
    if os.path.isdir(os.path.join(path, sub)):
      return os.path.join(path, sub)
  return path


def restore_numpy(path: str) -> PyTree:
  """The pytree of an orbax directory as host numpy arrays (no device placement)."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=args)


def load_collections(path: str, prefix: str = '', source_prefix: str = ''
                     ) -> dict[str, dict[str, np.ndarray]]:
  """{collection: {prefix + 'a/b/kernel': array}} of the variables stored under `path`.

  Collections are 'params' and any model state ('batch_stats', ...): from a trainer
  checkpoint's TrainState (params + model_state), from an export or a converted
  directory ({'params': ..., 'batch_stats': ...}), or a bare params tree. `prefix`
  places a standalone network inside a bigger model, e.g. 'backbone/' for converted
  Swin weights loaded into a model whose Swin submodule is `backbone`; `source_prefix`
  does the reverse: only the source leaves under it are kept, without it (e.g.
  'backbone/' takes the Swin out of a trained part-state network).
  """
  source = _resolve_source(path)
  tree = restore_numpy(source)
  if not (isinstance(tree, dict) and 'params' in tree):
    collections = {'params': tree}
  elif 'model_state' in tree:  # a TrainState
    collections = {'params': tree['params'], **(tree['model_state'] or {})}
  else:
    collections = {k: v for k, v in tree.items() if isinstance(v, dict)}

  def flat(subtree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(subtree)
    names = {'/'.join(path_names(p)): leaf for p, leaf in leaves}
    return {prefix + name[len(source_prefix):]: np.asarray(leaf)
            for name, leaf in names.items() if name.startswith(source_prefix)}

  return {name: flat(subtree) for name, subtree in collections.items()}


def load_params(path: str, prefix: str = '', source_prefix: str = ''
                ) -> dict[str, np.ndarray]:
  """Flat {prefix + 'a/b/kernel': array} of the 'params' stored under `path`."""
  return load_collections(path, prefix, source_prefix)['params']


def merge_params(params: PyTree, source: dict[str, np.ndarray], include: str = '.*',
                 exclude: str = '', adapt: Adapter | None = None
                 ) -> tuple[PyTree, dict[str, list[str]]]:
  """Takes every leaf of `params` whose path matches `include` (and not `exclude`)
  from `source`; others keep their fresh initialisation.

  A source leaf of another shape is re-initialised, unless `adapt(name, value,
  shape)` turns it into one of the right shape (e.g. a 2D Swin's patch embedding
  inflated for a video Swin; `Task.adapt_init_leaf`).

  Returns the merged tree and a report {'restored', 'adapted', 'missing',
  'shape_mismatch', 'not_included', 'unused'} of '/'-joined paths ('adapted' ones are
  also 'restored').
  """
  report = {'restored': [], 'adapted': [], 'missing': [], 'shape_mismatch': [],
            'not_included': []}
  used = set()

  def pick(path, leaf):
    name = '/'.join(path_names(path))
    if not re.search(include, name) or (exclude and re.search(exclude, name)):
      report['not_included'].append(name)
      return leaf
    if name not in source:
      report['missing'].append(name)
      return leaf
    used.add(name)
    value = source[name]
    if value.shape != leaf.shape:
      adapted = adapt(name, value, tuple(leaf.shape)) if adapt is not None else None
      if adapted is None or adapted.shape != leaf.shape:
        report['shape_mismatch'].append(f'{name} {value.shape} vs {tuple(leaf.shape)}')
        return leaf
      report['adapted'].append(f'{name} {value.shape} -> {tuple(leaf.shape)}')
      value = adapted
    report['restored'].append(name)
    return np.asarray(value, dtype=leaf.dtype)

  merged = jax.tree_util.tree_map_with_path(pick, params)
  report['unused'] = sorted(set(source) - used)
  return merged, report


def init_report_lines(path: str, report: dict[str, list[str]]) -> list[str]:
  """Human-readable summary of `merge_params`'s report."""
  total = sum(len(report[k]) for k in ('restored', 'missing', 'shape_mismatch',
                                        'not_included'))
  lines = [f'init_from {path}: restored {len(report["restored"])}/{total} parameter '
           f'leaves: {", ".join(report["restored"])}']
  if report.get('adapted'):
    lines.append(f'init_from: adapted to the new shapes: {", ".join(report["adapted"])}')
  for key in ('missing', 'shape_mismatch', 'not_included'):
    if report[key]:
      lines.append(f'init_from: re-initialised ({key}): {", ".join(report[key])}')
  if report['unused']:
    lines.append(f'init_from: unused source leaves: {", ".join(report["unused"])}')
  return lines


def export(workdir: str, variables: PyTree, config, metadata: dict | None = None) -> str:
  """Writes `variables`, the config JSON and the task's metadata JSON (vocabularies,
  preprocessing: `Task.export_metadata`) to workdir/export, atomically.

  Everything goes to a temporary sibling first, which replaces export/ in one rename.
  """
  workdir = os.path.abspath(workdir)
  final = os.path.join(workdir, 'export')
  tmp = os.path.join(workdir, 'export.tmp')
  if jax.process_index() == 0 and os.path.exists(tmp):
    shutil.rmtree(tmp)
  multihost_utils.sync_global_devices('export:clean')
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(tmp, 'variables'), variables)
  checkpointer.wait_until_finished()
  multihost_utils.sync_global_devices('export:saved')
  if jax.process_index() == 0:
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    if metadata:
      with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
        json.dump(metadata, f, indent=2)
    old = final + '.old'
    if os.path.exists(final):
      os.replace(final, old)
    os.replace(tmp, final)
    if os.path.exists(old):
      shutil.rmtree(old)
  multihost_utils.sync_global_devices('export:done')
  return final


def load_export(path: str) -> tuple[PyTree, dict]:
  """(variables as numpy, config dict) of an export directory."""
  variables = restore_numpy(os.path.join(path, 'variables'))
  with open(os.path.join(path, 'config.json')) as f:
    return variables, json.load(f)
