"""tps_jax.datasets.validation (data_prep.validate): passes on the synthetic set; every
injected problem is reported."""

import json
import os
import shutil

import pytest

from tests.conftest import run_module
from tps_jax.data import kinetics_tps as tps
from tps_jax.datasets import validation as V


def _copy(synthetic_root, tmp_path):
  root = tmp_path / 'Kinetics-TPS'
  shutil.copytree(synthetic_root, root)
  return str(root)


def _videos(root, split):
  return list(tps.iter_videos(root, split))


def _edit_json(path, edit):
  with open(path) as f:
    data = json.load(f)
  edit(data)
  with open(path, 'w') as f:
    json.dump(data, f)


def _set_human_box(coordinate, value):
  """An edit setting one coordinate of the first human's box."""
  return lambda path: _edit_json(
    path, lambda data: data['humans'][0]['box'].__setitem__(coordinate, value)
  )


def _set_first_verb(verb):
  """An edit setting the state of the first human's first part."""
  return lambda path: _edit_json(path, lambda data: _first_part(data).__setitem__('verb', verb))


def _first_part(data):
  return next(iter(data['humans'][0]['parts'].values()))


def _rename_first_part(data, new_name):
  parts = data['humans'][0]['parts']
  part = parts.pop(next(iter(parts)))
  parts[new_name] = dict(part, name=new_name)


def _set_count(flist_path, name, count):
  """Sets (or adds) a video's row of a flist CSV."""
  lines = [
    line
    for line in open(flist_path).read().splitlines()
    if line.strip() and line.split(',')[0] != name
  ]
  with open(flist_path, 'w') as f:
    f.write('\n'.join(lines + [f'{name},{count}']) + '\n')


def test_help():
  out = run_module('data_prep.validate', '--help', check=False).stdout
  for flag in (
    '--data_root',
    '--split',
    '--video_mode',
    '--jobs',
    '--max_problems',
    '--[no]stats',
    '--box_tolerance',
    '--[no]progress',
  ):
    assert flag in out


def test_synthetic_dataset_passes(synthetic_root):
  proc = run_module(
    'data_prep.validate',
    '--data_root',
    synthetic_root,
    '--jobs',
    2,
    '--stats',
    '--noprogress',
    subprocess_=True,
  )
  lines = proc.stdout.splitlines()
  assert lines[-1] == 'OK: no problems'
  rows = {
    line.split()[0]: line.split()[1:]
    for line in lines
    if line.split()[:1] in (['train'], ['test']) and line.split()[1].isdigit()
  }
  for split in tps.SPLITS:
    videos = _videos(str(synthetic_root), split)
    annotated = sum(len(v.annotated_frames()) for v in videos)
    assert rows[split][:3] == [
      str(len(videos)),
      str(sum(v.num_frames for v in videos)),
      str(annotated),
    ]
  assert any(line.startswith('train videos per action: ') for line in lines)
  assert any(line.startswith('train parts per state: none ') for line in lines)


def test_statistics_count_humans_and_parts(synthetic_root):
  root = str(synthetic_root)
  report = V.validate(root, ('train',), video_mode='quick')
  assert report.ok and not report.warnings and list(report.splits) == ['train']
  humans = parts = 0
  for video in _videos(root, 'train'):
    for index in video.annotated_frames():
      frame = tps.load_frame(video.annotation_path(index))
      humans += len(frame.humans)
      parts += sum(len(h.parts) for h in frame.humans)
  stats = report.splits['train']
  assert (stats.videos, stats.humans, stats.parts) == (5, humans, parts)
  assert sum(stats.states.values()) == parts and sum(stats.actions.values()) == 5


@pytest.fixture(scope='module')
def broken(synthetic_root, tmp_path_factory):
  """A copy of the synthetic set with one of each problem; (completed run, expected)
  where expected maps a problem kind to (path the line starts with, text it holds)."""
  root = _copy(synthetic_root, tmp_path_factory.mktemp('broken'))
  train, test = _videos(root, 'train'), _videos(root, 'test')
  flist = os.path.join(root, 'list', 'video_train_flist.csv')
  a, b, c, d, e = train
  expected = {}

  def annotation(video, index, kind, text, edit):
    path = video.annotation_path(index)
    edit(path)
    expected[kind] = (path, text)

  def write(text):
    return lambda path: open(path, 'w').write(text)

  annotation(a, 1, 'corrupt_json', 'not valid JSON', write('{humans: oops'))
  annotation(
    a, 6, 'truncated_file', 'truncated JSON', write(open(a.annotation_path(6)).read()[:40])
  )
  annotation(b, 1, 'nan_box', 'humans[0].box: is not finite', _set_human_box(0, float('nan')))
  annotation(
    b,
    6,
    'inverted_box',
    'is inverted or empty',
    lambda p: _edit_json(p, lambda d: _first_part(d)['box'].reverse()),
  )
  annotation(c, 1, 'box_outside_image', 'lies outside the 160x120 image', _set_human_box(2, 170))
  annotation(
    c,
    6,
    'unknown_part',
    "unknown part name 'tail'",
    lambda p: _edit_json(p, lambda d: _rename_first_part(d, 'tail')),
  )
  annotation(d, 1, 'unknown_state', "unknown state 'flying'", _set_first_verb('flying'))
  os.remove(e.video_path)
  expected['missing_video'] = (flist, f'{e.name}: listed but no video file')
  expected['annotations_without_video'] = (
    os.path.dirname(e.annotation_dir),
    'annotation folder without a video',
  )
  _set_count(flist, d.name, d.num_frames + 3)
  expected['wrong_frame_count'] = (
    d.video_path,
    f'{d.num_frames} frames decoded, but {flist} lists {d.num_frames + 3}',
  )
  with open(test[0].video_path, 'wb') as f:
    f.write(b'\x00\x00\x00\x18ftypmp42' + b'not a video' * 100)
  expected['undecodable_video'] = (test[0].video_path, 'cannot decode')
  extra = os.path.join(os.path.dirname(a.video_path), 'ZZextra00001_000001_000011.mp4')
  shutil.copy(a.video_path, extra)
  _set_count(flist, 'ZZextra00001_000001_000011', a.num_frames)
  expected['video_without_annotations'] = (
    os.path.join(
      root,
      'train_annotations',
      a.action,
      'ZZextra00001_000001_000011',
      'ZZextra00001_000001_000011',
    ),
    'no such annotation folder',
  )
  proc = run_module(
    'data_prep.validate', '--data_root', root, '--jobs', 2, '--noprogress', check=False
  )
  return proc, expected


KINDS = (
  'corrupt_json',
  'truncated_file',
  'nan_box',
  'inverted_box',
  'box_outside_image',
  'unknown_part',
  'unknown_state',
  'missing_video',
  'annotations_without_video',
  'wrong_frame_count',
  'undecodable_video',
  'video_without_annotations',
)


@pytest.mark.parametrize('kind', KINDS)
def test_each_problem_is_reported_as_a_line_naming_the_file(broken, kind):
  proc, expected = broken
  path, text = expected[kind]
  lines = [line for line in proc.stdout.splitlines() if line.startswith(f'{path}: ')]
  assert lines and any(text in line for line in lines), (kind, proc.stdout)


def test_all_problems_in_one_run_with_exit_status_1(broken):
  proc, expected = broken
  assert sorted(expected) == sorted(KINDS)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  problems = [
    line
    for line in proc.stdout.splitlines()
    if ': ' in line and line.startswith('/') and ': warning: ' not in line
  ]
  assert len(problems) == len(KINDS), proc.stdout
  assert proc.stdout.splitlines()[-1] == f'FAILED: {len(KINDS)} problem(s)'


def test_max_problems_limits_the_printout(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  for video in _videos(root, 'train'):
    _set_first_verb('flying')(video.annotation_path(1))
  proc = run_module(
    'data_prep.validate',
    '--data_root',
    root,
    '--video_mode',
    'none',
    '--max_problems',
    2,
    '--jobs',
    1,
    '--noprogress',
    check=False,
  )
  assert proc.returncode == 1
  assert '... and 3 more problem(s) (--max_problems 2)' in proc.stdout
  assert sum("unknown state 'flying'" in line for line in proc.stdout.splitlines()) == 2
  assert 'FAILED: 5 problem(s)' in proc.stdout


def test_quick_mode_opens_videos_and_decodes_their_first_frame(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  garbage, cut = _videos(root, 'train')[:2]
  with open(garbage.video_path, 'wb') as f:
    f.write(b'garbage' * 100)
  data = open(cut.video_path, 'rb').read()
  with open(cut.video_path, 'wb') as f:  # the index (moov) lost its tail
    f.write(data[:-200])
  for mode in ('quick', 'full'):
    report = V.validate(root, ('train',), video_mode=mode)
    assert sorted(report.problems) == sorted(
      [
        f'{garbage.video_path}: cannot decode (Invalid data found when processing input)',
        f'{cut.video_path}: no frame decodes (the file may be truncated)',
      ]
    ), report.problems
  report = V.validate(root, ('train',), video_mode='none')
  assert report.ok and any('videos not opened' in note for note in report.notes)


def test_box_tolerance_widens_the_right_and_bottom_edges(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  video = _videos(root, 'train')[0]
  _set_human_box(3, 121)(video.annotation_path(1))
  assert V.validate(root, ('train',), video_mode='quick').problems == [
    f'{video.annotation_path(1)}: humans[0].box: {_box(video)} lies outside the 160x120 image'
  ]
  assert V.validate(root, ('train',), video_mode='quick', box_tolerance=1).ok


def _box(video):
  with open(video.annotation_path(1)) as f:
    return json.load(f)['humans'][0]['box']


def test_layout_lists_and_annotation_names_are_checked(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  lists = os.path.join(root, 'list')
  os.remove(os.path.join(lists, 'video_test_flist.csv'))
  os.remove(os.path.join(lists, 'object.txt'))
  with open(os.path.join(lists, 'body_part.txt'), 'a') as f:
    f.write('tail\n')
  video = _videos(root, 'train')[0]
  shutil.copy(video.annotation_path(1), os.path.join(video.annotation_dir, 'img_1.json'))
  os.remove(video.annotation_path(6))
  _set_first_verb('flying')(video.annotation_path(1))
  report = V.validate(root, video_mode='none')
  expect = [
    f'{os.path.join(lists, "object.txt")}: no such file',
    f'{os.path.join(lists, "video_test_flist.csv")}: no such file',
    f'{os.path.join(lists, "body_part.txt")}: expected the 10 parts',
    f'{os.path.join(video.annotation_dir, "img_1.json")}: not named img_XXXXX.json',
    f'{video.annotation_path(1)}: humans[0].parts.',
  ]
  for start in expect:  # states are still checked with body_part.txt broken
    assert any(p.startswith(start) for p in report.problems), (start, report.problems)
  assert len(report.problems) == len(expect), report.problems
  assert report.warnings == [
    f'{video.annotation_dir}: warning: scored frames without an annotation file: img_00006.json'
  ]
  assert list(report.splits) == ['train'] and report.splits['train'].videos == 5
  assert 'test: not checked (see the problem above)' in report.notes


def test_a_missing_root_or_a_bad_flag_is_one_line(tmp_path):
  proc = run_module('data_prep.validate', '--data_root', tmp_path / 'nowhere', check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip() == f'error: {tmp_path / "nowhere"}: no such folder'
  proc = run_module(
    'data_prep.validate', '--data_root', tmp_path, '--video_mode', 'fast', check=False
  )
  assert proc.returncode == 1 and proc.stderr.strip().startswith(
    'error: flag --video_mode=fast: value should be one of <full|quick|none>'
  )
