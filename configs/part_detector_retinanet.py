r"""Part detector baseline: RetinaNet, ResNet-50 FPN, the ten body parts, on human crops.

  python -m tps_jax.convert --arch retinanet_r50_fpn \
      --input <mmdetection retinanet_r50_fpn_1x_coco checkpoint>.pth \
      --out weights/retinanet_r50_coco
  python -m data_prep.build --data_root DATA --datasets parts
  python run_train.py --config=configs/part_detector_retinanet.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/part_detector_retinanet.py \
      --export WORKDIR/export --split val --config.data.root=DATA

The report's Table 1 gives this detector about 25% COCO mAP@[.5:.95] when trained on 5k
crops. Data, augmentation and trainer settings are
configs/part_detector.py's (the same crops as the Cascade R-CNN it is compared with).
torchvision's COCO RetinaNet loads too (`--arch retinanet_resnet50_fpn` with
`--config.model.convention=torchvision`).

`:tiny` (CPU, the synthetic dataset): a one-block-per-stage ResNet-18 on 128x96 crops,
anchors half mmdetection's size (the synthetic parts are 8-60 pixels).

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 24
  python -m data_prep.build --data_root /tmp/tps_syn --datasets parts
  python run_train.py --config=configs/part_detector_retinanet.py:tiny \
      --workdir=/tmp/parts_retinanet_tiny --config.data.root=/tmp/tps_syn

Expected: the README's Training table (row `configs/part_detector_retinanet.py:tiny`).
"""

from __future__ import annotations

import ml_collections

from configs import common, part_detector


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.variants(arg, ('tiny',), 'configs/part_detector_retinanet.py')
  config = part_detector.get_config(arg)
  config.total_steps = 4000  # ~12 epochs of 5k crops at batch 16
  config.init_from.path = 'weights/retinanet_r50_coco'
  config.model = ml_collections.ConfigDict(
    {
      'family': 'retinanet',
      'backbone': 'resnet50',
      'backbone_overrides': {'frozen_stages': 1},
      'convention': 'mmdet',  # 'torchvision' for torchvision's weights
      'neck': {'out_channels': 256},
      'head': {},  # tps_jax.models.retinanet.RetinaNetSpec fields
    }
  )
  if 'tiny' in variants:
    _tiny(config)
  return config


def _tiny(config: ml_collections.ConfigDict) -> None:
  """Trainer and data settings of part_detector.py:tiny; a small ResNet and head."""
  config.total_steps = 300
  config.init_from.path = ''
  config.model.backbone = 'resnet18'
  config.model.backbone_overrides = {'depths': (1, 1, 1, 1), 'frozen_stages': -1}
  config.model.neck = {'out_channels': 64}
  config.model.head = {
    'num_convs': 2,
    'feat_channels': 64,
    'max_detections': 50,
    'anchors': {
      'strides': (8, 16, 32, 64, 128),
      'ratios': (0.5, 1.0, 2.0),
      'octave_base_scale': 2,
      'scales_per_octave': 3,
    },
  }
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
