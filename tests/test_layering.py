"""The library's layers point down: no import circle, no import of a layer above.

Every module under tps_jax/ is parsed (nothing is imported); every import counts, at
module level or inside a function. Order, bottom to top:

  ops, data            box ops; the formats every layer reads (dataset reader,
                       submissions, videos, augmentation, built TFDS datasets)
  datasets, input      the offline dataset factory (synthetic data, validation, frames,
                       TFDS builds); the grain input pipelines
  models, metrics      the networks; the challenge score, COCO mAP
  convert              PyTorch checkpoints into the networks' parameters
  tasks                the four stages' training tasks (and the Task protocol)
  train                the one trainer, which runs a task
  inference            exports, the end-to-end pipeline
  entry points         the command lines (tps_jax.cli's users)
  chain                the chain of stages (the demo), which also writes and builds data

`LAYERS` lists what each may import; a module in a new package (or a new top-level
module) must be placed there before this test passes. Modules found by name at run time
(`tasks.base.LIBRARY_TASKS`, the converter registry) stay inside their own package.
The dataset factory is offline: only the chain (and data_prep/, outside the package)
may import it, so training and serving run from what it wrote (`FACTORY_USERS`).
"""

from __future__ import annotations

import ast
import pathlib

from tests.conftest import REPO_ROOT

PACKAGE = 'tps_jax'
LOWER = ('ops', 'data')
# layer -> the layers its modules may import (its own always).
LAYERS = {
  'root': (),  # tps_jax/__init__.py
  'cli': (),  # the command lines' flag handling
  'ops': (),
  'data': ('ops',),
  'datasets': LOWER,
  'input': LOWER,
  'models': LOWER,
  'metrics': LOWER,
  'convert': (*LOWER, 'models'),
  'tasks': (*LOWER, 'input', 'models', 'metrics', 'convert'),
  'train': (*LOWER, 'input', 'models', 'metrics', 'convert', 'tasks'),
  'inference': (*LOWER, 'input', 'models', 'metrics', 'convert', 'tasks', 'train'),
  'entry': ('cli', *LOWER, 'input', 'models', 'metrics', 'convert', 'tasks', 'train', 'inference'),
}
LAYERS['chain'] = (*LAYERS['entry'], 'datasets')
# The layers that may import the dataset factory (besides itself): the demo's chain.
FACTORY_USERS = ('chain',)
ENTRY_POINTS = {
  'evaluate',
  'evaluate_action',
  'evaluate_detector',
  'evaluate_part_state',
  'export_pipeline',
  'predict',
  'report',
  'visualize',
}


def module_files() -> dict[str, pathlib.Path]:
  """{'tps_jax.tasks.action': path, 'tps_jax.tasks': .../__init__.py, ...}."""
  root = pathlib.Path(REPO_ROOT)
  modules = {}
  for path in sorted((root / PACKAGE).rglob('*.py')):
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    modules['.'.join(parts)] = path
  return modules


def imported(module: str, node: ast.AST, is_package: bool, known) -> list[str]:
  """The modules an import statement names, resolved to the ones under tps_jax."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = node.module or ''
    if node.level:  # relative: from the importing module's package upwards
      package = module.split('.')[: len(module.split('.')) - (not is_package)]
      package = package[: len(package) - node.level + 1]
      base = '.'.join(package + ([base] if base else []))
    names = [
      f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base for alias in node.names
    ]
  out = []
  for name in names:
    while name not in known and '.' in name:  # an attribute of a module: the module
      name = name.rsplit('.', 1)[0]
    if name in known:
      out.append(name)
  return out


def import_graph() -> dict[str, set[str]]:
  """{module: the tps_jax modules it imports}, every import statement included."""
  files = module_files()
  graph = {}
  for module, path in files.items():
    is_package = path.name == '__init__.py'
    tree = ast.parse(path.read_text(), str(path))
    graph[module] = {
      target
      for node in ast.walk(tree)
      if isinstance(node, (ast.Import, ast.ImportFrom))
      for target in imported(module, node, is_package, files)
      if target != module
    }
  return graph


def layer(module: str) -> str:
  parts = module.split('.')
  if len(parts) == 1:
    return 'root'
  if parts[1] in ENTRY_POINTS or parts[-1] == '__main__':
    return 'entry'
  return parts[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
  state = {}  # module -> 1 on the current path, 2 done
  for start in sorted(graph):
    if start in state:
      continue
    path, stack = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while stack:
      target = next(stack[-1], None)
      if target is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(target) == 1:
        return path[path.index(target) :] + [target]
      elif target not in state:
        state[target] = 1
        path.append(target)
        stack.append(iter(sorted(graph[target])))
  return None


def test_every_module_has_a_layer():
  unplaced = sorted(m for m in import_graph() if layer(m) not in LAYERS)
  assert not unplaced, f'place these in LAYERS or ENTRY_POINTS: {", ".join(unplaced)}'


def test_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_imports_point_down():
  upward = [
    f'{module} ({layer(module)}) imports {target} ({layer(target)}); '
    f'{layer(module)} may import {", ".join(LAYERS[layer(module)]) or "nothing"}'
    for module, targets in sorted(import_graph().items())
    for target in sorted(targets)
    if layer(target) != layer(module) and layer(target) not in LAYERS.get(layer(module), ())
  ]
  assert not upward, '\n'.join(upward)


def test_only_the_chain_reaches_the_dataset_factory():
  """Checked on LAYERS itself, so that widening it to let an import through fails here."""
  widened = [
    f'{name} may import datasets'
    for name, allowed in LAYERS.items()
    if name not in FACTORY_USERS and 'datasets' in allowed
  ]
  # The formats, which every layer reads, import neither the factory nor the pipelines.
  widened += [f'data may import {name}' for name in ('datasets', 'input') if name in LAYERS['data']]
  assert not widened, '; '.join(widened)
  assert layer('tps_jax.predict') == 'entry' and layer('tps_jax.chain') == 'chain'
  assert layer('tps_jax.input.pipelines') == 'input'


def test_the_checks_see_a_circle_and_an_upward_import():
  graph = {
    'tps_jax.tasks.action': {'tps_jax.inference.action'},
    'tps_jax.inference.action': {'tps_jax.tasks.action'},
  }
  assert find_cycle(graph) == [
    'tps_jax.inference.action',
    'tps_jax.tasks.action',
    'tps_jax.inference.action',
  ]
  assert 'inference' not in LAYERS[layer('tps_jax.tasks.action')]
  assert layer('tps_jax.convert.__main__') == 'entry' and layer('tps_jax') == 'root'
  # Imports inside functions count.
  tree = ast.parse('def f():\n  from tps_jax.inference import action\n')
  node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
  assert imported('tps_jax.tasks.x', node, False, {'tps_jax.inference.action'}) == [
    'tps_jax.inference.action'
  ]


def config_imports() -> dict[str, set[str]]:
  """{'configs/human_detector.py': the modules it imports, by their full names}."""
  imports = {}
  for path in sorted(pathlib.Path(REPO_ROOT, 'configs').glob('*.py')):
    tree = ast.parse(path.read_text(), str(path))
    imports[f'configs/{path.name}'] = {
      name
      for node in ast.walk(tree)
      if isinstance(node, (ast.Import, ast.ImportFrom))
      for name in (
        [alias.name for alias in node.names]
        if isinstance(node, ast.Import)
        else [f'{node.module}.{alias.name}' for alias in node.names]
      )
    }
  return imports


def test_configs_import_no_library_code():
  # A config writes the values it sets (as big_vision's configs/bit_i1k.py does): it
  # imports other configs and ml_collections, never the networks or ops it configures,
  # so a value can only come from the file that shows it.
  found = [
    f'{path} imports {name}'
    for path, names in config_imports().items()
    for name in sorted(names)
    if name == PACKAGE or name.startswith(f'{PACKAGE}.')
  ]
  assert not found, '\n'.join(found)


def test_inference_does_not_pull_in_the_trainer():
  # Loading an export and predicting need the trainer's checkpoints, not the trainer:
  # `predict` and the inference modules reach neither it nor a package that imports it.
  graph = import_graph()
  starts = ['tps_jax.predict', *(m for m in graph if m.startswith('tps_jax.inference'))]
  seen, stack = set(), list(starts)
  while stack:
    module = stack.pop()
    if module not in seen:
      seen.add(module)
      stack += graph[module]
      parent = module.rsplit('.', 1)[0]  # importing a module runs its package first
      stack += [parent] if parent in graph else []
  assert 'tps_jax.train.trainer' not in seen
