"""The detection task: one parametrised `Task` for every detector (human and part detectors).

`config.task = 'detection'`. The detector family comes from `config.model.family`
and is looked up in a small registry (`register_detector`): 'cascade_rcnn',
'retinanet' and 'gfl' are registered here; another family plugs in with

    @detection.register_detector('my_detector')
    def build_my_detector(model_config, num_classes, dtype) -> nn.Module: ...

A detector module takes `(images, image_shape=None, targets=None, *, train)`: with
`train=True` (rngs 'sampling' and 'dropout') it returns a dict whose 'loss_*' entries
are summed into the loss (the other entries are logged as statistics); with
`train=False` padded detections {'boxes' (B, D, 4), 'scores', 'labels', 'valid'} in
input pixels. A `backbone` field makes `is_trainable` honour the backbone's frozen
stages (tps_jax/models/detector_backbone.py).

The classes are those of `config.data.dataset`: 'humans' -> ('person',), 'parts' -> the
ten parts of tps_jax/data/kinetics_tps.py; the first trains the human detector, the
second the part detector. Evaluation is COCO mAP on the host
(`make_evaluator`: AP, AP50, AP75 and AP per class, pycocotools), in the input pixels
of the eval pipeline (boxes and ground truth in the same frame).

Batches (tps_jax/input/pipelines.py): image (B, H, W, 3) normalised, boxes (B, M, 4) in
the dataset's inclusive-pixel convention (x2 = last column), labels (B, M) int32, valid
(B, M), ignore (B, M) (pseudo-label ignore regions), image_size (B, 2) (h, w) before
resizing and scale (B,): the content is image_size * scale pixels at the top-left.
The detectors work in continuous coordinates (torchvision's and mmdetection's: x2 is
the right edge), so boxes enter as (x1, y1, x2 + 1, y2 + 1) (`to_edges`) and
detections come out in that convention; `to_inclusive` turns them back for output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.data import kinetics_tps
from tps_jax.metrics.coco import CocoDetectionEvaluator
from tps_jax.models import detector_backbone, hashable
from tps_jax.models.cascade_rcnn import build_cascade_rcnn
from tps_jax.ops.boxes import to_edges
from tps_jax.tasks import base

DetectorBuilder = Callable[[Any, int, Any], nn.Module]
_DETECTORS: dict[str, DetectorBuilder] = {}

CLASS_NAMES = {'humans': ('person',), 'parts': tuple(kinetics_tps.PARTS)}
DETECTOR_KINDS = {'humans': 'human_detector', 'parts': 'part_detector'}


def register_detector(name: str):
  """Decorator: `builder(model_config, num_classes, dtype) -> module` serves family `name`."""

  def wrap(builder: DetectorBuilder) -> DetectorBuilder:
    _DETECTORS[name] = builder
    return builder

  return wrap


@register_detector('cascade_rcnn')
def _build_cascade_rcnn(model_config, num_classes: int, dtype) -> nn.Module:
  get = lambda name: hashable(model_config.get(name)) or {}
  return build_cascade_rcnn(
    model_config.backbone,
    num_classes,
    convention=model_config.get('convention', 'mmdet'),
    backbone_overrides=get('backbone_overrides'),
    neck=get('neck'),
    rpn=get('rpn'),
    roi=get('roi'),
    dtype=dtype,
  )


@register_detector('retinanet')
def _build_retinanet(model_config, num_classes: int, dtype) -> nn.Module:
  from tps_jax.models import retinanet  # the one-stage detectors, only when used

  return retinanet.from_config(model_config, num_classes, dtype)


@register_detector('gfl')
def _build_gfl(model_config, num_classes: int, dtype) -> nn.Module:
  from tps_jax.models import gfl

  return gfl.from_config(model_config, num_classes, dtype)


def build_detector(model_config, num_classes: int, dtype=jnp.float32) -> nn.Module:
  """The detector of `model_config.family` (see `register_detector`)."""
  family = model_config.family
  if family not in _DETECTORS:
    raise ValueError(
      f'config.model.family: unknown detector {family!r} '
      f'(registered: {", ".join(sorted(_DETECTORS))})'
    )
  return _DETECTORS[family](model_config, num_classes, dtype)


def class_names(config) -> tuple[str, ...]:
  dataset = config.data.dataset
  if dataset not in CLASS_NAMES:
    raise ValueError(f'config.data.dataset: {dataset!r} is not one of {", ".join(CLASS_NAMES)}')
  return CLASS_NAMES[dataset]


def content_shape(batch: Mapping[str, Any]):
  """(B, 2) (height, width) of each image's content in input pixels."""
  images = batch['image']
  padded = jnp.asarray(images.shape[1:3], jnp.float32)
  if 'image_size' not in batch:
    return jnp.broadcast_to(padded, (images.shape[0], 2))
  size = jnp.asarray(batch['image_size'], jnp.float32)
  if 'scale' in batch:
    size = size * jnp.asarray(batch['scale'], jnp.float32).reshape(-1, 1)
  return jnp.minimum(jnp.round(size), padded)


def targets_of(batch: Mapping[str, Any]) -> dict[str, Any]:
  targets = {'boxes': to_edges(batch['boxes']), 'labels': batch['labels'], 'valid': batch['valid']}
  if 'ignore' in batch:
    targets['ignore'] = batch['ignore']
  return targets


class CocoEvaluator(base.Evaluator):
  """The trainer's host-side evaluator around `CocoDetectionEvaluator`."""

  def __init__(self, names, max_detections: int = 100):
    self.coco = CocoDetectionEvaluator(names, max_detections)
    self.images = 0

  def add(self, outputs):
    mask = np.asarray(outputs[base.EXAMPLE_MASK], bool)
    self.images += int(mask.sum())
    self.coco.add_batch(
      gt_boxes=outputs['gt_boxes'],
      gt_labels=outputs['gt_labels'],
      gt_valid=np.asarray(outputs['gt_valid'], bool),
      gt_ignore=np.asarray(outputs['gt_ignore'], bool),
      det_boxes=outputs['boxes'],
      det_scores=outputs['scores'],
      det_labels=outputs['labels'],
      det_valid=np.asarray(outputs['valid'], bool),
      image_sizes=outputs['image_shape'],
      example_mask=mask,
    )

  def report(self):
    return self.coco.compute()

  def result(self) -> dict[str, float]:
    if not self.images:
      return {}
    report = self.report()
    metrics = {k: report.stats[k] for k in ('AP', 'AP50', 'AP75')}
    metrics.update({f'AP_{name}': ap for name, ap in report.per_class_ap.items()})
    return metrics


@base.register_task('detection')
class DetectionTask(base.DatasetTask):
  """Trains and evaluates a detector of `config.model.family` on `config.data.dataset`."""

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.metadata:
      return tuple(self.metadata['vocab']['classes'])
    return class_names(self.config)

  def export_metadata(self):
    """Classes in label order, the input canvas and, for parts, the human-crop rule."""
    from tps_jax.data import augment
    from tps_jax.input import pipelines

    dataset = self.config.data.dataset
    preprocessing = {
      'image_size': list(self.config.data.image_size),
      'normalization': augment.normalization(),
    }
    if dataset == 'parts':
      built = pipelines.dataset_metadata(dataset, self.config)['settings']
      preprocessing['context'] = built['context']
    return {
      'kind': DETECTOR_KINDS[dataset],
      'vocab': {'classes': list(self.class_names)},
      'preprocessing': preprocessing,
    }

  def build_model(self) -> nn.Module:
    return build_detector(self.config.model, len(self.class_names), self.compute_dtype)

  def init_inputs(self):
    height, width = self.config.data.image_size
    return {'images': np.zeros((1, height, width, 3), np.float32)}

  def _apply(self, params, model_state, batch, rng, *, train: bool):
    variables = {'params': params, **model_state}
    if not train:
      return self.model.apply(variables, batch['image'], content_shape(batch), train=False)
    sampling, dropout = jax.random.split(rng)
    # Backbones in 'batch' norm mode update their statistics; frozen ones return them as is.
    return self.model.apply(
      variables,
      batch['image'],
      content_shape(batch),
      targets_of(batch),
      train=True,
      rngs={'sampling': sampling, 'dropout': dropout},
      mutable=list(model_state),
    )

  def loss_fn(self, params, batch, rng, model_state, *, train):
    out, new_state = self._apply(params, model_state, batch, rng, train=True)
    loss = sum(value for name, value in out.items() if name.startswith('loss_'))
    return loss, (dict(out), dict(new_state))

  def eval_metrics(self, params, model_state, batch):
    del params, model_state, batch  # detections are scored on the host (COCO mAP)
    return {}

  def eval_predictions(self, params, model_state, batch):
    detections = self._apply(params, model_state, batch, None, train=False)
    ignore = batch['ignore'] if 'ignore' in batch else jnp.zeros_like(batch['valid'])
    return {
      **detections,
      'gt_boxes': to_edges(batch['boxes']),
      'gt_labels': batch['labels'],
      'gt_valid': batch['valid'],
      'gt_ignore': ignore,
      'image_shape': content_shape(batch),
      base.EXAMPLE_MASK: batch[base.EXAMPLE_MASK],
    }

  def make_evaluator(self) -> CocoEvaluator:
    return CocoEvaluator(self.class_names)

  def is_trainable(self, path) -> bool:
    return detector_backbone.is_trainable(self.model, path)

  @property
  def dataset(self) -> str:
    return self.config.data.dataset  # 'humans' | 'parts'
