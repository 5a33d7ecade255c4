"""Checkpoints (orbax): train state + grain iterator, partial `init_from`, export.

Layout of a workdir:
  checkpoints/<step>/state   the TrainState            checkpoints/<step>/data  iterator
  export/variables           final {'params': ..., <model_state>}   export/config.json
  export/metadata.json       vocabularies and preprocessing (Task.export_metadata)
  damaged_checkpoints/<step> checkpoints that could not be read, set aside on resume

Faults end in one line (`CheckpointError`), never in a hang or a traceback: a save
that cannot be written fails at once, naming the path and the cause; a checkpoint
that cannot be read is named as damaged (not as a config mismatch) and the resume
falls back to the newest readable one (`restore_latest`); only when none is readable
does it refuse, so a run never restarts from step 0 by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from tps_jax.train.optim import param_name

PyTree = Any
# (leaf name, source value, target shape) -> value of that shape, or None.
Adapter = Callable[[str, np.ndarray, tuple], 'np.ndarray | None']


METADATA_FILE = 'metadata.json'  # export/: Task.export_metadata
DAMAGED_DIR = 'damaged_checkpoints'


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (one line, names the directory and the leaf)."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files cannot be read (missing or truncated), as opposed to
  one written by another configuration."""


def error_cause(error: BaseException, limit: int = 300) -> str:
  """The root cause of a (chained) exception on one line: 'Permission denied:
  /w/checkpoints/30.orbax-checkpoint-tmp' for an OSError, else 'Type: first line'."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  root = next((e for e in chain if isinstance(e, OSError) and e.strerror), chain[-1])
  if isinstance(root, OSError) and root.strerror:
    text = f'{root.strerror}: {root.filename}' if root.filename else root.strerror
  else:
    lines = str(root).strip().splitlines()
    text = f'{type(root).__name__}: {lines[0] if lines else ""}'
  # TensorStore nests its causes ('A: B: ... local file "f": why') and appends its JSON
  # spec: the innermost file and reason say it all.
  text = re.sub(r'\s*\[tensorstore_spec=.*', '', text)
  if 'local file "' in text:
    file_name, _, reason = text.rsplit('local file "', 1)[1].partition('": ')
    text = f'{reason}: {file_name}'
  return text if len(text) <= limit else text[: limit - 3] + '...'


def saved_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints in workdir/checkpoints, ascending."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def make_manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'checkpoints'),
    # cleanup_tmp_directories: a save cut short by SIGKILL leaves a tmp folder.
    # Step folders are made before `save` returns: one that cannot be made fails
    # there, at once, instead of in a background thread that orbax then waits
    # 300 s for.
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    ),
    item_handlers={
      'state': ocp.StandardCheckpointHandler(),
      'data': grain.checkpoint.CheckpointHandler(),
    },
  )


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an async save of the state and the iterator position at `step`.

  Raises CheckpointError naming the path and the cause when it cannot be written
  (also for an earlier save whose background writing failed).
  """
  try:
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
      ),
    )
  except Exception as e:  # orbax raises from its own code, the OS and TensorStore alike.
    raise CheckpointError(
      f'cannot write checkpoint {step} in {manager.directory}: {error_cause(e)}'
    ) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the pending async save; a failure is a one-line CheckpointError."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # as in `save`
    raise CheckpointError(
      f'a checkpoint save in {manager.directory} failed: {error_cause(e)}'
    ) from e


def _flat_shapes(tree: PyTree) -> dict[str, tuple]:
  """{'a/b/kernel': shape} of the array leaves (empty optimiser states carry none)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {param_name(path): tuple(leaf.shape) for path, leaf in flat if hasattr(leaf, 'shape')}


def first_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
  """A description of the first leaf that differs in name or shape, else None."""
  # Parameters first: they say more than their optimiser moments.
  for name in sorted(set(saved) | set(expected), key=lambda n: (not n.startswith('params/'), n)):
    if name not in saved:
      return f'{name} missing from the checkpoint'
    if name not in expected:
      return f'{name} not in the model'
    if saved[name] != expected[name]:
      return f'{name} has shape {saved[name]}, the model expects {expected[name]}'
  return None


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """Restores the state (with the shardings of `abstract_state`) and the iterator.

  Raises DamagedCheckpointError for files that cannot be read, CheckpointError for a
  checkpoint of another model or optimiser (leaf names or shapes differ).
  """
  step_dir = os.path.join(manager.directory, str(step))
  # Without it orbax reads the tree as empty, which would look like a config mismatch.
  if not os.path.isfile(os.path.join(step_dir, 'state', '_METADATA')):
    raise DamagedCheckpointError(f'{step_dir}/state/_METADATA is missing')
  try:
    metadata = manager.item_metadata(step)['state']
  except Exception as e:  # unreadable metadata: orbax, JSON and OS errors alike
    raise DamagedCheckpointError(error_cause(e)) from e
  saved = _flat_shapes(getattr(metadata, 'tree', metadata) or {})
  if not saved:
    raise DamagedCheckpointError(f'{step_dir}/state/_METADATA lists no arrays')
  expected = _flat_shapes(abstract_state)
  mismatch = first_mismatch(saved, expected)
  if mismatch:
    raise CheckpointError(
      f'{step_dir}: checkpoint incompatible with this config: {mismatch} (use a fresh --workdir)'
    )
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
      ),
    )
  except Exception as e:  # missing / truncated files: TensorStore, grain, OS errors
    raise DamagedCheckpointError(error_cause(e)) from e
  return restored['state']


def _closed_loop_filter(previous_hook):
  """An unraisablehook that drops asyncio's 'Event loop is closed' and passes the rest on.

  When a read fails (a truncated or damaged file), orbax closes its event loop while
  tensorstore still holds reads in flight; their callbacks then find the loop closed
  at interpreter exit, each printing a traceback that says nothing about the file.
  """

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      previous_hook(unraisable)

  return hook


@contextlib.contextmanager
def _quiet_closed_loop():
  """`_closed_loop_filter` while a restore that may fail runs (its reports surface while
  the next checkpoint is read)."""
  previous = sys.unraisablehook
  sys.unraisablehook = _closed_loop_filter(previous)
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).min())


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoints/<step> to damaged_checkpoints/<step>[-n]; returns the new path.

  Moved, not deleted: it is the user's data; and out of checkpoints/, so that the
  resumed run can save that step again.
  """
  parent = os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_DIR)
  target, n = os.path.join(parent, str(step)), 1
  while os.path.exists(target):
    n += 1
    target = os.path.join(parent, f'{step}-{n}')
  if jax.process_index() == 0:
    os.makedirs(parent, exist_ok=True)
    os.replace(os.path.join(manager.directory, str(step)), target)
  multihost_utils.sync_global_devices(f'set_aside:{step}')
  return target


def restore_latest(
  manager: ocp.CheckpointManager, abstract_state, data_iterator
) -> tuple[Any, int | None, list[str]]:
  """(state, step, report lines) of the newest readable checkpoint; (None, None, [])
  when there is none at all.

  Damaged newer checkpoints are skipped and moved to damaged_checkpoints/ (one report
  line each, with the cause). When every checkpoint is damaged nothing is moved and
  CheckpointError refuses to start: restarting from step 0 is the user's decision.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    state, cause = None, 'unreadable on another process'
    try:
      with _quiet_closed_loop():
        state = restore(manager, step, abstract_state, data_iterator)
    except DamagedCheckpointError as e:
      cause = str(e)
    if not _all_processes_agree(state is not None):
      damaged.append((step, cause))
      continue
    report = []
    for bad, why in damaged:
      report.append(
        f'checkpoint {bad} in {manager.directory} is damaged ({why}); '
        f'skipped it and moved it to {_set_aside(manager, bad)}'
      )
    if damaged:
      manager.reload()
    return state, step, report
  if damaged:
    causes = '; '.join(f'step {step}: {why}' for step, why in damaged)
    raise CheckpointError(
      f'{manager.directory}: every checkpoint is damaged, nothing to resume from '
      f'({causes}); move the folder aside to start again from step 0, or use a fresh '
      '--workdir'
    )
  return None, None, []


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
    steps = saved_steps(path)
    if not steps:
      raise CheckpointError(f'{checkpoints}: init_from workdir holds no checkpoint')
    return os.path.join(checkpoints, str(steps[-1]), 'state')
  for sub in ('variables', 'state'):
    if os.path.isdir(os.path.join(path, sub)):
      return os.path.join(path, sub)
  return path


@contextlib.contextmanager
def _absl_errors_only():
  """orbax warns (absl WARNING) before failing on a damaged directory; the failure says it."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def restore_numpy(path: str) -> PyTree:
  """The pytree of an orbax directory as host numpy arrays (no device placement)."""
  checkpointer = ocp.PyTreeCheckpointer()
  previous_hook = sys.unraisablehook
  sys.unraisablehook = _closed_loop_filter(previous_hook)
  with _absl_errors_only():
    metadata = checkpointer.metadata(path)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(path, restore_args=args)
  # Only a successful read gives the hook back: after a failure, reads still in flight
  # may report until the process exits.
  sys.unraisablehook = previous_hook
  return restored


def load_collections(
  path: str, prefix: str = '', source_prefix: str = ''
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
    names = {param_name(p): leaf for p, leaf in leaves}
    return {
      prefix + name[len(source_prefix) :]: np.asarray(leaf)
      for name, leaf in names.items()
      if name.startswith(source_prefix)
    }

  return {name: flat(subtree) for name, subtree in collections.items()}


def load_params(path: str, prefix: str = '', source_prefix: str = '') -> dict[str, np.ndarray]:
  """Flat {prefix + 'a/b/kernel': array} of the 'params' stored under `path`."""
  return load_collections(path, prefix, source_prefix)['params']


def merge_params(
  params: PyTree,
  source: dict[str, np.ndarray],
  include: str = '.*',
  exclude: str = '',
  adapt: Adapter | None = None,
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
  report = {'restored': [], 'adapted': [], 'missing': [], 'shape_mismatch': [], 'not_included': []}
  used = set()

  def pick(path, leaf):
    name = param_name(path)
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


def init_report_summary(path: str, report: dict[str, list[str]]) -> str:
  """`merge_params`'s report in one line of counts (`init_report_lines` lists names)."""
  total = sum(len(report[k]) for k in ('restored', 'missing', 'shape_mismatch', 'not_included'))
  counts = [
    f'{len(report[k])} {k.replace("_", " ")}'
    for k in ('adapted', 'missing', 'shape_mismatch', 'not_included', 'unused')
    if report.get(k)
  ]
  return f'init_from {path}: restored {len(report["restored"])}/{total} parameter leaves' + (
    f' ({", ".join(counts)})' if counts else ''
  )


def init_report_lines(path: str, report: dict[str, list[str]]) -> list[str]:
  """`merge_params`'s report, every leaf named."""
  total = sum(len(report[k]) for k in ('restored', 'missing', 'shape_mismatch', 'not_included'))
  lines = [
    f'init_from {path}: restored {len(report["restored"])}/{total} parameter '
    f'leaves: {", ".join(report["restored"])}'
  ]
  if report.get('adapted'):
    lines.append(f'init_from: adapted to the new shapes: {", ".join(report["adapted"])}')
  for key in ('missing', 'shape_mismatch', 'not_included'):
    if report[key]:
      lines.append(f'init_from: re-initialised ({key}): {", ".join(report[key])}')
  if report['unused']:
    lines.append(f'init_from: unused source leaves: {", ".join(report["unused"])}')
  return lines


def export_dir(workdir: str) -> str:
  """Where a run's export lives: workdir/export (absolute)."""
  return os.path.join(os.path.abspath(workdir), 'export')


def export(workdir: str, variables: PyTree, config, metadata: dict | None = None) -> str:
  """Writes `variables`, the config JSON and the task's metadata JSON (vocabularies,
  preprocessing: `Task.export_metadata`) to workdir/export, atomically.

  Everything goes to a temporary sibling first, which replaces export/ in one rename.
  """
  final = export_dir(workdir)
  tmp = final + '.tmp'
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


def existing_export(workdir: str, config) -> str | None:
  """workdir/export when it is complete and was written under `config`, else None.

  Every process gets the same answer (they all skip `export`'s barriers, or none does).
  """
  final = export_dir(workdir)
  try:
    with open(os.path.join(final, 'config.json')) as f:
      written = json.load(f)
  except (OSError, ValueError):
    written = None
  current = json.loads(config.to_json_best_effort())
  found = written == current and os.path.isdir(os.path.join(final, 'variables'))
  return final if _all_processes_agree(found) else None
