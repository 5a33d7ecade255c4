"""README.md stays honest: every command it shows uses flags its command defines and
paths that exist; nothing in the repository points outside it; `--help` exits 0.

A command's flags are its own absl definitions: its module is executed (its
`if __name__ == '__main__':` block too, without the final `cli.run`) into absl's global
FLAGS emptied of the flags other project modules defined, then FLAGS is put back as it
was. Nothing
is run and no file is read but the configs a command line names.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import importlib.util
import itertools
import os
import re
import shlex
import sys
import types

import pytest
from absl import app, flags

from tests.conftest import REPO_ROOT, run_module
from tps_jax import cli

README = os.path.join(REPO_ROOT, 'README.md')
# A path inside the repository, as a command line or the prose names it.
REPO_PATH = re.compile(
  r'^(?:configs|bench|tps_jax|data_prep|tests|docs)/[\w./*-]*$|^requirements[\w-]*\.txt$'
)
# What a command argument that stands for the user's own value looks like: DATA,
# WORKDIR/export, <stage>, val|train|test.
PLACEHOLDER = re.compile(r'[A-Z]{2,}|<|\|')
_unique = itertools.count()


# ------------------------------------------------------------------ the README's commands


def readme_commands(text: str) -> list[str]:
  """The command lines of README.md: the lines of its fenced shell blocks (continuations
  joined, `&&` chains split) and its inline code spans that start with `python`."""
  lines = []
  for block in re.findall(r'^```(?:bash|sh)?\n(.*?)^```', text, flags=re.S | re.M):
    lines += block.replace('\\\n', ' ').splitlines()
  lines += re.findall(r'(?<!`)`(python [^`]+)`(?!`)', text)
  commands = []
  for line in lines:
    commands += [part.strip() for part in line.split('&&')]
  return [c for c in commands if re.match(r'^(\w+=\S+ )*(python|pip) ', c)]


def command_words(command: str) -> list[str]:
  """The words of a command line without the comment, the environment assignments, and
  the brackets and dots that mark optional parts."""
  words = shlex.split(command.replace('[', '').replace(']', ''), comments=True)
  words = [w for w in words if w != '...']
  while words and re.match(r'^\w+=', words[0]):
    words.pop(0)
  return words


def command_file(words: list[str]) -> tuple[str, str] | None:
  """(a display name, the Python file) of a tps_jax / data_prep / bench / run_train.py
  command, None for any other (pip, pytest)."""
  if words[1] == '-m' and words[2].startswith(('tps_jax.', 'data_prep.')):
    if PLACEHOLDER.search(words[2]):  # `python -m tps_jax.<name>`: any of them
      return None
    spec = importlib.util.find_spec(words[2])
    if spec is None:
      return f'python -m {words[2]}', f'{words[2]} (no such module)'
    path = spec.origin
    if spec.submodule_search_locations:  # a package run as python -m: its __main__.py
      path = os.path.join(os.path.dirname(spec.origin), '__main__.py')
    return f'python -m {words[2]}', path
  if words[1] == 'run_train.py' or words[1].startswith('bench/'):
    return f'python {words[1]}', os.path.join(REPO_ROOT, words[1])
  return None


# -------------------------------------------------------------- a command's own flags


def _projects(module_name: str) -> bool:
  """Whether a module that defines flags is the project's (a command or its helpers)."""
  module = sys.modules.get(module_name)
  path = getattr(module, '__file__', None) or ''
  return module_name.startswith('_readme_') or path.startswith(REPO_ROOT + os.sep)


def _without_project_flags(state: dict) -> dict:
  """FLAGS' internal state without the flags the project's modules defined (absl's and
  the libraries' stay: grain, array_record read theirs at run time)."""
  kept = {m: list(v) for m, v in state['__flags_by_module'].items() if not _projects(m)}
  library = {id(f) for v in kept.values() for f in v}
  return {
    **state,
    '__flags': {n: f for n, f in state['__flags'].items() if id(f) in library},
    '__hiddenflags': set(),
    '__flags_by_module': kept,
    '__flags_by_module_id': {
      m: [f for f in v if id(f) in library] for m, v in state['__flags_by_module_id'].items()
    },
    '__key_flags_by_module': {
      m: [f for f in v if id(f) in library]
      for m, v in state['__key_flags_by_module'].items()
      if not _projects(m)
    },
    '__flags_parsed': False,
  }


@contextlib.contextmanager
def own_flags():
  """absl's FLAGS without the project's flags (absl's and the libraries' stay); all put
  back as it was after, with the environment, sys.argv and sys.path (a bench script sets
  XLA_FLAGS)."""
  app.define_help_flags()  # absl's, as cli.parse_flags defines them
  state = vars(flags.FLAGS)
  saved = dict(state)
  saved_lists = {k: {m: list(v) for m, v in state[k].items()} for k in saved if 'by_module' in k}
  environ, argv, path = dict(os.environ), list(sys.argv), list(sys.path)
  state.update(_without_project_flags(saved))
  try:
    yield flags.FLAGS
  finally:
    state.clear()
    state.update(saved)
    state.update(saved_lists)
    os.environ.clear()
    os.environ.update(environ)
    sys.argv[:], sys.path[:] = argv, path


def _main_block(tree: ast.Module) -> tuple[list[ast.stmt], bool]:
  """The statements of `if __name__ == '__main__':` but its `cli.run(...)`, and whether
  it ends with `cli.run(...)`."""
  for node in tree.body:
    if isinstance(node, ast.If) and "__name__ == '__main__'" in ast.unparse(node.test):
      body = node.body
      ends_with_run = ast.unparse(body[-1]).startswith('cli.run(')
      return (body[:-1] if ends_with_run else body), ends_with_run
  return [], False


def load_command(path: str) -> tuple[types.ModuleType, bool]:
  """Executes a command's file under a fresh module name (inside `own_flags`), its main
  block too but the final `cli.run`; returns (module, whether it ends with cli.run)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  name = f'_readme_command_{next(_unique)}'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # absl files each flag under its defining module
  sys.argv[:] = [path]  # a bench script parses its flags as it is imported
  if path.startswith(os.path.join(REPO_ROOT, 'bench')):
    sys.path.insert(0, os.path.dirname(path))  # `import common`, as `python bench/x.py`
  try:
    spec.loader.exec_module(module)
    main_block, ends_with_run = _main_block(tree)
    exec(compile(ast.Module(main_block, []), path, 'exec'), vars(module))  # noqa: S102
  finally:
    del sys.modules[name]
  return module, ends_with_run


# ------------------------------------------------------------------- checking a line


def _config_problem(config_arg: str | None, field: str) -> str:
  """Why `--config.<field>` does not fit the --config file of the line ('' if it does)."""
  if config_arg is None:
    return f'--config.{field} without --config'
  if PLACEHOLDER.search(config_arg) or PLACEHOLDER.search(field):
    return ''
  path, _, variant = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location(f'_readme_config_{next(_unique)}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  node = module.get_config(variant or None)
  for key in field.split('.'):
    if not hasattr(node, 'keys') or key not in node:
      return f'--config.{field}: {config_arg} has no such field'
    node = node[key]
  return ''


def flag_problems(words: list[str], defined) -> list[str]:
  """The flags of a command line's words that the command does not define, enum values
  it does not take, and words that are no flag's value."""
  problems, config_arg, fields = [], None, []
  i = 2 if words[1] != '-m' else 3
  while i < len(words):
    word = words[i]
    i += 1
    if not word.startswith('-'):
      problems.append(f'{word}: not a flag nor a flag value')
      continue
    name, has_value, value = word.lstrip('-').partition('=')
    if name.startswith('config.'):
      fields.append(name[len('config.') :])
      continue
    flag = defined[name] if name in defined else None
    if flag is None and name.startswith('no') and name[2:] in defined:
      flag = defined[name[2:]] if defined[name[2:]].boolean else None
      has_value = True  # --noX takes no value
    if flag is None:
      problems.append(f'--{name}: no such flag')
      continue
    if not flag.boolean and not has_value:
      value, i = words[i], i + 1
    if name == 'config':
      config_arg = value
    enum = getattr(flag.parser, 'enum_values', None)
    if enum and not PLACEHOLDER.search(value) and value not in enum:
      problems.append(f'--{name} {value}: not one of {", ".join(enum)}')
  problems += [p for p in (_config_problem(config_arg, f) for f in fields) if p]
  return problems


def path_problems(words: list[str]) -> list[str]:
  """Repository paths a command line names that do not exist."""
  problems = []
  for word in words:
    for candidate in (word, word.partition('=')[2]):
      candidate = candidate.split(':')[0]
      if REPO_PATH.match(candidate) and not PLACEHOLDER.search(candidate):
        if not glob.glob(os.path.join(REPO_ROOT, candidate)):
          problems.append(f'{candidate}: no such file in the repository')
  return problems


def command_problems(command: str) -> tuple[str | None, list[str]]:
  """(the command's name or None if not one of the project's, what is wrong with it)."""
  words = command_words(command)
  problems = path_problems(words)
  found = command_file(words)
  if found is None:
    return None, problems
  name, path = found
  if not os.path.isfile(path):
    return name, [*problems, f'{path}: no such file']
  with own_flags() as defined:
    load_command(path)
    problems += flag_problems(words, defined)
  return name, problems


# ------------------------------------------------------------------------------ tests


def test_every_readme_command_uses_its_commands_flags_and_existing_paths():
  with open(README) as f:
    commands = readme_commands(f.read())
  checked, problems = set(), []
  for command in commands:
    name, found = command_problems(command)
    checked.add(name)
    problems += [f'{command}\n    {p}' for p in found]
  assert not problems, '\n'.join(problems)
  # Each kind of command is among those checked.
  assert {
    'python run_train.py',
    'python -m tps_jax.predict',
    'python -m tps_jax.evaluate',
    'python -m data_prep.build',
    'python bench/bench_one_stage.py',
    'python bench/bench_train_step.py',
  } <= checked
  assert len(checked) >= 20


def test_the_check_finds_what_is_wrong():
  cases = {
    'python -m tps_jax.evaluate --gt G --pred P --bogus 1': '--bogus: no such flag',
    'python -m tps_jax.evaluate --gt G --pred P --split tset': '--split tset: not one of',
    'python -m tps_jax.evaluate_detector --export E --config.data.root=D': 'without --config',
    'python run_train.py --config=configs/demo.py --workdir=W --config.sede=1': 'no such field',
    'python run_train.py --config=configs/nothing.py --workdir=W': 'configs/nothing.py: no such',
    'python bench/bench_swin.py --clock cpu stray': 'stray: not a flag',
    'python -m tps_jax.predict --bundle B --noablation --nobundle': '--nobundle: no such',
  }
  for command, expected in cases.items():
    _, problems = command_problems(command)
    assert any(expected in p for p in problems), (command, problems)
  assert command_problems(
    'python run_train.py --config=configs/demo.py --workdir=W '
    '--config.stage_overrides.seed=1 --config.data.root=D'
  ) == ('python run_train.py', [])


def test_nothing_in_the_repository_points_outside_it():
  tracked = os.popen(f'git -C {REPO_ROOT} ls-files').read().split()
  assert tracked
  outside = re.compile(r'\.\./shared|shared/(kinetics_tps|design)\.md')
  found = []
  for name in tracked:
    with open(os.path.join(REPO_ROOT, name), errors='replace') as f:
      found += [f'{name}:{n}' for n, line in enumerate(f, 1) if outside.search(line)]
  assert not found, found


def test_paths_the_readme_names_exist():
  with open(README) as f:
    text = f.read()
  named = {p for p in re.findall(r'`([^`\s]+)`', text) if REPO_PATH.match(p)}
  assert 'docs/dataset.md' in named
  missing = sorted(p for p in named if not glob.glob(os.path.join(REPO_ROOT, p)))
  assert not missing, missing


def _entry_points() -> list[str]:
  files = ['run_train.py', *glob.glob('bench/bench_*.py', root_dir=REPO_ROOT)]
  files += glob.glob('data_prep/*.py', root_dir=REPO_ROOT)
  files += [f for f in glob.glob('tps_jax/*.py', root_dir=REPO_ROOT)]
  files.append('tps_jax/convert/__main__.py')
  return sorted(
    f
    for f in files
    if "__name__ == '__main__'" in open(os.path.join(REPO_ROOT, f)).read()  # noqa: SIM115
  )


@pytest.mark.parametrize('entry', _entry_points())
def test_help_exits_0(entry, capsys):
  """Every command ends with cli.run, whose flag parser exits 0 on --help."""
  with own_flags():
    module, ends_with_run = load_command(os.path.join(REPO_ROOT, entry))
    assert ends_with_run, f'{entry}: its main block does not end with cli.run(...)'
    parse = getattr(module, 'parse_flags', cli.parse_flags)  # run_train.py has its own
    with pytest.raises(SystemExit) as done:
      parse([entry, '--help'])
  assert done.value.code == 0
  assert 'Try --helpfull' in capsys.readouterr().out


def test_help_exits_0_as_a_user_types_it():
  proc = run_module('tps_jax.predict', '--help')
  assert proc.returncode == 0 and '--bundle' in proc.stdout
