"""tps_jax.datasets.build (data_prep.build): the four datasets, the split by video, bad
input, idempotence, the command line."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.conftest import run_module
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import tfds_layout
from tps_jax.data import video as video_lib
from tps_jax.datasets import build, sources, val_split
from tps_jax.datasets import frames as frames_lib
from tps_jax.datasets import pseudo_labels as pseudo_lib

VAL_FRACTION = 0.4


def _copy(synthetic_root, tmp_path):
  root = tmp_path / 'root'
  shutil.copytree(synthetic_root, root)
  return str(root)


def _build(root, **kwargs) -> tuple[list[str], list[str]]:
  """(problems, reported lines) of build_datasets(root, **kwargs), no progress bars."""
  lines = []
  problems = build.build_datasets(root and str(root), progress=False, say=lines.append, **kwargs)
  return problems, lines


def _source(out, name, split):
  return tfds.builder_from_directory(tfds_layout.dataset_dir(out, name)).as_data_source(split)


def _videos_of(out, name, split):
  return {e['video'].decode() for e in _source(out, name, split)}


def _annotations(root):
  """{video: (action, {frame index: FrameAnnotation})} of the train split."""
  vocab = tps.Vocab.from_root(root)
  return {
    v.name: (
      v.action,
      {i: tps.load_frame(v.annotation_path(i), vocab=vocab) for i in v.annotated_frames()},
    )
    for v in tps.iter_videos(root, 'train')
  }


@pytest.fixture(scope='module')
def built(synthetic_root, tmp_path_factory):
  root = _copy(synthetic_root, tmp_path_factory.mktemp('build'))
  assert _build(root, val_fraction=VAL_FRACTION)[0] == []
  return root, os.path.join(root, 'tfds')


def test_split_by_video_is_recorded_identical_and_disjoint(built):
  root, out = built
  videos = set(_annotations(root))
  val = None
  for name in tfds_layout.TFDS_NAMES.values():
    info = tfds.builder_from_directory(tfds_layout.dataset_dir(out, name)).info
    recorded = list(info.metadata['settings']['val_videos'])
    assert val is None or recorded == val
    val = recorded
    train_videos, val_videos = _videos_of(out, name, 'train'), _videos_of(out, name, 'val')
    assert not train_videos & val_videos
    assert val_videos <= set(recorded) and train_videos <= videos - set(recorded)
  assert len(val) == round(VAL_FRACTION * len(videos))
  assert _videos_of(out, 'tps_action_clips', 'train') | set(val) == videos


def test_split_videos_is_deterministic_and_spread_over_classes():
  videos = [(f'v{i:02d}', f'class{i % 4}') for i in range(40)]
  val = val_split.split_videos(videos, 0.25, seed=3)
  assert val == val_split.split_videos(list(reversed(videos)), 0.25, seed=3)
  assert val != val_split.split_videos(videos, 0.25, seed=4)
  assert len(val) == 10
  per_class = [
    sum(1 for name, action in videos if name in val and action == c) for c in {a for _, a in videos}
  ]
  assert sorted(per_class) == [2, 2, 3, 3]
  assert val_split.split_videos(videos[:2], 0.01, seed=0) != []  # at least one val video
  assert val_split.split_videos(videos, 0.0, seed=0) == []


def test_counts_and_contents_match_the_annotations(built):
  root, out = built
  annotations = _annotations(root)
  vocab = tps.Vocab.from_root(root)
  for split in tfds_layout.SPLITS:
    videos = _videos_of(out, 'tps_action_clips', split)
    frames = [(v, i, f) for v in videos for i, f in annotations[v][1].items()]
    humans = [(v, i, h) for v, i, f in frames for h in f.humans]
    expected = {
      'tps_humans': len(frames),
      'tps_parts': len(humans),
      'tps_part_states': sum(1 for *_, h in humans if h.parts),
      'tps_action_clips': len(videos),
    }
    for name, count in expected.items():
      assert len(_source(out, name, split)) == count, (name, split)
  for example in _source(out, 'tps_humans', 'train'):
    frame = annotations[example['video'].decode()][1][example['frame']]
    np.testing.assert_array_equal(example['boxes'], [h.box for h in frame.humans])
    assert not example['ignore'].any() and (example['labels'] == 0).all()
    assert video_lib.decode_jpeg(example['image']).shape == (120, 160, 3)
  for example in _source(out, 'tps_part_states', 'val'):
    action, frames = annotations[example['video'].decode()]
    human = frames[example['frame']].humans[example['human'] - 1]
    left, top = example['crop_box'][:2]
    assert example['action'] == vocab.action_ids[action]
    for row, part in enumerate(tps.PARTS):
      assert example['part_valid'][row] == (part in human.parts)
      if part in human.parts:
        assert example['part_state'][row] == vocab.state_ids[human.parts[part].verb]
        np.testing.assert_allclose(
          example['part_boxes'][row] + [left, top, left, top], human.parts[part].box
        )
      else:
        assert example['part_state'][row] == -1
  flist = tps.read_flist(os.path.join(root, 'list', 'video_train_flist.csv'))
  for example in _source(out, 'tps_action_clips', 'val'):
    name = example['video'].decode()
    assert example['num_frames'] == len(example['frames']) == flist[name]
    assert example['label'] == vocab.action_ids[annotations[name][0]]


def test_stored_pixels_are_the_video_frames(built):
  root, out = built
  example = _source(out, 'tps_humans', 'val')[0]
  video = next(v for v in tps.iter_videos(root, 'train') if v.name == example['video'].decode())
  frames = dict(video_lib.iter_video_frames(video.video_path))
  stored = video_lib.decode_jpeg(example['image']).astype(float)
  errors = {index: np.abs(stored - frame).mean() for index, frame in frames.items()}
  assert min(errors, key=errors.get) == example['frame']
  assert errors[example['frame']] < 5.0  # JPEG loss on noisy frames


def test_state_table_follows_the_source_order(built):
  _, out = built
  directory = tfds_layout.dataset_dir(out, 'tps_part_states')
  table = tfds_layout.state_table(directory, 'train')
  source = _source(out, 'tps_part_states', 'train')
  np.testing.assert_array_equal(table, [e['part_state'] for e in source])


def test_finished_datasets_are_kept_and_settings_checked(built):
  root, out = built
  info = os.path.join(tfds_layout.dataset_dir(out, 'tps_humans'), 'dataset_info.json')
  before = os.stat(info).st_mtime_ns
  _, lines = _build(root, val_fraction=VAL_FRACTION)
  assert sum('already built' in line for line in lines) == 4
  assert os.stat(info).st_mtime_ns == before
  with pytest.raises(build.BuildError, match=r'built with other settings \(seed, val_videos\)'):
    _build(root, val_fraction=VAL_FRACTION, seed=5, datasets=['humans'])
  clips = tfds_layout.dataset_dir(out, 'tps_action_clips')
  before = os.stat(os.path.join(clips, 'dataset_info.json')).st_mtime_ns
  _, lines = _build(root, val_fraction=VAL_FRACTION, datasets=['action_clips'], overwrite=True)
  assert not any('already built' in line for line in lines)
  assert os.stat(os.path.join(clips, 'dataset_info.json')).st_mtime_ns != before


def test_command_line_reports_and_errors_are_one_line(built):
  root, out = built
  proc = run_module(
    'data_prep.build',
    '--data_root',
    root,
    '--val_fraction',
    VAL_FRACTION,
    '--datasets',
    'humans,parts',
    '--noprogress',
    subprocess_=True,
  )
  assert proc.stdout.splitlines() == [
    f'{tfds_layout.dataset_dir(out, name)}: already built, kept (--overwrite to rebuild)'
    for name in ('tps_humans', 'tps_parts')
  ]
  for args, message in [
    (
      ('--data_root', root, '--seed', 5, '--datasets', 'humans'),
      f'error: {tfds_layout.dataset_dir(out, "tps_humans")}: built with other settings',
    ),
    (
      ('--data_root', root, '--datasets', 'humans,faces'),
      'error: datasets: unknown dataset(s) faces; choose from humans,parts,',
    ),
    (
      (
        '--datasets',
        'humans',
      ),
      'error: flags data_root=None, video_folder=None: Exactly one '
      'of (data_root, video_folder) must have a value',
    ),
  ]:
    proc = run_module('data_prep.build', *args, '--noprogress', check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
  'arguments, message',
  [
    ({'val_fraction': 1.0}, 'val_fraction=1.0: must be in [0, 1)'),
    ({'jobs': 0}, 'jobs=0: must be at least 1'),
    ({'jpeg_quality': 0}, 'jpeg_quality=0: must be in 1..100'),
    ({'pseudo_low': 0.5}, 'pseudo_low=0.5, pseudo_positive=0.4: need 0 <= pseudo_low'),
    ({'name': 'clips'}, 'name=clips: only for video_folder'),
    ({'video_folder': 'v'}, 'give one dataset source'),
  ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, arguments, message):
  with pytest.raises(build.BuildError) as error:
    build.build_datasets(str(tmp_path), **arguments)
  assert str(error.value).startswith(message)


def _count(out, name):
  return sum(
    len(_source(out, name, split))
    for split in tfds_layout.SPLITS
    if split in tfds.builder_from_directory(tfds_layout.dataset_dir(out, name)).info.splits
  )


def test_corrupt_json_stops_or_is_skipped_and_counted(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  video = next(tps.iter_videos(root, 'train'))
  bad = video.annotation_path(video.annotated_frames()[0])
  with open(bad) as f:
    text = f.read()
  with open(bad, 'w') as f:
    f.write(text[: len(text) // 2])
  total = sum(len(v.annotated_frames()) for v in tps.iter_videos(root, 'train'))
  with pytest.raises(tps.AnnotationError) as error:
    _build(root, datasets=['humans'])
  assert str(error.value).startswith(f'{bad}: truncated JSON')
  assert not tfds_layout.is_built(os.path.join(root, 'tfds'), 'tps_humans')
  problems, _ = _build(root, datasets=['humans'], keep_going=True)
  assert len(problems) == 1 and problems[0].startswith(f'{bad}: truncated JSON')
  assert _count(os.path.join(root, 'tfds'), 'tps_humans') == total - 1


def test_undecodable_video_stops_or_is_skipped_and_counted(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  videos = list(tps.iter_videos(root, 'train'))
  with open(videos[0].video_path, 'wb') as f:
    f.write(b'\x00not an mp4' * 100)
  # A second fault found only while decoding: an annotation past the video's last frame.
  late = videos[1]
  shutil.copy(late.annotation_path(late.annotated_frames()[-1]), late.annotation_path(31))
  flist = os.path.join(root, 'list', 'video_train_flist.csv')
  with open(flist) as f:
    text = f.read()
  with open(flist, 'w') as f:
    f.write(text.replace(f'{late.name},{late.num_frames}', f'{late.name},40'))
  with pytest.raises(video_lib.VideoError) as error:
    _build(root, datasets=['action_clips'])
  assert str(error.value).startswith(f'{videos[0].video_path}: cannot open video')
  problems, _ = _build(
    root, datasets=['humans', 'action_clips'], keep_going=True, jobs=2
  )  # problems found in workers too
  assert len(problems) == 2
  assert any(p.startswith(f'{videos[0].video_path}: cannot open video') for p in problems)
  assert f'{late.video_path}: the video ends before annotated frame 31' in '\n'.join(problems)
  out = os.path.join(root, 'tfds')
  assert _count(out, 'tps_action_clips') == len(videos) - 1  # the late one decodes fine
  assert _count(out, 'tps_humans') == sum(len(v.annotated_frames()) for v in videos[2:])


def test_video_folder_builds_an_action_clip_dataset(synthetic_root, tmp_path):
  folder = tmp_path / 'videos'
  videos = list(tps.iter_videos(str(synthetic_root), 'train'))
  for i, video in enumerate(videos):
    os.makedirs(folder / f'class_{i % 2}', exist_ok=True)
    shutil.copy(video.video_path, folder / f'class_{i % 2}' / f'clip{i}.mp4')
  _build(None, video_folder=str(folder), name='my_videos', val_fraction=0.4)
  out = str(folder / 'tfds')
  info = tfds.builder_from_directory(tfds_layout.dataset_dir(out, 'my_videos')).info
  assert list(info.metadata['actions']) == ['class_0', 'class_1']
  examples = [e for split in tfds_layout.SPLITS for e in _source(out, 'my_videos', split)]
  assert sorted(e['video'].decode() for e in examples) == [f'clip{i}' for i in range(len(videos))]
  assert all(e['label'] == int(e['video'].decode()[4:]) % 2 for e in examples)
  _, lines = _build(None, video_folder=str(folder), name='my_videos', val_fraction=0.4)
  assert 'already built' in lines[0]  # tfds/ inside is not a class


def test_frames_dir_is_read_instead_of_the_video(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  video = next(tps.iter_videos(root, 'train'))
  frames = tmp_path / 'frames' / video.action / video.name
  os.makedirs(frames)
  for index in range(1, video.num_frames + 1):
    (frames / f'img_{index:05d}.jpg').write_bytes(
      video_lib.encode_jpeg(np.full((120, 160, 3), 200, np.uint8))
    )
  _build(root, datasets=['humans'], val_fraction=0, frames_dir=str(tmp_path / 'frames'))
  for example in _source(os.path.join(root, 'tfds'), 'tps_humans', 'train'):
    mean = video_lib.decode_jpeg(example['image']).mean()
    assert (abs(mean - 200) < 2) == (example['video'].decode() == video.name)


def test_extract_frames_output_feeds_build(synthetic_root, tmp_path):
  """extract_frames' <out>/<split>/<class>/<video> layout is found; resized frames are
  refused (their pixels no longer match the boxes)."""
  root = _copy(synthetic_root, tmp_path)
  assert frames_lib.extract(root, splits=('train',)).ok
  _build(
    root,
    datasets=['humans', 'action_clips'],
    val_fraction=0,
    frames_dir=os.path.join(root, 'frames'),
  )
  video = next(tps.iter_videos(root, 'train'))
  assert sources.find_frames_dir(os.path.join(root, 'frames'), video.action, video.name) is not None
  resized = os.path.join(tmp_path, 'resized')
  assert frames_lib.extract(root, resized, splits=('train',), short_side=60).ok
  with pytest.raises(tps.AnnotationError, match=r'extract_frames.json: .*short_side=60'):
    _build(root, datasets=['humans'], overwrite=True, frames_dir=resized)


def test_pseudo_labels_add_positive_and_ignore_boxes_to_train_humans(synthetic_root, tmp_path):
  root = _copy(synthetic_root, tmp_path)
  annotations = _annotations(root)
  val = val_split.split_videos([(v, a) for v, (a, _) in annotations.items()], 0.4, 0)
  video, index, number, human = next(
    (v, i, n + 1, h)
    for v, (_, frames) in sorted(annotations.items())
    if v not in val
    for i, f in frames.items()
    for n, h in enumerate(f.humans)
    if len(h.parts) <= 8
  )
  missing = [p for p in tps.PARTS if p not in human.parts][:2]
  x1, y1, x2, y2 = human.box
  box = [x1 + 1, y1 + 1, x1 + 6, y1 + 6]
  pseudo = {
    video: {
      tps.frame_name(index): {
        str(number): {
          missing[0]: [{'box': box, 'score': 0.9}, {'box': box, 'score': 0.05}],
          missing[1]: {'box': box, 'score': 0.25},
          next(iter(human.parts)): [{'box': box, 'score': 0.99}],
        }
      }
    }
  }
  path = tmp_path / 'pseudo.json'
  path.write_text(json.dumps(pseudo))
  _, lines = _build(root, datasets=['parts'], val_fraction=0.4, pseudo_labels=str(path))
  assert 'pseudo-labels: 1 humans of annotated train frames' in lines[0]
  example = next(
    e
    for e in _source(os.path.join(root, 'tfds'), 'tps_parts', 'train')
    if e['video'].decode() == video and e['frame'] == index and e['human'] == number
  )
  count = len(human.parts)
  assert len(example['boxes']) == count + 2 and not example['ignore'][:count].any()
  labels = [tps.PARTS[i] for i in example['labels'][count:]]
  assert labels == missing and example['ignore'][count:].tolist() == [False, True]
  left, top = example['crop_box'][:2]
  np.testing.assert_allclose(example['boxes'][count] + [left, top, left, top], box)


def test_pseudo_label_file_errors_name_the_file_and_entry(tmp_path):
  path = tmp_path / 'pseudo.json'
  path.write_text(
    '{"v": {"img_00001.json": {"1": {"left_arm": {"box": [1, 2, 0, 4], "score": 0.5}}}}}'
  )
  with pytest.raises(
    tps.AnnotationError,
    match=r'pseudo.json: v/img_00001.json/1/left_arm: '
    'box must be',
  ):
    pseudo_lib.load_pseudo_labels(str(path))
  path.write_text('{"v": {"frame1": {}}}')
  with pytest.raises(tps.AnnotationError, match='frame key must look like img_00006.json'):
    pseudo_lib.load_pseudo_labels(str(path))
  path.write_text('{"v": ')
  with pytest.raises(tps.AnnotationError, match='pseudo.json: not valid JSON'):
    pseudo_lib.load_pseudo_labels(str(path))


def test_pseudo_part_boxes_thresholds():
  annotated = {'head': tps.Part(box=(0, 0, 1, 1), verb='none')}
  proposals = {
    'head': [((0, 0, 5, 5), 0.99)],
    'torso': [((1, 1, 2, 2), 0.41), ((1, 1, 3, 3), 0.4), ((1, 1, 4, 4), 0.1), ((1, 1, 5, 5), 0.09)],
  }
  assert pseudo_lib.pseudo_part_boxes(annotated, proposals) == [
    ('torso', (1, 1, 2, 2), False),
    ('torso', (1, 1, 3, 3), True),
    ('torso', (1, 1, 4, 4), True),
  ]
