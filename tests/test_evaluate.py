"""`python -m tps_jax.evaluate`: the tool's grid and score, refusals, warnings, outputs."""

import json

from tests import score_reference
from tests.conftest import run_module

BOX = [0, 0, 9, 9]


def _gt_frame():
  return {
    'humans': [
      {
        'number': 1,
        'box': BOX,
        'parts': {
          'head': {'number': 1, 'box': BOX, 'verb': 'none', 'name': 'head'},
          'torso': {'number': 2, 'box': BOX, 'verb': 'bend', 'name': 'torso'},
        },
      }
    ]
  }


def _pred_frame(humans=1, proposals=1, verbs=None, box=BOX):
  verbs = verbs if verbs is not None else ['none'] * proposals
  return {
    'humans': [
      {
        'number': i + 1,
        'box': BOX,
        'parts': {'head': {'number': 1, 'box': [box] * proposals, 'verb': verbs, 'name': 'head'}},
      }
      for i in range(humans)
    ]
  }


def _write(tmp_path, pred_part, pred_vid=None):
  """GT: videos v and w, one frame each; the submission as given. Returns (gt, pred)."""
  gt, pred = tmp_path / 'gt', tmp_path / 'pred'
  gt.mkdir(), pred.mkdir()
  files = {
    gt / 'gt_vid_result.json': {'v': 'run', 'w': 'run'},
    gt / 'gt_part_result.json': {
      'v': {'img_00001.json': _gt_frame()},
      'w': {'img_00001.json': _gt_frame()},
    },
    pred / 'pred_vid_result.json': pred_vid or {'v': 'run', 'w': 'run'},
    pred / 'pred_part_result.json': pred_part,
  }
  for path, obj in files.items():
    path.write_text(json.dumps(obj))
  return gt, pred


def _json(folder, name):
  return json.loads((folder / name).read_text())


def test_prints_the_tools_grid_and_the_score_last(tmp_path):
  # v: head right, torso missing -> PSC 0.5; w: missing from the part file -> PSC 0.
  gt, pred = _write(tmp_path, {'v': {'img_00001.json': _pred_frame()}})
  proc = run_module(
    'tps_jax.evaluate',
    '--gt',
    gt,
    '--pred',
    pred,
    '--per_video',
    tmp_path / 'per_video.json',
    subprocess_=True,
  )
  lines = proc.stdout.strip().splitlines()
  assert lines[-1] == f'score: {5000 / 10000 / 2:.6f}'
  table = lines[lines.index(next(line for line in lines if line.startswith('  h \\ p'))) :][:6]
  assert table[0].split()[3:] == ['0.001', '0.3', '0.5', '0.9', '0.99']
  assert [row.split()[0] for row in table[1:]] == ['0.001', '0.3', '0.5', '0.9', '0.99']
  assert table[3].split()[1:] == ['0.250000', '0.250000', '0.250000', '0.250000', '0.250000']
  assert '1 video(s) of gt_vid_result.json missing from pred_part_result.json' in proc.stderr
  per_video = json.loads((tmp_path / 'per_video.json').read_text())
  assert per_video == {'v': {'psc': 0.5, 'correct': True}, 'w': {'psc': 0.0, 'correct': True}}


def test_verbose_prints_every_cell_as_the_tool_does(tmp_path):
  gt, pred = _write(
    tmp_path,
    {
      'v': {'img_00001.json': _pred_frame(proposals=2)},
      'w': {'img_00001.json': _pred_frame(box=[0, 0, 9, 2])},
    },
    pred_vid={'v': 'run', 'w': 'jump'},
  )
  proc = run_module(
    'tps_jax.evaluate',
    '--gt',
    gt,
    '--pred',
    pred,
    '--verbose',
    '--per_video',
    tmp_path / 'per_video.json',
  )
  results, _ = score_reference.official_run(
    _json(gt, 'gt_vid_result.json'),
    _json(gt, 'gt_part_result.json'),
    _json(pred, 'pred_vid_result.json'),
    _json(pred, 'pred_part_result.json'),
  )
  expected = list(score_reference.printout(results))
  assert proc.stdout.splitlines()[: len(expected)] == expected
  assert (tmp_path / 'per_video.json').exists()


def test_refuses_what_the_tool_refuses(tmp_path):
  gt, pred = _write(
    tmp_path,
    {
      'v': {'img_00001.json': _pred_frame(humans=11)},
      'w': {'img_00001.json': _pred_frame(proposals=6)},
    },
  )
  proc = run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred, check=False)
  assert proc.returncode == 2
  assert 'pred_part_result.json: v/img_00001.json: 11 humans, at most 10 allowed' in proc.stderr
  assert 'score:' not in proc.stdout and 'Traceback' not in proc.stderr


def test_scores_an_inverted_box_and_warns_strict_refuses_it(tmp_path):
  inverted = [4.5, 0, 4, 9]  # IoU 0.05 with the GT box: counts at p = 0.001
  gt, pred = _write(
    tmp_path,
    {
      'v': {'img_00001.json': _pred_frame(box=inverted)},
      'w': {'img_00001.json': _pred_frame(verbs=['flying'])},
      'extra': {},
    },
    pred_vid={'v': 'run', 'w': 'swim', 'extra': 'run'},
  )
  proc = run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred)
  assert proc.stdout.splitlines()[-1] == 'score: 0.000000'
  row = next(line for line in proc.stdout.splitlines() if line.startswith('    0.5 '))
  assert row.split()[1:3] == [f'{5000 / 10000 / 2:.6f}', '0.000000']  # head of 2 parts
  for warning in [
    "1 inverted proposal box(es) with the GT's state (x1 > x2 or y1 > y2) in "
    'pred_part_result.json (e.g. v/img_00001.json/human 1/head/proposal 1)',
    '1 video(s) of the submission not in gt_vid_result.json (e.g. extra)',
    "1 predicted action(s) outside the vocabulary (those of the GT) (e.g. 'swim')",
    "1 predicted state(s) outside the vocabulary (those of the GT) (e.g. 'flying')",
  ]:
    assert f'warning: {warning}' in proc.stderr, proc.stderr
  strict = run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred, '--strict', check=False)
  assert strict.returncode == 2
  assert 'box is inverted' in strict.stderr and 'score:' not in strict.stdout


def test_data_root_extends_the_vocabularies(tmp_path):
  root = tmp_path / 'root'
  (root / 'list').mkdir(parents=True)
  (root / 'list' / 'part_stat.txt').write_text('none\nbend\nflying\n')
  for action in ('run', 'swim'):
    (root / 'train_videos' / action).mkdir(parents=True)
  gt, pred = _write(
    tmp_path,
    {
      'v': {'img_00001.json': _pred_frame(verbs=['flying'])},
      'w': {'img_00001.json': _pred_frame(verbs=['walking'])},
    },
    pred_vid={'v': 'swim', 'w': 'dance'},
  )
  proc = run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred, '--data_root', root)
  assert (
    "warning: 1 predicted state(s) outside the vocabulary (the GT's and --data_root's)"
    " (e.g. 'walking')"
  ) in proc.stderr
  assert (
    "warning: 1 predicted action(s) outside the vocabulary (the GT's and "
    "--data_root's) (e.g. 'dance')"
  ) in proc.stderr
  bad = run_module(
    'tps_jax.evaluate', '--gt', gt, '--pred', pred, '--data_root', tmp_path / 'nowhere', check=False
  )
  assert bad.returncode == 2 and bad.stderr.count('\n') == 2 and '--data_root:' in bad.stderr


def test_unreadable_files_and_non_finite_numbers_are_one_line_each(tmp_path):
  gt, pred = _write(tmp_path, {})
  (pred / 'pred_part_result.json').write_text(
    '{"v": {"img_00001.json": {"humans": [{"box": [0, 0, 9, NaN], "parts": {}}]}}}'
  )
  proc = run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred, check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[0] == (
    'pred_part_result.json: v/img_00001.json/human 1: '
    'box is not finite or beyond +-16777216: '
    '[0.0, 0.0, 9.0, nan]'
  )
  (pred / 'pred_part_result.json').write_text('{"v": ')
  proc = run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred, check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[0].endswith(
    'pred_part_result.json: not valid JSON (Expecting value at line 1)'
  )


def test_plot_draws_the_accuracy_curve_and_the_psc_histogram(tmp_path):
  gt, pred = _write(
    tmp_path,
    {'v': {'img_00001.json': _pred_frame()}, 'w': {'img_00001.json': _pred_frame(proposals=2)}},
  )
  run_module('tps_jax.evaluate', '--gt', gt, '--pred', pred, '--plot', tmp_path / 'score.png')
  assert (tmp_path / 'score.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
