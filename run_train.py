"""Trains one stage: python run_train.py --config=configs/<stage>.py[:variant] --workdir=DIR

Multi-host: add --multihost (cluster auto-detection) or --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment variables).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from tps_jax.train import run_cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Stage config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (resumed if present).')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize().')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'Index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl flag parsing, with a one-line error for a --config.<field> that does not exist."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises with the bare field name (and maybe a suggestion).
    while isinstance(e, BaseException) and e.args:
      e = e.args[0]
    detail = str(e).replace('\n', ' ')
    bad = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    sys.exit(f'error: no such config field: {detail} (in {" ".join(bad)})')
  except flags.Error as e:
    sys.exit(f'error: {e}')


def main(argv):
  del argv
  run_cli(_CONFIG.value, _WORKDIR.value, multihost=_MULTIHOST.value,
          coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
          process_id=_PROCESS_ID.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
