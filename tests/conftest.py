"""Shared pytest fixtures: one tiny synthetic Kinetics-TPS dataset per test session."""

import atexit
import ctypes
import gc
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One thread for torch's reference computations and numpy's BLAS (each of the two
# workers has a core): a second thread mostly waits, and its waiting counts as CPU time
# (a ResNet-50 FPN forward at 320x384: 2 s of CPU on two threads, 0.4 s on one).
os.environ.setdefault('OMP_NUM_THREADS', '1')
# Compiling, not running, is most of the suite's CPU time, and its programs are small:
# without LLVM's optimisation passes, and with XLA:CPU's older loop emitters instead of
# its fusion emitters, compilation takes about half the CPU (tests/test_swin.py: 23 s
# instead of 60), the numbers staying within every tolerance. Subprocesses inherit
# these flags; a test that sets XLA_FLAGS itself replaces them.
_FAST_COMPILE = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')
_flags = os.environ.get('XLA_FLAGS', '')
os.environ['XLA_FLAGS'] = ' '.join(
  [_flags, *(f for f in _FAST_COMPILE if f.split('=')[0] not in _flags)]
).strip()
# One persistent XLA compilation cache per test session, inherited by the subprocesses
# the tests start: a program compiled by one test (e.g. the end-to-end pipeline in
# `python -m tps_jax.predict`) is loaded, not recompiled, by the next.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='tps_jax_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, check=True, env=None, timeout=600, subprocess_=False):
  """Runs `python -m module args...` from the repo root; returns a CompletedProcess.

  In this process (runpy, as `__main__`, with stdout / stderr captured and SystemExit
  turned into the exit status) unless `env` is given or `subprocess_` is set: a new
  interpreter costs seconds of imports and recompilation, and the command's own code
  is the same. Each command line keeps one subprocess test (`subprocess_=True`), so
  that the commands are also run exactly as a user types them.
  """
  if env or subprocess_:
    proc = _run_subprocess(module, args, env, timeout)
  else:
    proc = _run_in_process(module, args)
  if check and proc.returncode != 0:
    raise AssertionError(
      f'python -m {module} {" ".join(map(str, args))} failed '
      f'({proc.returncode}):\n{proc.stdout}\n{proc.stderr}'
    )
  return proc


def run_on_devices(script: str, devices: int, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -c script` from the repo root on `devices` simulated CPU devices (a device
  count is fixed when JAX starts, so it takes a process of its own)."""
  flags = f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={devices}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=flags, PYTHONPATH=REPO_ROOT)
  return subprocess.run(
    [sys.executable, '-c', script],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _run_subprocess(module, args, env, timeout):
  return subprocess.run(
    [sys.executable, '-m', module, *map(str, args)],
    cwd=REPO_ROOT,
    env=dict(os.environ, **(env or {})),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _forget_command_flags() -> None:
  """Deletes the absl flags that the project's commands defined (run as `__main__`,
  which absl files under the script's path, or imported as a library), with the
  `--config.<field>` overrides of their config flags, and resets the others to their
  defaults: the next command defines and parses its own as a fresh interpreter would,
  and other tests find absl's flags as an import leaves them."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  ours = ('tps_jax', 'data_prep', 'run_train', 'bench', REPO_ROOT)
  names = set()
  for owner, defined in flags.FLAGS.flags_by_module_dict().items():
    if owner.startswith(ours):
      names.update(n for flag in defined for n in (flag.name, flag.short_name) if n)
  overrides = {n for n in flags.FLAGS if any(n.startswith(f'{p}.') for p in names)}
  for name in names | overrides:
    if name in flags.FLAGS:
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()


def _run_in_process(module, args) -> subprocess.CompletedProcess:
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top

  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  _forget_command_flags()
  argv = [module, *map(str, args)]
  stdout, stderr = io.StringIO(), io.StringIO()
  handler = absl_logging.get_absl_handler().python_handler
  saved = (sys.argv, os.getcwd(), handler.stream, absl_logging.get_verbosity(), os._exit)
  gc_enabled = gc.isenabled()
  returncode = 0

  def exit_now(code):  # a command's fast exit (e.g. evaluate's) ends only the command
    raise SystemExit(code)

  try:
    sys.argv = argv
    os._exit = exit_now
    os.chdir(REPO_ROOT)
    handler.stream = stderr
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        runpy.run_module(module, run_name='__main__', alter_sys=True)
      except SystemExit as e:  # as the interpreter reports it
        if e.code is None or isinstance(e.code, int):
          returncode = e.code or 0
        else:
          print(e.code, file=sys.stderr)
          returncode = 1
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()
        returncode = 1
  finally:
    _forget_command_flags()
    sys.argv, cwd, handler.stream, verbosity, os._exit = saved
    if gc_enabled:
      gc.enable()
    os.chdir(cwd)
    absl_logging.set_verbosity(verbosity)
  return subprocess.CompletedProcess(argv, returncode, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(autouse=True, scope='module')
def _free_compiled_programs():
  """After each test module, JAX's in-memory caches (compiled programs, traced
  functions) are dropped: a module's programs are rarely another's, and kept they add
  up to gigabytes over the suite (a later module that needs one again loads it from the
  persistent compilation cache)."""
  yield
  if 'jax' in sys.modules:
    sys.modules['jax'].clear_caches()
  gc.collect()
  _return_freed_memory()


def _return_freed_memory() -> None:
  """glibc keeps freed heap pages for reuse; handed back to the system, two workers of
  a parallel run peak at what their current modules need, not at their history."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: nothing to trim
    pass


class SmokeDemo(NamedTuple):
  workdir: pathlib.Path  # read-only for the tests: copy before changing
  proc: subprocess.CompletedProcess

  @property
  def root(self) -> pathlib.Path:
    return self.workdir / 'Kinetics-TPS'


@pytest.fixture(scope='session')
def smoke_demo(tmp_path_factory) -> SmokeDemo:
  """The README's main command on the demo's `:smoke` variant, run once per session as a
  user types it: the four tiny networks trained for a few steps on 24 synthetic videos,
  exported, bundled and scored end to end. The tests that need trained networks read
  its workdir instead of training their own."""
  workdir = tmp_path_factory.mktemp('smoke_demo') / 'demo'
  proc = subprocess.run(
    [sys.executable, 'run_train.py', '--config=configs/demo.py:smoke', f'--workdir={workdir}'],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=3600,  # about 3 minutes on a quiet 2-core machine; a busy one takes far longer
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return SmokeDemo(workdir, proc)


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
  """A tiny synthetic dataset in the official layout (read-only: copy before editing)."""
  from tps_jax.datasets import synthetic  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('kinetics_tps') / 'Kinetics-TPS'
  synthetic.write_synthetic(str(root), videos=6, frames=12, seed=0, progress=False)
  return root


# ------------------------------------------------- two workers (pytest-xdist)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Under `-n 2 --dist loadgroup` a test module runs whole on one worker, so its
  module fixtures (compiled networks, trained bundles) are built once, and the tests
  reading the smoke demo share one worker, so the demo runs once. They come first: the
  demo is the suite's longest piece and must not be its tail."""
  del config
  for item in items:
    group = 'smoke_demo' if 'smoke_demo' in item.fixturenames else item.module.__name__
    item.add_marker(pytest.mark.xdist_group(group))
  items.sort(key=lambda item: 'smoke_demo' not in item.fixturenames)


# ------------------------------------------------- the suite's cost, test by test
# Wall time (`--durations`) moves with the machine's load; CPU time much less. Each
# test's CPU seconds (user + sys, its process and the processes it waited for) are
# summed over setup, call and teardown, sent with the reports (so a worker's reach the
# main process) and the slowest are listed after the run.
_CPU_SECONDS: dict[str, float] = {}
_CPU_MARK: dict[str, float] = {}


def _cpu_now() -> float:
  import resource  # pylint: disable=g-import-not-at-top

  own, children = (
    resource.getrusage(resource.RUSAGE_SELF),
    resource.getrusage(resource.RUSAGE_CHILDREN),
  )
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  _CPU_MARK[item.nodeid] = _cpu_now()
  yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  report = (yield).get_result()
  now = _cpu_now()
  spent = now - _CPU_MARK.get(item.nodeid, now)
  report.user_properties = [*report.user_properties, ('cpu_seconds', spent)]
  _CPU_MARK[item.nodeid] = now


def pytest_runtest_logreport(report):
  seconds = dict(report.user_properties).get('cpu_seconds', 0.0)
  _CPU_SECONDS[report.nodeid] = _CPU_SECONDS.get(report.nodeid, 0.0) + seconds


def pytest_terminal_summary(terminalreporter):
  if not _CPU_SECONDS:
    return
  if os.environ.get('TPS_JAX_TEST_CPU_JSON'):  # every test's CPU seconds, for analysis
    import json  # pylint: disable=g-import-not-at-top

    with open(os.environ['TPS_JAX_TEST_CPU_JSON'], 'w') as f:
      json.dump(_CPU_SECONDS, f, indent=0)
  slowest = sorted(_CPU_SECONDS.items(), key=lambda kv: -kv[1])[:20]
  terminalreporter.section(f'CPU seconds: {sum(_CPU_SECONDS.values()):.0f} in all, slowest 20')
  for nodeid, seconds in slowest:
    terminalreporter.write_line(f'{seconds:8.1f}  {nodeid}')
