"""The generic trainer on the toy task: logging, resume, faults, init_from, export."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import toy_task as toy
from tps_jax.inference.export import read_config, read_variables
from tps_jax.train import checkpointing, run_config, trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(**overrides):
  config = toy.get_config('tiny')
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('__')
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def losses(workdir):
  return {r['step']: r['loss'] for r in read_metrics(workdir) if 'loss' in r}


def run_train(workdir, *flags, env=None):
  """Starts run_train.py with the toy config (not waiting)."""
  return subprocess.Popen(
    [
      sys.executable,
      'run_train.py',
      '--config=tests/toy_task.py:tiny',
      f'--workdir={workdir}',
      *flags,
    ],
    cwd=REPO_ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_trains_logs_and_exports(tmp_path):
  workdir = str(tmp_path / 'run')
  summary = trainer.train_and_evaluate(toy_config(checkpoint_steps=5), workdir)
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [5, 10, 15, 20]
  assert {'loss', 'accuracy', 'grad_norm', 'learning_rate'} <= set(records[0])
  assert records[-1]['loss'] < records[0]['loss'] * 0.5
  assert summary['eval']['accuracy'] > 0.8 and records[-1]['eval_accuracy'] > 0.8
  # keep_checkpoints=2 of the saves at 5, 10, 15, 20.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['15', '20']
  assert any(
    f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard'))
  )
  variables, config = (
    read_variables(os.path.join(workdir, 'export')),
    read_config(os.path.join(workdir, 'export')),
  )
  assert config['task'] == 'toy' and config['total_steps'] == 20
  assert variables['params']['layer_0']['kernel'].shape == (8, 16)
  assert not os.path.exists(os.path.join(workdir, 'export.tmp'))


def test_rerunning_a_finished_run_reports_its_evaluation_and_keeps_its_export(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  first = trainer.train_and_evaluate(toy_config(), workdir)
  variables = os.path.join(workdir, 'export', 'variables')
  written = os.stat(variables).st_mtime_ns
  capsys.readouterr()
  again = trainer.train_and_evaluate(toy_config(), workdir)
  assert again['step'] == first['step'] and again['eval'] == first['eval']
  logged = f'eval at step {first["step"]} (logged when the run finished): '
  assert logged + trainer.format_eval(first['eval']) in capsys.readouterr().err.splitlines()
  assert os.stat(variables).st_mtime_ns == written  # what was built from it stays valid
  # Under another config the export is written again.
  trainer.train_and_evaluate(toy_config(log_steps=10), workdir)
  assert os.stat(variables).st_mtime_ns != written


def test_host_side_evaluator_sees_every_eval_example_once(tmp_path):
  workdir = str(tmp_path / 'run')
  summary = trainer.train_and_evaluate(toy_config(), workdir)
  variables = read_variables(os.path.join(workdir, 'export'))
  task = toy.ToyTask(toy_config())
  x, y = task._arrays('eval')
  predicted = np.asarray(task.model.apply(variables, x, train=False)).argmax(-1)
  recalls = [np.mean(predicted[y == c] == c) for c in np.unique(y)]
  np.testing.assert_allclose(summary['eval']['balanced_accuracy'], np.mean(recalls), rtol=1e-6)
  assert read_metrics(workdir)[-1]['eval_balanced_accuracy'] == pytest.approx(np.mean(recalls))


def test_resume_continues_the_same_curve(tmp_path):
  """10 steps straight == 5 steps + resume from the step-5 checkpoint (incl. data)."""
  config = toy_config(total_steps=10, log_steps=1, checkpoint_steps=5, eval_steps=0)
  straight = str(tmp_path / 'straight')
  trainer.train_and_evaluate(config, straight)
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '10'))
  shutil.rmtree(os.path.join(resumed, 'export'))
  summary = trainer.train_and_evaluate(config, resumed)
  assert summary['step'] == 10
  assert losses(resumed) == losses(straight)
  assert sorted(losses(resumed)) == list(range(1, 11))


def test_grad_accumulation_matches_full_batch(tmp_path):
  full = toy_config(total_steps=3, log_steps=1, eval_steps=0)
  accum = toy_config(total_steps=3, log_steps=1, eval_steps=0, grad_accum_steps=4)
  trainer.train_and_evaluate(full, str(tmp_path / 'full'))
  trainer.train_and_evaluate(accum, str(tmp_path / 'accum'))
  full_losses, accum_losses = losses(tmp_path / 'full'), losses(tmp_path / 'accum')
  np.testing.assert_allclose(
    [accum_losses[s] for s in (1, 2, 3)], [full_losses[s] for s in (1, 2, 3)], rtol=1e-5
  )


def test_ema_params_are_exported(tmp_path):
  config = toy_config(total_steps=4, eval_steps=0, optim__ema_decay=0.5)
  workdir = str(tmp_path / 'ema')
  trainer.train_and_evaluate(config, workdir)
  exported = read_variables(os.path.join(workdir, 'export'))
  state = checkpointing.restore_numpy(os.path.join(workdir, 'checkpoints', '4', 'state'))
  np.testing.assert_allclose(
    exported['params']['head']['kernel'], state['ema_params']['head']['kernel']
  )
  assert not np.allclose(state['ema_params']['head']['kernel'], state['params']['head']['kernel'])


def test_batch_norm_state_is_trained_and_checkpointed(tmp_path):
  config = toy_config(total_steps=2, eval_steps=2, model__batch_norm=True)
  workdir = str(tmp_path / 'bn')
  trainer.train_and_evaluate(config, workdir)
  exported = read_variables(os.path.join(workdir, 'export'))
  mean = exported['batch_stats']['norm_0']['mean']
  assert mean.shape == (16,) and np.abs(mean).max() > 0


def test_bf16_compute_keeps_float32_params(tmp_path):
  config = toy_config(total_steps=3, eval_steps=3, bf16=True)
  workdir = str(tmp_path / 'bf16')
  summary = trainer.train_and_evaluate(config, workdir)
  exported = read_variables(os.path.join(workdir, 'export'))
  assert exported['params']['layer_0']['kernel'].dtype == np.float32
  assert np.isfinite(summary['eval']['loss'])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # A huge step size sends the params to inf after the first update.
  config = toy_config(
    total_steps=10,
    checkpoint_steps=1,
    log_steps=1,
    eval_steps=0,
    optim__learning_rate=1e38,
    optim__warmup_steps=0,
    optim__grad_clip_norm=0.0,
  )
  workdir = str(tmp_path / 'nan')
  with pytest.raises(
    trainer.TrainingError,
    match=r'non-finite loss .* at step 2;.*'
    r'last good checkpoint: step 1',
  ):
    trainer.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  state = checkpointing.restore_numpy(os.path.join(workdir, 'checkpoints', '1', 'state'))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def test_incompatible_checkpoint_names_workdir_and_leaf(tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(toy_config(total_steps=2, eval_steps=0), workdir)
  bigger = toy_config(total_steps=4, eval_steps=0, model__hidden=32)
  with pytest.raises(run_config.RunConfigError, match='model.hidden 16 -> 32'):
    trainer.train_and_evaluate(bigger, workdir)
  # Told to accept the change, the checkpoint itself is found not to fit.
  bigger.allow_config_change = True
  with pytest.raises(checkpointing.CheckpointError) as error:
    trainer.train_and_evaluate(bigger, workdir)
  message = str(error.value)
  assert '\n' not in message and workdir in message
  assert 'params/head/kernel has shape (16, 4), the model expects (32, 4)' in message


def test_init_from_restores_matching_leaves_only(tmp_path):
  source = str(tmp_path / 'source')
  trainer.train_and_evaluate(toy_config(total_steps=3, eval_steps=0), source)
  source_params = read_variables(os.path.join(source, 'export'))
  # A different head (6 classes) and a zero learning rate: export = initial params.
  config = toy_config(
    total_steps=1, eval_steps=0, optim__learning_rate=0.0, data__num_classes=6, seed=7
  )
  config.init_from.path = source
  config.init_from.include = r'layer_'
  config.init_from.exclude = r'layer_1/bias'
  target = str(tmp_path / 'target')
  trainer.train_and_evaluate(config, target)
  params = read_variables(os.path.join(target, 'export'))['params']
  np.testing.assert_array_equal(
    params['layer_0']['kernel'], source_params['params']['layer_0']['kernel']
  )
  np.testing.assert_array_equal(
    params['layer_1']['kernel'], source_params['params']['layer_1']['kernel']
  )
  assert not np.array_equal(params['layer_1']['bias'], source_params['params']['layer_1']['bias'])
  assert params['head']['kernel'].shape == (16, 6)


def test_init_from_converted_checkpoint_dir(tmp_path):
  """The layout `python -m tps_jax.convert` writes: an orbax tree with 'params'."""
  rng = np.random.default_rng(0)
  converted = {
    'params': {
      'layer_0': {
        'kernel': rng.normal(size=(8, 16)).astype(np.float32),
        'bias': np.zeros(16, np.float32),
      }
    }
  }
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(tmp_path / 'converted'), converted)
  checkpointer.wait_until_finished()
  merged, report = checkpointing.merge_params(
    {
      'layer_0': {'kernel': np.zeros((8, 16), np.float32), 'bias': np.ones(16, np.float32)},
      'head': {'kernel': np.zeros((16, 4), np.float32)},
    },
    checkpointing.load_params(str(tmp_path / 'converted')),
  )
  assert report['restored'] == ['layer_0/bias', 'layer_0/kernel']
  assert report['missing'] == ['head/kernel']
  np.testing.assert_array_equal(
    merged['layer_0']['kernel'], converted['params']['layer_0']['kernel']
  )
  # A prefix places the converted network inside a bigger model.
  prefixed = checkpointing.load_params(str(tmp_path / 'converted'), prefix='backbone/')
  assert sorted(prefixed) == ['backbone/layer_0/bias', 'backbone/layer_0/kernel']
  # source_prefix takes a sub-network out: only the leaves under it, without it.
  assert sorted(
    checkpointing.load_params(str(tmp_path / 'converted'), source_prefix='layer_0/')
  ) == ['bias', 'kernel']


def test_merge_adapts_leaves_of_another_shape_when_asked():
  fresh = {'a': np.zeros((2, 3), np.float32), 'b': np.zeros(4, np.float32)}
  source = {'a': np.ones(3, np.float32), 'b': np.ones(5, np.float32)}

  def adapt(name, value, shape):
    return np.broadcast_to(value, shape) if name == 'a' else None

  merged, report = checkpointing.merge_params(fresh, source, adapt=adapt)
  np.testing.assert_array_equal(merged['a'], np.ones((2, 3)))
  np.testing.assert_array_equal(merged['b'], np.zeros(4))
  assert report['restored'] == ['a'] and report['adapted'] == ['a (3,) -> (2, 3)']
  assert report['shape_mismatch'] == ['b (5,) vs (4,)']
  assert any(
    'adapted to the new shapes: a (3,)' in line
    for line in checkpointing.init_report_lines('src', report)
  )


def test_missing_dataset_and_unknown_field_are_one_line_errors(tmp_path):
  proc = run_train(tmp_path / 'w', '--config.data.root=/no/such/root')
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 1
  assert err.strip().splitlines()[-1] == (
    'error: /no/such/root/toy.npz: toy dataset not found (config.data.root)'
  )
  proc = run_train(tmp_path / 'w', '--config.data.rot=/x')
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: no such config field') and '--config.data.rot' in last
  assert 'Traceback' not in err


def _wait_for_step(workdir, step, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if (
      os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
      and max(losses(workdir), default=0) >= step
    ):
      return
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  raise AssertionError(f'{workdir} did not reach step {step}')


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGKILL])
def test_signal_then_rerun_resumes(tmp_path, signum):
  """SIGTERM checkpoints and exits; SIGKILL loses only the steps since the last one.

  Either way the rerun ends with the same losses as an uninterrupted run.
  """
  flags = [
    '--config.total_steps=400',
    '--config.log_steps=1',
    '--config.checkpoint_steps=20',
    '--config.eval_steps=0',
  ]
  workdir = str(tmp_path / 'run')
  proc = run_train(workdir, *flags)
  _wait_for_step(workdir, 45, proc)
  os.kill(proc.pid, signum)
  _, err = proc.communicate(timeout=120)
  steps = sorted(
    int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()
  )  # SIGKILL may leave an unfinished '<step>.orbax-...-tmp'

  if signum == signal.SIGTERM:
    assert proc.returncode == trainer.PREEMPTED_EXIT_CODE, err
    assert 'SIGTERM: saved a checkpoint at step' in err
    # The checkpoint is taken at the step where the signal was seen.
    assert steps[-1] == max(losses(workdir)) and steps[-1] >= 45
  else:
    assert proc.returncode == -signal.SIGKILL
  assert steps[-1] < 400
  rerun = run_train(workdir, *flags)
  _, err = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, err
  assert f'resumed {workdir} from step {steps[-1]}' in err
  straight = str(tmp_path / 'straight')
  config = toy_config(total_steps=400, log_steps=1, checkpoint_steps=400, eval_steps=0)
  trainer.train_and_evaluate(config, straight)
  assert losses(workdir) == losses(straight)


def test_init_from_restores_model_state_too(tmp_path):
  """Frozen-BN statistics (batch_stats) of a source come along with its params."""
  source = str(tmp_path / 'source')
  trainer.train_and_evaluate(
    toy_config(total_steps=2, eval_steps=0, model__batch_norm=True), source
  )
  collections = checkpointing.load_collections(source)
  assert set(collections) == {'params', 'batch_stats'}
  # total_steps=0: the export is the initial state, i.e. what init_from built.
  config = toy_config(total_steps=0, eval_steps=0, model__batch_norm=True, seed=3)
  config.init_from.path = os.path.join(source, 'export')
  config.init_from.exclude = r'norm_1'
  target = str(tmp_path / 'target')
  trainer.train_and_evaluate(config, target)
  exported = read_variables(os.path.join(target, 'export'))
  np.testing.assert_array_equal(
    exported['batch_stats']['norm_0']['mean'], collections['batch_stats']['norm_0/mean']
  )
  assert np.abs(collections['batch_stats']['norm_0/mean']).max() > 0
  np.testing.assert_array_equal(exported['batch_stats']['norm_1']['mean'], 0.0)  # excluded
