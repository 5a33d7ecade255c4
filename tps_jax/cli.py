"""What every command-line entry point shares: absl flags whose errors are one line.

Entry points define absl flags at module level and end with `cli.run(main)`; `main(argv)`
returns the exit status. absl's own `app.run` reports a bad flag as two lines ("FATAL
Flags parsing error: ..." and a hint), and ml_collections' config flags put a traceback
into the message; `run` reports every flag error -- an unknown flag, a value of the
wrong type, a missing required flag, a failed validator, a config field that does not
exist -- as one line `error: ...` on stderr, exit status 1; `--help` (and absl's other
help flags) prints the usage with exit status 0. The libraries' INFO logs
(TFDS and orbax name every file they touch) are hidden unless --verbosity is given.

The library never calls an entry point: a tool's work is a library function with
keyword arguments named as the tool's flags (e.g. tps_jax.datasets.build.build_datasets
behind data_prep/build.py), so that tests and other code call that function.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

# absl's help flags: they print the usage and exit with status 1 while flags are parsed.
HELP_FLAGS = ('help', '?', 'helpshort', 'helpfull', 'helpxml')


def one_line(error: BaseException) -> str:
  """A flag error's message on one line; the traceback ml_collections puts into a
  config file's error is reduced to the config's own message (e.g. an unknown variant)."""
  text = str(error).strip()
  flag, marker, trace = text.partition(': Error whilst parsing config file:')
  last = trace.strip().splitlines()[-1] if marker and trace.strip() else ''
  if last.startswith('ValueError: '):  # e.g. a config's unknown variant
    text = f'{flag}: {last[len("ValueError: ") :]}'
  return ' '.join(text.split())


def os_error_line(error: OSError) -> str:
  """'PATH: cause' of a failed file operation (a full disk, a read-only folder), one line."""
  where = f'{error.filename}: ' if error.filename else ''
  return ' '.join(f'{where}{error.strerror or error}'.split())


def asks_for_help(argv: Sequence[str]) -> bool:
  """Whether argv holds one of absl's help flags (`--help`, `-?`, `--helpfull`, ...)."""
  return any(a.lstrip('-').split('=')[0] in HELP_FLAGS for a in argv[1:] if a.startswith('-'))


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing (FLAGS(argv)) with every error as one line, exit status 1, and the
  help flags' usage with exit status 0; may run before app.run (e.g. to set the
  environment before JAX is imported)."""
  app.define_help_flags()
  try:
    return flags.FLAGS(list(argv))
  except SystemExit:  # a help flag printed the usage: asking for it is no error
    if asks_for_help(argv):
      sys.exit(0)
    raise
  except (AttributeError, KeyError) as e:  # ml_collections: the bare config field name
    detail = e
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]
    bad = ' '.join(a.split('=')[0] for a in argv[1:] if a.startswith('--config.'))
    sys.exit(f'error: no such config field: {" ".join(str(detail).split())} (in {bad})')
  except flags.Error as e:
    sys.exit(f'error: {one_line(e)}')


def run(
  main: Callable[[list[str]], int | None],
  flags_parser: Callable[[Sequence[str]], list[str]] = parse_flags,
) -> None:
  """absl's app.run(main) with one-line flag errors; exits with main's return value."""

  def main_with_warnings(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(main_with_warnings, flags_parser=flags_parser)
