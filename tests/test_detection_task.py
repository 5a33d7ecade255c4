"""The detection task and the detector configs: losses, evaluation, freezing, configs,
one full-size training step, and the tiny config end to end (train, export, evaluate)."""

import json

import jax
import numpy as np
import pytest

from configs import human_detector, part_detector
from tests.conftest import run_module
from tests.detector_batches import fill_random
from tps_jax.models.resnet import ResNet
from tps_jax.models.swin import SwinTransformer
from tps_jax.tasks import base as tasks
from tps_jax.tasks import detection

TRAINER_FIELDS = (
  'task',
  'seed',
  'total_steps',
  'batch_size',
  'log_steps',
  'checkpoint_steps',
  'eval_steps',
  'init_from',
  'optim',
  'mesh',
  'bf16',
)


@pytest.mark.parametrize('module', [human_detector, part_detector])
@pytest.mark.parametrize('variant', [None, 'tiny'])
def test_configs_have_the_trainer_fields_and_build_their_model(module, variant):
  config = module.get_config(variant)
  for field in TRAINER_FIELDS:
    assert field in config, field
  assert 'root' in config.data and config.task == 'detection'
  task = tasks.get_task(config.task, config)
  model = task.model
  assert model.num_classes == len(task.class_names)
  assert model.roi.num_stages == 3 and model.roi.class_agnostic
  if module is human_detector:
    assert task.class_names == ('person',) and isinstance(model.backbone, ResNet)
  else:
    assert len(task.class_names) == 10 and isinstance(model.backbone, SwinTransformer)
    assert model.backbone.feature_norms
  if variant is None:
    assert config.init_from.path, 'full configs start from converted weights'
  with pytest.raises(ValueError, match='unknown variant'):
    module.get_config('huge')


def test_full_configs_are_the_papers_models():
  human = tasks.get_task('detection', human_detector.get_config()).model
  assert human.backbone.depths == (3, 4, 6, 3) and human.backbone.norm == 'frozen'
  parts = tasks.get_task('detection', part_detector.get_config()).model
  assert parts.backbone.embed_dim == 192 and tuple(parts.backbone.depths) == (2, 2, 18, 2)
  for model in (human, parts):
    assert model.roi.iou_thresholds == (0.5, 0.6, 0.7)
    assert model.roi.stage_weights == (1.0, 0.5, 0.25)
    assert model.roi.fc_dim == 1024 and model.roi.num_fcs == 2 and model.roi.output_size == 7
    assert model.rpn.anchors.aspect_ratios[0] == (0.5, 1.0, 2.0)
    assert [s[0] for s in model.rpn.anchors.sizes] == [32.0, 64.0, 128.0, 256.0, 512.0]


def test_frozen_backbone_stages_are_not_trainable():
  task = tasks.get_task('detection', human_detector.get_config())
  assert not task.is_trainable(('backbone', 'conv1', 'kernel'))
  assert not task.is_trainable(('backbone', 'layer1_0', 'conv2', 'kernel'))
  assert task.is_trainable(('backbone', 'layer2_0', 'conv2', 'kernel'))
  assert task.is_trainable(('neck', 'lateral_p2', 'kernel'))
  assert task.is_trainable(('box_heads_2', 'cls_score', 'kernel'))


def test_an_unknown_detector_family_or_dataset_is_named():
  config = human_detector.get_config('tiny')
  config.model.family = 'yolo'
  with pytest.raises(ValueError, match="unknown detector 'yolo'.*cascade_rcnn"):
    tasks.get_task('detection', config).model
  config = human_detector.get_config('tiny')
  config.data.dataset = 'objects'
  with pytest.raises(ValueError, match='config.data.dataset'):
    tasks.get_task('detection', config).class_names


def test_detector_registry_takes_new_families():
  config = human_detector.get_config('tiny')
  config.model.family = 'constant_test_detector'

  @detection.register_detector('constant_test_detector')
  def build(model_config, num_classes, dtype):
    del model_config, dtype
    return ('built', num_classes)

  assert tasks.get_task('detection', config).model == ('built', 1)


def random_variables(task, seed=0):
  """Random variables of the task's model from shapes only (no `init` compile)."""
  return fill_random(jax.eval_shape(task.init_variables, jax.random.key(0)), seed)


def hand_made_batch(config, batch_size=2, seed=0):
  height, width = config.data.image_size
  max_boxes = config.data.max_boxes
  rng = np.random.default_rng(seed)
  boxes = np.zeros((batch_size, max_boxes, 4), np.float32)
  boxes[:, 0] = [8, 10, 60, 90]
  boxes[:, 1] = [50, 40, 90, 120]
  valid = np.zeros((batch_size, max_boxes), bool)
  valid[:, :2] = True
  valid[-1] = False  # the last image has no box
  return {
    'image': rng.standard_normal((batch_size, height, width, 3)).astype(np.float32),
    'boxes': boxes,
    'labels': np.zeros((batch_size, max_boxes), np.int32),
    'valid': valid,
    'ignore': np.zeros((batch_size, max_boxes), bool),
    'image_size': np.array([[height, width]] * batch_size, np.int32),
    'scale': np.ones(batch_size, np.float32),
  }


@pytest.fixture(scope='module')
def human_tiny():
  config = human_detector.get_config('tiny')
  task = tasks.get_task('detection', config)
  variables = random_variables(task)
  return config, task, variables


@pytest.mark.slow
def test_loss_is_the_sum_of_the_detector_losses_and_finite(human_tiny):
  config, task, variables = human_tiny
  variables = dict(variables)
  params = variables.pop('params')
  batch = hand_made_batch(config)
  loss, (metrics, state) = jax.jit(lambda p, b, r: task.loss_fn(p, b, r, variables, train=True))(
    params, batch, jax.random.key(0)
  )
  parts = [v for k, v in metrics.items() if k.startswith('loss_')]
  assert len(parts) == 2 + 2 * 3  # RPN cls/box, three stages cls/box
  np.testing.assert_allclose(loss, sum(parts), rtol=1e-6)
  assert np.isfinite(loss)
  assert jax.tree.structure(state) == jax.tree.structure(variables)  # frozen BN: unchanged


def test_evaluator_scores_perfect_detections_one_and_masks_padding():
  evaluator = detection.CocoEvaluator(('person', 'dog'))
  gt = np.array([[[10, 10, 50, 80], [60, 20, 90, 70], [0, 0, 0, 0]]] * 2, np.float32)
  outputs = {
    'gt_boxes': gt,
    'gt_labels': np.array([[0, 1, 0]] * 2),
    'gt_valid': np.array([[True, True, False]] * 2),
    'gt_ignore': np.zeros((2, 3), bool),
    'boxes': gt,
    'scores': np.array([[0.9, 0.8, 0.0]] * 2, np.float32),
    'labels': np.array([[0, 1, 0]] * 2),
    'valid': np.array([[True, True, False]] * 2),
    'image_shape': np.array([[100, 100]] * 2, np.float32),
    tasks.EXAMPLE_MASK: np.array([True, False]),
  }
  evaluator.add(outputs)
  result = evaluator.result()
  assert evaluator.images == 1
  assert result['AP'] == pytest.approx(1.0) and result['AP_dog'] == pytest.approx(1.0)
  assert set(result) == {'AP', 'AP50', 'AP75', 'AP_person', 'AP_dog'}


@pytest.mark.slow
def test_eval_predictions_carry_detections_and_ground_truth(human_tiny):
  config, task, variables = human_tiny
  variables = dict(variables)
  params = variables.pop('params')
  batch = hand_made_batch(config)
  batch[tasks.EXAMPLE_MASK] = np.array([True, True])
  batch['scale'] = np.array([1.0, 0.5], np.float32)  # 2nd image: content 64x80
  out = jax.jit(task.eval_predictions)(params, variables, batch)
  max_det = config.model.roi.max_detections
  assert out['boxes'].shape == (2, max_det, 4) and out['gt_boxes'].shape == batch['boxes'].shape
  np.testing.assert_array_equal(out['image_shape'], [[128, 160], [64, 80]])
  boxes = np.asarray(out['boxes'][1])[np.asarray(out['valid'][1])]
  assert np.all(boxes[:, 2] <= 80) and np.all(boxes[:, 3] <= 64)
  evaluator = task.make_evaluator()
  evaluator.add(jax.device_get(out))
  assert 0.0 <= evaluator.result()['AP'] <= 1.0


@pytest.mark.slow
def test_tiny_human_detector_trains_exports_and_evaluates(smoke_demo):
  """The demo's tiny human detector (trained once per session, conftest's smoke_demo):
  its log, then the evaluation command on the export gives the run's final AP."""
  workdir = smoke_demo.workdir / 'human_detector'
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  final = records[-1]
  assert {'eval_AP', 'eval_AP50', 'eval_AP75', 'eval_AP_person'} <= set(final)
  data_flags = [f'--config.data.root={smoke_demo.root}']
  proc = run_module(
    'tps_jax.evaluate_detector',
    '--config',
    'configs/human_detector.py:tiny',
    '--export',
    workdir / 'export',
    '--split',
    'val',
    *data_flags,
  )
  last = proc.stdout.strip().splitlines()[-1].split()
  assert last[0] == 'AP' and float(last[1]) == pytest.approx(final['eval_AP'], abs=1e-6)
  # The wrong export for the config is one clear line.
  bad = run_module(
    'tps_jax.evaluate_detector',
    '--config',
    'configs/part_detector.py:tiny',
    '--export',
    workdir / 'export',
    '--split',
    'val',
    *data_flags,
    check=False,
  )
  assert bad.returncode == 1 and "do not fit the config's model" in bad.stderr
