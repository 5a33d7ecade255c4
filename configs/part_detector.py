r"""Part detector: Cascade R-CNN, Swin-L FPN, the ten body parts, on human crops.

  python -m tps_jax.convert --arch cascade_rcnn_swin_l_fpn \
      --input <mmdetection Cascade R-CNN Swin-L Objects365 checkpoint>.pth \
      --out weights/cascade_rcnn_swin_l_o365
  python -m data_prep.build --data_root DATA --datasets parts
  python run_train.py --config=configs/part_detector.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/part_detector.py \
      --export WORKDIR/export --split val --config.data.root=DATA

Expected: AP (COCO mAP@[.5:.95]) ~0.571 on the validation crops (the report, Table 1:
Cascade R-CNN Swin-L, Objects365-initialised, 50k images). `init_from` re-initialises
the Objects365 class heads; a checkpoint whose box heads are mmdetection's 4conv1fc
needs `--config.model.roi.num_convs=4 --config.model.roi.num_fcs=1`.

`:tiny` (CPU, the synthetic dataset): a Swin of width 32, two blocks per stage, on
128x96 crops.

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 48
  python -m data_prep.build --data_root /tmp/tps_syn --datasets humans,parts
  python run_train.py --config=configs/part_detector.py:tiny --workdir=/tmp/parts_tiny \
      --config.data.root=/tmp/tps_syn

Expected: AP ~0.11, AP50 ~0.28 (0 at initialisation; the left / right limbs are the
hard part).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.trainer(
    'detection',
    total_steps=40000,
    batch_size=16,
    log_steps=50,
    checkpoint_steps=1000,
    eval_steps=2000,
    init_from='weights/cascade_rcnn_swin_l_o365',
  )
  # Augmentation (the report): random crop, random rotation, horizontal flip.
  config.data = common.data(
    dataset='parts',  # the detection task's dataset: humans | parts
    eval_split='val',
    image_size=(768, 512),  # static (H, W): tall human crops, resized, padded
    max_boxes=16,
    random_crop=True,
    crop_min_scale=0.5,  # crop sides in [s, 1] of the image
    min_visible=0.3,  # boxes keeping less after crop / rotation: ignore
    random_rotation=10.0,  # degrees, uniform in [-r, r]
    flip=True,
  )  # swaps left_* / right_* labels
  # Every RPN / RoI field is here, so that any can be set on the command line.
  config.model = ml_collections.ConfigDict(
    {
      'family': 'cascade_rcnn',
      'backbone': 'swin_l',
      'backbone_overrides': {'drop_path_rate': 0.2},
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
    raise ValueError(f'configs/part_detector.py: unknown variant {arg!r} (known: tiny)')
  return config


def _tiny(config: ml_collections.ConfigDict) -> None:
  """A tiny Swin on small crops; trains on the synthetic data on CPU."""
  config.total_steps = 400
  config.batch_size = 8
  config.log_steps = 25
  config.checkpoint_steps = 200
  config.eval_steps = 400  # COCO evaluation at the end only
  config.init_from.path = ''
  config.data.image_size = (128, 96)
  config.data.max_boxes = 10
  config.model.backbone = 'swin_t'
  config.model.backbone_overrides = {
    'embed_dim': 32,
    'depths': (2, 2, 2, 2),
    'num_heads': (1, 2, 4, 8),
    'window_size': (4, 4),
    'drop_path_rate': 0.0,
  }
  config.model.neck = {'out_channels': 64}
  config.model.rpn.update(
    pre_nms_top_n_train=300,
    post_nms_top_n_train=200,
    pre_nms_top_n_test=200,
    post_nms_top_n_test=100,
    allowed_border=None,
  )
  config.model.rpn.anchors.scales = (4,)  # 16-256 pixels: the synthetic parts are small
  # Two samples per RoI bin and axis (torchvision's fixed rule) instead of up to four:
  # half the step time on CPU, where RoIAlign's backward dominates these small heads.
  config.model.roi.update(fc_dim=128, num_samples=128, sampling_ratio=2, max_detections=50)
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
