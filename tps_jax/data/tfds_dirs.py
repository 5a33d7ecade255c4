"""Built TFDS dataset folders opened without letting their files choose code to import.

`tfds.builder_from_directory` rebuilds a dataset's features from its `features.json`
(or `dataset_info.json`), whose `pythonClassName` entries name feature classes; a name
tfds has not registered is imported first (`FeatureConnector.cls_from_name`), so a
dataset folder someone shared could run a module of the current folder.
`builder_from_directory` here refuses any name outside tfds's own feature package
before tfds reads the folder: one ValueError naming the file and the class.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

FEATURE_FILES = ('features.json', 'dataset_info.json')
TFDS_FEATURES = 'tensorflow_datasets.core.features.'


def _class_names(value: Any) -> Iterator[str]:
  """Every `pythonClassName` value anywhere in a JSON value."""
  stack = [value]
  while stack:  # no recursion: a deep file is only long, not a RecursionError
    item = stack.pop()
    if isinstance(item, dict):
      name = item.get('pythonClassName')
      if name is not None:
        yield name
      stack.extend(item.values())
    elif isinstance(item, list):
      stack.extend(item)


def check_feature_classes(directory: str) -> None:
  """ValueError (one line) if a feature file of `directory` names a feature class that
  is not one of tfds's own."""
  for name in FEATURE_FILES:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        content = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
      raise ValueError(f'{path}: unreadable ({type(e).__name__})') from None
    for class_name in _class_names(content):
      if not (isinstance(class_name, str) and class_name.startswith(TFDS_FEATURES)):
        raise ValueError(
          f"{path}: feature class {class_name!r} is not one of tfds's own "
          f'({TFDS_FEATURES}*); a dataset folder never chooses code to import'
        )


def builder_from_directory(directory: str):
  """`tfds.builder_from_directory(directory)` after `check_feature_classes`."""
  check_feature_classes(directory)
  return tfds.builder_from_directory(directory)
