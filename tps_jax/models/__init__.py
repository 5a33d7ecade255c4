"""The networks, one module per family; each builder takes a config's values.

Flax module fields and the detectors' frozen spec dataclasses must be hashable (a model
is a static argument of `jax.jit`), while configs hold ConfigDicts, dicts and lists (a
list is what a JSON round trip, e.g. an export's config.json, gives back for a tuple):
every builder passes config values through `hashable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def hashable(value: Any) -> Any:
  """ConfigDicts / mappings -> dicts and lists -> tuples, all the way down; any other
  value as it is. The dicts stay dicts (keyword arguments), their values hashable."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {key: hashable(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(hashable(item) for item in value)
  return value
