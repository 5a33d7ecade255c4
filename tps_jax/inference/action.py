"""A trained action recogniser from its export, as a member of a multi-view evaluation.

`load_member(export_dir)` gives a `tps_jax.tasks.action_views.Member` (network,
variables, training config) of the network `export.load_export` rebuilds; the views,
scores, ensembles and `evaluate_members` themselves are in tps_jax/tasks/action_views.py,
where the action task's final evaluation also finds them.
"""

from __future__ import annotations

from tps_jax.inference.export import load_export
from tps_jax.tasks.action_views import Member


def load_member(export_dir: str) -> Member:
  """A Member from an action recogniser's `export/` directory written by the trainer."""
  export = load_export(export_dir, kind='action')
  return Member(
    name=export.path, model=export.model, variables=export.variables, config=export.config
  )
