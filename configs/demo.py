r"""The demo: the whole system, trained and scored end to end on the synthetic dataset.

  python run_train.py --config=configs/demo.py --workdir=/tmp/tps_demo

Writes the embedded synthetic Kinetics-TPS dataset (960 videos in the official layout)
into `<workdir>/Kinetics-TPS` unless `--config.data.root` names one, builds its TFDS
datasets, trains the four tiny networks with the one trainer -- human detector,
part detector, part-state network, action recogniser (started from the part-state
network's Swin, inflated to 3D) -- bundles them (`<workdir>/bundle`), parses the
validation videos end to end (`<workdir>/predictions`) and prints every stage's
validation result beside its baselines, then the challenge score with the oracle
ablation (which stage costs how much) and the majority-state baseline, and where the
system's error-analysis page is (<workdir>/predictions/report/index.html, `python -m
tps_jax.report`'s). A rerun resumes where it stopped (tps_jax/chain.py).

The demo trains the human detector for 250 steps and the part-state network for 300
(`stage_overrides` below); the part detector and the action recogniser train as their
`:tiny` configs say. `:smoke` runs the chain on 24 videos for a few steps (what the
tests run). There is no shorter variant that still learns: with about half the steps
(200 / 200 / 250 / 500) the part detector barely finds parts and the action recogniser
stays at chance, so every end-to-end row but the oracles' is near zero.

  python run_train.py --config=configs/demo.py --workdir=DIR --config.stage_overrides.seed=1

trains every stage from another seed (`stage_overrides.seed`; the dataset stays the
same: `data.seed`). Expected: the README's Quickstart, its time and its table, every
figure the range over seeds 0, 1 and 2; with every stage replaced by the ground truth,
the best possible score (docs/score.md).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ('smoke',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, *VARIANTS):
    raise ValueError(f'configs/demo.py: unknown variant {arg!r} (known: {", ".join(VARIANTS)})')
  config = ml_collections.ConfigDict()
  config.stages = [
    'human_detector=configs/human_detector.py:tiny',
    'part_detector=configs/part_detector.py:tiny',
    'part_state=configs/part_state.py:tiny',
    'action=configs/action.py:tiny',
  ]
  config.data = ml_collections.ConfigDict(
    {
      'root': '',  # '' = <workdir>/Kinetics-TPS, written when absent
      'videos': 960,  # synthetic videos (train + test); fewer and the action
      # network learns the backgrounds
      'seed': 0,
      'jobs': 0,  # processes writing and building the dataset (0: all CPUs)
      'datasets': ['humans', 'parts', 'part_states', 'action_clips'],
    }
  )  # built
  # The action network's Swin starts from the part-state network's (inflated to 3D).
  config.stage_init = ml_collections.ConfigDict(
    {'action': {'from': 'part_state', 'source_prefix': 'backbone/'}}
  )
  # Fewer steps than the :tiny configs for two networks keep the whole system within
  # about 20 minutes on 2 CPU cores: the human detector (250 steps give the Quickstart's
  # row, the :tiny 400 little more) and the part-state network (300 steps against the
  # :tiny 500 of the README's Training table). Not the part detector: 300 steps cost it
  # a fifth of its AP50, and it is already the stage the end-to-end score loses most to
  # (the gap between the "oracle humans" rows).
  config.stage_overrides = ml_collections.ConfigDict(
    {
      'seed': 0,  # every stage's training seed: --config.stage_overrides.seed=N
      'human_detector': {'total_steps': 250, 'eval_steps': 250, 'checkpoint_steps': 250},
      'part_state': {'total_steps': 300, 'eval_steps': 300, 'checkpoint_steps': 300},
    }
  )
  config.allow_config_change = False  # resume stages whose settings changed
  # The end-to-end evaluation (`settings`: tps_jax/inference/pipeline_options.py): the
  # synthetic frames hold at most three people; one proposal per part.
  config.pipeline = ml_collections.ConfigDict(
    {
      'split': 'val',
      'settings': {
        'max_humans': 3,
        'proposals_per_part': 1,
        'human_score_threshold': 0.5,
        'part_score_threshold': 0.2,
        'frame_batch': 8,
        'action_clips': 2,
        'action_crops': 3,
      },
    }
  )
  if arg == 'smoke':
    config.data.videos = 24
    config.stage_overrides = ml_collections.ConfigDict(
      {'seed': 0, 'total_steps': 4, 'log_steps': 2, 'checkpoint_steps': 4, 'eval_steps': 4}
    )
  return config
