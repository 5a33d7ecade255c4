"""Faults a long run meets, injected on purpose (issue 11), on the toy task.

Each fault must end in one clear line with a documented exit code, never in a hang,
a traceback or lost work: a checkpoint folder that cannot be written, a damaged newest
checkpoint, a resume with changed settings, SIGKILL and SIGTERM, a weight file whose
pickle would run code, the first-hour mistakes on the command line, and worker pools
started next to JAX's threads.
"""

import glob
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from configs import action, human_detector
from tests.conftest import run_module
from tests.test_trainer import losses, read_metrics, toy_config
from tps_jax.convert import ConversionError, convert_checkpoint
from tps_jax.convert import io as convert_io
from tps_jax.datasets import processes
from tps_jax.train import checkpointing, run_config, trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _permissions_apply() -> list[str]:
  """A command prefix under which file permissions bind the child: root ignores them
  unless it drops CAP_DAC_OVERRIDE (and CAP_DAC_READ_SEARCH) from its bounding set."""
  if os.geteuid() != 0:
    return []
  setpriv = shutil.which('setpriv')
  if setpriv is None:
    pytest.skip('running as root without setpriv: a folder cannot be made unwritable')
  return [setpriv, '--bounding-set', '-dac_override,-dac_read_search']


def _start(workdir, *flags, prefix=(), config='tests/toy_task.py:tiny'):
  return subprocess.Popen(
    [*prefix, sys.executable, 'run_train.py', f'--config={config}', f'--workdir={workdir}', *flags],
    cwd=REPO_ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _run(workdir, *flags, prefix=(), config='tests/toy_task.py:tiny', timeout=300):
  """run_train.py to the end: (exit code, stderr lines, seconds)."""
  start = time.time()
  proc = _start(workdir, *flags, prefix=prefix, config=config)
  _, err = proc.communicate(timeout=timeout)
  return proc.returncode, err.strip().splitlines(), time.time() - start


def _wait_until(condition, proc, timeout=180):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.02)
  raise AssertionError('timed out')


def _logged_steps(workdir) -> list[int]:
  """Steps in metrics.jsonl so far (a line being written is left out)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)['step'] for line in f if line.endswith('\n')]


def _stderr_lines(capsys) -> list[str]:
  return capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------ checkpoint writes


@pytest.mark.slow
def test_unwritable_checkpoint_folder_fails_at_once_and_loses_no_saved_step(
  finished_run, tmp_path, capsys
):
  prefix = _permissions_apply()
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  reference = str(tmp_path / 'reference')
  shutil.copytree(finished_run, reference)
  longer = toy_config(total_steps=50, eval_steps=0)
  trainer.train_and_evaluate(longer, reference)

  checkpoints = os.path.join(workdir, 'checkpoints')
  os.chmod(checkpoints, 0o555)
  try:
    code, err, seconds = _run(
      workdir, '--config.total_steps=50', '--config.eval_steps=0', prefix=prefix
    )
  finally:
    os.chmod(checkpoints, 0o755)
  assert code == 1 and seconds < 120, err  # orbax alone waited 300 s, then a traceback
  assert not any('Traceback' in line for line in err), err
  assert err[-1].startswith(
    f'error: cannot write checkpoint 40 in {checkpoints}: '
    f'Permission denied: {checkpoints}/40.orbax-checkpoint-tmp'
  )
  assert err[-1].endswith(
    '(the last checkpoint is step 30: a rerun resumes there and '
    'logs again the steps metrics.jsonl holds after it)'
  )
  assert checkpointing.saved_steps(workdir) == [20, 30]
  assert _logged_steps(workdir)[-1] == 40  # ahead of the checkpoint, as the line says

  capsys.readouterr()
  trainer.train_and_evaluate(longer, workdir)
  err = _stderr_lines(capsys)
  assert (
    f'{workdir}/metrics.jsonl: dropped 2 record(s) logged after step 30, the step '
    'this run starts from (it logs those steps again)' in err
  )
  assert f'resumed {workdir} from step 30' in err
  assert losses(workdir) == losses(reference)
  assert sorted(losses(workdir)) == list(range(5, 55, 5))


def test_a_failed_background_save_is_one_line():
  class Manager:
    directory = '/w/checkpoints'

    def wait_until_finished(self):
      try:
        raise OSError(28, 'No space left on device', '/w/checkpoints/30/state/d/ab12')
      except OSError as e:
        raise ValueError('commit failed') from e

  with pytest.raises(checkpointing.CheckpointError) as error:
    checkpointing.wait(Manager())
  assert str(error.value) == (
    'a checkpoint save in /w/checkpoints failed: No space left '
    'on device: /w/checkpoints/30/state/d/ab12'
  )


# ------------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A 30-step run with checkpoints 20 and 30 (keep_checkpoints=2)."""
  workdir = str(tmp_path_factory.mktemp('faults') / 'finished')
  trainer.train_and_evaluate(toy_config(total_steps=30, eval_steps=0), workdir)
  return workdir


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _truncate_data(step_dir):
  data_files = [
    f
    for f in glob.glob(os.path.join(step_dir, 'state', '**', '*'), recursive=True)
    if os.path.isfile(f) and os.path.basename(os.path.dirname(f)) == 'd'
  ]
  assert data_files
  for path in data_files:
    os.truncate(path, os.path.getsize(path) // 2)


def _remove_iterator(step_dir):
  os.remove(os.path.join(step_dir, 'data', 'process_0-of-1.json'))


@pytest.mark.parametrize(
  'damage, cause',
  [
    (_remove_metadata, '{step_dir}/state/_METADATA is missing'),
    (_truncate_data, 'Requested byte range [0, '),
    (_remove_iterator, 'File {step_dir}/data/process_0-of-1.json does not exist.'),
  ],
  ids=['metadata_removed', 'data_truncated', 'iterator_removed'],
)
def test_damaged_newest_checkpoint_is_named_and_skipped(
  finished_run, tmp_path, capsys, damage, cause
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  shutil.rmtree(os.path.join(workdir, 'export'))
  step_dir = os.path.join(workdir, 'checkpoints', '30')
  damage(step_dir)
  capsys.readouterr()
  summary = trainer.train_and_evaluate(toy_config(total_steps=30, eval_steps=0), workdir)
  err = _stderr_lines(capsys)
  moved = os.path.join(workdir, checkpointing.DAMAGED_DIR, '30')
  skipped = [line for line in err if line.startswith('checkpoint 30 ')]
  assert len(skipped) == 1 and not any('Traceback' in line for line in err), err
  assert skipped[0].startswith(f'checkpoint 30 in {workdir}/checkpoints is damaged (')
  assert cause.format(step_dir=step_dir) in skipped[0]
  assert skipped[0].endswith(f'); skipped it and moved it to {moved}')
  assert f'resumed {workdir} from step 20' in err
  assert summary['step'] == 30 and os.path.isdir(moved)
  assert checkpointing.saved_steps(workdir) == [20, 30]  # step 30 saved again
  assert losses(workdir) == losses(finished_run)  # steps 21..30 redone exactly


def test_every_checkpoint_damaged_refuses_instead_of_starting_over(finished_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  for step in (20, 30):
    _remove_metadata(os.path.join(workdir, 'checkpoints', str(step)))
  with pytest.raises(SystemExit) as error:
    trainer.run_cli(toy_config(total_steps=30, eval_steps=0), workdir)
  assert error.value.code == (
    f'error: {workdir}/checkpoints: every checkpoint is damaged, nothing to resume from '
    f'(step 30: {workdir}/checkpoints/30/state/_METADATA is missing; step 20: '
    f'{workdir}/checkpoints/20/state/_METADATA is missing); move the folder aside to '
    'start again from step 0, or use a fresh --workdir'
  )
  assert checkpointing.saved_steps(workdir) == [20, 30]  # nothing moved, nothing trained
  assert read_metrics(workdir) == read_metrics(finished_run)


# ------------------------------------------------------------------ changed settings


def test_resume_with_changed_settings_lists_them_and_refuses_unless_allowed(
  finished_run, tmp_path, capsys
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  records = read_metrics(workdir)
  faster = toy_config(total_steps=30, eval_steps=0, optim__learning_rate=0.02, model__dropout=0.1)
  with pytest.raises(SystemExit) as error:
    trainer.run_cli(faster, workdir)
  assert error.value.code == (
    f'error: {workdir}: resuming with settings that change what this run trains: '
    'model.dropout 0.0 -> 0.1; optim.learning_rate 0.01 -> 0.02 (stored in '
    f'{workdir}/config.json); rerun with the stored settings, use a fresh --workdir, or '
    'accept the change with --config.allow_config_change=True'
  )
  # Rerunning a finished 30-step workdir as a 20-step run: refused even when allowed.
  shorter = toy_config(total_steps=20, eval_steps=0, allow_config_change=True)
  with pytest.raises(SystemExit) as error:
    trainer.run_cli(shorter, workdir)
  assert error.value.code == (
    f'error: config.total_steps=20 is below step 30, where the checkpoint in {workdir} '
    'is: a run cannot be shortened after the fact; use --config.total_steps=30 or more, '
    'or a fresh --workdir'
  )
  assert read_metrics(workdir) == records
  # Cadence may change freely; total_steps may grow; the rest only when allowed.
  capsys.readouterr()
  faster.total_steps, faster.log_steps, faster.allow_config_change = 35, 1, True
  trainer.train_and_evaluate(faster, workdir)
  err = _stderr_lines(capsys)
  assert (
    'total_steps raised from 30 to 35: training on (the learning-rate schedule now '
    'ends at the new step)'
  ) in err
  assert (
    'settings changed on resume (allow_config_change): model.dropout 0.0 -> 0.1; '
    'optim.learning_rate 0.01 -> 0.02'
  ) in err
  # The accepted settings are the stored ones now.
  assert run_config.check_resume(workdir, faster) == []
  assert sorted(losses(workdir))[-5:] == [31, 32, 33, 34, 35]


@pytest.mark.parametrize('module', [human_detector, action])
def test_settings_stored_before_the_field_renames_resume_unchanged(module, tmp_path):
  """A workdir started when `data.stage` named the detectors' dataset, `data.dataset`
  the TFDS folder and the library filled in `tfds_name` and AdamW's b1 / b2 / eps."""
  config = module.get_config('tiny')
  stored = json.loads(config.to_json_best_effort())
  data, optim = stored['data'], stored['optim']
  if 'dataset' in data:
    data['stage'] = data.pop('dataset')
  if data['tfds_name']:
    data['dataset'] = data['tfds_name']
  del data['tfds_name'], optim['b1'], optim['b2'], optim['eps']
  (tmp_path / run_config.CONFIG_FILE).write_text(json.dumps(stored))
  assert run_config.check_resume(str(tmp_path), config) == []
  config.optim.eps = 1e-6
  with pytest.raises(run_config.RunConfigError, match=r'optim.eps 1e-08 -> 1e-06'):
    run_config.check_resume(str(tmp_path), config)


# ------------------------------------------------------------------ runs cut short


def _tensorboard_steps(workdir, tag='loss') -> set[int]:
  """Steps with a `tag` scalar in the event files (a record cut short is ignored)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  steps = set()
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      data = f.read()
    position = 0
    while position + 12 <= len(data):  # TFRecord: length, crc, payload, crc
      (length,) = struct.unpack('<Q', data[position : position + 8])
      position += 12
      if position + length + 4 > len(data):
        break
      event = event_pb2.Event.FromString(data[position : position + length])
      position += length + 4
      steps |= {event.step for value in event.summary.value if value.tag == tag}
  return steps


def _on_the_curve(records, expected):
  """Checks that the records' windows tile steps 1.. and that each record's loss is the mean
  of the uninterrupted run's `expected` {step: loss} over its window (as the trainer
  averages: float32 numbers, np.mean)."""
  start = 0
  for record in records:
    window = [expected[s] for s in range(start + 1, record['step'] + 1)]
    assert record['steps_averaged'] == len(window) > 0, (start, record)
    assert record['loss'] == float(np.mean(np.array(window, np.float32))), record
    start = record['step']
  assert start == max(expected)


@pytest.mark.slow
def test_sigkill_then_sigterm_then_rerun_ends_on_the_uninterrupted_curve(tmp_path, capsys):
  """One run cut short twice. SIGKILL loses only the steps since the last checkpoint, and
  keeps the TensorBoard scalars of the checkpointed ones; the rerun, stopped by SIGTERM,
  saves a checkpoint at the step it saw the signal, records the partial log window and
  exits 75; the next rerun resumes there. Every loss logged on the way is the
  uninterrupted run's (metrics.jsonl dropped what SIGKILL left after the checkpoint)."""
  workdir = str(tmp_path / 'run')
  steps = ['--config.total_steps=200', '--config.eval_steps=0']
  proc = _start(workdir, *steps, '--config.log_steps=5', '--config.checkpoint_steps=10')
  try:
    _wait_until(lambda: max(checkpointing.saved_steps(workdir), default=0) >= 20, proc)
  finally:
    proc.kill()
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  killed = checkpointing.saved_steps(workdir)[-1]
  assert 20 <= killed < 200
  assert set(range(5, killed + 1, 5)) <= _tensorboard_steps(workdir)
  lost = [s for s in _logged_steps(workdir) if s > killed]

  # The rerun logs every 7 steps (cadence may change) and saves only when stopped. Records
  # at multiples of 7 after `killed` are its own: SIGKILL left at most two, at multiples of 5.
  proc = _start(workdir, *steps, '--config.log_steps=7', '--config.checkpoint_steps=100000')

  def three_records_logged():
    new = [s for s in _logged_steps(workdir) if s > killed]
    return len(new) >= 3 and all(s % 7 == 0 for s in new)

  _wait_until(three_records_logged, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == trainer.PREEMPTED_EXIT_CODE == 75, err
  err = err.strip().splitlines()
  assert f'resumed {workdir} from step {killed}' in err
  assert (
    not lost
    or (
      f'{workdir}/metrics.jsonl: dropped {len(lost)} record(s) logged after step {killed}, the '
      'step this run starts from (it logs those steps again)'
    )
    in err
  )
  stopped = int(re.fullmatch(r'SIGTERM: saved a checkpoint at step (\d+); .*', err[-1])[1])
  assert err[-1] == (
    f'SIGTERM: saved a checkpoint at step {stopped}; exiting with code 75 (rerun the '
    'same command to resume)'
  )
  assert checkpointing.saved_steps(workdir) == [killed, stopped]  # no completed step lost
  records = read_metrics(workdir)
  assert records[-1]['step'] == stopped < 200  # the partial window is recorded
  assert all(r['step'] % 7 == 0 for r in records if killed < r['step'] < stopped)

  capsys.readouterr()
  config = toy_config(total_steps=200, log_steps=1, checkpoint_steps=10, eval_steps=0)
  trainer.train_and_evaluate(config, workdir)
  assert f'resumed {workdir} from step {stopped}' in _stderr_lines(capsys)
  straight = str(tmp_path / 'straight')
  config.checkpoint_steps = 200
  trainer.train_and_evaluate(config, straight)
  _on_the_curve(read_metrics(workdir), losses(straight))


# ------------------------------------------------------------------ weight files


class _RunsCode:
  """Unpickling this would run a shell command (a file that must never appear)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize(
  'save_kwargs',
  [{}, {'pickle_protocol': 4}, {'_use_new_zipfile_serialization': False}],
  ids=['zip', 'protocol_4', 'legacy'],
)
def test_pickle_that_would_run_code_is_named_never_run(tmp_path, save_kwargs):
  marker = tmp_path / 'ran'
  path = tmp_path / 'weights.pth'
  torch.save({'w': torch.zeros(2), 'hook': _RunsCode(marker)}, path, **save_kwargs)
  with pytest.raises(ConversionError) as error:
    convert_io.read_state_dict(str(path))
  message = str(error.value)
  assert message == (
    f'{path}: not a plain tensor file: its pickle imports '
    f'{os.system.__module__}.system, which a weights-only load refuses to '
    'run; re-save the state dict alone (torch.save(model.state_dict(), '
    'path)) or as .safetensors'
  )
  with pytest.raises(ConversionError) as error:
    convert_checkpoint('swin_t', str(path), str(tmp_path / 'out'))
  assert str(error.value) == message
  assert not marker.exists() and not (tmp_path / 'out').exists()


def test_unreadable_weight_file_never_suggests_weights_only_false(tmp_path):
  path = tmp_path / 'garbage.pth'
  path.write_bytes(b'\x00not a pickle' * 8)
  with pytest.raises(ConversionError) as error:
    convert_io.read_state_dict(str(path))
  assert str(error.value).startswith(f'{path}: cannot be read as a torch checkpoint (')
  assert 'weights_only' not in str(error.value)


# ------------------------------------------------------------------ first-hour mistakes


@pytest.mark.parametrize(
  'config, flags, expected',
  [
    (
      'configs/nope.py',
      [],
      'error: --config=configs/nope.py: no such file; stage configs are configs/action.py, ',
    ),
    ('configs', [], 'error: --config=configs: is a directory; stage configs are '),
    (
      'tests/toy_task.py:tny',
      [],
      'error: flag --config=tests/toy_task.py:tny: '
      "tests/toy_task.py: unknown variant 'tny' (known: tiny)",
    ),
    (
      'tests/toy_task.py:tiny',
      ['--config.checkpoint_steps=0'],
      'error: config.checkpoint_steps=0: must be a positive integer, e.g. '
      '--config.checkpoint_steps=1000',
    ),
  ],
  ids=['config_path', 'config_dir', 'variant', 'checkpoint_steps'],
)
def test_first_hour_mistakes_are_one_line(tmp_path, config, flags, expected):
  # In this process: the other tests here start run_train.py as a user types it.
  start = time.time()
  proc = run_module(
    'run_train', f'--config={config}', f'--workdir={tmp_path / "w"}', *flags, check=False
  )
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(err) == 1 and err[0].startswith(expected), err
  # Before anything is compiled (checkpoint_steps=0: 43 s, then a crash).
  assert time.time() - start < 60


def test_workdir_that_is_a_file_or_read_only_is_one_line(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  with pytest.raises(SystemExit) as error:
    trainer.run_cli(toy_config(), str(a_file))
  assert error.value.code == (
    f'error: --workdir={a_file}: is a file, not a directory; '
    "give a new directory or an earlier run's"
  )
  read_only = tmp_path / 'read_only'
  read_only.mkdir(mode=0o555)
  code, err, _ = _run(read_only / 'run', prefix=_permissions_apply())
  assert code == 1 and err == [
    f'error: --workdir={read_only}/run: cannot write there (Permission denied); give a '
    'directory you can write to'
  ]


@pytest.mark.parametrize(
  'field, value',
  [
    ('log_steps', 0),
    ('total_steps', -1),
    ('batch_size', 0),
    ('keep_checkpoints', 0),
    ('eval_steps', -5),
    ('grad_accum_steps', 0),
  ],
)
def test_nonsense_counts_are_refused_by_name(field, value):
  with pytest.raises(
    run_config.RunConfigError,
    match=rf'^config\.{field}={value}: must be .*'
    rf'e\.g\. --config\.{field}=\d+',
  ):
    run_config.check_counts(toy_config(**{field: value}))


# ------------------------------------------------------------------ worker processes


def test_pools_spawn_and_spawned_children_do_not_import_jax(tmp_path):
  with processes.process_pool(1) as pool:
    assert pool._ctx.get_start_method() == 'spawn'  # pylint: disable=protected-access
  # What a spawned child runs of the training command: its imports, not main().
  probe = (
    "import runpy, sys; runpy.run_path('run_train.py', run_name='__mp_main__'); "
    "print('jax' in sys.modules)"
  )
  out = subprocess.run(
    [sys.executable, '-c', probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == 'False'


def test_dataset_workers_are_not_forked_from_a_process_running_jax(tmp_path):
  """JAX warns at every fork of a process whose backend is up (the demo's case)."""
  script = (
    'import jax, sys; jax.numpy.zeros(1).block_until_ready(); '
    'from tps_jax.datasets import synthetic; '
    'synthetic.write_synthetic(sys.argv[1], videos=3, frames=6, jobs=2, '
    'progress=False)'
  )
  out = subprocess.run(
    [sys.executable, '-W', 'always', '-c', script, str(tmp_path / 'data')],
    cwd=REPO_ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  assert 'os.fork() was called' not in out.stderr, out.stderr
