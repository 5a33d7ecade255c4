"""The challenge score, pinned rule by rule with hand-computed cases (docs/score.md)."""

import numpy as np
import pytest

from tests import score_reference
from tps_jax.data import submission
from tps_jax.metrics import score as S
from tps_jax.metrics import score_math

BOX = [0, 0, 9, 9]  # 10 x 10 pixels under the inclusive convention: area 100


def gt_frame(*humans):
  return {
    'humans': [
      {
        'number': i + 1,
        'box': box,
        'parts': {
          n: {'number': k + 1, 'box': b, 'verb': v, 'name': n} for k, (n, b, v) in enumerate(parts)
        },
      }
      for i, (box, parts) in enumerate(humans)
    ]
  }


def pred_frame(*humans):
  return {
    'humans': [
      {
        'number': i + 1,
        'box': box,
        'parts': {
          n: {
            'number': k + 1,
            'box': [p[0] for p in props],
            'verb': [p[1] for p in props],
            'name': n,
          }
          for k, (n, props) in enumerate(parts)
        },
      }
      for i, (box, parts) in enumerate(humans)
    ]
  }


# Rule 1: inclusive-pixel IoU; disjoint boxes get -1.
def test_iou_uses_inclusive_pixels():
  assert score_math.box_iou_inclusive([BOX], [[5, 5, 14, 14]])[0, 0] == pytest.approx(25 / 175)


def test_boxes_sharing_one_pixel_column_overlap_by_one_column():
  assert score_math.box_iou_inclusive([BOX], [[9, 0, 18, 9]])[0, 0] == pytest.approx(10 / 190)


def test_disjoint_boxes_get_minus_one():
  assert score_math.box_iou_inclusive([BOX], [[10, 0, 19, 9]])[0, 0] == -1
  assert score_math.box_iou_inclusive([BOX], [[50, 50, 60, 60]])[0, 0] == -1


# Rule 2: Hungarian matching, strict IoU > 0.5 in float32.
def test_human_match_is_strictly_greater_than_half():
  gt = gt_frame((BOX, [('head', BOX, 'none')]))
  exactly_half = pred_frame(([0, 0, 9, 4], [('head', [(BOX, 'none')])]))  # 50 / 100
  assert score_math.box_iou_inclusive([BOX], [[0, 0, 9, 4]], np.float32)[0, 0] == np.float32(0.5)
  assert S.frame_part_score(gt, exactly_half) == 0.0
  above = pred_frame(([0, 0, 9, 5], [('head', [(BOX, 'none')])]))  # 60 / 100
  assert S.frame_part_score(gt, above) == 1.0


def test_hungarian_matching_beats_greedy():
  # Greedy would pair GT0-P0 (IoU 0.690) and leave GT1 with P1 (0.368 < 0.5);
  # the optimal assignment pairs GT0-P1 (0.544) and GT1-P0 (0.517): both count.
  gt_boxes = [[6, 0, 45, 9], [6, 0, 35, 9]]
  pred_boxes = [[6, 0, 63, 9], [15, 0, 62, 9]]
  matches, ious = score_math.match_humans(gt_boxes, pred_boxes)
  assert matches.tolist() == [1, 0]
  assert (ious > 0.5).all()
  gt = gt_frame((gt_boxes[0], [('head', BOX, 'none')]), (gt_boxes[1], [('torso', BOX, 'bend')]))
  pred = pred_frame(
    (pred_boxes[0], [('torso', [(BOX, 'bend')])]), (pred_boxes[1], [('head', [(BOX, 'none')])])
  )
  assert S.frame_part_score(gt, pred) == 1.0


# Rule 3: part IoU >= 0.3 with the same verb scores 1 / N_p.
def test_part_match_at_exactly_point_three_counts():
  gt = gt_frame((BOX, [('left_arm', BOX, 'bend')]))
  at = pred_frame((BOX, [('left_arm', [([0, 0, 9, 2], 'bend')])]))  # 30 / 100
  below = pred_frame((BOX, [('left_arm', [([0, 0, 9, 1], 'bend')])]))  # 20 / 100
  assert S.frame_part_score(gt, at) == 1.0
  assert S.frame_part_score(gt, below) == 0.0


def test_part_scores_one_over_number_of_proposals():
  gt = gt_frame((BOX, [('head', BOX, 'turn')]))
  pred = pred_frame((BOX, [('head', [([50, 50, 60, 60], 'turn'), (BOX, 'turn'), (BOX, 'none')])]))
  assert S.frame_part_score(gt, pred) == pytest.approx(1 / 3)


def test_wrong_verb_or_missing_part_scores_zero():
  gt = gt_frame((BOX, [('head', BOX, 'turn'), ('torso', BOX, 'none')]))
  pred = pred_frame((BOX, [('head', [(BOX, 'none')])]))
  assert S.frame_part_score(gt, pred) == 0.0


def test_unmatched_human_scores_zero_for_all_its_parts():
  gt = gt_frame((BOX, [('head', BOX, 'none')]), ([100, 100, 149, 199], [('head', BOX, 'none')]))
  pred = pred_frame((BOX, [('head', [(BOX, 'none')])]))
  assert S.frame_part_score(gt, pred) == 0.5


# Rule 4: frame score over GT parts; frames without humans/parts are left out.
def test_frame_score_divides_by_all_gt_parts_of_the_frame():
  gt = gt_frame(
    (
      BOX,
      [
        ('head', BOX, 'none'),
        ('torso', BOX, 'none'),
        ('left_leg', BOX, 'kick'),
        ('right_leg', BOX, 'none'),
      ],
    )
  )
  pred = pred_frame(
    (
      BOX,
      [
        ('head', [(BOX, 'none')]),
        ('torso', [(BOX, 'none'), (BOX, 'x')]),
        ('left_leg', [(BOX, 'step')]),
      ],
    )
  )
  assert S.frame_part_score(gt, pred) == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_frames_without_humans_or_parts_are_left_out_and_missing_frames_count_zero():
  scorable = gt_frame((BOX, [('head', BOX, 'none')]))
  frames = {
    'img_00001.json': scorable,
    'img_00006.json': {'humans': []},
    'img_00011.json': gt_frame((BOX, [])),
    'img_00016.json': scorable,
  }
  assert S.frame_part_score(frames['img_00006.json'], None) is None
  # Present in the submission, its GT humans without parts: left out (rule 4c).
  assert S.frame_part_score(frames['img_00011.json'], pred_frame((BOX, []))) is None
  pred = {
    'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')])])),
    'img_00011.json': pred_frame((BOX, [])),
  }
  # img_00016 is missing from the submission: it scores 0 and counts.
  assert S.video_psc(frames, pred) == 0.5


# Issue 9, case 1: the checks come in the tool's order (rule 4 a-d).
def test_case_1_a_missing_frame_whose_gt_humans_have_no_parts_counts_zero():
  frames = {
    'img_00001.json': gt_frame((BOX, [('head', BOX, 'none')])),
    'img_00006.json': gt_frame((BOX, []), ([20, 20, 29, 29], [])),
  }
  right = {'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')])]))}
  assert S.frame_part_score(frames['img_00006.json'], None) == 0.0
  assert S.video_psc(frames, right) == 0.5  # (1 + 0) / 2 frames counted
  present = dict(right, **{'img_00006.json': pred_frame()})
  assert S.video_psc(frames, present) == 1.0  # present without parts: left out
  assert S.video_psc({'img_00006.json': frames['img_00006.json']}, {}) == 0.0


# Issue 9, case 2: an inverted box goes through the same formula; it is warned about.
def test_case_2_an_inverted_box_is_scored_with_the_same_formula():
  inverted = [4.5, 0, 4, 9]  # x1 > x2: width 4 - 4.5 + 1 = 0.5, area 5
  assert score_math.box_iou_inclusive([BOX], [inverted])[0, 0] == pytest.approx(5 / 100)
  gt = {'v': {'img_00001.json': gt_frame((BOX, [('head', BOX, 'none')]))}}
  pred = {'v': {'img_00001.json': pred_frame((BOX, [('head', [(inverted, 'none')])]))}}
  report = S.challenge_score({'v': 'run'}, gt, {'v': 'run'}, pred)
  part_01, part_03 = S.THRESHOLDS.index(0.001), S.THRESHOLDS.index(0.3)
  assert report.psc_cells[:3, part_01, 0].tolist() == [1.0, 1.0, 1.0]  # IoU .05 >= .001
  assert report.psc_cells[:, part_03, 0].tolist() == [0.0] * 5
  assert any(
    w.startswith('1 inverted proposal box(es)') and 'v/img_00001.json/human 1/head/proposal 1' in w
    for w in report.warnings
  ), report.warnings
  assert submission.validate({'v': 'run'}, pred) != []  # --strict refuses it


def test_human_threshold_compares_in_the_dtype_of_the_tools_matrix():
  # IoU 30/100 is float32(0.3) = 0.30000001...: not > float32(0.3) in a square (float32)
  # matrix, but > 0.3 once padding has made the matrix float64 (a second predicted human).
  gt = gt_frame((BOX, [('head', BOX, 'none')]))
  thirty = ([0, 0, 9, 2], [('head', [(BOX, 'none')])])
  alone, padded = pred_frame(thirty), pred_frame(thirty, ([50, 50, 59, 59], []))
  assert S.frame_part_score(gt, alone, human_iou=0.3) == 0.0
  assert S.frame_part_score(gt, padded, human_iou=0.3) == 1.0
  assert S.frame_part_score(gt, alone, human_iou=0.29) == 1.0


def test_the_assignment_keeps_the_tools_float32_costs():
  # A 3 x 3 frame whose float32 cost matrix is assigned GT 0 -> pred 0, while the same
  # matrix in float64 would give GT 0 -> pred 2 (found by search).
  gt_boxes = [[0, 3, 7, 3], [4, 0, 11, 3], [1, 3, 4, 3]]
  pred_boxes = [[1, 1, 2, 5], [6, 4, 10, 8], [3, 2, 3, 6]]
  matches, _ = score_math.match_humans(gt_boxes, pred_boxes)
  assert matches.tolist() == [0, 1, 2]
  gt = gt_frame((gt_boxes[0], [('head', BOX, 'none')]), (gt_boxes[1], []), (gt_boxes[2], []))
  pred = pred_frame(
    (pred_boxes[0], [('head', [(BOX, 'none')])]), (pred_boxes[1], []), (pred_boxes[2], [])
  )
  assert S.frame_part_score(gt, pred, human_iou=0.001) == 1.0
  assert score_reference.frame_score(gt['humans'], pred['humans'], 0.001, 0.3) == 1.0


# Rule 5: a video without scorable frames has PSC 1.
def test_video_without_scorable_frames_has_psc_one():
  assert S.video_psc({'img_00001.json': {'humans': []}}, None) == 1.0
  assert S.video_psc({}, None) == 1.0


# Rules 6-7: accuracy(t) needs PSC >= t and the right class; area under the curve.
def test_score_of_two_videos_by_hand():
  frame = gt_frame((BOX, [('head', BOX, 'none'), ('torso', BOX, 'none')]))
  gt_vid = {'a': 'dance', 'b': 'dance', 'c': 'run'}
  gt_part = {
    'a': {'img_00001.json': frame},
    'b': {'img_00001.json': frame},
    'c': {'img_00001.json': frame},
  }
  pred_vid = {'a': 'dance', 'b': 'dance', 'c': 'dance'}  # c: wrong class
  pred_part = {
    'a': {
      'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')]), ('torso', [(BOX, 'none')])]))
    },
    'b': {'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')])]))},
    'c': {
      'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')]), ('torso', [(BOX, 'none')])]))
    },
  }
  report = S.challenge_score(gt_vid, gt_part, pred_vid, pred_part)
  assert report.psc == {'a': 1.0, 'b': 0.5, 'c': 1.0}
  # a: PSC 1 passes k = 1..9999; b: PSC 0.5 passes k = 1..5000; c: wrong class.
  assert report.score == pytest.approx((9999 + 5000) / 10000 / 3, abs=1e-12)
  assert report.score_rounded == round((9999 + 5000) / 30000, 6)
  assert report.format().splitlines()[-1] == f'score: {report.score_rounded:.6f}'


def test_closed_form_auc_equals_the_literal_sum():
  rng = np.random.default_rng(0)
  k = np.arange(1, 10000)
  psc = np.concatenate(
    [
      rng.random(40),
      [0.0, 1.0, 0.3, 0.5, 1e-4, 0.9999, 0.99995, 5e-5, 0.12345, 2 / 3, 0.7, 0.1 + 0.2],
      rng.choice(k, 30) / 10000,
      np.nextafter(rng.choice(k, 30) / 10000, 0),
    ]
  )
  correct = rng.random(psc.size) > 0.3
  assert score_math.auc_score(psc, correct) == score_reference.area(psc, correct)


def test_missing_video_counts_as_wrong_with_a_warning():
  frame = gt_frame((BOX, [('head', BOX, 'none')]))
  report = S.challenge_score(
    {'a': 'run', 'b': 'run'},
    {'a': {'img_00001.json': frame}, 'b': {'img_00001.json': frame}},
    {'a': 'run'},
    {'a': {'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')])]))}},
  )
  assert report.score == pytest.approx(9999 / 10000 / 2)
  assert any('missing from pred_vid_result.json' in w for w in report.warnings)
  assert any('missing from pred_part_result.json' in w for w in report.warnings)


def test_grid_official_cell_matches_the_psc_rule():
  frame = gt_frame((BOX, [('head', BOX, 'none')]))
  pred = pred_frame(([0, 0, 9, 6], [('head', [([0, 0, 9, 3], 'none')])]))  # human .7, part .4
  report = S.challenge_score(
    {'a': 'run'}, {'a': {'img_00001.json': frame}}, {'a': 'run'}, {'a': {'img_00001.json': pred}}
  )
  # The tool's grid, h and p in 0.001, 0.3, 0.5, 0.9, 0.99: human IoU 0.7 passes
  # h <= 0.5 (strict); part IoU 0.4 passes p <= 0.3. A passing cell's area is 0.9999.
  expected = np.outer([1, 1, 1, 0, 0], [1, 1, 0, 0, 0]) * 0.9999
  np.testing.assert_allclose(report.grid, expected, rtol=0, atol=1e-12)
  assert report.score == report.grid[2, 1]
  assert report.accuracies[2, 1].tolist() == [1.0] * 10


# Refused only where the tool reads (and would stop); anything else is scored.
def _score_pred(pred_video):
  gt = {'v': {'img_00001.json': gt_frame((BOX, [('head', BOX, 'none')]))}}
  return S.challenge_score({'v': 'run'}, gt, {'v': 'run'}, {'v': pred_video})


@pytest.mark.parametrize(
  'pred_video, problem',
  [
    ({'img_00001.json': pred_frame(*[(BOX, [])] * 11)}, '11 humans, at most 10 allowed'),
    (
      {'img_00001.json': pred_frame((BOX, [('head', [(BOX, 'none')] * 6)]))},
      'head: 6 proposals, at most 5 allowed',
    ),
    (
      {
        'img_00001.json': {
          'humans': [{'box': BOX, 'parts': {'head': {'box': [BOX, BOX], 'verb': ['none']}}}]
        }
      },
      'head: 2 boxes but 1 states',
    ),
    (
      {'img_00001.json': pred_frame((BOX, [('head', [([0, 0, 9], 'none')])]))},
      'head/proposal 1: box must be 4 numbers',
    ),
    (
      {'img_00001.json': pred_frame((BOX, [('head', [([0, 0, float('nan'), 9], 'x')])]))},
      'head/proposal 1: box is not finite',
    ),
    ({'img_00001.json': pred_frame(([0, 0, 9, float('inf')], []))}, 'box is not finite'),
    ({'img_00001.json': {'humans': [{'box': BOX}]}}, "'parts' must map part names"),
    ({'img_00001.json': {'people': []}}, "a frame must be an object with a 'humans' list"),
  ],
)
def test_what_the_tool_reads_and_cannot_score_is_refused_naming_the_place(pred_video, problem):
  with pytest.raises(submission.SubmissionError) as error:
    _score_pred(pred_video)
  assert error.value.problems[0].startswith('pred_part_result.json: v/img_00001.json')
  assert problem in error.value.problems[0], error.value.problems


def test_what_the_tool_never_reads_is_only_warned_about():
  unread_frame = pred_frame(*[(BOX, [('head', [([0, 0, 9], 1)] * 7)])] * 11)
  report = _score_pred(
    {
      'img_00001.json': pred_frame(
        (BOX, [('head', [(BOX, 'none')]), ('tail', [([0], 'x')] * 9)]),  # 'tail': not in GT
        ([50, 50, 59, 59], [('head', [(float('nan'),) * 4] * 6)]),
      ),  # never matched
      'img_00099.json': unread_frame,
    }
  )
  assert report.psc == {'v': 1.0}
  assert any(
    '1 frame(s) of pred_part_result.json not in gt_part_result.json' in w for w in report.warnings
  ), report.warnings
  assert any('part name(s) outside the 10 parts' in w and "'tail'" in w for w in report.warnings), (
    report.warnings
  )


def test_the_assignment_is_scipys():
  from scipy.optimize import linear_sum_assignment

  rng = np.random.default_rng(1)
  for cost in [
    rng.random((4, 4)),
    rng.random((3, 3)).astype(np.float32),
    np.round(rng.random((5, 5)), 1),
  ]:  # ties
    for ours, theirs in zip(score_math.linear_sum_assignment(cost), linear_sum_assignment(cost)):
      assert ours.tolist() == theirs.tolist()
