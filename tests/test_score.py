"""The challenge score, pinned rule by rule with hand-computed cases (kinetics_tps.md)."""
import numpy as np
import pytest

from tps_jax.evaluation import score as S

BOX = [0, 0, 9, 9]  # 10 x 10 pixels under the inclusive convention: area 100


def gt_frame(*humans):
  return {"humans": [{"number": i + 1, "box": box,
                      "parts": {n: {"number": k + 1, "box": b, "verb": v, "name": n}
                                for k, (n, b, v) in enumerate(parts)}}
                     for i, (box, parts) in enumerate(humans)]}


def pred_frame(*humans):
  return {"humans": [{"number": i + 1, "box": box,
                      "parts": {n: {"number": k + 1, "box": [p[0] for p in props],
                                    "verb": [p[1] for p in props], "name": n}
                                for k, (n, props) in enumerate(parts)}}
                     for i, (box, parts) in enumerate(humans)]}


# Rule 1: inclusive-pixel IoU; disjoint boxes get -1.
def test_iou_uses_inclusive_pixels():
  assert S.box_iou_inclusive([BOX], [[5, 5, 14, 14]])[0, 0] == pytest.approx(25 / 175)


def test_boxes_sharing_one_pixel_column_overlap_by_one_column():
  assert S.box_iou_inclusive([BOX], [[9, 0, 18, 9]])[0, 0] == pytest.approx(10 / 190)


def test_disjoint_boxes_get_minus_one():
  assert S.box_iou_inclusive([BOX], [[10, 0, 19, 9]])[0, 0] == -1
  assert S.box_iou_inclusive([BOX], [[50, 50, 60, 60]])[0, 0] == -1


# Rule 2: Hungarian matching, strict IoU > 0.5 in float32.
def test_human_match_is_strictly_greater_than_half():
  gt = gt_frame((BOX, [("head", BOX, "none")]))
  exactly_half = pred_frame(([0, 0, 9, 4], [("head", [(BOX, "none")])]))    # 50 / 100
  assert S.box_iou_inclusive([BOX], [[0, 0, 9, 4]], np.float32)[0, 0] == np.float32(0.5)
  assert S.frame_part_score(gt, exactly_half) == 0.0
  above = pred_frame(([0, 0, 9, 5], [("head", [(BOX, "none")])]))           # 60 / 100
  assert S.frame_part_score(gt, above) == 1.0


def test_hungarian_matching_beats_greedy():
  # Greedy would pair GT0-P0 (IoU 0.690) and leave GT1 with P1 (0.368 < 0.5);
  # the optimal assignment pairs GT0-P1 (0.544) and GT1-P0 (0.517): both count.
  gt_boxes = [[6, 0, 45, 9], [6, 0, 35, 9]]
  pred_boxes = [[6, 0, 63, 9], [15, 0, 62, 9]]
  matches, ious = S.match_humans(gt_boxes, pred_boxes)
  assert matches.tolist() == [1, 0]
  assert (ious > 0.5).all()
  gt = gt_frame((gt_boxes[0], [("head", BOX, "none")]), (gt_boxes[1], [("torso", BOX, "bend")]))
  pred = pred_frame((pred_boxes[0], [("torso", [(BOX, "bend")])]),
                    (pred_boxes[1], [("head", [(BOX, "none")])]))
  assert S.frame_part_score(gt, pred) == 1.0


# Rule 3: part IoU >= 0.3 with the same verb scores 1 / N_p.
def test_part_match_at_exactly_point_three_counts():
  gt = gt_frame((BOX, [("left_arm", BOX, "bend")]))
  at = pred_frame((BOX, [("left_arm", [([0, 0, 9, 2], "bend")])]))          # 30 / 100
  below = pred_frame((BOX, [("left_arm", [([0, 0, 9, 1], "bend")])]))       # 20 / 100
  assert S.frame_part_score(gt, at) == 1.0
  assert S.frame_part_score(gt, below) == 0.0


def test_part_scores_one_over_number_of_proposals():
  gt = gt_frame((BOX, [("head", BOX, "turn")]))
  pred = pred_frame((BOX, [("head", [([50, 50, 60, 60], "turn"), (BOX, "turn"),
                                     (BOX, "none")])]))
  assert S.frame_part_score(gt, pred) == pytest.approx(1 / 3)


def test_wrong_verb_or_missing_part_scores_zero():
  gt = gt_frame((BOX, [("head", BOX, "turn"), ("torso", BOX, "none")]))
  pred = pred_frame((BOX, [("head", [(BOX, "none")])]))
  assert S.frame_part_score(gt, pred) == 0.0


def test_unmatched_human_scores_zero_for_all_its_parts():
  gt = gt_frame((BOX, [("head", BOX, "none")]), ([100, 100, 149, 199], [("head", BOX, "none")]))
  pred = pred_frame((BOX, [("head", [(BOX, "none")])]))
  assert S.frame_part_score(gt, pred) == 0.5


# Rule 4: frame score over GT parts; frames without humans/parts are left out.
def test_frame_score_divides_by_all_gt_parts_of_the_frame():
  gt = gt_frame((BOX, [("head", BOX, "none"), ("torso", BOX, "none"),
                       ("left_leg", BOX, "kick"), ("right_leg", BOX, "none")]))
  pred = pred_frame((BOX, [("head", [(BOX, "none")]), ("torso", [(BOX, "none"), (BOX, "x")]),
                           ("left_leg", [(BOX, "step")])]))
  assert S.frame_part_score(gt, pred) == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_frames_without_humans_or_parts_are_left_out_and_missing_frames_count_zero():
  scorable = gt_frame((BOX, [("head", BOX, "none")]))
  frames = {"img_00001.json": scorable,
            "img_00006.json": {"humans": []},
            "img_00011.json": gt_frame((BOX, [])),
            "img_00016.json": scorable}
  assert S.frame_part_score(frames["img_00006.json"], None) is None
  assert S.frame_part_score(frames["img_00011.json"], None) is None
  pred = {"img_00001.json": pred_frame((BOX, [("head", [(BOX, "none")])]))}
  # img_00016 is missing from the submission: it scores 0 and counts.
  assert S.video_psc(frames, pred) == 0.5


# Rule 5: a video without scorable frames has PSC 1.
def test_video_without_scorable_frames_has_psc_one():
  assert S.video_psc({"img_00001.json": {"humans": []}}, None) == 1.0
  assert S.video_psc({}, None) == 1.0


# Rules 6-7: accuracy(t) needs PSC >= t and the right class; area under the curve.
def test_score_of_two_videos_by_hand():
  frame = gt_frame((BOX, [("head", BOX, "none"), ("torso", BOX, "none")]))
  gt_vid = {"a": "dance", "b": "dance", "c": "run"}
  gt_part = {"a": {"img_00001.json": frame}, "b": {"img_00001.json": frame},
             "c": {"img_00001.json": frame}}
  pred_vid = {"a": "dance", "b": "dance", "c": "dance"}   # c: wrong class
  pred_part = {"a": {"img_00001.json": pred_frame((BOX, [("head", [(BOX, "none")]),
                                                         ("torso", [(BOX, "none")])]))},
               "b": {"img_00001.json": pred_frame((BOX, [("head", [(BOX, "none")])]))},
               "c": {"img_00001.json": pred_frame((BOX, [("head", [(BOX, "none")]),
                                                         ("torso", [(BOX, "none")])]))}}
  report = S.challenge_score(gt_vid, gt_part, pred_vid, pred_part)
  assert report.psc == {"a": 1.0, "b": 0.5, "c": 1.0}
  # a: PSC 1 passes k = 1..9999; b: PSC 0.5 passes k = 1..5000; c: wrong class.
  assert report.score == pytest.approx((9999 + 5000) / 10000 / 3, abs=1e-12)
  assert report.score_rounded == round((9999 + 5000) / 30000, 6)
  assert report.format().splitlines()[-1] == f"score: {report.score_rounded:.6f}"


def test_closed_form_auc_equals_the_literal_sum():
  rng = np.random.default_rng(0)
  psc = np.concatenate([rng.random(40), [0.0, 1.0, 0.3, 0.5, 1e-4, 0.9999, 0.99995, 5e-5,
                                         0.12345, 2 / 3, 0.7, 0.1 + 0.2]])
  correct = rng.random(psc.size) > 0.3
  assert S.auc_score(psc, correct) == pytest.approx(S.auc_score_literal(psc, correct), abs=1e-12)


def test_missing_video_counts_as_wrong_with_a_warning():
  frame = gt_frame((BOX, [("head", BOX, "none")]))
  report = S.challenge_score({"a": "run", "b": "run"}, {"a": {"img_00001.json": frame},
                                                       "b": {"img_00001.json": frame}},
                             {"a": "run"}, {"a": {"img_00001.json": pred_frame(
                                 (BOX, [("head", [(BOX, "none")])]))}})
  assert report.score == pytest.approx(9999 / 10000 / 2)
  assert any("missing from pred_vid_result.json" in w for w in report.warnings)
  assert any("missing from pred_part_result.json" in w for w in report.warnings)


def test_grid_official_cell_matches_the_psc_rule():
  frame = gt_frame((BOX, [("head", BOX, "none")]))
  pred = pred_frame(([0, 0, 9, 6], [("head", [([0, 0, 9, 3], "none")])]))  # human .7, part .4
  report = S.challenge_score({"a": "run"}, {"a": {"img_00001.json": frame}}, {"a": "run"},
                             {"a": {"img_00001.json": pred}})
  # Human IoU 0.7 passes h = 0.5, 0.6 only (strict); part IoU 0.4 passes p <= 0.4.
  expected = np.outer([1, 1, 0, 0, 0], [1, 1, 1, 1, 0])
  np.testing.assert_array_equal(report.grid, expected)
