"""Shared pytest fixtures: one tiny synthetic Kinetics-TPS dataset per test session."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent XLA compilation cache per test session, inherited by the subprocesses
# the tests start: a program compiled by one test (e.g. the end-to-end pipeline in
# `python -m tps_jax.predict`) is loaded, not recompiled, by the next.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='tps_jax_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, check=True, env=None, timeout=600):
  """Runs `python -m module args...` from the repo root; returns CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  proc = subprocess.run(
    [sys.executable, '-m', module, *map(str, args)],
    cwd=REPO_ROOT,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(
      f'python -m {module} {" ".join(map(str, args))} failed '
      f'({proc.returncode}):\n{proc.stdout}\n{proc.stderr}'
    )
  return proc


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
  """A tiny synthetic dataset in the official layout (read-only: copy before editing)."""
  from tps_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('kinetics_tps') / 'Kinetics-TPS'
  synthetic.write_synthetic(str(root), videos=6, frames=12, seed=0, progress=False)
  return root
