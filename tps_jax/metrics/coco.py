"""COCO-style detection mAP (AP, AP50, AP75, by size, per class) on padded batches.

The detectors emit static-shape outputs (boxes, scores, labels, valid); this module
accumulates them on the host after each eval step and scores them with pycocotools,
so the numbers are the ones the detection literature reports.

Conventions: boxes are xyxy absolute pixels; COCO's xywh uses w = x2 - x1 (no +1).
Ground-truth ignore regions (pseudo-label 0.1-0.4 boxes) are passed to COCO as
`iscrowd=1`: a detection inside one is neither a true nor a false positive.
"""

import contextlib
import dataclasses
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Order of COCOeval.stats.
_STAT_NAMES = (
  'AP',
  'AP50',
  'AP75',
  'APs',
  'APm',
  'APl',
  'AR1',
  'AR10',
  'AR100',
  'ARs',
  'ARm',
  'ARl',
)


@dataclasses.dataclass
class DetectionReport:
  stats: dict[str, float]  # _STAT_NAMES -> value (-1 where undefined)
  per_class_ap: dict[str, float]  # class name -> AP@[.5:.95] (-1: no GT of it)
  num_images: int

  def table(self) -> str:
    lines = ['  '.join(f'{k}={self.stats[k]:.4f}' for k in _STAT_NAMES[:6])]
    lines += [f'  {name:<14s} AP={ap:.4f}' for name, ap in self.per_class_ap.items()]
    return '\n'.join(lines)


class CocoDetectionEvaluator:
  """Accumulates padded ground truth and detections, then runs COCOeval.

  Labels are 0-based class indices into `class_names`.
  """

  def __init__(self, class_names: Sequence[str], max_detections: int = 100):
    self.class_names = tuple(class_names)
    self.max_detections = max_detections
    self._images, self._gts, self._dets = [], [], []

  def add_batch(
    self,
    *,
    gt_boxes,
    gt_labels,
    gt_valid,
    det_boxes,
    det_scores,
    det_labels,
    det_valid,
    gt_ignore=None,
    image_sizes=None,
    example_mask=None,
  ):
    """Adds a batch. gt_* (B, M[, 4]); det_* (B, D[, 4]); image_sizes (B, 2) as (h, w).

    `example_mask` (B,) drops the padding examples of an eval batch.
    """
    gt_boxes, det_boxes = np.asarray(gt_boxes, np.float64), np.asarray(det_boxes, np.float64)
    if not (np.isfinite(det_boxes).all() and np.isfinite(np.asarray(det_scores)).all()):
      raise ValueError('detections contain NaN or inf (boxes or scores)')
    batch = gt_boxes.shape[0]
    gt_ignore = np.zeros(np.shape(gt_valid), bool) if gt_ignore is None else np.asarray(gt_ignore)
    example_mask = np.ones(batch, bool) if example_mask is None else np.asarray(example_mask)
    for b in range(batch):
      if not example_mask[b]:
        continue
      image_id = len(self._images) + 1
      h, w = image_sizes[b] if image_sizes is not None else (0, 0)
      self._images.append({'id': image_id, 'height': int(h), 'width': int(w)})
      for box, label, ignore in zip(
        gt_boxes[b][gt_valid[b]], gt_labels[b][gt_valid[b]], gt_ignore[b][gt_valid[b]]
      ):
        self._gts.append(
          _coco_box(box)
          | {
            'id': len(self._gts) + 1,
            'image_id': image_id,
            'category_id': int(label) + 1,
            'iscrowd': int(bool(ignore)),
            'ignore': int(bool(ignore)),
          }
        )
      keep = np.asarray(det_valid[b], bool)
      for box, score, label in zip(
        det_boxes[b][keep], np.asarray(det_scores[b])[keep], np.asarray(det_labels[b])[keep]
      ):
        self._dets.append(
          _coco_box(box)
          | {'image_id': image_id, 'category_id': int(label) + 1, 'score': float(score)}
        )

  def compute(self) -> DetectionReport:
    if not self._images:
      raise ValueError('no images were added to the detection evaluator')
    gt = COCO()
    gt.dataset = {
      'images': self._images,
      'annotations': self._gts,
      'categories': [{'id': i + 1, 'name': n} for i, n in enumerate(self.class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress.
      gt.createIndex()
      dt = gt.loadRes(self._dets) if self._dets else COCO()
      if not self._dets:  # loadRes refuses an empty list: an empty result set scores 0.
        dt.dataset = {
          'images': self._images,
          'annotations': [],
          'categories': gt.dataset['categories'],
        }
        dt.createIndex()
      coco_eval = COCOeval(gt, dt, iouType='bbox')
      coco_eval.params.maxDets = [1, 10, self.max_detections]
      coco_eval.evaluate()
      coco_eval.accumulate()
      coco_eval.summarize()
    stats = {name: float(v) for name, v in zip(_STAT_NAMES, coco_eval.stats)}
    # precision: [iou thr, recall, class, area range, max dets]; area 'all', the largest maxDets.
    precision = coco_eval.eval['precision'][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(self.class_names):
      p = precision[:, :, k]
      per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return DetectionReport(stats=stats, per_class_ap=per_class, num_images=len(self._images))


def _coco_box(box) -> dict:
  x1, y1, x2, y2 = (float(v) for v in box)
  w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
  return {'bbox': [x1, y1, w, h], 'area': w * h}
