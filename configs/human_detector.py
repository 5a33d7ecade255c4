r"""Human detector: Cascade R-CNN, ResNet-50 FPN, one class ('person'), on video frames.

  python -m tps_jax.convert --arch cascade_rcnn_r50_fpn \
      --input cascade_rcnn_r50_fpn_1x_coco.pth --out weights/cascade_rcnn_r50_coco
  python -m data_prep.build --data_root DATA --datasets humans
  python run_train.py --config=configs/human_detector.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/human_detector.py \
      --export WORKDIR/export --split val --config.data.root=DATA

Expected: AP50 ~0.93 on the validation videos (the report's 93% mAP, COCO-initialised).
`init_from` re-initialises the COCO class heads (80 classes + background: printed as
shape mismatches) and loads everything else, the class-agnostic box regressors included.

`:tiny` (CPU, the synthetic dataset): a ResNet-18 with one block per stage on 128x160
frames.

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 48
  python -m data_prep.build --data_root /tmp/tps_syn --datasets humans,parts
  python run_train.py --config=configs/human_detector.py:tiny --workdir=/tmp/human_tiny \
      --config.data.root=/tmp/tps_syn

Expected: AP50 ~0.85, AP ~0.18 (0 at initialisation).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.trainer(
    'detection',
    total_steps=20000,
    batch_size=16,
    log_steps=50,
    checkpoint_steps=1000,
    eval_steps=2000,
    init_from='weights/cascade_rcnn_r50_coco',
  )
  config.data = common.data(
    dataset='humans',  # the detection task's dataset: humans | parts
    eval_split='val',
    image_size=(800, 1344),  # static (H, W): frames resized, padded
    max_boxes=32,
    random_crop=True,
    crop_min_scale=0.5,  # crop sides in [s, 1] of the image
    min_visible=0.3,  # boxes keeping less after crop / rotation: ignore
    random_rotation=10.0,  # degrees, uniform in [-r, r]
    flip=True,
  )
  # mmdetection's Cascade R-CNN R-50 FPN (shared/design.md); every RPN / RoI field is
  # here, so that any can be set on the command line.
  config.model = ml_collections.ConfigDict(
    {
      'family': 'cascade_rcnn',
      'backbone': 'resnet50',
      'backbone_overrides': {'frozen_stages': 1},
      'convention': 'mmdet',
      'neck': {'out_channels': 256},
      'rpn': common.cascade_rcnn_settings('rpn'),
      'roi': common.cascade_rcnn_settings('roi'),
    }
  )
  config.optim = ml_collections.ConfigDict(
    {
      'learning_rate': 1e-4,
      'warmup_steps': 500,
      'end_lr_ratio': 0.01,
      'b1': 0.9,
      'b2': 0.999,
      'eps': 1e-8,
      'weight_decay': 0.05,
      'grad_clip_norm': 10.0,
      'layer_decay': 1.0,
      'ema_decay': 0.0,
    }
  )
  if arg == 'tiny':
    _tiny(config)
  elif arg:
    raise ValueError(f'configs/human_detector.py: unknown variant {arg!r} (known: tiny)')
  return config


def _tiny(config: ml_collections.ConfigDict) -> None:
  """A small ResNet on small frames; trains on the synthetic data on CPU."""
  config.total_steps = 400
  config.batch_size = 8
  config.log_steps = 25
  config.checkpoint_steps = 200
  config.eval_steps = 400  # COCO evaluation at the end only
  config.init_from.path = ''
  config.data.image_size = (128, 160)
  config.data.max_boxes = 8
  config.model.backbone = 'resnet18'
  config.model.backbone_overrides = {'depths': (1, 1, 1, 1), 'frozen_stages': -1}
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
  config.model.roi.update(fc_dim=128, num_samples=128, sampling_ratio=2, max_detections=20)
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
