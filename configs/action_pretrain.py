r"""Action recogniser pre-training: Video Swin-B on a generic video classification set.

  python -m tps_jax.convert --arch swin3d_b --window 16,7,7 \
      --input swin_base_patch4_window7_224_22k.pth --out weights/swin3d_b_inflated
  python -m data_prep.build --video_folder SSV2 --name ssv2_clips
  python run_train.py --config=configs/action_pretrain.py --workdir=WORKDIR_PRE \
      --config.data.root=SSV2

Video Swin-B's published Something-Something v2 top-1 is 69.6%; the report gives no
pre-training figure. The report pre-trained on SSv2 because Kinetics pre-training was not allowed;
configs/action.py fine-tunes from WORKDIR_PRE. Any clips dataset with tps_action_clips'
features works (`data.tfds_name`; `data_prep.build --video_folder` makes one from class
sub-folders of videos). The network starts from a 2D ImageNet Swin-B inflated to 3D.

`:tiny` (CPU): the tiny Video Swin of configs/action.py:tiny on the train videos of a
second synthetic dataset (another seed), started from the part-state backbone trained
as configs/action.py shows; then the fine-tuning starts from it:

  python -m data_prep.make_synthetic --out /tmp/tps_syn_pre --seed 1 --videos 960
  python -m data_prep.build --video_folder /tmp/tps_syn_pre/train_videos --name syn_clips
  python run_train.py --config=configs/action_pretrain.py:tiny --workdir=/tmp/act_pre \
      --config.data.root=/tmp/tps_syn_pre/train_videos \
      --config.init_from.path=/tmp/ps/export --config.init_from.source_prefix=backbone/
  python run_train.py --config=configs/action.py:tiny --workdir=/tmp/act_ft \
      --config.data.root=/tmp/tps_syn --config.init_from.path=/tmp/act_pre

Expected: the README's Training table (row `configs/action_pretrain.py:tiny`) for the pre-training and
the fine-tuning from it, against the Quickstart's `action` rows straight from the
part-state backbone (one run each, not measured over seeds).
"""

from __future__ import annotations

import ml_collections

from configs import action, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = common.variants(arg, ('tiny',), 'configs/action_pretrain.py')
  config = action.get_config()  # the same network, loss and evaluation
  # Video Swin's SSv2 recipe: 60 epochs of SSv2's 168,913 videos at batch 64, 2.5 of
  # warmup; layer-wise lr decay 0.9 stands in for its 0.1x backbone lr.
  config.total_steps = 158_000
  config.log_steps = 100
  config.checkpoint_steps = 2000
  config.eval_steps = 10_000
  config.init_from.path = 'weights/swin3d_b_inflated'
  config.data.tfds_name = 'ssv2_clips'  # the name given to data_prep.build --name
  config.data.frame_stride = 1  # SSv2 is 12 fps: 32 frames ~ 2.7 s
  config.data.flip = False  # some SSv2 classes are left / right
  config.model.drop_path_rate = 0.3
  config.optim.learning_rate = 3e-4
  config.optim.warmup_steps = 6_600
  config.tta.clips, config.tta.crops = 1, 3
  if 'tiny' in variants:
    action.tiny(config)
    config.data.tfds_name = 'syn_clips'
  return config
