r"""The demo: tiny part-state and action networks trained on the synthetic dataset.

  python run_train.py --config=configs/demo.py --workdir=/tmp/tps_demo

On a fresh machine this writes the embedded synthetic Kinetics-TPS dataset (960
videos in the official layout, `python -m data_prep.make_synthetic`) into
`<workdir>/Kinetics-TPS` unless `--config.data.root` names one, builds its TFDS
datasets (`python -m data_prep.build`), trains `configs/part_state.py:tiny` and
`configs/action.py:tiny` with the one trainer (in `<workdir>/part_state` and
`<workdir>/action`: metrics.jsonl, TensorBoard events, checkpoints, export/) and prints
each network's validation top-1 beside uniform chance and the majority-class rate.
A rerun resumes where it stopped.

Expected on 2 CPU cores: see RESULT.

`:smoke` runs the same chain on 24 videos for a few steps (what the tests run).
"""
from __future__ import annotations

import ml_collections

RESULT = '''6 min wall, 1.8 GB peak RSS (960 videos, --jobs 2):
  stage       metric     value    chance  majority
  part_state  top1       0.957     0.077     0.719
  action      top1       0.506     0.167     0.156
              +views     0.597'''


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stages = ['part_state=configs/part_state.py:tiny',
                   'action=configs/action.py:tiny']
  config.data = ml_collections.ConfigDict({
      'root': '',            # '' = <workdir>/Kinetics-TPS, written when absent
      'videos': 960,         # synthetic videos (train + test); fewer and the action
                             # network learns the backgrounds
      'seed': 0,
      'jobs': 0,             # processes writing and building the dataset (0: all CPUs)
      'build_stages': ['part_states', 'action_clips']})
  # The action network's Swin starts from the part-state network's (inflated to 3D).
  config.stage_init = ml_collections.ConfigDict(
      {'action': {'from': 'part_state', 'source_prefix': 'backbone/'}})
  config.stage_overrides = ml_collections.ConfigDict()
  if arg == 'smoke':
    config.data.videos = 24
    config.stage_overrides = ml_collections.ConfigDict({
        'total_steps': 4, 'log_steps': 2, 'checkpoint_steps': 4, 'eval_steps': 4})
  elif arg:
    raise ValueError(f'configs/demo.py: unknown variant {arg!r} (known: smoke)')
  return config
