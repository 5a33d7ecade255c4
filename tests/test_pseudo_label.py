"""data_prep.pseudo_label: thresholds, annotated parts, the format the builder and the
detector pipeline consume, the command line.

The detector is hand-set: on every crop it predicts each part k once, at a fixed place
in the crop's content, with score SCORES[k], so every expected label is known. The
dataset is the shared synthetic one with parts removed from the annotations of each
video's first frame, so that humans lack parts whatever the renderer's occlusions did.
"""

import glob
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import part_detector_gfl
from data_prep import pseudo_label
from tests.conftest import run_module
from tps_jax.data import kinetics_tps as tps
from tps_jax.datasets import build
from tps_jax.datasets import pseudo_labels as pseudo_lib
from tps_jax.input import pipelines
from tps_jax.tasks import base as tasks
from tps_jax.tasks import detection
from tps_jax.train import checkpointing

# Score of part k on every crop: 0.41 and 0.39 straddle 0.4, 0.1 is exactly the low
# threshold (an ignore region), 0.09 and 0.02 are dropped.
SCORES = (0.95, 0.9, 0.7, 0.45, 0.41, 0.39, 0.25, 0.1, 0.09, 0.02)
REMOVED = ('head', 'left_hand', 'right_hand', 'right_leg', 'left_foot')


def hand_set_box(k: int) -> np.ndarray:
  """Part k's box as fractions (x1, y1, x2, y2) of the crop's content."""
  start = 0.05 + 0.08 * k
  return np.array([start, start, start + 0.1, start + 0.1], np.float32)


class HandSetDetector(nn.Module):
  """Every crop: part k at `hand_set_box(k)` of the content with score SCORES[k]."""

  num_classes: int

  @nn.compact
  def __call__(self, images, image_shape=None, targets=None, *, train: bool):
    del targets, train
    offset = self.param('offset', nn.initializers.zeros, ())  # an export needs a leaf
    batch = images.shape[0]
    if image_shape is None:
      image_shape = jnp.broadcast_to(jnp.asarray(images.shape[1:3], jnp.float32), (batch, 2))
    size = jnp.asarray(image_shape, jnp.float32)[:, None, ::-1]  # (B, 1, (w, h))
    fractions = jnp.asarray(np.stack([hand_set_box(k) for k in range(self.num_classes)]))
    boxes = fractions[None] * jnp.tile(size, (1, 1, 2)) + offset
    return {
      'boxes': boxes,
      'scores': jnp.broadcast_to(jnp.asarray(SCORES, jnp.float32), (batch, 10)),
      'labels': jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (batch, 10)),
      'valid': jnp.ones((batch, 10), bool),
    }


detection.register_detector('hand_set_test')(
  lambda model_config, num_classes, dtype: HandSetDetector(num_classes)
)


@pytest.fixture(scope='module')
def root(synthetic_root, tmp_path_factory):
  """A copy of the synthetic root without REMOVED in every video's first frame, with
  tps_parts built."""
  root = tmp_path_factory.mktemp('pseudo') / 'Kinetics-TPS'
  shutil.copytree(synthetic_root, root)
  for path in glob.glob(str(root / 'train_annotations' / '*' / '*' / '*' / 'img_00001.json')):
    with open(path) as f:
      frame = json.load(f)
    for human in frame['humans']:
      for part in REMOVED:
        human['parts'].pop(part, None)
    with open(path, 'w') as f:
      json.dump(frame, f)
  build.build_datasets(str(root), datasets=['parts'], progress=False)
  return str(root)


def hand_set_config(root):
  config = part_detector_gfl.get_config('tiny')
  config.model.family = 'hand_set_test'
  config.data.root = root
  return config


@pytest.fixture(scope='module')
def labelled(root, tmp_path_factory):
  """(config, pseudo-label JSON content, Summary) of the hand-set detector's export."""
  config = hand_set_config(root)
  workdir = tmp_path_factory.mktemp('hand_set')
  export = checkpointing.export(str(workdir), {'params': {'offset': np.float32(0)}}, config)
  task, params, model_state = pseudo_label.load_detector(config, export)
  labels, summary = pseudo_label.pseudo_labels(
    config, params, model_state, task, root, batch_size=4, progress=False
  )
  return config, labels, summary


def train_records(config):
  directory = pipelines.dataset_path('parts', pipelines.data_fields('parts', config))
  return list(tfds.builder_from_directory(directory).as_data_source('train'))


def annotated_parts(root):
  """{(video, frame, human number): annotated part names} of the (edited) root."""
  out = {}
  for video in tps.iter_videos(root, 'train'):
    for index in video.annotated_frames():
      for position, human in enumerate(tps.load_frame(video.annotation_path(index)).humans):
        number = human.number if human.number is not None else position + 1
        out[(video.name, index, number)] = set(human.parts)
  return out


def test_thresholds_split_predictions_and_annotated_parts_are_not_written(labelled, root):
  config, labels, summary = labelled
  annotated = annotated_parts(root)
  records = train_records(config)
  positives = ignores = 0
  for record in records:
    video = record['video'].decode()
    key = (video, int(record['frame']), int(record['human']))
    missing = [k for k, part in enumerate(tps.PARTS) if part not in annotated[key]]
    expected = {tps.PARTS[k]: SCORES[k] for k in missing if SCORES[k] >= 0.1}
    written = labels.get(video, {}).get(tps.frame_name(key[1]), {}).get(str(key[2]), {})
    assert {p: [b['score'] for b in boxes] for p, boxes in written.items()} == {
      p: [s] for p, s in expected.items()
    }, key
    # Boxes are in frame pixels: the hand-set place in the crop, shifted by crop_box.
    left, top, right, bottom = record['crop_box']
    for part, boxes in written.items():
      # Detections have continuous edges; the labels, inclusive pixels (x2 - 1).
      want = (
        hand_set_box(tps.PARTS.index(part)) * np.tile([right - left, bottom - top], 2)
        + np.tile([left, top], 2)
        - np.array([0, 0, 1, 1])
      )
      np.testing.assert_allclose(boxes[0]['box'], want, atol=1.0, err_msg=f'{key} {part}')
    positives += sum(s > 0.4 for s in expected.values())
    ignores += sum(s <= 0.4 for s in expected.values())
  assert summary.crops == len(records)
  assert (summary.positives, summary.ignores) == (positives, ignores)
  # The edited frames guarantee both kinds; annotated parts scoring >= 0.1 were skipped.
  assert summary.positives > 0 and summary.ignores > 0 and summary.annotated_skipped > 0
  assert summary.humans_labelled == sum(
    1 for frames in labels.values() for humans in frames.values() for _ in humans
  )


def test_builder_and_pipeline_take_the_labels_with_ignore_flags(labelled, root, tmp_path):
  config, labels, summary = labelled
  before = train_records(config)
  path = str(tmp_path / 'pseudo.json')
  pseudo_label.write_json(path, labels)
  assert pseudo_lib.load_pseudo_labels(path)  # the builder's own reader accepts it
  build.build_datasets(
    root,
    datasets=['parts'],
    overwrite=True,
    pseudo_labels=str(path),
    pseudo_positive=0.4,
    pseudo_low=0.1,
    progress=False,
  )
  after = train_records(config)
  assert len(after) == len(before)
  added = sum(len(r['labels']) for r in after) - sum(len(r['labels']) for r in before)
  assert added == summary.positives + summary.ignores
  # Each human keeps one box per part: nothing duplicated an annotated part.
  for record in after:
    assert len(set(record['labels'].tolist())) == len(record['labels'])

  batches = list(pipelines.make_pipeline('parts', config, 'train', train=False, batch_size=8))
  ignore = np.concatenate([b['ignore'] for b in batches])
  valid = np.concatenate([b['valid'] for b in batches])
  labels_ = np.concatenate([b['labels'] for b in batches])
  assert ignore.sum() == summary.ignores and (ignore <= valid).all()
  assert valid.sum() == sum(len(r['labels']) for r in after)
  ignored_parts = {tps.PARTS[k] for k in labels_[ignore]}
  assert ignored_parts <= {p for p, s in zip(tps.PARTS, SCORES) if 0.1 <= s <= 0.4}


def test_bad_thresholds_and_a_wrong_export_are_named(labelled, root, tmp_path):
  config, _, _ = labelled
  task = tasks.get_task('detection', config)
  with pytest.raises(pseudo_label.PseudoLabelError, match='pseudo_low'):
    pseudo_label.pseudo_labels(config, {}, {}, task, root, pseudo_positive=0.2, pseudo_low=0.3)
  with pytest.raises(pseudo_label.PseudoLabelError, match='no export'):
    pseudo_label.load_detector(config, str(tmp_path / 'nowhere'))
  gfl_config = part_detector_gfl.get_config('tiny')
  gfl_config.data.root = root
  export = checkpointing.export(str(tmp_path), {'params': {'offset': np.float32(0)}}, config)
  with pytest.raises(pseudo_label.PseudoLabelError, match="do not fit the config's gfl model"):
    pseudo_label.load_detector(gfl_config, export)


@pytest.mark.slow
def test_command_line_with_a_gfl_export(root, tmp_path):
  """The command on an (untrained) tiny GFL export: a file the builder reads, the counts."""
  config = part_detector_gfl.get_config('tiny')
  config.data.root = root
  task = tasks.get_task('detection', config)
  variables = task.init_variables(jax.random.key(0))
  export = checkpointing.export(str(tmp_path / 'gfl'), variables, config)
  out = tmp_path / 'labels.json'
  proc = run_module(
    'data_prep.pseudo_label',
    '--config',
    'configs/part_detector_gfl.py:tiny',
    '--export',
    export,
    '--data_root',
    root,
    '--out',
    out,
    '--noprogress',
    '--pseudo_low',
    0.0,
    '--pseudo_positive',
    0.5,
    subprocess_=True,
  )
  assert 'crops:' in proc.stdout and f'--pseudo_labels {out}' in proc.stdout
  pseudo_lib.load_pseudo_labels(str(out))  # the builder reads it (untrained: maybe empty)
  bad = run_module(
    'data_prep.pseudo_label',
    '--config',
    'configs/part_detector_gfl.py:tiny',
    '--export',
    tmp_path / 'missing',
    '--data_root',
    root,
    '--out',
    out,
    check=False,
  )
  assert bad.returncode == 1 and bad.stderr.strip().startswith('error:')
  assert len(bad.stderr.strip().splitlines()) == 1
