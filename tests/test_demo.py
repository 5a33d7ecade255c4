"""The demo (configs/demo.py) through the README's command, on its `:smoke` variant."""

import os
import re
import subprocess
import sys

import ml_collections
import pytest

from tps_jax import chain

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_train(*args, timeout=900):
  return subprocess.run(
    [sys.executable, 'run_train.py', *map(str, args)],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )


@pytest.mark.slow
def test_demo_writes_the_data_trains_both_stages_and_prints_baselines(tmp_path):
  workdir = tmp_path / 'demo'
  proc = _run_train('--config=configs/demo.py:smoke', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  root = workdir / 'Kinetics-TPS'
  assert (root / 'list' / 'video_test_flist.csv').is_file()
  for name in ('tps_part_states', 'tps_action_clips'):
    assert (root / 'tfds' / name / '1.0.0').is_dir()
  rows = {}
  for line in proc.stdout.splitlines():
    match = re.match(r'\s+(part_state|action)\s+top1\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$', line)
    if match:
      rows[match[1]] = tuple(float(v) for v in match.groups()[1:])
  assert set(rows) == {'part_state', 'action'}, proc.stdout
  # The action network's Swin started from the part-state network's, inflated.
  assert re.search(r'init_from .*part_state/export: restored', proc.stderr)
  assert 'adapted to the new shapes: ' in proc.stderr and 'patch_embed/proj/kernel' in proc.stderr
  value, chance, majority = rows['action']
  assert chance == pytest.approx(1 / 6, abs=1e-3)  # the synthetic set's 6 actions
  assert 0.0 <= value <= 1.0 and 0.0 <= majority <= 1.0
  assert 0.0 < rows['part_state'][1] < 0.2  # 1 / number of states
  for stage in ('part_state', 'action'):
    assert (workdir / stage / 'export' / 'config.json').is_file()
    assert (workdir / stage / 'metrics.jsonl').is_file()

  # A rerun resumes every stage from its final checkpoint: nothing is trained again.
  again = _run_train('--config=configs/demo.py:smoke', f'--workdir={workdir}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'writing the synthetic dataset' not in again.stderr
  assert not re.search(r'^step \d+/', again.stderr, re.M)


def test_stage_entries_and_overrides_are_checked():
  with pytest.raises(chain.ChainError, match='name=configs'):
    chain.parse_stage('configs/action.py:tiny')
  with pytest.raises(chain.ChainError, match='with name in'):
    chain.parse_stage('detector=configs/human_detector.py')
  config = chain.load_stage_config('configs/action.py:tiny')
  with pytest.raises(chain.ChainError, match='optim.no_such_field'):
    chain.apply_overrides(config, 'action', {'action': {'optim': {'no_such_field': 1}}})
  with pytest.raises(chain.ChainError, match='no module'):
    chain.load_stage_config('configs/no_such_stage.py')
  with pytest.raises(
    chain.ChainError, match="stage_init.action: 'part_state' is not an earlier stage"
  ):
    chain._init_from_stage(config, {'from': 'part_state'}, '/w', 'action', {})  # pylint: disable=protected-access


def test_an_existing_root_that_is_not_a_dataset_is_refused(tmp_path):
  data = ml_collections.ConfigDict(
    {'root': str(tmp_path), 'videos': 4, 'seed': 0, 'datasets': ['action_clips']}
  )
  (tmp_path / 'something.txt').write_text('not a dataset')
  with pytest.raises(chain.ChainError, match='not a finished Kinetics-TPS dataset'):
    chain.ensure_dataset(data, str(tmp_path / 'work'))


def test_demo_command_reports_a_bad_override_in_one_line(tmp_path):
  proc = _run_train(
    '--config=configs/demo.py:smoke',
    f'--workdir={tmp_path}',
    '--config.stage_overrides.no_such_field=3',
    timeout=300,
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: no such config field') and 'no_such_field' in last
