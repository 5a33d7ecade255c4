"""The generic trainer on the toy task: logging, resume, faults, init_from, export.

A toy run costs seconds of tracing however few its steps, so the tests share runs: one
finished run of the `tiny` config (read-only: copied before it is trained further), a
10-step run logging every step, and one run with EMA, batch norm and bf16 compute.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import toy_task as toy
from tests.conftest import run_module
from tps_jax.inference.export import read_config, read_variables
from tps_jax.train import checkpointing, run_config, trainer


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


def finished_config(**overrides):
  """The `tiny` config (20 steps, eval every 10) saving every 5 steps."""
  return toy_config(checkpoint_steps=5, **overrides)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """(workdir, summary) of a finished run of `finished_config()` (read-only)."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  return workdir, trainer.train_and_evaluate(finished_config(), workdir)


def copy_of(workdir, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy


def test_trains_logs_and_exports(finished):
  workdir, summary = finished
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


def test_rerunning_a_finished_run_reports_its_evaluation_and_keeps_its_export(
  finished, tmp_path, capsys
):
  workdir, first = copy_of(finished[0], tmp_path), finished[1]
  variables = os.path.join(workdir, 'export', 'variables')
  written = os.stat(variables).st_mtime_ns
  capsys.readouterr()
  again = trainer.train_and_evaluate(finished_config(), workdir)
  assert again['step'] == first['step'] and again['eval'] == first['eval']
  logged = f'eval at step {first["step"]} (logged when the run finished): '
  assert logged + trainer.format_eval(first['eval']) in capsys.readouterr().err.splitlines()
  assert os.stat(variables).st_mtime_ns == written  # what was built from it stays valid
  # Under another config the export is written again.
  trainer.train_and_evaluate(finished_config(log_steps=10), workdir)
  assert os.stat(variables).st_mtime_ns != written


def test_host_side_evaluator_sees_every_eval_example_once(finished):
  workdir, summary = finished
  variables = read_variables(os.path.join(workdir, 'export'))
  task = toy.ToyTask(toy_config())
  x, y = task._arrays('eval')
  predicted = np.asarray(task.model.apply(variables, x, train=False)).argmax(-1)
  recalls = [np.mean(predicted[y == c] == c) for c in np.unique(y)]
  np.testing.assert_allclose(summary['eval']['balanced_accuracy'], np.mean(recalls), rtol=1e-6)
  assert read_metrics(workdir)[-1]['eval_balanced_accuracy'] == pytest.approx(np.mean(recalls))


def ten_steps_config(**overrides):
  return toy_config(total_steps=10, log_steps=1, checkpoint_steps=5, eval_steps=0, **overrides)


@pytest.fixture(scope='module')
def ten_steps(tmp_path_factory):
  """The workdir of a finished run of `ten_steps_config()`: every step's loss (read-only)."""
  workdir = str(tmp_path_factory.mktemp('ten_steps') / 'run')
  trainer.train_and_evaluate(ten_steps_config(), workdir)
  return workdir


def test_resume_continues_the_same_curve(ten_steps, tmp_path):
  """10 steps straight == 5 steps + resume from the step-5 checkpoint (incl. data)."""
  resumed = copy_of(ten_steps, tmp_path)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '10'))
  shutil.rmtree(os.path.join(resumed, 'export'))
  summary = trainer.train_and_evaluate(ten_steps_config(), resumed)
  assert summary['step'] == 10
  assert losses(resumed) == losses(ten_steps)
  assert sorted(losses(resumed)) == list(range(1, 11))


def test_grad_accumulation_matches_full_batch(ten_steps, tmp_path):
  accum = str(tmp_path / 'accum')
  trainer.train_and_evaluate(ten_steps_config(grad_accum_steps=4), accum)
  full_losses, accum_losses = losses(ten_steps), losses(accum)
  np.testing.assert_allclose(
    [accum_losses[s] for s in (1, 2, 3)], [full_losses[s] for s in (1, 2, 3)], rtol=1e-5
  )


@pytest.fixture(scope='module')
def ema_bn_bf16(tmp_path_factory):
  """(workdir, summary) of a 4-step run with EMA (decay 0.5), batch norm and bf16 compute,
  evaluated at step 4 (read-only): the three are independent, and one run traces once."""
  config = toy_config(
    total_steps=4, eval_steps=4, optim__ema_decay=0.5, model__batch_norm=True, bf16=True
  )
  workdir = str(tmp_path_factory.mktemp('ema_bn_bf16') / 'run')
  return workdir, trainer.train_and_evaluate(config, workdir)


def test_ema_params_are_exported(ema_bn_bf16):
  workdir, _ = ema_bn_bf16
  exported = read_variables(os.path.join(workdir, 'export'))
  state = checkpointing.restore_numpy(os.path.join(workdir, 'checkpoints', '4', 'state'))
  np.testing.assert_allclose(
    exported['params']['head']['kernel'], state['ema_params']['head']['kernel']
  )
  assert not np.allclose(state['ema_params']['head']['kernel'], state['params']['head']['kernel'])


def test_batch_norm_state_is_trained_and_checkpointed(ema_bn_bf16):
  workdir, _ = ema_bn_bf16
  exported = read_variables(os.path.join(workdir, 'export'))
  mean = exported['batch_stats']['norm_0']['mean']
  assert mean.shape == (16,) and np.abs(mean).max() > 0
  state = checkpointing.restore_numpy(os.path.join(workdir, 'checkpoints', '4', 'state'))
  np.testing.assert_array_equal(state['model_state']['batch_stats']['norm_0']['mean'], mean)


def test_bf16_compute_keeps_float32_params(ema_bn_bf16):
  workdir, summary = ema_bn_bf16
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


def test_incompatible_checkpoint_names_workdir_and_leaf(finished, tmp_path):
  workdir = copy_of(finished[0], tmp_path)
  bigger = finished_config(total_steps=40, model__hidden=32)
  with pytest.raises(run_config.RunConfigError, match='model.hidden 16 -> 32'):
    trainer.train_and_evaluate(bigger, workdir)
  # Told to accept the change, the checkpoint itself is found not to fit.
  bigger.allow_config_change = True
  with pytest.raises(checkpointing.CheckpointError) as error:
    trainer.train_and_evaluate(bigger, workdir)
  message = str(error.value)
  assert '\n' not in message and workdir in message
  assert 'params/head/kernel has shape (16, 4), the model expects (32, 4)' in message


def test_init_from_restores_matching_leaves_only(finished, tmp_path):
  source = finished[0]  # a workdir: its latest checkpoint
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
  def run_train(*flags):  # in this process: tests/test_faults.py starts run_train.py itself
    config, workdir = '--config=tests/toy_task.py:tiny', f'--workdir={tmp_path / "w"}'
    proc = run_module('run_train', config, workdir, *flags, check=False)
    return proc.returncode, proc.stderr

  code, err = run_train('--config.data.root=/no/such/root')
  assert code == 1
  assert err.strip().splitlines()[-1] == (
    'error: /no/such/root/toy.npz: toy dataset not found (config.data.root)'
  )
  code, err = run_train('--config.data.rot=/x')
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: no such config field') and '--config.data.rot' in last
  assert 'Traceback' not in err


def test_init_from_restores_model_state_too(ema_bn_bf16, tmp_path):
  """Frozen-BN statistics (batch_stats) of a source come along with its params."""
  source = ema_bn_bf16[0]
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
