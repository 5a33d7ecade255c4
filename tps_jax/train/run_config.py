"""A run's config: checked before anything is built, kept in the workdir, compared on
resume.

A long run is resumed many times, often by a scheduler rerunning the same command, so
what it trains must not change silently in between. `workdir/config.json` holds the
config the run was started with; a resume compares the current one against it.

Fields that only say how often to log, checkpoint or evaluate, how many checkpoints
to keep, or how the work is laid out on the machine (`FREE_FIELDS`) may change freely;
`total_steps` may be raised to train on (the learning-rate schedule then ends at the
new step). Any other difference is listed and refused unless
`--config.allow_config_change=True`, which replaces the stored config by the new
one. A `total_steps` below the step a workdir has reached is refused either way: the
parameters cannot be un-trained. Configs stored by an earlier version are read in
today's field names first (`RENAMED_FIELDS`, `FORMER_DEFAULTS`), so that a rename is
not a change.
"""

from __future__ import annotations

import json
import os
from typing import Any

CONFIG_FILE = 'config.json'

# May differ on resume: cadence, retention, and the work's layout on the hardware.
FREE_FIELDS = frozenset(
  {
    'log_steps',
    'checkpoint_steps',
    'keep_checkpoints',
    'eval_steps',
    'allow_config_change',
    'grad_accum_steps',
    'mesh.model',
    'data.read_threads',
    'data.prefetch_batches',
    'data.worker_count',
    'data.worker_buffer_size',
  }
)

# Fields renamed since configs were stored: old name -> new name. Configs stored
# before the renames are those without `data.tfds_name` (no config had it then).
RENAMED_FIELDS = {'data.stage': 'data.dataset', 'data.dataset': 'data.tfds_name'}
# Fields the configs now spell out that the library once filled in when absent: a
# stored config without one of them ran with this value.
FORMER_DEFAULTS = {
  'data.tfds_name': '',
  'data.train_videos': 0,
  'optim.b1': 0.9,
  'optim.b2': 0.999,
  'optim.eps': 1e-8,
}

# Counters every stage config has: (smallest valid value, an example for the message).
_COUNTS = {
  'total_steps': (0, 10000),
  'batch_size': (1, 32),
  'grad_accum_steps': (1, 1),
  'log_steps': (1, 100),
  'checkpoint_steps': (1, 1000),
  'keep_checkpoints': (1, 3),
  'eval_steps': (0, 1000),
}
_SHOWN_CHANGES = 8


class RunConfigError(ValueError):
  """A config that cannot run, or cannot resume this workdir (one line)."""


def check_counts(config) -> None:
  """Refuses step counts and sizes that make no sense (checkpoint_steps=0, ...)."""
  for field, (smallest, example) in _COUNTS.items():
    if field not in config:
      continue
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
      kind = 'a positive integer' if smallest else 'an integer >= 0'
      extra = ' (0: never)' if field == 'eval_steps' else ''
      raise RunConfigError(
        f'config.{field}={value!r}: must be {kind}{extra}, e.g. --config.{field}={example}'
      )


def flatten(config) -> dict[str, Any]:
  """{'optim.learning_rate': 0.001, ...}: every leaf field as its JSON value."""
  tree = (
    json.loads(config.to_json_best_effort()) if hasattr(config, 'to_json_best_effort') else config
  )
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict) and value:
        walk(value, f'{prefix}{key}.')
      else:
        flat[f'{prefix}{key}'] = value

  walk(tree, '')
  return flat


def store(workdir: str, config) -> str:
  """Writes the config to workdir/config.json (atomically); returns the path."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    f.write('\n')
  os.replace(tmp, path)
  return path


def _load(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return flatten(json.load(f))
  except (OSError, ValueError) as e:
    raise RunConfigError(
      f'{path}: unreadable stored settings ({e}); restore the file, or '
      'delete it to store the current settings'
    ) from None


def upgrade(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
  """The flat stored config in today's field names (`RENAMED_FIELDS`), with the fields
  `current` has that the library once filled in given their values then
  (`FORMER_DEFAULTS`)."""
  if 'data.tfds_name' not in stored:
    stored = {RENAMED_FIELDS.get(field, field): value for field, value in stored.items()}
  missing = {
    field: value
    for field, value in FORMER_DEFAULTS.items()
    if field in current and field not in stored
  }
  return {**stored, **missing}


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
  shown = [f'{field} {old!r} -> {new!r}' for field, old, new in changes[:_SHOWN_CHANGES]]
  if len(changes) > _SHOWN_CHANGES:
    shown.append(f'and {len(changes) - _SHOWN_CHANGES} more')
  return '; '.join(shown)


def check_resume(workdir: str, config) -> list[str]:
  """Compares `config` with the config stored in `workdir`; returns lines to print.

  Raises RunConfigError listing the fields that changed the run's meaning unless
  `config.allow_config_change`. Stores nothing: the trainer stores the config once
  the resume has been accepted (`store`).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return [
      f'{path}: no stored settings (a workdir from an earlier version); storing the current ones'
    ]
  current = flatten(config)
  stored = upgrade(_load(path), current)
  absent = '(absent)'
  changes = [
    (field, stored.get(field, absent), current.get(field, absent))
    for field in sorted(set(stored) | set(current))
    if field not in FREE_FIELDS and stored.get(field, absent) != current.get(field, absent)
  ]
  lines = []
  raised = [
    c
    for c in changes
    if c[0] == 'total_steps' and isinstance(c[1], int) and isinstance(c[2], int) and c[2] > c[1]
  ]
  if raised:
    changes.remove(raised[0])
    lines.append(
      f'total_steps raised from {raised[0][1]} to {raised[0][2]}: training on '
      '(the learning-rate schedule now ends at the new step)'
    )
  if changes:
    if not config.get('allow_config_change', False):
      raise RunConfigError(
        f'{workdir}: resuming with settings that change what this run trains: '
        f'{_describe(changes)} (stored in {path}); rerun with the stored settings, use '
        'a fresh --workdir, or accept the change with --config.allow_config_change=True'
      )
    lines.append(f'settings changed on resume (allow_config_change): {_describe(changes)}')
  return lines


def check_total_steps(config, step: int, workdir: str) -> None:
  """Refuses a total_steps below the step the workdir's checkpoint has reached."""
  if config.total_steps < step:
    raise RunConfigError(
      f'config.total_steps={config.total_steps} is below step {step}, where the '
      f'checkpoint in {workdir} is: a run cannot be shortened after the fact; use '
      f'--config.total_steps={step} or more, or a fresh --workdir'
    )
