"""The Kinetics-TPS reader: lists, flists, frame annotations (every error case), videos."""

import json
import os
import shutil

import pytest

from tps_jax.data import kinetics_tps as tps

GOOD_FRAME = {
  'humans': [
    {
      'number': 1,
      'id': 'track-7',
      'box': [10, 20, 60, 110],
      'parts': {
        'head': {'number': 1, 'box': [30, 20, 45, 35], 'verb': 'nod', 'name': 'head'},
        'left_arm': {
          'number': 2,
          'box': [45.5, 40, 60, 70.25],
          'verb': 'bend',
          'name': 'left_arm',
          'attributes': {'occluded': False},
        },
      },
    }
  ],
  'objects': [{'number': 1, 'box': [50, 60, 70, 80], 'name': 'cup', 'human': 1}],
  'image': 'img_00001.jpg',
}
VOCAB = tps.Vocab(
  parts=tps.PARTS,
  states=('none', 'others', 'bend', 'nod'),
  actions=('drinking',),
  objects=('none', 'cup'),
)


def _write(tmp_path, obj, name='img_00001.json'):
  path = tmp_path / name
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(path)


def _edit(**changes):
  """GOOD_FRAME with paths like 'humans.0.parts.head.box' replaced (None: deleted)."""
  frame = json.loads(json.dumps(GOOD_FRAME))
  for dotted, value in changes.items():
    *keys, last = [int(k) if k.isdigit() else k for k in dotted.split('__')]
    node = frame
    for k in keys:
      node = node[k]
    if value is None:
      del node[last]
    else:
      node[last] = value
  return frame


def test_parts_flip_and_sampled_frames():
  assert len(tps.PARTS) == 10 and tps.PARTS[0] == 'head'
  flipped = [tps.PARTS[i] for i in tps.FLIP_PARTS]
  assert flipped[tps.PARTS.index('left_arm')] == 'right_arm'
  assert flipped[tps.PARTS.index('torso')] == 'torso'
  assert [tps.FLIP_PARTS[i] for i in tps.FLIP_PARTS] == list(range(10))
  assert tps.sampled_frames(12) == [1, 6, 11]
  assert tps.sampled_frames(1) == [1] and tps.sampled_frames(5) == [1]
  assert tps.sampled_frames(6) == [1, 6] and tps.sampled_frames(0) == []
  assert tps.frame_name(6) == 'img_00006.json' and tps.frame_name(6, '.jpg') == 'img_00006.jpg'


def test_read_list(tmp_path):
  (tmp_path / 'a.txt').write_text('none\n\nbend \nstep_on\n')
  assert tps.read_list(str(tmp_path / 'a.txt')) == ['none', 'bend', 'step_on']
  (tmp_path / 'b.txt').write_text('0 none\n1 bend\n2 step on\n')
  assert tps.read_list(str(tmp_path / 'b.txt')) == ['none', 'bend', 'step on']
  (tmp_path / 'c.txt').write_text('none\nbend\n\nnone\n')
  with pytest.raises(tps.AnnotationError, match=r"c.txt: line 4: duplicate name 'none'"):
    tps.read_list(str(tmp_path / 'c.txt'))
  with pytest.raises(tps.AnnotationError, match=r'missing.txt: no such file'):
    tps.read_list(str(tmp_path / 'missing.txt'))


@pytest.mark.parametrize(
  'text',
  [
    'video_name,num_frames\nY0-KQvJjKAw_000057_000067,300\n-abc_000001_000011,250\n',
    'Y0-KQvJjKAw_000057_000067,300\n-abc_000001_000011,250\n',
    'num_frames,video\n300,Y0-KQvJjKAw_000057_000067\n250,-abc_000001_000011\n',
    'train/Y0-KQvJjKAw_000057_000067.mp4 300 3\ntrain/-abc_000001_000011.mp4 250 0\n',
    'Y0-KQvJjKAw_000057_000067\t300\n\n-abc_000001_000011\t250\n',
    'class,video,frames\nrun,Y0-KQvJjKAw_000057_000067,300\nrun,-abc_000001_000011,250\n',
  ],
)
def test_read_flist_formats(tmp_path, text):
  (tmp_path / 'f.csv').write_text(text)
  assert tps.read_flist(str(tmp_path / 'f.csv')) == {
    'Y0-KQvJjKAw_000057_000067': 300,
    '-abc_000001_000011': 250,
  }


@pytest.mark.parametrize(
  'text, problem',
  [
    ('a_000001_000011,0\n', 'line 1: frame count must be positive'),
    ('a_000001_000011,10\na_000001_000011,12\n', 'line 2: a_000001_000011 listed twice'),
    ('video,frames\na_000001_000011,\n', 'line 2: no frame count'),
  ],
)
def test_read_flist_errors_name_file_and_line(tmp_path, text, problem):
  (tmp_path / 'f.csv').write_text(text)
  with pytest.raises(tps.AnnotationError, match=f'f.csv: {problem}'):
    tps.read_flist(str(tmp_path / 'f.csv'))


def test_load_frame_accepts_extra_keys_and_round_trips(tmp_path):
  frame = tps.load_frame(_write(tmp_path, GOOD_FRAME), vocab=VOCAB, image_size=(160, 120))
  (human,) = frame.humans
  assert human.box == (10, 20, 60, 110) and human.number == 1
  assert list(human.parts) == ['head', 'left_arm']
  assert human.parts['left_arm'] == tps.Part(box=(45.5, 40, 60, 70.25), verb='bend', number=2)
  assert frame.objects == (tps.ObjectBox(box=(50, 60, 70, 80), name='cup', number=1),)
  as_json = tps.frame_to_json(frame)
  assert as_json['humans'][0]['parts']['head'] == GOOD_FRAME['humans'][0]['parts']['head']
  assert tps.parse_frame(as_json, vocab=VOCAB) == frame
  assert 'objects' not in tps.frame_to_json(frame, objects=False)


def test_objects_keyed_by_id_are_read(tmp_path):
  frame = tps.load_frame(
    _write(tmp_path, _edit(objects={'3': {'box': [1, 2, 3, 4], 'name': 'cup'}}))
  )
  assert frame.objects == (tps.ObjectBox(box=(1, 2, 3, 4), name='cup', number=3),)


_H = 'humans__0__'
_HEAD = _H + 'parts__head__'


@pytest.mark.parametrize(
  'content, problem',
  [
    ('{"humans": [{"box": [1, 2, 3, 4], "parts": {}}', 'truncated JSON'),
    ('{"humans": [}', 'not valid JSON'),
    ('', 'truncated JSON'),
    ([1, 2], 'top level must be an object'),
    ({'objects': []}, "missing 'humans'"),
    (_edit(humans={'a': 1}), 'humans: must be a list'),
    (_edit(humans=[7]), 'humans[0]: must be an object'),
    (_edit(**{_H + 'box': None}), 'humans[0].box: missing'),
    (_edit(**{_H + 'box': [1, 2, 3]}), 'humans[0].box: must be 4 numbers'),
    (_edit(**{_H + 'box': [1, 2, '3', 4]}), 'humans[0].box: must hold numbers'),
    (_edit(**{_H + 'box': [1, 2, True, 4]}), 'humans[0].box: must hold numbers'),
    (_edit(**{_H + 'box': [1, 2, float('nan'), 4]}), 'humans[0].box: is not finite'),
    (_edit(**{_H + 'box': [1, 2, float('inf'), 4]}), 'humans[0].box: is not finite'),
    (_edit(**{_H + 'box': [60, 20, 10, 110]}), 'humans[0].box: is inverted or empty'),
    (_edit(**{_H + 'box': [10, 20, 10, 110]}), 'humans[0].box: is inverted or empty'),
    (
      _edit(**{_H + 'box': [10, 20, 200, 110]}),
      'humans[0].box: [10, 20, 200, 110] lies outside the 160x120 image',
    ),
    (_edit(**{_H + 'number': 'x'}), 'humans[0].number: must be an integer'),
    (_edit(**{_H + 'parts': None}), 'humans[0].parts: missing'),
    (_edit(**{_H + 'parts': [1]}), 'humans[0].parts: must map part names'),
    (
      _edit(**{_H + 'parts__tail': {'box': [1, 2, 3, 4], 'verb': 'none'}}),
      "humans[0].parts.tail: unknown part name 'tail'",
    ),
    (_edit(**{_HEAD[:-2]: 'x'}), 'humans[0].parts.head: must be an object'),
    (_edit(**{_HEAD + 'box': None}), 'humans[0].parts.head.box: missing'),
    (_edit(**{_HEAD + 'box': [30, 35, 45, 20]}), 'humans[0].parts.head.box: is inverted'),
    (_edit(**{_HEAD + 'box': [30, 20, float('nan'), 35]}), 'parts.head.box: is not finite'),
    (_edit(**{_HEAD + 'verb': None}), 'humans[0].parts.head.verb: missing'),
    (_edit(**{_HEAD + 'verb': 3}), 'humans[0].parts.head.verb: must be a state name'),
    (_edit(**{_HEAD + 'verb': 'fly'}), "humans[0].parts.head.verb: unknown state 'fly'"),
    (_edit(**{_HEAD + 'name': 'torso'}), "humans[0].parts.head.name: 'torso' differs"),
    (_edit(objects={'box': 1}), 'objects[0]: must be an object'),
    (_edit(objects=7), 'objects: must be a list'),
    (_edit(objects__0__name='car'), "objects[0].name: unknown object 'car'"),
    (_edit(objects__0__box=[5, 5, 1, 1]), 'objects[0].box: is inverted'),
  ],
)
def test_every_malformed_annotation_is_one_line_naming_file_and_field(tmp_path, content, problem):
  path = _write(tmp_path, content)
  with pytest.raises(tps.AnnotationError) as error:
    tps.load_frame(path, vocab=VOCAB, image_size=(160, 120))
  message = str(error.value)
  assert message.startswith(f'{path}: ') and problem in message and '\n' not in message
  problems = []
  tps.load_frame(path, vocab=VOCAB, image_size=(160, 120), problems=problems)
  assert len(problems) == 1 and problems[0] == message


def test_missing_file_is_named(tmp_path):
  path = str(tmp_path / 'img_00006.json')
  with pytest.raises(tps.AnnotationError, match=r'img_00006.json: no such file'):
    tps.load_frame(path)
  problems = []
  assert tps.load_frame(path, problems=problems) is None
  assert problems == [f'{path}: no such file']


def test_keep_going_drops_only_the_malformed_units_and_reports_each(tmp_path):
  frame = _edit(**{_HEAD + 'verb': 'fly'})
  frame['humans'].append({'number': 2, 'box': [5, 5, 1, 1], 'parts': {}})
  frame['humans'].append(
    {'number': 3, 'box': [0, 0, 9, 9], 'parts': {'torso': {'box': [1, 1, 5, 5], 'verb': 'none'}}}
  )
  path = _write(tmp_path, frame)
  problems = []
  result = tps.load_frame(path, vocab=VOCAB, problems=problems)
  assert [h.number for h in result.humans] == [1, 3]
  assert list(result.humans[0].parts) == ['left_arm']
  assert len(problems) == 2 and all(p.startswith(f'{path}: humans[') for p in problems)
  assert "unknown state 'fly'" in problems[0] and 'humans[1].box' in problems[1]
  summary = tps.format_problems(problems, limit=1)
  assert summary.splitlines()[-2:] == [
    '... and 1 more',
    '2 problem(s); the items named were skipped',
  ]


def test_vocab_from_synthetic_root(synthetic_root):
  vocab = tps.Vocab.from_root(str(synthetic_root))
  lists = synthetic_root / 'list'
  assert vocab.parts == tps.PARTS
  assert vocab.states == tuple((lists / 'part_stat.txt').read_text().split())
  assert {'none', 'others'} <= set(vocab.states)
  assert vocab.objects == tuple((lists / 'object.txt').read_text().split())
  assert list(vocab.actions) == sorted(os.listdir(synthetic_root / 'train_videos'))
  assert (
    vocab.state_ids[vocab.states[3]] == 3
    and vocab.action_ids[vocab.actions[-1]] == len(vocab.actions) - 1
  )


def test_vocab_rejects_a_wrong_body_part_list(synthetic_root, tmp_path):
  root = tmp_path / 'root'
  shutil.copytree(synthetic_root / 'list', root / 'list')
  (root / 'train_videos' / 'run').mkdir(parents=True)
  (root / 'list' / 'body_part.txt').write_text('head\ntail\n')
  with pytest.raises(tps.AnnotationError, match=r'body_part.txt: expected the 10 parts'):
    tps.Vocab.from_root(str(root))


def test_iter_videos_on_the_synthetic_set(synthetic_root):
  root = str(synthetic_root)
  vocab = tps.Vocab.from_root(root)
  for split in tps.SPLITS:
    flist = tps.read_flist(os.path.join(root, 'list', f'video_{split}_flist.csv'))
    videos = list(tps.iter_videos(root, split))
    assert [v.name for v in videos] == sorted(flist)
    for video in videos:
      assert video.action in vocab.actions and video.num_frames == flist[video.name]
      assert video.video_path == os.path.join(
        root, f'{split}_videos', video.action, f'{video.name}.mp4'
      )
      assert video.annotation_dir == os.path.join(
        root, f'{split}_annotations', video.action, video.name, video.name
      )
      assert video.annotated_frames() == tps.sampled_frames(video.num_frames)
      for index in video.annotated_frames():
        tps.load_frame(video.annotation_path(index), vocab=vocab)


def test_iter_videos_reports_missing_and_unlisted_videos(synthetic_root, tmp_path):
  root = tmp_path / 'root'
  shutil.copytree(synthetic_root, root)
  first, second, *_ = tps.iter_videos(str(root), 'train')
  os.remove(first.video_path)
  shutil.copy(
    second.video_path,
    os.path.join(os.path.dirname(second.video_path), 'zzzzzzzzzzz_000001_000011.mp4'),
  )
  shutil.rmtree(os.path.dirname(second.annotation_dir))
  with pytest.raises(tps.AnnotationError, match=rf'{first.name}: listed but no video file'):
    list(tps.iter_videos(str(root), 'train'))
  problems = []
  videos = list(tps.iter_videos(str(root), 'train', problems=problems))
  assert len(videos) == len(tps.read_flist(str(root / 'list/video_train_flist.csv'))) - 2
  assert len(problems) == 3
  assert any('video_train_flist.csv: ' in p and 'listed but no video file' in p for p in problems)
  assert any(p.startswith(second.annotation_dir + ': no such annotation folder') for p in problems)
  assert any('zzzzzzzzzzz_000001_000011.mp4: not listed in' in p for p in problems)


def test_single_nested_annotation_folders_are_read(synthetic_root, tmp_path):
  root = tmp_path / 'root'
  shutil.copytree(synthetic_root, root)
  video = next(tps.iter_videos(str(root), 'train'))
  outer = os.path.dirname(video.annotation_dir)
  os.rename(video.annotation_dir, outer + '.inner')
  os.rmdir(outer)
  os.rename(outer + '.inner', outer)
  assert next(tps.iter_videos(str(root), 'train')).annotation_dir == outer


def test_ground_truth_of_an_annotated_split(synthetic_root, tmp_path):
  vid, part = tps.write_ground_truth(str(synthetic_root), 'train', str(tmp_path))
  videos = list(tps.iter_videos(str(synthetic_root), 'train'))
  assert vid == {v.name: v.action for v in videos}
  for v in videos:
    assert list(part[v.name]) == [tps.frame_name(i) for i in tps.sampled_frames(v.num_frames)]
  assert json.loads((tmp_path / 'gt_part_result.json').read_text()) == part
  frame = next(iter(next(iter(part.values())).values()))
  assert set(frame) == {'humans'}
  shutil.copytree(synthetic_root, tmp_path / 'copy')
  shutil.rmtree(tmp_path / 'copy' / 'test_annotations')
  with pytest.raises(
    tps.AnnotationError,
    match=r'test_annotations: no such folder; the test '
    r'split has no ground truth',
  ):
    tps.ground_truth(str(tmp_path / 'copy'), 'test')
