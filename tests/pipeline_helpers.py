"""Randomly initialised exports and bundles of the tiny configs, for pipeline tests.

They have the exact layout the trainer writes (export/variables, config.json,
metadata.json), so everything downstream -- load_export, bundles, predict -- runs as
it does on trained networks; only the numbers are meaningless (the oracles make the
scores checkable).
"""
import os

import jax
import numpy as np

from configs import action, human_detector, part_detector, part_state
from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import bundle as bundle_lib
from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.train import checkpointing
from tps_jax.train import tasks


def _metadata(kind, vocab: tps.Vocab, config):
  norm = augment.normalization()
  data = config.data
  size = data.image_size
  hw = [size, size] if isinstance(size, int) else list(size)
  if kind == 'human_detector':
    return {'kind': kind, 'vocab': {'classes': ['person']},
            'preprocessing': {'image_size': hw, 'normalization': norm}}
  if kind == 'part_detector':
    return {'kind': kind, 'vocab': {'classes': list(tps.PARTS)},
            'preprocessing': {'image_size': hw, 'context': 0.1, 'normalization': norm}}
  if kind == 'part_state':
    return {'kind': kind, 'vocab': {'parts': list(tps.PARTS), 'states': list(vocab.states),
                                    'actions': list(vocab.actions)},
            'preprocessing': {'image_size': hw, 'resize': data.resize, 'context': 0.1,
                              'normalization': norm}}
  return {'kind': kind, 'vocab': {'actions': list(vocab.actions)},
          'preprocessing': {'num_frames': data.num_frames, 'frame_stride': data.frame_stride,
                            'image_size': hw, 'resize': data.resize, 'clip_short_side': 256,
                            'normalization': norm}}


CONFIGS = {'human_detector': lambda: human_detector.get_config('tiny'),
           'part_detector': lambda: part_detector.get_config('tiny'),
           'part_state': lambda: part_state.get_config('tiny'),
           'action': lambda: action.get_config('tiny')}


def write_random_export(workdir, kind, vocab: tps.Vocab, seed=0, config=None):
  """WORKDIR/export of a randomly initialised network of `kind`; returns its path."""
  config = config or CONFIGS[kind]()
  metadata = _metadata(kind, vocab, config)
  task = tasks.get_task(config.task, config, metadata=metadata)
  variables = jax.device_get(task.init_variables(jax.random.PRNGKey(seed)))
  return checkpointing.export(str(workdir), variables, config, metadata)


def write_random_bundle(tmp_path, root, **settings):
  """A bundle of four random tiny networks for the vocabularies of dataset `root`."""
  vocab = tps.Vocab.from_root(str(root))
  exports = {kind: write_random_export(os.path.join(tmp_path, kind), kind, vocab, seed=i)
             for i, kind in enumerate(CONFIGS)}
  return bundle_lib.write_bundle(
      os.path.join(tmp_path, 'bundle'), humans=exports['human_detector'],
      parts=exports['part_detector'], states=exports['part_state'],
      actions=[exports['action']],
      settings=pipeline_lib.Settings(**{'max_humans': 3, 'frame_batch': 4,
                                        'action_clips': 1, 'action_crops': 1, **settings}))


def random_frames(batch, canvas, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 255, (batch, *canvas, 3), dtype=np.uint8)
