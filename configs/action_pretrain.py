r"""Action recogniser pre-training: Video Swin-B on a generic video classification set.

The report pre-trained its Video Swin-B on Something-Something (Kinetics pre-training
was not allowed), then fine-tuned on Kinetics-TPS (configs/action.py). This config
trains on any clips dataset with the `tps_action_clips` schema (tps_jax/data/builders.py):
`data.dataset` names it, under `data.tfds_dir` or DATA_ROOT/tfds. A folder of class
sub-folders of videos becomes one with `python -m data_prep.build --video_folder`. The
network starts from a 2D ImageNet Swin-B inflated to 3D (patch embedding repeated over
the 2 frames of a patch and halved; bias tables repeated over time), head excluded.

Full config (Something-Something v2 arranged as SSV2/<class>/<id>.webm; Video Swin's
SSv2 recipe: window (16, 7, 7), 32 frames, no flip (some classes are left/right),
AdamW 3e-4 at batch 64, weight decay 0.05, 60 epochs, 2.5 of warmup; layer-wise lr
decay 0.9 stands in for its 0.1x backbone lr):

  python -m tps_jax.convert --arch swin3d_b --window 16,7,7 \
      --input swin_base_patch4_window7_224_22k.pth --out weights/swin3d_b_inflated
  python -m data_prep.build --video_folder SSV2 --name ssv2_clips
  python run_train.py --config=configs/action_pretrain.py --workdir=WORKDIR_PRE \
      --config.data.root=SSV2

Expected: `eval_top1` around 0.65-0.70 on the SSv2 validation videos (Video Swin-B's
published SSv2 result is 69.6% with 1 clip x 3 crops, from a Kinetics-400
initialisation; the report gives no pre-training figure). The fine-tuning config
starts from WORKDIR_PRE.

`:tiny` (CPU, minutes): the tiny Video Swin of configs/action.py:tiny (4 x 96 x 96
clips) on the train videos of a second synthetic dataset (another seed: videos the
fine-tuning data does not contain), as a class-folder dataset, starting from a trained
image Swin (here the backbone of configs/part_state.py:tiny, trained in /tmp/ps as
configs/action.py's docstring shows; a Swin this small does not learn the synthetic
actions from scratch on a CPU budget); then the fine-tuning starts from it:

  python -m data_prep.make_synthetic --out /tmp/tps_syn_pre --seed 1 --videos 960
  python -m data_prep.build --video_folder /tmp/tps_syn_pre/train_videos --name syn_clips
  python run_train.py --config=configs/action_pretrain.py:tiny --workdir=/tmp/act_pre \
      --config.data.root=/tmp/tps_syn_pre/train_videos \
      --config.init_from.path=/tmp/ps/export --config.init_from.source_prefix=backbone/
  python run_train.py --config=configs/action.py:tiny --workdir=/tmp/act_ft \
      --config.data.root=/tmp/tps_syn --config.init_from.path=/tmp/act_pre

Expected (measured on the 2-core CPU): see TINY_RESULT.
"""
from __future__ import annotations

import ml_collections

from tps_jax.tasks import action  # registers the 'action' task

TINY_RESULT = ('pre-training: val top-1 0.455 (0.468 with 2 clips x 3 crops) on the 77 val '
               'videos of the seed-1 set, 1000 steps; then the fine-tuning: 0.818 '
               '(0.883 with 2 x 3 views) on the seed-0 val videos, against 0.506 (0.597) '
               'when fine-tuning straight from the part-state backbone; chance 0.167')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = action.base_config()
  config.total_steps = 158_000          # 60 epochs of SSv2's 168,913 videos at batch 64
  config.batch_size = 64
  config.log_steps = 100
  config.checkpoint_steps = 2000
  config.eval_steps = 10_000
  config.bf16 = True                    # a GPU / TPU run; --config.bf16=False on CPU
  config.init_from.path = 'weights/swin3d_b_inflated'
  config.data = ml_collections.ConfigDict({
      'root': '',                       # DATA_ROOT: the datasets are under DATA_ROOT/tfds
      'tfds_dir': '',                   # or here
      'dataset': 'ssv2_clips',          # name given to data_prep.build --name
      'train_split': 'train',
      'eval_split': 'val',
      'num_frames': 32,
      'frame_stride': 1,                # SSv2 is 12 fps: 32 frames ~ 2.7 s
      'image_size': 224,
      'crop_area': (0.3, 1.0),
      'flip': False,
      'resize': 224,                    # eval: short side, then centre crop
      'worker_count': 8,
  })
  config.model.arch = 'swin3d_b'
  config.model.window_size = (16, 7, 7)
  config.model.drop_path_rate = 0.3
  config.optim.learning_rate = 3e-4
  config.optim.warmup_steps = 6_600
  config.tta.clips, config.tta.crops = 1, 3
  if arg == 'tiny':
    action.tiny(config)
    config.data.dataset = 'syn_clips'
  elif arg:
    raise ValueError(f'configs/action_pretrain.py: unknown variant {arg!r} (known: tiny)')
  return config
