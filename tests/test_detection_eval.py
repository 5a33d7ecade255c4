"""COCO mAP on padded batches: pinned by hand-computed precision/recall cases."""

import numpy as np
import pytest

from tps_jax.metrics.coco import CocoDetectionEvaluator

GT = np.array([[[10, 10, 50, 60], [100, 100, 140, 180], [0, 0, 0, 0]]], np.float32)
GT_LABELS = np.array([[0, 1, 0]])
GT_VALID = np.array([[True, True, False]])


def _evaluate(det_boxes, det_scores, det_labels, det_valid, gt_ignore=None):
  ev = CocoDetectionEvaluator(['head', 'torso'])
  ev.add_batch(
    gt_boxes=GT,
    gt_labels=GT_LABELS,
    gt_valid=GT_VALID,
    gt_ignore=gt_ignore,
    det_boxes=np.asarray(det_boxes, np.float32)[None],
    det_scores=np.asarray(det_scores, np.float32)[None],
    det_labels=np.asarray(det_labels)[None],
    det_valid=np.asarray(det_valid)[None],
    image_sizes=np.array([[200, 200]]),
  )
  return ev.compute()


def test_perfect_detections_score_one_and_padding_is_ignored():
  report = _evaluate(GT[0], [0.9, 0.8, 0.99], [0, 1, 0], [True, True, False])
  assert report.stats['AP'] == pytest.approx(1.0)
  assert report.per_class_ap == pytest.approx({'head': 1.0, 'torso': 1.0})


def test_higher_scored_false_positive_halves_precision():
  # head: a false positive (score 0.95) ranks above the exact match (0.9): precision at
  # full recall is 1/2 and the interpolated envelope is 1/2 everywhere -> AP 0.5.
  boxes = [[10, 10, 50, 60], [150, 10, 190, 40], [100, 100, 140, 180]]
  report = _evaluate(boxes, [0.9, 0.95, 0.9], [0, 0, 1], [True, True, True])
  assert report.per_class_ap['head'] == pytest.approx(0.5)
  assert report.per_class_ap['torso'] == pytest.approx(1.0)
  assert report.stats['AP'] == pytest.approx(0.75)


def test_detection_inside_ignore_region_is_not_a_false_positive():
  ignore_gt = GT.copy()
  ignore_gt[0, 2] = [150, 10, 190, 40]
  ev = CocoDetectionEvaluator(['head', 'torso'])
  ev.add_batch(
    gt_boxes=ignore_gt,
    gt_labels=GT_LABELS,
    gt_valid=np.array([[True, True, True]]),
    gt_ignore=np.array([[False, False, True]]),
    det_boxes=np.array([[[10, 10, 50, 60], [150, 10, 190, 40], [100, 100, 140, 180]]]),
    det_scores=np.array([[0.9, 0.95, 0.9]]),
    det_labels=np.array([[0, 0, 1]]),
    det_valid=np.ones((1, 3), bool),
  )
  assert ev.compute().per_class_ap['head'] == pytest.approx(1.0)


def test_class_without_ground_truth_reports_minus_one_and_empty_detections_score_zero():
  ev = CocoDetectionEvaluator(['head', 'torso', 'left_arm'])
  ev.add_batch(
    gt_boxes=GT,
    gt_labels=GT_LABELS,
    gt_valid=GT_VALID,
    det_boxes=np.zeros((1, 2, 4)),
    det_scores=np.zeros((1, 2)),
    det_labels=np.zeros((1, 2), int),
    det_valid=np.zeros((1, 2), bool),
  )
  report = ev.compute()
  assert report.per_class_ap['left_arm'] == -1.0
  assert report.stats['AP'] == pytest.approx(0.0)


def test_nan_detections_are_refused_and_empty_evaluator_errors():
  ev = CocoDetectionEvaluator(['head'])
  with pytest.raises(ValueError, match='no images'):
    ev.compute()
  with pytest.raises(ValueError, match='NaN'):
    ev.add_batch(
      gt_boxes=GT,
      gt_labels=GT_LABELS,
      gt_valid=GT_VALID,
      det_boxes=np.full((1, 1, 4), np.nan),
      det_scores=np.ones((1, 1)),
      det_labels=np.zeros((1, 1), int),
      det_valid=np.ones((1, 1), bool),
    )
