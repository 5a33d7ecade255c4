"""The demo (configs/demo.py) through the README's command, on its `:smoke` variant."""

import re

import ml_collections
import pytest

from tests.conftest import run_module
from tps_jax import chain


@pytest.mark.slow
def test_demo_trains_the_four_stages_parses_end_to_end_and_resumes(smoke_demo):
  """conftest's smoke_demo: `run_train.py --config=configs/demo.py:smoke` run once per
  session; here its output, then a rerun, which trains nothing again."""
  workdir, proc = smoke_demo.workdir, smoke_demo.proc
  root = workdir / 'Kinetics-TPS'
  assert (root / 'list' / 'video_test_flist.csv').is_file()
  for name in ('tps_humans', 'tps_parts', 'tps_part_states', 'tps_action_clips'):
    assert (root / 'tfds' / name / '1.0.0').is_dir()
  stages = ('human_detector', 'part_detector', 'part_state', 'action')
  values = {}
  for line in proc.stdout.splitlines():
    match = re.match(r'\s+(\w+)\s+(AP50|top1)\s+([\d.]+)', line)
    if match:
      values[match[1]] = float(match[3])
  assert set(values) == set(stages), proc.stdout
  assert all(0.0 <= value <= 1.0 for value in values.values())
  action = re.search(r'^\s+action\s+top1\s+[\d.]+\s+([\d.]+)\s+([\d.]+)$', proc.stdout, re.M)
  assert float(action[1]) == pytest.approx(1 / 6, abs=1e-3)  # chance: the 6 synthetic actions
  part_state = re.search(r'^\s+part_state\s+top1\s+[\d.]+\s+([\d.]+)', proc.stdout, re.M)
  assert 0.0 < float(part_state[1]) < 0.2  # 1 / number of states
  assert re.search(r'^\s+\+pred act\s+[\d.]+$', proc.stdout, re.M)
  # The end-to-end table: every ablation row scored on the val videos; with all four
  # stages replaced by the ground truth the score is the maximum.
  rows = dict(
    re.findall(r'^  (system|oracle [\w+]+|baseline: majority state)\s+([\d.]+)', proc.stdout, re.M)
  )
  assert set(rows) == {
    'system',
    'oracle action',
    'oracle humans',
    'oracle humans+parts',
    'oracle humans+parts+action',
    'oracle all',
    'baseline: majority state',
  }, proc.stdout
  assert rows['oracle all'] == '0.9999'
  assert (workdir / 'bundle' / 'pipeline.json').is_file()
  for row in ('system', 'oracle_all'):
    assert (workdir / 'predictions' / row / 'pred_part_result.json').is_file()
  page = workdir / 'predictions' / 'report' / 'index.html'  # the system's error analysis
  assert page.is_file() and f'error analysis (open in a browser): {page}' in proc.stdout
  for stage in stages:
    assert (workdir / stage / 'export' / 'metadata.json').is_file()
    assert (workdir / stage / 'metrics.jsonl').is_file()
  # The action network's Swin started from the part-state network's, inflated: a line
  # of counts on the console, the names in the stage's log.
  assert re.search(r'init_from .*part_state/export: restored \d+/\d+ .*adapted', proc.stderr)
  log = (workdir / 'action' / 'log.txt').read_text()
  assert 'adapted to the new shapes: ' in log and 'patch_embed/proj/kernel' in log

  # A rerun resumes every stage from its final checkpoint: nothing is trained again
  # (in this process: the command line itself ran above).
  again = run_module('run_train', '--config=configs/demo.py:smoke', f'--workdir={workdir}')
  assert 'writing the synthetic dataset' not in again.stderr
  assert not re.search(r'^step \d+/', again.stderr, re.M)
  assert re.findall(r'^  oracle all\s+([\d.]+)', again.stdout, re.M) == ['0.9999']


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


@pytest.mark.parametrize('variant', [None, 'smoke'])
def test_every_demo_variant_sets_fields_its_stages_have(variant):
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config(variant)
  steps = {}
  for entry in config.stages:
    name, spec = chain.parse_stage(entry)
    stage_config = chain.load_stage_config(spec)
    chain.apply_overrides(stage_config, name, config.stage_overrides)
    steps[name] = stage_config.total_steps
  if variant is None:  # the step counts configs/demo.py's docstring and the README time
    assert steps == {'human_detector': 250, 'part_detector': 400, 'part_state': 300, 'action': 1000}


def test_an_existing_root_that_is_not_a_dataset_is_refused(tmp_path):
  data = ml_collections.ConfigDict(
    {'root': str(tmp_path), 'videos': 4, 'seed': 0, 'datasets': ['action_clips']}
  )
  (tmp_path / 'something.txt').write_text('not a dataset')
  with pytest.raises(chain.ChainError, match='not a finished Kinetics-TPS dataset'):
    chain.ensure_dataset(data, str(tmp_path / 'work'))


def test_demo_command_reports_a_bad_override_in_one_line(tmp_path):
  proc = run_module(
    'run_train',
    '--config=configs/demo.py:smoke',
    f'--workdir={tmp_path}',
    '--config.stage_overrides.no_such_field=3',
    check=False,
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: no such config field') and 'no_such_field' in last
