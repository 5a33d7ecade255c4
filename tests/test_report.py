"""The error-analysis report (python -m tps_jax.report): its numbers, its page, a browser."""

import os
import pathlib
import re
import shutil
import subprocess
import types

import numpy as np
import pytest

from tests.conftest import run_module
from tests.test_visualize import as_prediction
from tps_jax import report as report_cli
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.metrics import error_analysis as analysis
from tps_jax.metrics import report_page
from tps_jax.metrics import score as score_lib

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_FLAGS = (
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
)


def perturbed(gt_vid: dict, gt_part: dict, seed: int = 0) -> tuple[dict, dict]:
  """The ground truth as a submission with errors of every kind: every third video's
  action wrong, the second video's first frame missing, humans dropped, part boxes
  moved away, states changed, boxes jittered."""
  rng = np.random.default_rng(seed)
  states = sorted(
    {
      part['verb']
      for frames in gt_part.values()
      for frame in frames.values()
      for human in frame['humans']
      for part in human['parts'].values()
    }
  )
  actions = sorted(set(gt_vid.values()))
  pred_vid = {
    v: a if i % 3 else next(b for b in actions if b != a) for i, (v, a) in enumerate(gt_vid.items())
  }
  pred_part = {}
  for i, (video, frames) in enumerate(gt_part.items()):
    pred_part[video] = {}
    for j, (key, frame) in enumerate(frames.items()):
      if (i, j) == (1, 0):
        continue
      humans = []
      for human in frame['humans']:
        if rng.random() < 0.15:
          continue
        parts = {}
        for name, part in human['parts'].items():
          shift = 40.0 if rng.random() < 0.2 else 0.0
          box = (np.asarray(part['box'], float) + shift + rng.normal(0, 1, 4)).round(1)
          verb = part['verb'] if rng.random() < 0.7 else states[rng.integers(len(states))]
          parts[name] = {'box': [box.tolist()], 'verb': [verb]}
        box = (np.asarray(human['box'], float) + rng.normal(0, 2, 4)).round(1)
        humans.append({'box': box.tolist(), 'parts': parts})
      pred_part[video][key] = {'humans': humans}
  return pred_vid, pred_part


@pytest.fixture(scope='module')
def scored(synthetic_root, tmp_path_factory):
  """(root, GT dir, prediction dir, the report scored with details, the page's path)."""
  folder = tmp_path_factory.mktemp('report')
  gt_dir, pred_dir = folder / 'gt', folder / 'pred'
  gt_vid, gt_part = tps.write_ground_truth(str(synthetic_root), 'train', str(gt_dir))
  submission.write_submission(str(pred_dir), *perturbed(gt_vid, gt_part))
  results = (*submission.read_results(gt_dir, 'gt'), *submission.read_results(pred_dir, 'pred'))
  report = score_lib.score_typed(*results, details=True)
  page = report_page.write_report(
    str(folder / 'page'),
    report,
    results[1],
    results[3],
    video_paths=report_cli.video_files(str(synthetic_root)),
    worst=2,
  )
  return synthetic_root, gt_dir, pred_dir, report, page


def test_page_score_and_table_equal_evaluate_to_the_last_digit(scored, tmp_path):
  _, gt_dir, pred_dir, _, _ = scored
  evaluate = run_module('tps_jax.evaluate', '--gt', gt_dir, '--pred', pred_dir, '--verbose')
  out = tmp_path / 'page'
  proc = run_module('tps_jax.report', '--gt', gt_dir, '--pred', pred_dir, '--out', out)
  table, path_line = proc.stdout.rstrip('\n').rsplit('\n', 1)
  assert evaluate.stdout.rstrip('\n').endswith(table)  # the same 25 cells and score line
  assert path_line == f'report: {out / "index.html"}'
  page = (out / 'index.html').read_text()
  score_line = re.search(r'^score: [0-9.]+$', evaluate.stdout, re.M)[0]
  assert re.search(r'id="score">([^<]*)<', page)[1] == score_line
  cell = evaluate.stdout.index('human iou:  0.5 part iou:  0.3')
  exact = re.compile(r'^area:  (\S+)$', re.M).search(evaluate.stdout, cell)[1]
  assert re.search(r'id="score_exact">([^<]*)<', page)[1] == exact
  assert proc.stderr == evaluate.stderr  # the same warnings (a missing frame)
  assert 'missing' in proc.stderr


def test_details_add_up_to_every_videos_psc(scored):
  _, gt_dir, pred_dir, report, _ = scored
  results = (*submission.read_results(gt_dir, 'gt'), *submission.read_results(pred_dir, 'pred'))
  plain = score_lib.score_typed(*results)  # the details change no number
  np.testing.assert_array_equal(plain.psc_cells, report.psc_cells)
  assert plain.score == report.score and plain.details is None
  d = report.details
  counted = np.maximum(report.counted_frames, 1)
  psc = np.bincount(d.frame_video, d.frame_score, len(report.videos)) / counted
  psc[report.counted_frames == 0] = 1.0
  np.testing.assert_allclose(psc, report.psc_cells[report.official_cell], atol=1e-12)
  frame_of_part = d.human_frame[d.part_human]
  credit = np.bincount(frame_of_part, d.part_score, len(d.frame_names)) / d.frame_parts
  np.testing.assert_allclose(credit, d.frame_score, atol=1e-12)
  assert d.missing_frames.sum() == 1 and not d.missing_videos.any()


def test_the_loss_breakdown_splits_the_perfect_score(scored):
  _, _, _, report, _ = scored
  rows = dict(analysis.loss_breakdown(report))
  assert sum(rows.values()) == pytest.approx(1.0, abs=1e-12)  # the score included
  assert rows['score'] == report.score
  assert rows['wrong action'] == pytest.approx(1 - np.mean(report.correct_videos))
  assert all(rows[cause] > 0 for cause in analysis.LOSSES)  # the perturbation has each
  assert 0 <= rows['t grid (k / 10000)'] < 1e-3
  psc = dict(analysis.psc_breakdown(report))  # every video, whatever its class
  assert sum(psc.values()) == pytest.approx(1.0, abs=1e-12)
  assert psc['mean PSC'] == pytest.approx(np.mean(report.psc_cells[report.official_cell]))
  assert all(psc[cause] >= rows[cause] > 0 for cause in analysis.LOSSES[1:])


def test_the_ground_truth_loses_only_the_t_grid(scored):
  _, gt_dir, _, _, _ = scored
  gt_vid, gt_part = submission.load_pair(str(gt_dir), 'gt')
  report = score_lib.challenge_score(gt_vid, gt_part, gt_vid, as_prediction(gt_part), details=True)
  rows = dict(analysis.loss_breakdown(report))
  assert all(rows[cause] == 0 for cause in analysis.LOSSES)
  assert rows['score'] == report.score and report.score_rounded == 0.9999
  assert rows['t grid (k / 10000)'] == pytest.approx(1e-4)
  assert analysis.humans(report)['recall'] == analysis.humans(report)['precision'] == 1.0
  assert all(r.recall == r.state_accuracy == r.credit == 1.0 for r in analysis.parts(report))


def _frame(humans):
  return {'img_00001.json': {'humans': humans}}


def test_a_hand_scored_frame():
  """Two GT humans of two parts each; the prediction finds one human, both its parts,
  one with the wrong state: recall 1/2, state accuracy 1/2, PSC 1/4."""
  gt_part = {
    'v': _frame(
      [
        {
          'box': [0, 0, 99, 99],
          'parts': {
            'head': {'box': [10, 10, 29, 29], 'verb': 'nod'},
            'torso': {'box': [30, 30, 69, 69], 'verb': 'bend'},
          },
        },
        {
          'box': [200, 0, 299, 99],
          'parts': {
            'head': {'box': [210, 10, 229, 29], 'verb': 'nod'},
            'torso': {'box': [230, 30, 269, 69], 'verb': 'bend'},
          },
        },
      ]
    )
  }
  pred_part = {
    'v': _frame(
      [
        {
          'box': [0, 0, 99, 99],
          'parts': {
            'head': {'box': [[10, 10, 29, 29]], 'verb': ['nod']},
            'torso': {'box': [[30, 30, 69, 69]], 'verb': ['nod']},
          },
        }
      ]
    )
  }
  report = score_lib.challenge_score({'v': 'run'}, gt_part, {'v': 'run'}, pred_part, details=True)
  humans = analysis.humans(report)
  assert (humans['precision'], humans['recall']) == (1.0, 0.5)
  rows = {row.name: row for row in analysis.parts(report)}
  assert (rows['head'].recall, rows['head'].state_accuracy) == (1.0, 1.0)
  assert (rows['torso'].recall, rows['torso'].state_accuracy) == (1.0, 0.0)
  assert analysis.top_confusions(rows['torso']) == [('bend', 'nod', 1)]
  losses = dict(analysis.loss_breakdown(report))
  assert losses['unmatched humans'] == 0.5 and losses['wrong states'] == 0.25
  assert losses['parts not found'] == 0 and losses['wrong action'] == 0
  assert report.psc['v'] == 0.25
  assert analysis.actions(report)['top1'] == 1.0


def test_page_has_every_section_and_stays_small(scored):
  _, _, _, report, page = scored
  text = open(page, encoding='utf-8').read()
  for number, title in enumerate(
    ('Headline', 'Where it is lost', 'Humans', 'Parts', 'Actions', 'Videos'), 1
  ):
    assert f'<h2>{number}. {title}</h2>' in text
  assert text.count('class="reading"') == 6
  for video in report.videos:  # the sortable table: every video, its PSC to sort by
    assert f'<td data-v="{video}">' in text
    assert f'data-v="{report.psc[video]!r}"' in text
  images = re.findall(r'<img src="([^"]+)"', text)
  assert {'worst_0.png', 'worst_1.png', 'grid.png', 'accuracy.png'} <= set(images)
  folder = os.path.dirname(page)
  assert all(os.path.getsize(os.path.join(folder, name)) > 0 for name in images)
  assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
  assert report_page.page_bytes(folder) < 20 * 2**20


def test_bad_input_is_what_evaluate_says(scored, tmp_path, capsys):
  _, gt_dir, pred_dir, _, _ = scored
  bad = tmp_path / 'bad'
  pred_vid, pred_part = submission.load_pair(str(pred_dir), 'pred')
  video = next(v for v, frames in pred_part.items() if frames)
  frame = next(iter(pred_part[video].values()))
  frame['humans'] = [frame['humans'][0]] * (submission.MAX_HUMANS + 1)
  submission.write_json_atomic(str(bad / submission.PRED_FILES[0]), pred_vid)
  submission.write_json_atomic(str(bad / submission.PRED_FILES[1]), pred_part)
  with pytest.raises(submission.SubmissionError) as refused:
    score_lib.score_typed(
      *submission.read_results(gt_dir, 'gt'), *submission.read_results(bad, 'pred')
    )
  assert report_cli.run_report(gt=str(gt_dir), pred=str(bad), out=str(tmp_path / 'r')) == 2
  captured = capsys.readouterr()
  assert captured.err == f'error: {refused.value}\n' and 'humans, at most 10' in captured.err
  assert not (tmp_path / 'r').exists()
  assert report_cli.run_report(pred=str(pred_dir), out=str(tmp_path / 'r')) == 2
  assert capsys.readouterr().err == 'error: give either --gt GT_DIR or --split (with --data_root)\n'


def test_split_ground_truth_and_ablation_rows(scored, tmp_path, capsys):
  root, gt_dir, pred_dir, report, _ = scored
  pred = tmp_path / 'pred'
  shutil.copytree(pred_dir, pred)
  for row, source in (('system', pred_dir), ('oracle_all', gt_dir)):
    vid, part = submission.load_pair(str(source), 'gt' if source == gt_dir else 'pred')
    if source == gt_dir:  # the ground truth as a submission
      part = as_prediction(part)
    submission.write_submission(str(pred / 'ablation' / row), vid, part)
  out = tmp_path / 'page'
  status = report_cli.run_report(
    pred=str(pred), data_root=str(root), split='train', out=str(out), worst=0
  )
  assert status == 0
  printed = capsys.readouterr().out
  assert f'score: {report.score_rounded:.6f}' in printed
  text = (out / 'index.html').read_text()
  assert '<td data-v="oracle all">oracle all</td><td data-v="0.9999">' in text
  assert f'<td data-v="system">system</td><td data-v="{report.score:.4f}">' in text
  assert 'ablation.png' in text and 'worst_0.png' not in text


def _chromium(page, *flags, tmp_path):
  return subprocess.run(
    [CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}', *flags, page.as_uri()],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


@pytest.mark.skipif(
  not os.path.exists(CHROMIUM), reason=f'{CHROMIUM} is not installed (.ci/run installs it)'
)
def test_page_renders_in_a_real_browser(scored, tmp_path):
  page = pathlib.Path(scored[-1])
  dom = _chromium(
    page,
    '--enable-logging=stderr',
    '--v=0',
    '--virtual-time-budget=10000',
    '--dump-dom',
    tmp_path=tmp_path,
  )
  assert dom.returncode == 0, dom.stderr[-2000:]
  status = re.search(r'<p id="status"([^>]*)>([^<]*)<', dom.stdout)
  assert status, dom.stdout[:2000]
  attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', status[1]))
  images = len(re.findall(r'<img ', page.read_text()))
  assert attributes == {'images': str(images), 'broken': '', 'errors': ''}, status[0]
  assert status[2] == f'report loaded: {images}/{images} images, 0 script errors'
  console = [line for line in dom.stderr.splitlines() if ':CONSOLE' in line]
  assert not console, console  # the page logs nothing: any console line is an error
  screenshot = tmp_path / 'report.png'
  shot = _chromium(
    page,
    '--hide-scrollbars',
    '--window-size=1280,4000',
    '--virtual-time-budget=10000',
    f'--screenshot={screenshot}',
    tmp_path=tmp_path,
  )
  assert shot.returncode == 0, shot.stderr[-2000:]
  assert screenshot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_demo_writes_the_report_of_its_system_row(scored, tmp_path):
  from tps_jax import chain  # pylint: disable=g-import-not-at-top  (JAX: only here)
  from tps_jax.inference import ablation  # pylint: disable=g-import-not-at-top

  root, gt_dir, pred_dir, report, _ = scored
  truth = types.SimpleNamespace(vid=None, part=None)
  truth.vid, truth.part = submission.load_pair(str(gt_dir), 'gt')
  prediction = types.SimpleNamespace(submissions=[submission.load_pair(str(pred_dir), 'pred')])
  rows = [ablation.Row('system', report.score, 0.0, 0.0), ablation.Row('oracle all', 0.9999, 1, 1)]
  worst = analysis.worst_videos(report, 1, 0)[0][0]
  items = [types.SimpleNamespace(name=worst, path=report_cli.video_files(root)[worst])]
  path = chain.write_error_report(str(tmp_path / 'report'), truth, prediction, rows, items)
  text = open(path, encoding='utf-8').read()
  assert f'id="score">score: {report.score_rounded:.6f}<' in text
  assert 'ablation.png' in text and re.findall(r'worst_\d\.png', text) == ['worst_0.png']
  end_to_end = {'rows': rows, 'videos': 5, 'split': 'val', 'part_state_predicted_action': 0.5}
  table = chain.format_results({}, {**end_to_end, 'report': path})
  assert table.splitlines()[-1] == f'error analysis (open in a browser): {path}'
