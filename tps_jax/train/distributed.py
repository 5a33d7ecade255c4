"""A run's processes: starting JAX's distributed runtime, and the console line that
only process 0 prints. The trainer, the chain and `predict` share these without the
inference command importing the trainer."""

from __future__ import annotations

import os
import sys

import jax
from absl import logging
from tqdm import tqdm


def say(message: str) -> None:
  """A line on the console from process 0 (absl INFO is silenced by the command lines),
  above the progress bar when there is one."""
  logging.info(message)
  if jax.process_index() == 0:
    tqdm.write(message, file=sys.stderr)


def initialize_distributed(
  *,
  multihost: bool = False,
  coordinator_address: str = '',
  num_processes: int = 0,
  process_id: int = -1,
) -> None:
  """Calls `jax.distributed.initialize` when asked by flags or JAX_* env vars.

  Arguments left empty fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID, then to JAX's own cluster auto-detection (SLURM, TPU pods, ...).
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS', '')
  num_processes = num_processes or int(env.get('JAX_NUM_PROCESSES', 0))
  if process_id < 0:
    process_id = int(env.get('JAX_PROCESS_ID', -1))
  if not (multihost or coordinator_address):
    return
  jax.distributed.initialize(
    coordinator_address=coordinator_address or None,
    num_processes=num_processes or None,
    process_id=None if process_id < 0 else process_id,
  )
  say(
    f'process {jax.process_index()} of {jax.process_count()}: '
    f'{jax.local_device_count()} local / {jax.device_count()} global devices'
  )
