r"""Part detector: Cascade R-CNN, Swin-L FPN, the ten body parts, on human crops.

Full config (the report, Table 1: Cascade R-CNN Swin-L on 50k images, 57.1 mAP;
Objects365-initialised):

  python -m tps_jax.convert --arch cascade_rcnn_swin_l_fpn \
      --input <mmdetection Cascade R-CNN Swin-L Objects365 checkpoint>.pth \
      --out weights/cascade_rcnn_swin_l_o365
  python -m data_prep.build --data_root DATA --stages parts
  python run_train.py --config=configs/part_detector.py --workdir=WORKDIR \
      --config.data.root=DATA
  python -m tps_jax.evaluate_detector --config configs/part_detector.py \
      --export WORKDIR/export --split val --config.data.root=DATA

Expected: AP (COCO mAP@[.5:.95]) ~0.571 on the validation crops. The Objects365 class
heads (365 classes + background) are re-initialised by `init_from` (shape mismatch);
backbone, FPN, RPN, the stages' FCs and class-agnostic regressors load. A checkpoint
whose box heads are mmdetection's 4conv1fc (Swin-Transformer-Object-Detection) needs
`--config.model.roi.num_convs=4 --config.model.roi.num_fcs=1` to load its heads.
Augmentation (report): random crop, random rotation, horizontal flip swapping the
left / right part labels (`config.data`).

`:tiny` (CPU, synthetic data, minutes): a Swin of width 32 with two blocks per stage
(window 4) on 128x96 crops, anchors 16-256 pixels, 400 steps of 8 crops.

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 48
  python -m data_prep.build --data_root /tmp/tps_syn --stages humans,parts
  python run_train.py --config=configs/part_detector.py:tiny --workdir=/tmp/parts_tiny \
      --config.data.root=/tmp/tps_syn

Expected (measured on the shared 2-core CPU: 12 min, 4.5 crops/s): eval AP 0.11,
AP50 0.28 on the 33 validation crops (head 0.41, torso 0.23; the left / right limbs are
the hard part), from 0 at initialisation.
"""
from __future__ import annotations

import ml_collections

from tps_jax.tasks import detection


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = detection.base_config()
  config.total_steps = 40000
  config.batch_size = 16
  config.init_from.path = "weights/cascade_rcnn_swin_l_o365"
  config.data = ml_collections.ConfigDict({
      "root": "",
      "tfds_dir": "",                  # datasets elsewhere than ROOT/tfds
      "stage": "parts",
      "eval_split": "val",
      "image_size": (768, 512),        # static (H, W): tall human crops, resized, padded
      "max_boxes": 16,
      "random_crop": True,
      "crop_min_scale": 0.5,           # crop sides in [s, 1] of the image
      "min_visible": 0.3,              # boxes keeping less after crop / rotation: ignore
      "random_rotation": 10.0,         # degrees, uniform in [-r, r]
      "flip": True,                    # swaps left_* / right_* labels
      "worker_count": 0,               # grain worker processes
  })
  config.model.backbone = "swin_l"
  config.model.backbone_overrides = {"drop_path_rate": 0.2}
  if arg == "tiny":
    _tiny(config)
  elif arg:
    raise ValueError(f"configs/part_detector.py: unknown variant {arg!r} (known: tiny)")
  return config


def _tiny(config: ml_collections.ConfigDict) -> None:
  """A tiny Swin on small crops; trains on the synthetic data on CPU."""
  config.total_steps = 400
  config.batch_size = 8
  config.log_steps = 25
  config.checkpoint_steps = 200
  config.eval_steps = 400                # COCO evaluation at the end only
  config.init_from.path = ""
  config.data.image_size = (128, 96)
  config.data.max_boxes = 10
  config.model.backbone = "swin_t"
  config.model.backbone_overrides = {"embed_dim": 32, "depths": (2, 2, 2, 2),
                                     "num_heads": (1, 2, 4, 8), "window_size": (4, 4),
                                     "drop_path_rate": 0.0}
  config.model.neck = {"out_channels": 64}
  config.model.rpn.update(pre_nms_top_n_train=300, post_nms_top_n_train=200,
                          pre_nms_top_n_test=200, post_nms_top_n_test=100,
                          allowed_border=None)
  config.model.rpn.anchors.scales = (4,)   # 16-256 pixels: the synthetic parts are small
  # Two samples per RoI bin and axis (torchvision's fixed rule) instead of up to four:
  # half the step time on CPU, where RoIAlign's backward dominates these small heads.
  config.model.roi.update(fc_dim=128, num_samples=128, sampling_ratio=2, max_detections=50)
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 1e-4
