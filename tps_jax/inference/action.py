"""A trained action recogniser from its export, as a member of a multi-view evaluation.

`load_member(export_dir)` gives a `tps_jax.tasks.action_views.Member` (network,
variables, training config) from a trainer's `export/`; the views, scores, ensembles and
`evaluate_members` themselves are in tps_jax/tasks/action_views.py, where the action
task's final evaluation also finds them.
"""

from __future__ import annotations

import os

import ml_collections

from tps_jax.models.swin import build_video_classifier
from tps_jax.tasks.action_views import Member
from tps_jax.train import checkpointing


def load_member(export_dir: str) -> Member:
  """A Member from an `export/` directory written by the trainer (variables + config)."""
  export_dir = os.path.abspath(export_dir)
  if not os.path.isfile(os.path.join(export_dir, 'config.json')):
    raise FileNotFoundError(f'{export_dir}: not a training export (no config.json)')
  variables, config_dict = checkpointing.load_export(export_dir)
  config = ml_collections.ConfigDict(config_dict)
  if config.get('task') != 'action':
    raise ValueError(f'{export_dir}: exported by task {config.get("task")!r}, not action')
  head = variables['params']['head']['kernel']
  model = build_video_classifier(config.model, int(head.shape[-1]))
  return Member(name=export_dir, model=model, variables=variables, config=config)
