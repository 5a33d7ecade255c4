"""Trains one stage: python run_train.py --config=configs/<stage>.py[:variant] --workdir=DIR

A config with `stages` (configs/demo.py) is a chain of stages, run by tps_jax/chain.py.

Multi-host: add --multihost (cluster auto-detection) or --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment variables).
"""

import glob
import os
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from tps_jax import cli

# tps_jax.train (and with it JAX) is imported in main(): the worker processes that
# data preparation and grain spawn re-import this file, and need none of it.

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Stage config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize().')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'Index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def _config_path(argv) -> str:
  """The file named by --config=FILE[:variant] (or --config FILE) in argv."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config=') :].split(':', 1)[0]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return ''


def _config_file_error(error: OSError, argv) -> str:
  """One line for a --config file that did not load (ml_collections defers the error
  until the config is used)."""
  path = _config_path(argv)
  configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
  known = sorted(
    f'configs/{os.path.basename(p)}'
    for p in glob.glob(f'{configs}/*.py')
    if 'def get_config(' in pathlib.Path(p).read_text()
  )
  if os.path.isfile(path):
    cause = str(error.__cause__ or error).strip().splitlines()[-1].strip()
    problem = f'cannot be loaded ({cause})'
  else:
    problem = 'is a directory' if os.path.isdir(path) else 'no such file'
  return (
    f'--config={path}: {problem}; stage configs are {", ".join(known)} (a variant '
    'follows a colon, e.g. --config=configs/part_state.py:tiny)'
  )


def parse_flags(argv):
  """cli.parse_flags (one-line flag errors: an unknown variant, a --config.<field> that
  does not exist), and one line for a --config file that does not load."""
  try:
    remaining = cli.parse_flags(argv)
    _CONFIG.value.get('task')  # a config file that did not load raises here
  except OSError as e:
    sys.exit(f'error: {_config_file_error(e, argv)}')
  return remaining


def main(argv):
  del argv
  if 'stages' in _CONFIG.value:
    from tps_jax.chain import run_cli  # pylint: disable=g-import-not-at-top
  else:
    from tps_jax.train.trainer import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(
    _CONFIG.value,
    _WORKDIR.value,
    multihost=_MULTIHOST.value,
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )


if __name__ == '__main__':
  cli.run(main, flags_parser=parse_flags)
