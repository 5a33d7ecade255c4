r"""Part detector baseline: GFL (Generalized Focal Loss), ResNeXt-101 32x4d FPN, on human crops.

  python -m tps_jax.convert --arch gfl_x101_32x4d_fpn \
      --input <mmdetection gfl_x101_32x4d_fpn_mstrain_2x_coco checkpoint>.pth \
      --out weights/gfl_x101_coco
  python -m data_prep.build --data_root DATA --datasets parts
  python run_train.py --config=configs/part_detector_gfl.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/part_detector_gfl.py \
      --export WORKDIR/export --split val --config.data.root=DATA

The report's Table 1 gives this detector 56.6% COCO mAP@[.5:.95] with all (~50k)
training crops. Data, augmentation and trainer settings are
configs/part_detector.py's.

Pseudo-labels (report section 2.2.2, Table 2): label the training crops with the trained
detector, rebuild the part dataset with them, train again:

  python -m data_prep.pseudo_label --config configs/part_detector_gfl.py \
      --export WORKDIR/export --data_root DATA --out DATA/pseudo_parts.json \
      [--pseudo_positive 0.4 --pseudo_low 0.1]
  python -m data_prep.build --data_root DATA --datasets parts --overwrite \
      --pseudo_labels DATA/pseudo_parts.json --pseudo_positive 0.4 --pseudo_low 0.1
  python run_train.py --config=configs/part_detector_gfl.py --workdir=WORKDIR_PSEUDO \
      --config.data.root=DATA

The report found no gain (56.7% against 56.6%).

`:tiny` (CPU, the synthetic dataset): a one-block-per-stage ResNet-18 on 128x96 crops.

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 24
  python -m data_prep.build --data_root /tmp/tps_syn --datasets parts
  python run_train.py --config=configs/part_detector_gfl.py:tiny \
      --workdir=/tmp/parts_gfl_tiny --config.data.root=/tmp/tps_syn

Expected: the README's Training table (row `configs/part_detector_gfl.py:tiny`).

`:v2`: GFL v2 (Li et al. 2021), the version the report's Table 1 cites: the head's
distribution-guided quality predictor (DGQP: the top-4 probabilities and their mean of
each side's distribution, through 1x1 convs of 64 and 1, a sigmoid) scales the class
score. From mmdetection's GFocalHead / the official GFocalV2 release (its keys
`bbox_head.reg_conf.0` / `.2` are read by the same converter, which sets `dgqp`):

  python -m tps_jax.convert --arch gfl_x101_32x4d_fpn \
      --input <GFocalV2 X-101-32x4d checkpoint>.pth --out weights/gflv2_x101_coco
  python run_train.py --config=configs/part_detector_gfl.py:v2 --workdir=WORKDIR \
      --config.data.root=DATA

(`:tiny,v2` on the synthetic data.) The five-thousand-crop rows of Table 1 are the same
commands with `--config.data.train_videos=N` (N videos' crops, drawn by the seed).
"""

from __future__ import annotations

import ml_collections

from configs import common, part_detector


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.variants(arg, ('tiny', 'v2'), 'configs/part_detector_gfl.py')
  config = part_detector.get_config('tiny' if 'tiny' in variants else None)
  config.init_from.path = 'weights/gfl_x101_coco'
  config.model = ml_collections.ConfigDict(
    {
      'family': 'gfl',
      'backbone': 'resnext101_32x4d',
      'backbone_overrides': {'frozen_stages': 1},
      'neck': {'out_channels': 256},
      'head': {},  # tps_jax.models.gfl.GFLSpec fields
    }
  )
  if 'v2' in variants:
    config.init_from.path = 'weights/gflv2_x101_coco'
    config.model.head = {'dgqp': True, 'reg_topk': 4, 'reg_channels': 64}
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
  config.model.head.update(num_convs=2, feat_channels=64, num_groups=16, max_detections=50)
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
