"""python -m tps_jax.visualize: a prediction drawn as a contact sheet, a GIF and an MP4.

The prediction is the synthetic ground truth in the submission format, so every part
box drawn is a known box whose outline must carry its part's colour.
"""

import copy

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_module
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.metrics import drawing

SCALE = 2
SCORED_FRAMES = 3  # the fixture's 12 frames: 1, 6, 11


def as_prediction(gt_part: dict) -> dict:
  """A ground-truth part result in the prediction schema (one proposal per part)."""
  return {
    video: {
      key: {
        'humans': [
          dict(
            human,
            parts={
              name: dict(part, box=[part['box']], verb=[part['verb']])
              for name, part in human['parts'].items()
            },
          )
          for human in frame['humans']
        ]
      }
      for key, frame in frames.items()
    }
    for video, frames in gt_part.items()
  }


@pytest.fixture(scope='module')
def prediction(synthetic_root, tmp_path_factory):
  """(pred dir, GT dir, a video with humans in frame 1, its predicted part frames)."""
  gt_dir = tmp_path_factory.mktemp('gt')
  gt_vid, gt_part = tps.write_ground_truth(synthetic_root, 'train', gt_dir)
  pred_part = as_prediction(gt_part)
  pred_dir = tmp_path_factory.mktemp('pred')
  submission.write_submission(pred_dir, gt_vid, pred_part)
  video = next(v for v, frames in gt_part.items() if frames.get('img_00001.json', {}).get('humans'))
  return pred_dir, gt_dir, video, pred_part[video]


def visualize(prediction, synthetic_root, out, *args, check=True):
  pred_dir, _, video, _ = prediction
  return run_module(
    'tps_jax.visualize',
    '--pred',
    pred_dir,
    '--data_root',
    synthetic_root,
    '--video',
    video,
    '--out',
    out,
    *args,
    check=check,
    subprocess_=True,
  )


def outline_fraction(picture: np.ndarray, box, colour) -> float:
  """Fraction of the outer ring of `box` (display pixels) that has exactly `colour`."""
  left, top, right, bottom = box
  ring = np.concatenate(
    [
      picture[top, left : right + 1],
      picture[bottom, left : right + 1],
      picture[top : bottom + 1, left],
      picture[top : bottom + 1, right],
    ]
  )
  return float(np.all(ring == colour, axis=-1).mean())


def test_draw_frame_outlines_each_part_in_its_colour():
  humans = [
    {
      'number': 1,
      'box': [2, 2, 37, 27],
      'parts': {
        'head': {'box': [[5, 5, 12, 10]], 'verb': ['none']},
        'left_foot': {'box': [[20, 15, 30, 25], [22, 17, 28, 23]], 'verb': ['step', 'none']},
      },
    }
  ]
  picture = drawing.draw_frame(np.zeros((30, 40, 3), np.uint8), humans, scale=3, font_size=10)
  assert picture.shape == (90, 120, 3)
  # Tags sit at the top-left corners: the bottom and right sides are all outline.
  for box, colour in (
    ([2, 2, 37, 27], drawing.HUMAN_COLOUR),
    ([5, 5, 12, 10], drawing.PART_COLOURS['head']),
    ([20, 15, 30, 25], drawing.PART_COLOURS['left_foot']),
  ):
    left, top, right, bottom = drawing.display_box(box, 3)
    assert (left, top, right, bottom) == (box[0] * 3, box[1] * 3, box[2] * 3 + 2, box[3] * 3 + 2)
    assert np.all(picture[bottom - 2 : bottom + 1, left : right + 1] == colour)  # 3 px solid
    assert np.all(picture[top + 3 : bottom + 1, right] == colour)
  # A further proposal is a 1-pixel outline.
  left, top, right, bottom = drawing.display_box([22, 17, 28, 23], 3)
  assert np.all(picture[bottom, left : right + 1] == drawing.PART_COLOURS['left_foot'])
  assert np.all(picture[bottom - 1, left + 1 : right] == 0)


def test_action_header_is_green_when_right_red_when_wrong():
  assert drawing.action_segments('run', 'run')[0][1] == drawing.RIGHT_COLOUR
  assert drawing.action_segments('run', 'jump')[0][1] == drawing.WRONG_COLOUR
  assert drawing.action_segments('run', None) == [('action: run', drawing.TEXT_COLOUR)]


def test_png_contact_sheet_draws_parts_in_their_colours(prediction, synthetic_root, tmp_path):
  out = tmp_path / 'sheet.png'
  visualize(prediction, synthetic_root, out, '--max_frames', 1, '--scale', SCALE)
  sheet = np.asarray(Image.open(out).convert('RGB'))
  frame = sheet[-120 * SCALE :]  # one tile: the frame is the bottom of the sheet
  assert sheet.shape[1] == 160 * SCALE
  fractions = [
    outline_fraction(frame, drawing.display_box(part['box'][0], SCALE), drawing.PART_COLOURS[name])
    for human in prediction[3]['img_00001.json']['humans']
    for name, part in human['parts'].items()
  ]
  # Parts overlap and tags cover bits of outlines; most of each ring is still its colour.
  assert min(fractions) > 0.25 and np.median(fractions) > 0.7, fractions
  proc = visualize(prediction, synthetic_root, tmp_path / 'all.png')
  assert f'{SCORED_FRAMES} frame(s)' in proc.stdout


@pytest.mark.parametrize('ext', ['.gif', '.mp4'])
def test_animation_has_one_picture_per_scored_frame(prediction, synthetic_root, tmp_path, ext):
  out = tmp_path / f'video{ext}'
  visualize(prediction, synthetic_root, out, '--scale', SCALE)
  if ext == '.gif':
    with Image.open(out) as gif:
      assert gif.n_frames == SCORED_FRAMES
      assert gif.size[0] == 160 * SCALE
      assert gif.info['duration'] == 170  # 30 fps / 5 ~ 6 pictures a second
    return
  with av.open(str(out)) as container:
    stream = container.streams.video[0]
    pictures = [f.to_ndarray(format='rgb24') for f in container.decode(stream)]
    assert stream.average_rate == 6
  assert len(pictures) == SCORED_FRAMES
  height, width = pictures[0].shape[:2]
  assert width == 160 * SCALE and height % 2 == 0


def test_show_gt_marks_a_wrong_state(prediction, synthetic_root, tmp_path):
  pred_dir, gt_dir, video, frames = prediction
  gt_vid, _ = submission.load_pair(gt_dir, 'gt')
  frames = copy.deepcopy(frames)
  part = next(iter(frames['img_00001.json']['humans'][0]['parts'].values()))
  part['verb'] = ['others' if part['verb'][0] != 'others' else 'none']
  wrong_dir = tmp_path / 'wrong'
  submission.write_submission(wrong_dir, {video: gt_vid[video]}, {video: frames})
  pictures = []
  for args in ((), ('--show_gt',), ('--show_gt', '--gt', gt_dir)):
    out = tmp_path / f'{len(pictures)}.png'
    run_module(
      'tps_jax.visualize',
      '--pred',
      wrong_dir,
      '--data_root',
      synthetic_root,
      '--video',
      video,
      '--out',
      out,
      '--max_frames',
      1,
      *args,
    )
    pictures.append(np.asarray(Image.open(out).convert('RGB')))
  assert not np.array_equal(pictures[0], pictures[1])  # "(gt: <state>)" on the tag
  assert np.array_equal(pictures[1], pictures[2])  # the same GT from either source


def test_video_path_outside_a_dataset(prediction, synthetic_root, tmp_path):
  pred_dir, _, video, _ = prediction
  path = next(v.video_path for v in tps.iter_videos(synthetic_root, 'train') if v.name == video)
  out = tmp_path / 'outside.gif'
  proc = run_module('tps_jax.visualize', '--pred', pred_dir, '--video_path', path, '--out', out)
  assert out.exists() and f'{SCORED_FRAMES} frame(s) of {video}' in proc.stdout


@pytest.mark.parametrize(
  'case', ['unknown_video', 'no_prediction', 'bad_extension', 'no_pred_files']
)
def test_user_mistakes_are_one_line(prediction, synthetic_root, tmp_path, case):
  pred_dir, _, video, frames = prediction
  args = {
    '--pred': pred_dir,
    '--data_root': synthetic_root,
    '--video': video,
    '--out': tmp_path / 'x.png',
  }
  expected = {
    'unknown_video': ['no_such_video', 'train_videos'],
    'no_prediction': ['no prediction', video],
    'bad_extension': ['.avi', '.png, .gif, .mp4'],
    'no_pred_files': [str(tmp_path), 'no such file'],
  }[case]
  if case == 'unknown_video':
    args['--video'] = 'no_such_video'
    submission.write_submission(tmp_path, {'no_such_video': 'x'}, {'no_such_video': frames})
    args['--pred'] = tmp_path
  elif case == 'no_prediction':
    submission.write_submission(tmp_path, {'other_video': 'x'}, {'other_video': frames})
    args['--pred'] = tmp_path
  elif case == 'bad_extension':
    args['--out'] = tmp_path / 'x.avi'
  else:
    args['--pred'] = tmp_path
  proc = run_module('tps_jax.visualize', *[a for kv in args.items() for a in kv], check=False)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  for text in expected:
    assert text in proc.stderr
  assert not (tmp_path / 'x.png').exists()
