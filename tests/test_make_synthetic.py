"""tps_jax.datasets.synthetic (data_prep.make_synthetic): layout, videos, boxes, vocabulary,
ground truth, determinism, resume, the command line."""

import copy
import filecmp
import os
import shutil

import av
import numpy as np
import pytest

from tests.conftest import run_module
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.datasets import synthetic
from tps_jax.datasets import synthetic_render as render
from tps_jax.metrics import score

ARGS = {'videos': 6, 'frames': 12, 'seed': 0}  # as tests/conftest.py
WIDTH, HEIGHT = 160, 120


def _files(root):
  return sorted(
    os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
  )


def test_help():
  out = run_module('data_prep.make_synthetic', '--help', check=False).stdout
  for flag in (
    '--out',
    '--videos',
    '--frames',
    '--seed',
    '--size',
    '--actions',
    '--test_fraction',
    '--jobs',
    '--[no]progress',
  ):
    assert flag in out


@pytest.mark.parametrize(
  'arguments, message',
  [
    ({'size': (161, 120)}, 'size=161x120: width >= 64 and height >= 48, both even'),
    ({'actions': 99}, 'actions=99: must be in 1..'),
    ({'test_fraction': 1.0}, 'test_fraction=1.0: must be in [0, 1)'),
    ({'videos': 0}, 'videos=0: must be positive'),
    ({'jobs': 0}, 'jobs=0: must be at least 1'),
  ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, arguments, message):
  with pytest.raises(synthetic.SyntheticError) as error:
    synthetic.write_synthetic(str(tmp_path / 'a'), **arguments)
  assert str(error.value).startswith(message)
  assert not (tmp_path / 'a').exists()


def test_command_line_errors_are_one_line(tmp_path):
  for args, message in [
    (
      ('--out', tmp_path / 'a', '--size', '160by120'),
      'error: flag --size=160by120: must look like 160x120 (WxH)',
    ),
    (('--out', tmp_path / 'a', '--size', '161x120'), 'error: size=161x120: width >= 64'),
    (('--videos', 2), 'error: flag --out=None: Flag --out must have a value other than None.'),
  ]:
    proc = run_module('data_prep.make_synthetic', *args, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_layout_is_complete(synthetic_root):
  root = synthetic_root
  lists = root / 'list'
  assert tps.read_list(str(lists / 'body_part.txt')) == list(tps.PARTS)
  assert tps.read_list(str(lists / 'part_stat.txt')) == list(render.STATES)
  assert tps.read_list(str(lists / 'object.txt')) == list(render.OBJECTS)
  actions = sorted(list(synthetic.ACTIONS)[:6])
  for split in tps.SPLITS:
    assert sorted(os.listdir(root / f'{split}_videos')) == actions
    assert sorted(os.listdir(root / f'{split}_annotations')) == actions
  train = tps.read_flist(str(lists / 'video_train_flist.csv'))
  test = tps.read_flist(str(lists / 'video_test_flist.csv'))
  assert len(train) == 5 and len(test) == 1 and not set(train) & set(test)
  assert (lists / 'video_train_flist.csv').read_text().startswith('video_name,num_frames\n')
  for name, frames in {**train, **test}.items():
    assert len(name) == len('Y0-KQvJjKAw_000057_000067') and 10 <= frames <= 12
    start, end = name.split('_')[-2:]
    assert int(end) == int(start) + 10
  assert sorted(os.listdir(root / 'test_gt')) == sorted(submission.GT_FILES)
  assert not [f for f in _files(root) if '.tmp-' in f]


def test_videos_decode_with_the_frame_counts_of_the_csv(synthetic_root):
  for split in tps.SPLITS:
    for video in tps.iter_videos(str(synthetic_root), split):
      with av.open(video.video_path) as container:
        frames = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
      assert len(frames) == video.num_frames
      assert frames[0].shape == (HEIGHT, WIDTH, 3) and frames[0].std() > 10


def test_annotations_are_valid_tight_boxes_with_listed_names(synthetic_root):
  vocab = tps.Vocab.from_root(str(synthetic_root))
  seen_states, num_humans, num_objects = set(), 0, 0
  for split in tps.SPLITS:
    for video in tps.iter_videos(str(synthetic_root), split):
      for index in video.annotated_frames():
        frame = tps.load_frame(
          video.annotation_path(index), vocab=vocab, image_size=(WIDTH, HEIGHT)
        )
        assert frame.humans, 'the main actor is always visible'
        assert len({h.number for h in frame.humans}) == len(frame.humans)
        for human in frame.humans:
          num_humans += 1
          _assert_pixel_box(human.box)
          assert human.parts and set(human.parts) <= set(tps.PARTS)
          for part in human.parts.values():
            _assert_pixel_box(part.box)
            hx1, hy1, hx2, hy2 = human.box
            x1, y1, x2, y2 = part.box
            assert hx1 <= x1 and hy1 <= y1 and x2 <= hx2 and y2 <= hy2
            seen_states.add(part.verb)
        for obj in frame.objects:
          num_objects += 1
          _assert_pixel_box(obj.box)
          assert obj.name in vocab.objects
  assert num_humans >= 6 * 2 and num_objects >= 1
  assert len(seen_states) >= 4


def _assert_pixel_box(box):
  x1, y1, x2, y2 = box
  assert all(isinstance(v, int) for v in box)
  assert 0 <= x1 < x2 <= WIDTH - 1 and 0 <= y1 < y2 <= HEIGHT - 1


def test_ground_truth_validates_and_scores_one_against_itself(synthetic_root):
  gt_vid, gt_part = submission.load_pair(str(synthetic_root / 'test_gt'), 'gt')
  vocab = tps.Vocab.from_root(str(synthetic_root))
  assert submission.validate(gt_vid, gt_part, kind='gt', actions=vocab.actions) == []
  assert gt_vid == {v.name: v.action for v in tps.iter_videos(str(synthetic_root), 'test')}
  assert gt_part == tps.ground_truth(str(synthetic_root), 'test')[1]
  pred_part = copy.deepcopy(gt_part)
  for frames in pred_part.values():
    for frame in frames.values():
      for human in frame['humans']:
        for part in human['parts'].values():
          part['box'], part['verb'] = [part['box']], [part['verb']]
  assert submission.validate(gt_vid, pred_part, kind='pred') == []
  report = score.challenge_score(gt_vid, gt_part, dict(gt_vid), pred_part)
  assert set(report.psc.values()) == {1.0} and all(report.correct.values())
  # A perfect submission: the area sums thresholds k / 10000 for k = 1..9999 only.
  assert report.score_rounded == 0.9999 and not report.warnings


def test_same_seed_same_bytes_other_seed_other_data(synthetic_root, tmp_path):
  proc = run_module(
    'data_prep.make_synthetic',
    '--out',
    tmp_path / 'again',
    '--videos',
    6,
    '--frames',
    12,
    '--seed',
    0,
    '--jobs',
    2,
    '--noprogress',
    subprocess_=True,
  )
  assert proc.stdout == f'{tmp_path / "again"}: 5 train and 1 test videos, 6 actions, 160x120\n'
  files = _files(synthetic_root)
  assert files == _files(tmp_path / 'again')
  match, mismatch, errors = filecmp.cmpfiles(
    synthetic_root, tmp_path / 'again', files, shallow=False
  )
  assert not mismatch and not errors and len(match) == len(files)
  synthetic.write_synthetic(str(tmp_path / 'other'), videos=2, frames=6, seed=1, progress=False)
  other = tps.read_flist(str(tmp_path / 'other/list/video_train_flist.csv'))
  assert not set(other) & set(tps.read_flist(str(synthetic_root / 'list/video_train_flist.csv')))


def test_resume_redoes_only_unfinished_videos(synthetic_root, tmp_path):
  root = tmp_path / 'root'
  shutil.copytree(synthetic_root, root)
  first, second = list(tps.iter_videos(str(root), 'train'))[:2]
  os.remove(first.video_path)  # killed before the video was renamed
  os.remove(root / 'list' / 'video_train_flist.csv')
  stale = os.path.join(os.path.dirname(second.video_path), f'.tmp-{second.name}.mp4')
  with open(stale, 'wb') as f:
    f.write(b'half a video')
  untouched = os.stat(second.video_path).st_mtime_ns
  summary = synthetic.write_synthetic(str(root), **ARGS, progress=False)
  assert len(summary.plans) == 6 and summary.actions == tuple(synthetic.ACTIONS)[:6]
  files = _files(synthetic_root)
  assert _files(root) == files
  assert not filecmp.cmpfiles(synthetic_root, root, files, shallow=False)[1]
  assert os.stat(second.video_path).st_mtime_ns == untouched
  with pytest.raises(synthetic.SyntheticError, match='made with other arguments'):
    synthetic.write_synthetic(str(root), **dict(ARGS, seed=1), progress=False)


def test_every_state_is_its_own_prototype_and_every_state_is_used():
  for kind, prototypes in render.PROTOTYPES.items():
    part = {'head': 'head', 'torso': 'torso'}.get(kind, f'left_{kind}')
    for state in prototypes:
      pose = np.zeros(len(render.POSE_FIELDS))
      for field, value in render.prototype_values(part, state).items():
        pose[render.FIELD[field]] = -value if field in ('torso', 'head_yaw') else value
      assert render.state_of(part, pose, {}) == state
  declared = {'none'}  # every unnamed slot
  for _, keyframes in list(synthetic.ACTIONS.values())[:6]:
    for spec in keyframes:
      declared |= {v[0] if isinstance(v, tuple) else v for k, v in spec.items() if k != 'lift'}
  assert declared == set(render.STATES)


def test_people_cut_by_the_border_or_an_occluder_keep_tight_boxes_inside():
  rng = np.random.default_rng(0)
  pose = np.zeros(len(render.POSE_FIELDS))
  for part in tps.PARTS:
    if render.part_kind(part) != 'hand':
      for field, value in render.prototype_values(part, 'none').items():
        pose[render.FIELD[field]] = value
  hands = {'left': 'none', 'right': 'none'}
  layer = render.render_person(
    pose, hands, (), render.random_look(rng), x=2.0, ground=110, height=90
  )
  frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
  (seen,) = render.visible_boxes(render.composite(frame, [layer]), [layer])
  assert 'right_arm' not in seen.parts and 'right_hand' not in seen.parts
  assert {'head', 'torso', 'left_arm', 'left_leg'} <= set(seen.parts)
  for box in [seen.box, *seen.parts.values()]:
    _assert_pixel_box(box)
  assert seen.box[0] == 0
  # A pole over the person's left half (image right of x=10) hides the left limbs.
  layer = render.render_person(
    pose, hands, (), render.random_look(rng), x=80.0, ground=110, height=90
  )
  pole = np.zeros((HEIGHT, WIDTH), bool)
  pole[:, 83:] = True
  owner = render.composite(frame, [layer], pole, np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  (seen,) = render.visible_boxes(owner, [layer])
  assert not {'left_arm', 'left_hand', 'left_foot'} & set(seen.parts)
  assert {'right_arm', 'right_hand', 'head'} <= set(seen.parts)
  assert seen.box[2] <= 82 and all(b[2] <= 82 for b in seen.parts.values())
