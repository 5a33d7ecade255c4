"""Submission validation (strict) and writing; the command is tested in test_evaluate.py."""

import json

import pytest

from tps_jax.data import submission

BOX = [0, 0, 9, 9]


def _pred(humans=1, proposals=1, verbs=None, part='head', box=BOX):
  verbs = verbs if verbs is not None else ['none'] * proposals
  return {
    'v': {
      'img_00001.json': {
        'humans': [
          {
            'number': i + 1,
            'box': BOX,
            'parts': {part: {'number': 1, 'box': [box] * proposals, 'verb': verbs, 'name': part}},
          }
          for i in range(humans)
        ]
      }
    }
  }


@pytest.mark.parametrize(
  'part_result, problem',
  [
    (_pred(humans=11), '11 humans, at most 10 allowed'),
    (_pred(proposals=6), '6 proposals, at most 5 allowed'),
    (_pred(proposals=2, verbs=['none']), '2 boxes but 1 verbs'),
    (_pred(part='tail'), 'tail: unknown part name'),
    (_pred(box=[0, 0, float('nan'), 9]), 'box is not finite'),
    (_pred(box=[9, 0, 0, 9]), 'box is inverted'),
    (_pred(box=[0, 0, 9]), 'box must be 4 numbers'),
  ],
)
def test_each_broken_limit_is_reported_with_its_place(part_result, problem):
  problems = submission.validate({'v': 'run'}, part_result, kind='pred')
  assert len(problems) >= 1
  assert problem in problems[0]
  assert problems[0].startswith('pred_part_result.json: v/img_00001.json')


def test_valid_submission_has_no_problems_and_is_written_atomically(tmp_path):
  assert submission.validate({'v': 'run'}, _pred(proposals=5), kind='pred') == []
  submission.write_submission(tmp_path, {'v': 'run'}, _pred())
  assert json.loads((tmp_path / 'pred_vid_result.json').read_text()) == {'v': 'run'}
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.tmp')]
  with pytest.raises(submission.SubmissionError, match='at most 10 allowed'):
    submission.write_submission(tmp_path / 'bad', {'v': 'run'}, _pred(humans=11))
  assert not (tmp_path / 'bad' / 'pred_part_result.json').exists()


def test_corrupt_or_missing_files_name_the_file(tmp_path):
  with pytest.raises(submission.SubmissionError, match='pred_vid_result.json: no such file'):
    submission.load_pair(str(tmp_path), 'pred')
  (tmp_path / 'pred_vid_result.json').write_text('{"v": ')
  (tmp_path / 'pred_part_result.json').write_text('{}')
  with pytest.raises(submission.SubmissionError, match='pred_vid_result.json: not valid JSON'):
    submission.load_pair(str(tmp_path), 'pred')
