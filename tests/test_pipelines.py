"""grain pipelines: documented keys / static shapes, determinism, resume, sharding, eval
counts, state balancing."""

import math
import os
import shutil

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.data_configs import data_config
from tps_jax.data import augment, tfds_layout
from tps_jax.data import kinetics_tps as tps
from tps_jax.datasets import build
from tps_jax.input import pipelines, resample

DATA = {
  'humans': {'image_size': (48, 64), 'max_boxes': 4, 'random_rotation': 10.0, 'random_crop': True},
  'parts': {'image_size': (64, 40), 'max_boxes': 12, 'random_rotation': 10.0, 'random_crop': True},
  'part_states': {'image_size': 40, 'resize': 48},
  'action_clips': {'num_frames': 4, 'frame_stride': 2, 'image_size': 32},
}
KEYS = {
  'humans': {
    'image': ((48, 64, 3), np.float32),
    'boxes': ((4, 4), np.float32),
    'labels': ((4,), np.int32),
    'valid': ((4,), np.bool_),
    'ignore': ((4,), np.bool_),
    'image_size': ((2,), np.int32),
    'scale': ((), np.float32),
  },
  'part_states': {
    'image': ((40, 40, 3), np.float32),
    'part_boxes': ((10, 4), np.float32),
    'part_valid': ((10,), np.bool_),
    'part_state': ((10,), np.int32),
    'action': ((), np.int32),
  },
  'action_clips': {'clip': ((4, 32, 32, 3), np.float32), 'label': ((), np.int32)},
}
KEYS['parts'] = {
  **KEYS['humans'],
  'image': ((64, 40, 3), np.float32),
  'boxes': ((12, 4), np.float32),
  'labels': ((12,), np.int32),
  'valid': ((12,), np.bool_),
  'ignore': ((12,), np.bool_),
}


@pytest.fixture(scope='module')
def root(synthetic_root, tmp_path_factory):
  root = tmp_path_factory.mktemp('pipelines') / 'root'
  shutil.copytree(synthetic_root, root)
  assert build.build_datasets(str(root), val_fraction=0.4, progress=False) == []
  return str(root)


def _config(root, dataset, **data):
  config = data_config(dataset, root=root, **DATA[dataset], **data)
  config.batch_size = 4
  return config


def _pipeline(root, stage, *, train=True, seed=0, shard=(0, 1), batch_size=3, **data):
  return pipelines.make_pipeline(
    stage,
    _config(root, stage, **data),
    'train' if train else 'val',
    train=train,
    seed=seed,
    shard=shard,
    batch_size=batch_size,
  )


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  for a, b in zip(batches_a, batches_b, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _num_examples(root, dataset, split):
  name = tfds_layout.TFDS_NAMES[dataset]
  return len(
    tfds.builder_from_directory(
      tfds_layout.dataset_dir(os.path.join(root, 'tfds'), name)
    ).as_data_source(split)
  )


@pytest.mark.parametrize('stage', list(KEYS))
def test_batches_have_the_documented_keys_shapes_and_dtypes(root, stage):
  for train in (True, False):
    batch = next(_pipeline(root, stage, train=train))
    assert set(batch) == set(KEYS[stage])
    rows = len(batch[next(iter(batch))])
    assert rows == 3 or not train
    for key, (shape, dtype) in KEYS[stage].items():
      assert batch[key].shape == (rows, *shape), key
      assert batch[key].dtype == dtype, key
    images = batch['clip' if stage == 'action_clips' else 'image']
    assert -2.2 < images.min() < 0 < images.max() < 2.7  # ImageNet-normalised
    if stage in ('humans', 'parts'):
      assert batch['valid'].any() and not (batch['ignore'] & ~batch['valid']).any()
      content = batch['image_size'] * batch['scale'][:, None]
      assert (content <= np.array(KEYS[stage]['image'][0][:2]) + 0.5).all()
    if stage == 'part_states':
      assert (batch['part_state'][~batch['part_valid']] == -1).all()
      assert (batch['part_state'][batch['part_valid']] >= 0).all()


def test_train_is_deterministic_per_seed(root):
  first = _take(_pipeline(root, 'part_states', seed=1), 3)
  _assert_same(first, _take(_pipeline(root, 'part_states', seed=1), 3))
  other = _take(_pipeline(root, 'part_states', seed=2), 3)
  assert not all(np.array_equal(a['image'], b['image']) for a, b in zip(first, other))


def test_balance_states_resamples_the_part_state_examples(root, monkeypatch):
  made, original = [], resample.WeightedResampleDataset

  def recording(*args, **kwargs):
    made.append(args)
    return original(*args, **kwargs)

  monkeypatch.setattr(resample, 'WeightedResampleDataset', recording)
  first = next(_pipeline(root, 'part_states', balance_states=False))
  assert not made
  assert (
    next(_pipeline(root, 'part_states', balance_states=True))['action'].shape
    == first['action'].shape
  )
  assert len(made) == 1


@pytest.mark.parametrize('stage,data', [('humans', {}), ('part_states', {'balance_states': True})])
def test_checkpointed_iterator_resumes_with_the_same_batches(root, stage, data):
  iterator = _pipeline(root, stage, **data)
  _take(iterator, 5)  # past the end of the first epoch
  state = iterator.get_state()
  expected = _take(iterator, 3)
  resumed = _pipeline(root, stage, **data)
  resumed.set_state(state)
  _assert_same(expected, _take(resumed, 3))


def test_eval_is_finite_in_order_and_without_augmentation(root):
  batches = list(_pipeline(root, 'part_states', train=False))
  assert sum(len(b['action']) for b in batches) == _num_examples(root, 'part_states', 'val')
  _assert_same(batches, list(_pipeline(root, 'part_states', train=False)))
  config = _config(root, 'part_states')
  settings = pipelines.data_fields('part_states', config)
  source = tfds.builder_from_directory(
    pipelines.dataset_path('part_states', settings)
  ).as_data_source('val')
  first = pipelines.part_state_example(source[0], None, settings=settings)
  np.testing.assert_array_equal(batches[0]['image'][0], augment.normalize(first['image']))
  np.testing.assert_array_equal(batches[0]['part_boxes'][0], first['part_boxes'])


@pytest.mark.parametrize('count', [2, 3])
def test_eval_shards_partition_the_data_with_equal_batch_counts(root, count):
  whole = list(_pipeline(root, 'humans', train=False, batch_size=2))
  shards = [
    list(_pipeline(root, 'humans', train=False, batch_size=2, shard=(i, count)))
    for i in range(count)
  ]
  total = _num_examples(root, 'humans', 'val')
  assert len({len(s) for s in shards}) == 1
  assert len(shards[0]) == math.ceil(math.ceil(total / count) / 2)
  joined = [b for shard in shards for b in shard if len(b['image'])]
  for key in whole[0]:
    np.testing.assert_array_equal(
      np.concatenate([b[key] for b in whole]), np.concatenate([b[key] for b in joined])
    )


def test_train_shards_are_disjoint_and_cover_the_data(root, monkeypatch):
  # Record which videos each process reads (one thread: in order).
  names = []

  def identify(raw, rng, *, settings):
    del rng, settings
    names.append(raw['video'])
    return {'clip': np.zeros((4, 32, 32, 3), np.uint8), 'label': np.int32(0)}

  monkeypatch.setitem(pipelines._EXAMPLE_FNS, 'action_clips', identify)
  total = _num_examples(root, 'action_clips', 'train')
  seen = []
  for index in range(2):
    names.clear()
    per_process = len(range(index, total, 2))
    _take(
      _pipeline(root, 'action_clips', shard=(index, 2), batch_size=1, read_threads=0), per_process
    )
    seen.append(set(names[:per_process]))
    assert len(seen[-1]) == per_process  # an epoch visits each example once
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == total


def test_dataset_metadata_gives_the_vocabularies(root):
  vocab = tps.Vocab.from_root(root)
  metadata = pipelines.dataset_metadata('part_states', _config(root, 'part_states'))
  assert tuple(metadata['states']) == vocab.states
  assert tuple(metadata['actions']) == vocab.actions
  assert tuple(metadata['parts']) == tps.PARTS


def test_missing_dataset_is_a_clear_error(tmp_path):
  config = data_config('part_states', root=str(tmp_path))
  config.batch_size = 2
  expected = os.path.join(str(tmp_path), 'tfds', 'tps_part_states')
  with pytest.raises(
    FileNotFoundError,
    match=f'^{expected}: no such dataset '
    r'\(run python -m data_prep.build --data_root .* --datasets part_states',
  ):
    pipelines.make_pipeline('part_states', config, 'train', train=True, seed=0)


def test_a_missing_data_field_is_named_not_filled_in():
  config = data_config('action_clips')
  del config.data['frame_stride']
  del config.data['read_threads']
  with pytest.raises(
    pipelines.DataConfigError,
    match=r'^config.data: no read_threads, frame_stride \(the action_clips '
    'pipeline reads',
  ):
    pipelines.data_fields('action_clips', config)


def test_grain_worker_process_gives_the_same_resumable_batches(root):
  expected = _take(_pipeline(root, 'action_clips'), 4)
  worker = _pipeline(root, 'action_clips', worker_count=1)  # one worker: the same order
  _assert_same(expected[:2], _take(worker, 2))
  state = worker.get_state()
  worker.close()
  resumed = _pipeline(root, 'action_clips', worker_count=1)
  resumed.set_state(state)
  _assert_same(expected[2:], _take(resumed, 2))
  resumed.close()


# -------------------------------------------------------------------------- balancing


def _skewed_states(num, seed=0):
  """(num, 10) states 0..4, skewed (state s has probability ~ 0.4 ** s) and correlated
  through a latent action as in real data; 20% of the parts absent (-1)."""
  rng = np.random.default_rng(seed)
  probs = 0.4 ** np.arange(5)
  probs /= probs.sum()
  action = rng.choice(6, num, p=np.array([10, 5, 3, 2, 1, 1]) / 22)
  states = rng.choice(5, size=(6, 10), p=probs)[action]
  noise = rng.random((num, 10)) < 0.3
  states = np.where(noise, rng.choice(5, size=(num, 10), p=probs), states)
  states[rng.random((num, 10)) < 0.2] = -1
  return states.astype(np.int32)


def _spread(states, part):
  """Largest / smallest frequency of the states part `part` shows."""
  column = states[:, part]
  counts = np.bincount(column[column >= 0], minlength=5)
  counts = counts[counts > 0]
  return counts.max() / counts.min()


def test_state_balancing_flattens_the_state_distribution():
  states = _skewed_states(3000)
  weights = resample.state_balancing_weights(states)
  dataset = resample.WeightedResampleDataset(grain.MapDataset.range(len(states)), weights, seed=0)
  drawn = states[np.array([dataset[k] for k in range(3 * len(states))])]
  natural = np.array([_spread(states, p) for p in range(10)])
  balanced = np.array([_spread(drawn, p) for p in range(10)])
  assert np.median(natural) > 50
  assert np.median(natural / balanced) > 5 and (natural / balanced).min() > 2.5


def test_state_balancing_is_deterministic_per_seed_and_epoch():
  weights = resample.state_balancing_weights(_skewed_states(200))
  source = grain.MapDataset.range(200)
  a = resample.WeightedResampleDataset(source, weights, seed=0)
  b = resample.WeightedResampleDataset(source, weights, seed=0)
  c = resample.WeightedResampleDataset(source, weights, seed=1)
  first = [a[k] for k in range(400)]
  assert first == [b[k] for k in reversed(range(400))][::-1]  # any access order
  assert first != [c[k] for k in range(400)]
  assert first[:200] != first[200:]  # a new draw each epoch
  no_parts = np.full((3, 10), -1)
  with pytest.raises(ValueError, match='no example has a part'):
    resample.state_balancing_weights(no_parts)
