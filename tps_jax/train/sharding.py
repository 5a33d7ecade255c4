"""Device mesh and shardings: batch over `data`, params replicated or over `model`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tps_jax.train.optim import param_name

PyTree = Any
DATA_AXIS = 'data'
MODEL_AXIS = 'model'


def make_mesh(model_axis_size: int = 1) -> Mesh:
  """A (data, model) mesh over all devices of all processes (`jax.make_mesh`: devices
  ordered for the interconnect), with automatic sharding propagation as under jit."""
  count = jax.device_count()
  if model_axis_size < 1 or count % model_axis_size:
    raise ValueError(f'config.mesh.model={model_axis_size} does not divide the {count} devices')
  return jax.make_mesh(
    (count // model_axis_size, model_axis_size),
    (DATA_AXIS, MODEL_AXIS),
    axis_types=(AxisType.Auto, AxisType.Auto),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) dimension split over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def spec_for(path: str, ndim: int, rules: Sequence[tuple[str, P]]) -> P:
  """The first rule whose regex is found in `path`; replicated when none fits."""
  for pattern, spec in rules:
    if re.search(pattern, path) and len(spec) <= ndim:
      return spec
  return P()


def tree_shardings(mesh: Mesh, tree: PyTree, rules: Sequence[tuple[str, P]]) -> PyTree:
  """NamedShardings for every leaf of `tree` (e.g. the whole train state).

  Rules are matched with `re.search` on the '/'-joined path, so a rule for
  'encoder/.*/kernel' also shards the optimiser moments and EMA copy of that kernel.
  With no `model` axis (size 1) everything is replicated.
  """
  if mesh.shape[MODEL_AXIS] == 1:
    rules = ()
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: NamedSharding(mesh, spec_for(param_name(path), len(leaf.shape), rules)), tree
  )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from every process's numpy share."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
