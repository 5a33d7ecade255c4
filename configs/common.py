"""Fields every stage config shares, in one place (big_vision-style config helpers).

A stage config (configs/<stage>.py) sets every field its run reads: its own in the
file, the shared ones through these helpers, each called by name, so nothing is filled
in behind the config's back (the trainer, the tasks and the input pipelines read what
the config holds, and a missing `data.*` field is an error naming it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import ml_collections


def variants(arg: str | None, known: Sequence[str], config_file: str) -> list[str]:
  """The variants a config string names ('tiny', 'tiny,no_roi': `--config=FILE:ARG`),
  each one of `known`; an unknown one is a one-line error naming the file."""
  names = [name for name in (arg or '').split(',') if name]
  unknown = [name for name in names if name not in known]
  if unknown:
    raise ValueError(
      f'{config_file}: unknown variant {", ".join(map(repr, unknown))} '
      f'(known: {", ".join(known)}; combine with commas)'
    )
  return names


def trainer(
  task: str,
  *,
  total_steps: int,
  batch_size: int,
  log_steps: int,
  checkpoint_steps: int,
  eval_steps: int,
  bf16: bool = False,
  init_from: str = '',
  init_include: str = '.*',
  init_exclude: str = '',
  init_prefix: str = '',
  init_source_prefix: str = '',
  keep_checkpoints: int = 3,
  seed: int = 0,
) -> ml_collections.ConfigDict:
  """The fields the trainer reads (tps_jax/train/trainer.py); a stage config adds `data`,
  `model`, `optim` and its task's own.

  `task` names the task (tps_jax/tasks/base.py: a library task, or one the config file
  itself registers with `register_task`). `init_from` restores the leaves of the checkpoint at
  `init_from` whose names match `init_include` and not `init_exclude`, after prefixing
  them with `init_prefix` (and keeping only those under `init_source_prefix`, without it).
  """
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = seed
  config.total_steps = total_steps
  config.batch_size = batch_size  # global, over all devices and processes
  config.grad_accum_steps = 1
  config.log_steps = log_steps
  config.checkpoint_steps = checkpoint_steps
  config.keep_checkpoints = keep_checkpoints
  config.eval_steps = eval_steps  # 0: no evaluation during training
  config.bf16 = bf16  # bfloat16 compute, float32 parameters
  config.mesh = ml_collections.ConfigDict({'model': 1})  # devices on the `model` axis
  config.init_from = ml_collections.ConfigDict(
    {
      'path': init_from,
      'include': init_include,
      'exclude': init_exclude,
      'prefix': init_prefix,
      'source_prefix': init_source_prefix,
    }
  )
  # Resume a workdir although settings that change what it trains differ from those
  # it was started with (tps_jax/train/run_config.py).
  config.allow_config_change = False
  return config


def data(**fields: Any) -> ml_collections.ConfigDict:
  """`config.data`: where the datasets are and how they are read (every input
  pipeline's fields, tps_jax/input/pipelines.py READ_FIELDS), then the stage's `fields`,
  which may also replace these."""
  return ml_collections.ConfigDict(
    {
      'root': '',  # dataset root: the built datasets are in ROOT/tfds
      'tfds_dir': '',  # or here
      'tfds_name': '',  # the dataset's folder name; '' = tps_<dataset>
      'read_threads': 2,  # grain threads reading records
      'prefetch_batches': 2,  # batches read ahead
      'worker_count': 0,  # grain worker processes decoding (0: none)
      'worker_buffer_size': 2,  # batches each worker holds
      'train_videos': 0,  # train on N of the train videos, drawn by the seed (0: all)
      **fields,
    }
  )


# Cascade R-CNN with an FPN as mmdetection trains it (tps_jax/models/cascade_rcnn.py
# `make_specs('mmdet')`): every RPN / RoI field is written here, so that any can be
# set on the command line (--config.model.roi.num_convs=4).
# Box deltas' log-scale clip: log(1000 / 16), mmdetection's and torchvision's.
LOG_SCALE_CLIP = math.log(1000.0 / 16)
CASCADE_RCNN_RPN = {
  'num_convs': 1,
  'pre_nms_top_n_train': 2000,
  'post_nms_top_n_train': 2000,
  'pre_nms_top_n_test': 1000,
  'post_nms_top_n_test': 1000,
  'nms_threshold': 0.7,
  'min_size': 0.001,
  'log_scale_clip': LOG_SCALE_CLIP,
  'pos_iou_thr': 0.7,
  'neg_iou_thr': 0.3,
  'min_pos_iou': 0.3,
  'low_quality_matches': 'mmdet',
  'allowed_border': 0.0,
  'ignore_iof_thr': 0.5,
  'num_samples': 256,
  'positive_fraction': 0.5,
  'smooth_l1_beta': 1.0 / 9.0,
  'cls_weight': 1.0,
  'box_weight': 1.0,
  # `AnchorGenerator.mmdet` arguments: scale 8, ratios 0.5 / 1 / 2, strides 4-64.
  'anchors': {'strides': (4, 8, 16, 32, 64), 'ratios': (0.5, 1.0, 2.0), 'scales': (8,)},
}
CASCADE_RCNN_ROI = {
  'num_stages': 3,
  'iou_thresholds': (0.5, 0.6, 0.7),  # each stage's positive IoU
  'box_stds': ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)),
  'stage_weights': (1.0, 0.5, 0.25),  # each stage's loss weight
  'class_agnostic': True,
  'num_levels': 4,
  'output_size': 7,
  'sampling_ratio': 0,
  'max_sampling_ratio': 4,
  'aligned': True,
  'level_rule': 'mmdet',
  'num_convs': 0,
  'conv_channels': 256,
  'norm': 'gn',
  'bn_mode': 'batch',
  'num_fcs': 2,
  'fc_dim': 1024,
  'num_samples': 512,
  'positive_fraction': 0.25,
  'ignore_iof_thr': 0.5,
  'box_loss': 'smooth_l1',
  'smooth_l1_beta': 1.0,
  'cls_weight': 1.0,
  'box_weight': 1.0,
  'score_threshold': 0.05,
  'nms_threshold': 0.5,
  'max_detections': 100,
  'max_candidates': None,
  'min_size': 0.0,
  'score_average': 'logits',
  'log_scale_clip': LOG_SCALE_CLIP,
}


def adamw(
  *,
  learning_rate: float,
  warmup_steps: int,
  weight_decay: float,
  grad_clip_norm: float,
  layer_decay: float = 1.0,
  ema_decay: float = 0.0,
  end_lr_ratio: float = 0.01,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
) -> ml_collections.ConfigDict:
  """`config.optim` (tps_jax/train/optim.py): AdamW, linear warm-up then cosine decay to
  `end_lr_ratio` of the peak; `layer_decay` < 1 scales a backbone's earlier layers' rates
  down; `ema_decay` > 0 keeps an exponential moving average of the parameters."""
  return ml_collections.ConfigDict(
    {
      'learning_rate': learning_rate,
      'warmup_steps': warmup_steps,
      'end_lr_ratio': end_lr_ratio,
      'b1': b1,
      'b2': b2,
      'eps': eps,
      'weight_decay': weight_decay,
      'grad_clip_norm': grad_clip_norm,
      'layer_decay': layer_decay,
      'ema_decay': ema_decay,
    }
  )


def detection_data(
  dataset: str, *, image_size: tuple[int, int], max_boxes: int
) -> ml_collections.ConfigDict:
  """`config.data` of a detector (`dataset`: humans | parts) with the report's
  augmentation: random crop, random rotation, horizontal flip (which swaps the left_* /
  right_* part labels)."""
  return data(
    dataset=dataset,
    eval_split='val',
    image_size=image_size,  # static (H, W): images resized, padded
    max_boxes=max_boxes,
    random_crop=True,
    crop_min_scale=0.5,  # crop sides in [s, 1] of the image
    scale_range=(1.0, 1.0),  # train images fill this fraction of the canvas (multi-scale)
    min_visible=0.3,  # boxes keeping less after crop / rotation: ignore
    random_rotation=10.0,  # degrees, uniform in [-r, r]
    flip=True,
  )


def cascade_rcnn_model(
  backbone: str, backbone_overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
  """`config.model` of a Cascade R-CNN with an FPN (mmdetection's):
  every RPN / RoI field is here, so that any can be set on the command line."""
  return ml_collections.ConfigDict(
    {
      'family': 'cascade_rcnn',
      'backbone': backbone,
      'backbone_overrides': backbone_overrides,
      'convention': 'mmdet',
      'neck': {'out_channels': 256},
      'rpn': copy.deepcopy(CASCADE_RCNN_RPN),
      'roi': copy.deepcopy(CASCADE_RCNN_ROI),
    }
  )


def tiny_cascade_rcnn(config: ml_collections.ConfigDict, *, max_detections: int) -> None:
  """The `:tiny` detectors' trainer and head settings (CPU, the synthetic dataset)."""
  config.total_steps = 400
  config.batch_size = 8
  config.log_steps = 25
  config.checkpoint_steps = 200
  config.eval_steps = 400  # COCO evaluation at the end only
  config.init_from.path = ''
  config.model.neck = {'out_channels': 64}
  config.model.rpn.update(
    pre_nms_top_n_train=300,
    post_nms_top_n_train=200,
    pre_nms_top_n_test=200,
    post_nms_top_n_test=100,
    allowed_border=None,
  )
  # Two samples per RoI bin and axis (torchvision's fixed rule) instead of up to four:
  # half the step time on CPU, where RoIAlign's backward dominates these small heads.
  config.model.roi.update(
    fc_dim=128, num_samples=128, sampling_ratio=2, max_detections=max_detections
  )
