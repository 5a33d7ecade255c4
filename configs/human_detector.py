r"""Human detector: Cascade R-CNN, ResNet-50 FPN, one class ('person'), on video frames.

  python -m tps_jax.convert --arch cascade_rcnn_r50_fpn \
      --input cascade_rcnn_r50_fpn_1x_coco.pth --out weights/cascade_rcnn_r50_coco
  python -m data_prep.build --data_root DATA --datasets humans
  python run_train.py --config=configs/human_detector.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/human_detector.py \
      --export WORKDIR/export --split val --config.data.root=DATA

The report's detector, COCO-initialised, reached 93% mAP on this task.
`init_from` re-initialises the COCO class heads (80 classes + background: printed as
shape mismatches) and loads everything else, the class-agnostic box regressors included.

`:tiny` (CPU, the synthetic dataset): a ResNet-18 with one block per stage on 128x160
frames.

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 48
  python -m data_prep.build --data_root /tmp/tps_syn --datasets humans,parts
  python run_train.py --config=configs/human_detector.py:tiny --workdir=/tmp/human_tiny \
      --config.data.root=/tmp/tps_syn

Expected: the README's Training table (row `configs/human_detector.py:tiny`); 0 at initialisation.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.variants(arg, ('tiny',), 'configs/human_detector.py')
  config = common.trainer(
    'detection',
    total_steps=20000,
    batch_size=16,
    log_steps=50,
    checkpoint_steps=1000,
    eval_steps=2000,
    init_from='weights/cascade_rcnn_r50_coco',
  )
  config.data = common.detection_data('humans', image_size=(800, 1344), max_boxes=32)
  config.model = common.cascade_rcnn_model('resnet50', {'frozen_stages': 1})
  config.optim = common.adamw(
    learning_rate=1e-4, warmup_steps=500, weight_decay=0.05, grad_clip_norm=10.0
  )
  if 'tiny' in variants:
    _tiny(config)
  return config


def _tiny(config: ml_collections.ConfigDict) -> None:
  """A small ResNet on small frames; trains on the synthetic data on CPU."""
  common.tiny_cascade_rcnn(config, max_detections=20)
  config.data.image_size = (128, 160)
  config.data.max_boxes = 8
  config.model.backbone = 'resnet18'
  config.model.backbone_overrides = {'depths': (1, 1, 1, 1), 'frozen_stages': -1}
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
