r"""Action recogniser: Video Swin-B fine-tuned on Kinetics-TPS from its pre-training.

The report's recogniser (shared/design.md): Video Swin-B pre-trained on
Something-Something (configs/action_pretrain.py; Kinetics pre-training was not allowed),
fine-tuned on the 24 Kinetics-TPS actions, evaluated with test-time augmentation and an
ensemble of checkpoints. The class list is read from the dataset. `init_from` takes
the pre-training workdir (its latest checkpoint) or its export/; the head is excluded
(another class count): the trainer prints the restored leaves and the re-initialised
head. The window stays (16, 7, 7) so the pre-trained bias tables fit.

Full config (Video Swin's Kinetics fine-tuning: 32 frames 2 apart, 224 crops, flips;
30 epochs of the ~3.4k training videos at batch 64; then 4 clips x 3 crops):

  python -m data_prep.build --data_root DATA --stages action_clips
  python run_train.py --config=configs/action.py --workdir=WORKDIR \
      --config.data.root=DATA --config.init_from.path=WORKDIR_PRE
  python -m tps_jax.evaluate_action --export WORKDIR/export[,WORKDIR2/export...] \
      --data_root DATA --clips 4 --crops 3 --split val
  python -m tps_jax.evaluate_action --export WORKDIR/export,... --data_root DATA \
      --split test --out SUBMISSION_DIR        # writes pred_vid_result.json

Expected: top-1 ~0.93 (the report's action accuracy, with TTA and ensembling).

`:tiny` (CPU, minutes; the synthetic dataset): a Video Swin of width 32 on 4 x 96 x 96
clips that starts, as the report's starts from an image Swin, from a trained image
Swin: the backbone of configs/part_state.py:tiny (the demo, configs/demo.py, runs
exactly this chain), or the tiny pre-training of configs/action_pretrain.py:

  python -m data_prep.make_synthetic --out /tmp/tps_syn --videos 960
  python -m data_prep.build --data_root /tmp/tps_syn --stages part_states,action_clips
  python run_train.py --config=configs/part_state.py:tiny --workdir=/tmp/ps \
      --config.data.root=/tmp/tps_syn
  python run_train.py --config=configs/action.py:tiny --workdir=/tmp/act \
      --config.data.root=/tmp/tps_syn --config.init_from.path=/tmp/ps/export \
      --config.init_from.source_prefix=backbone/
  python -m tps_jax.evaluate_action --export /tmp/act/export --clips 2 --crops 3

Expected (measured on the 2-core CPU, 1000 steps of 16 clips, ~3.5 min): see
TINY_RESULT. From scratch the same network stays near chance within this budget.
"""
from __future__ import annotations

import ml_collections

from tps_jax.tasks import action  # registers the 'action' task

TINY_RESULT = ('val top-1 0.506 (1 view), 0.597 (2 clips x 3 crops) on 77 videos; '
               'chance 0.167, majority class 0.156')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = action.base_config()
  config.total_steps = 1_600            # 30 epochs of ~3.4k videos at batch 64
  config.batch_size = 64
  config.log_steps = 20
  config.checkpoint_steps = 400
  config.eval_steps = 400
  config.bf16 = True                    # a GPU / TPU run; --config.bf16=False on CPU
  config.init_from.path = 'workdirs/action_pretrain'
  config.data = ml_collections.ConfigDict({
      'root': '',                       # Kinetics-TPS root; datasets under ROOT/tfds
      'tfds_dir': '',
      'dataset': 'tps_action_clips',
      'train_split': 'train',
      'eval_split': 'val',
      'num_frames': 32,
      'frame_stride': 2,
      'image_size': 224,
      'crop_area': (0.3, 1.0),
      'flip': True,
      'resize': 224,
      'worker_count': 8,
  })
  config.model.arch = 'swin3d_b'
  config.model.window_size = (16, 7, 7)
  config.model.drop_path_rate = 0.2
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 160
  config.tta.clips, config.tta.crops = 4, 3
  if arg == 'tiny':
    action.tiny(config)
  elif arg:
    raise ValueError(f'configs/action.py: unknown variant {arg!r} (known: tiny)')
  return config
