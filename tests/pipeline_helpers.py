"""Randomly initialised exports and bundles of the tiny configs, for pipeline tests.

They have the exact layout the trainer writes (export/variables, config.json,
metadata.json), so everything downstream -- load_export, bundles, predict -- runs as
it does on trained networks; only the numbers are meaningless (the oracles make the
scores checkable).
"""

import os

import numpy as np

from configs import action, human_detector, part_detector, part_state
from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import bundle as bundle_lib
from tps_jax.inference import export as export_lib
from tps_jax.inference.pipeline_options import PipelineOptions


def _micro_detector(config, backbone_overrides):
  config.model.backbone_overrides = backbone_overrides
  config.model.neck = {'out_channels': 16}
  config.model.rpn.update(pre_nms_top_n_test=50, post_nms_top_n_test=20)
  config.model.roi.update(fc_dim=16, max_detections=10, max_candidates=40)
  return config


def _micro_swin(overrides):
  return {**overrides, 'embed_dim': 16, 'depths': (1, 1, 1, 1), 'num_heads': (1, 1, 2, 2)}


def _micro_part_state():
  config = part_state.get_config('tiny')
  config.model.backbone_overrides = _micro_swin(config.model.backbone_overrides)
  config.model.update(roi_channels=8, hidden_dim=16, num_heads=2, mlp_dim=16, num_layers=1)
  return config


def _micro_action():
  config = action.get_config('tiny')
  config.model.overrides = _micro_swin(config.model.overrides)
  return config


# The tiny configs made smaller still: the same code paths, seconds to compile.
CONFIGS = {
  'human_detector': lambda: _micro_detector(
    human_detector.get_config('tiny'), {'depths': (1, 1, 1, 1), 'frozen_stages': -1}
  ),
  'part_detector': lambda: _micro_detector(
    part_detector.get_config('tiny'),
    _micro_swin(part_detector.get_config('tiny').model.backbone_overrides),
  ),
  'part_state': _micro_part_state,
  'action': _micro_action,
}


def write_random_export(workdir, kind, vocab: tps.Vocab, seed=0, config=None):
  """WORKDIR/export of a randomly initialised network of `kind`; returns its path."""
  config = config or CONFIGS[kind]()
  metadata = export_lib.metadata_for(kind, config, states=vocab.states, actions=vocab.actions)
  return export_lib.write_random_export(str(workdir), config, metadata, seed)


def write_random_bundle(tmp_path, root, **settings):
  """A bundle of four random tiny networks for the vocabularies of dataset `root`."""
  vocab = tps.Vocab.from_root(str(root))
  exports = {
    kind: write_random_export(os.path.join(tmp_path, kind), kind, vocab, seed=i)
    for i, kind in enumerate(CONFIGS)
  }
  return bundle_lib.write_bundle(
    os.path.join(tmp_path, 'bundle'),
    humans=exports['human_detector'],
    parts=exports['part_detector'],
    states=exports['part_state'],
    actions=[exports['action']],
    options=PipelineOptions(
      **{'max_humans': 3, 'frame_batch': 4, 'action_clips': 1, 'action_crops': 1, **settings}
    ),
  )


def random_frames(batch, canvas, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 255, (batch, *canvas, 3), dtype=np.uint8)
