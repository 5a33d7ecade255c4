r"""Part detector: Cascade R-CNN, Swin-L FPN, the ten body parts, on human crops.

  python -m tps_jax.convert --arch cascade_rcnn_swin_l_fpn \
      --input <mmdetection Cascade R-CNN Swin-L Objects365 checkpoint>.pth \
      --out weights/cascade_rcnn_swin_l_o365
  python -m data_prep.build --data_root DATA --datasets parts
  python run_train.py --config=configs/part_detector.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/part_detector.py \
      --export WORKDIR/export --split val --config.data.root=DATA

The report's Table 1 gives this detector (Cascade R-CNN Swin-L, Objects365-initialised,
50k images) 57.1% COCO mAP@[.5:.95]. `init_from` re-initialises
the Objects365 class heads; a checkpoint whose box heads are mmdetection's 4conv1fc
needs `--config.model.roi.num_convs=4 --config.model.roi.num_fcs=1`.

`:tiny` (CPU, the synthetic dataset): a Swin of width 32, two blocks per stage, on
128x96 crops.

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 48
  python -m data_prep.build --data_root /tmp/tps_syn --datasets humans,parts
  python run_train.py --config=configs/part_detector.py:tiny --workdir=/tmp/parts_tiny \
      --config.data.root=/tmp/tps_syn

Expected: the README's Training table (row `configs/part_detector.py:tiny`), which points to the
Quickstart's `part_detector` row; 0 at initialisation (the left / right limbs are the
hard part).

`:official`: the official Swin detection release's recipe
(SwinTransformer/Swin-Transformer-Object-Detection,
`cascade_mask_rcnn_swin_*_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco`):
box heads of 4 bias-free convs + BatchNorm (statistics of the global batch, the
release's SyncBN) and one FC, class-specific regression, GIoU loss (weight 10) on the
decoded boxes, AdamW (lr 1e-4, weight decay 0.05) and multi-scale training (short side
480-800 of 800: the crops fill 0.6-1 of the canvas). The release ships Swin-T / S / B;
started from its Swin-B (the mask branch is skipped, the 80 COCO classes re-initialised
for the ten parts):

  python -m tps_jax.convert --arch cascade_rcnn_swin_b_fpn \
      --input cascade_mask_rcnn_swin_base_patch4_window7.pth \
      --out weights/cascade_mask_rcnn_swin_b_coco
  python run_train.py --config=configs/part_detector.py:official --workdir=WORKDIR \
      --config.data.root=DATA

`:tiny,official`: the same heads and losses on the tiny model (convs 64 wide; the
tiny optimiser).
"""

from __future__ import annotations

import ml_collections

from configs import common, human_detector


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.variants(arg, ('tiny', 'official'), 'configs/part_detector.py')
  # The human detector's recipe (the same Cascade R-CNN, loss and optimiser) on the
  # human crops, with a Swin-L backbone and twice the steps.
  config = human_detector.get_config()
  config.total_steps = 40000
  config.init_from.path = 'weights/cascade_rcnn_swin_l_o365'
  config.data.update(dataset='parts', image_size=(768, 512), max_boxes=16)  # tall crops
  config.model.backbone = 'swin_l'
  config.model.backbone_overrides = {'drop_path_rate': 0.2}
  if 'official' in variants:
    _official(config)
  if 'tiny' in variants:
    _tiny(config)
  return config


def _official(config: ml_collections.ConfigDict) -> None:
  """The Swin detection release's heads, losses, optimiser and scales (module docstring)."""
  config.init_from.path = 'weights/cascade_mask_rcnn_swin_b_coco'
  config.model.backbone = 'swin_b'
  config.model.roi.update(
    num_convs=4,
    num_fcs=1,
    norm='bn',
    bn_mode='batch',
    class_agnostic=False,
    box_loss='giou',
    box_weight=10.0,
  )
  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 0.05
  config.data.scale_range = (0.6, 1.0)


def _tiny(config: ml_collections.ConfigDict) -> None:
  """A tiny Swin on small crops; trains on the synthetic data on CPU."""
  common.tiny_cascade_rcnn(config, max_detections=50)
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
  config.model.rpn.anchors.scales = (4,)  # 16-256 pixels: the synthetic parts are small
  config.model.roi.conv_channels = 64  # the convs of `:official`'s heads
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
