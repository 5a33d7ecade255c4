"""The official releases' detection heads (issue 16): BatchNorm box heads, class-specific
regression and GIoU on decoded boxes (the Swin Cascade R-CNN release), their checkpoint
layout, torchvision's fasterrcnn_resnet50_fpn_v2, GFL v2's DGQP, training on a subset.

Behaviour tests use a tiny ResNet detector with random numpy weights (no `init`
compile); references are written with torch / torchvision ops here.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
import torchvision
from skimage import data as skimage_data
from torchvision.models.detection.image_list import ImageList

from configs import part_detector
from tests import detector_batches
from tests.conftest import run_on_devices
from tests.data_configs import data_config
from tests.detector_batches import FULL, OBJECTS, TINY_SHAPE, images, targets, total
from tests.test_cascade_rcnn import (
  MEAN,
  STD,
  assert_close,
  assert_same_detections,
  load,
  nchw,
  swin_cascade_state,
  tiny_model,
  torch_objectness,
)
from tests.test_retinanet_gfl import random_variables as gfl_random_variables
from tests.test_retinanet_gfl import to_mmdetection
from tps_jax.convert import convert_state_dict, load_pytorch_weights
from tps_jax.convert.checkpoint import report_lines
from tps_jax.data.video import encode_jpeg
from tps_jax.datasets import build
from tps_jax.input import pipelines
from tps_jax.models import gfl
from tps_jax.models.cascade_rcnn import CASCADE_STDS, BoxHead, RoISpec
from tps_jax.models.resnet import BatchNorm
from tps_jax.train import run_config

NUM_CLASSES = 3


def random_variables(model, shape, seed=0):
  return detector_batches.random_variables(model, shape, seed, norms='spread')


def official_heads_model(**roi):
  """A tiny ResNet Cascade R-CNN with the Swin release's heads: 2 convs + BatchNorm, one
  FC, class-specific regression, GIoU (weight 10) on decoded boxes."""
  heads = dict(num_convs=2, conv_channels=32, num_fcs=1, norm='bn', class_agnostic=False)
  return tiny_model(**heads, box_loss='giou', box_weight=10.0, **roi)


@pytest.fixture(scope='module')
def official_heads():
  """(model, variables, jitted train step returning (losses, new batch_stats))."""
  model = official_heads_model()
  variables = random_variables(model, TINY_SHAPE)

  @jax.jit
  def losses(variables, key):
    return model.apply(
      variables,
      images(),
      FULL,
      targets(OBJECTS, labels=[[0, 2], [1]]),
      train=True,
      rngs={'sampling': key},
      mutable=['batch_stats'],
    )

  return model, variables, losses


# ------------------------------------------------------------- 1. BatchNorm heads


def test_batchnorm_statistics_count_only_the_masked_rows():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 3, 3, 4)).astype(np.float32) * 2 + 1
  mask = np.array([True, True, False, True, False, True])
  norm = BatchNorm(use_batch_statistics=True, momentum=0.9)
  variables = {
    'params': {'scale': np.full(4, 1.5, np.float32), 'bias': np.full(4, 0.25, np.float32)},
    'batch_stats': {'mean': np.zeros(4, np.float32), 'var': np.ones(4, np.float32)},
  }
  y, state = norm.apply(variables, x, mask, mutable=['batch_stats'])
  reference = torch.nn.BatchNorm2d(4, momentum=0.1).train()
  with torch.no_grad():
    reference.weight.fill_(1.5)
    reference.bias.fill_(0.25)
    want = reference(torch.from_numpy(x[mask].transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(np.asarray(y)[mask], want.transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['mean'], reference.running_mean, atol=1e-6)
  np.testing.assert_allclose(state['batch_stats']['var'], reference.running_var, atol=1e-5)
  _, unchanged = norm.apply(variables, x, np.zeros(6, bool), mutable=['batch_stats'])
  np.testing.assert_array_equal(unchanged['batch_stats']['var'], np.ones(4, np.float32))


def test_roi_settings_name_an_unknown_norm_or_loss():
  with pytest.raises(ValueError, match='RoISpec.norm'):
    RoISpec(norm='sync')
  with pytest.raises(ValueError, match='RoISpec.box_loss'):
    RoISpec(box_loss='iou')
  with pytest.raises(ValueError, match='RoISpec.bn_mode'):
    RoISpec(bn_mode='global')


def test_batchnorm_heads_train_with_the_batch_statistics(official_heads):
  model, variables, losses = official_heads
  assert variables['params']['box_heads_2']['bbox_pred']['kernel'].shape[-1] == 4 * NUM_CLASSES
  assert set(variables['batch_stats']['box_heads_0']) == {'bn_0', 'bn_1'}
  out, state = losses(variables, jax.random.key(0))
  assert np.isfinite(total(out)) and all(out[f'loss_box_{s}'] > 0 for s in range(3))
  for stage in range(3):
    before = variables['batch_stats'][f'box_heads_{stage}']['bn_1']['mean']
    after = state['batch_stats'][f'box_heads_{stage}']['bn_1']['mean']
    assert np.abs(np.asarray(after) - before).max() > 1e-4, f'stage {stage} kept its statistics'
  # The ResNet backbone's frozen BatchNorms keep theirs.
  np.testing.assert_array_equal(
    state['batch_stats']['backbone']['bn1']['mean'],
    variables['batch_stats']['backbone']['bn1']['mean'],
  )


@pytest.mark.parametrize('bn_mode', ['batch', 'frozen'])
def test_a_frozen_batchnorm_head_normalises_with_its_running_statistics(bn_mode):
  head = BoxHead(
    NUM_CLASSES,
    False,
    num_convs=1,
    conv_channels=8,
    num_fcs=1,
    fc_dim=16,
    norm='bn',
    bn_mode=bn_mode,
  )
  features = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 7, 7, 8)), jnp.float32)
  variables = head.init(jax.random.key(0), features)
  variables = {
    **variables,
    'batch_stats': {'bn_0': {'mean': jnp.full(8, 0.3), 'var': jnp.full(8, 2.0)}},
  }
  train, state = head.apply(variables, features, None, True, mutable=['batch_stats'])
  test = head.apply(variables, features, None, False)
  changed = np.abs(np.asarray(state['batch_stats']['bn_0']['mean']) - 0.3).max() > 0
  same_output = np.allclose(train[0], test[0], atol=1e-6)
  assert (changed, same_output) == ((True, False) if bn_mode == 'batch' else (False, True))


def torch_decode(deltas, rois, stds):
  """mmdetection's DeltaXYWHBBoxCoder.decode (no clipping), in torch."""
  deltas = deltas * torch.tensor(stds)
  centre = (rois[:, :2] + rois[:, 2:]) / 2
  size = rois[:, 2:] - rois[:, :2]
  xy = centre + size * deltas[:, :2]
  wh = size * torch.exp(deltas[:, 2:].clamp(-math.log(1000 / 16), math.log(1000 / 16)))
  return torch.cat([xy - wh / 2, xy + wh / 2], 1)


def test_giou_loss_is_on_the_decoded_boxes_of_the_positives(official_heads):
  model = official_heads[0]
  rng = np.random.default_rng(3)
  corner = rng.uniform(0, 60, (1, 6, 2))
  rois = np.concatenate([corner, corner + rng.uniform(10, 40, (1, 6, 2))], axis=-1)
  gt = rois + rng.uniform(-4, 4, rois.shape)
  deltas = 0.5 * rng.standard_normal((1, 6, 4))
  positive = np.array([[True, True, False, True, False, False]])
  stage = 1
  got = model.apply(
    {},
    stage,
    *(jnp.asarray(a, jnp.float32) for a in (deltas, rois, gt)),
    positive,
    10.0,
    method=lambda m, *a: m._box_loss(*a),
  )
  tensor = lambda a: torch.from_numpy(a[0].astype(np.float32))
  boxes = torch_decode(tensor(deltas), tensor(rois), CASCADE_STDS[stage])
  want = (
    torchvision.ops.generalized_box_iou_loss(
      boxes[positive[0]], tensor(gt)[positive[0]], reduction='sum'
    )
    / 10.0
  )
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)


# ------------------------------------------------- 3. torchvision's Faster R-CNN v2

V2_SHAPE = (96, 128)  # (H, W), multiples of 32: torchvision's transform neither resizes nor pads
# The RPN's test-time top-n before NMS (per level) and after, in both models: the box head's
# four 256-channel convs on each of the default 1000 RoI slots were 6 of the test's 8 s of
# running. The top 50 per level leave about 55 proposals after NMS: 150 slots keep padding.
V2_RPN_TOP_N = (50, 150)


def randomise_batchnorms(model: torch.nn.Module, seed: int) -> None:
  """BatchNorm statistics and affine parameters away from 0 / 1 (eval mode uses them)."""
  generator = torch.Generator().manual_seed(seed)
  uniform = lambda n, lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        n = module.num_features
        module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_var.copy_(uniform(n, 0.5, 2.0))
        module.weight.copy_(uniform(n, 0.5, 1.5))
        module.bias.copy_(0.2 * torch.randn(n, generator=generator))


@pytest.fixture(scope='module')
def torchvision_v2():
  """fasterrcnn_resnet50_fpn_v2's architecture (BatchNorm FPN, 2-conv RPN head, 4conv1fc
  BatchNorm box head, class-specific regression) on a one-block-per-stage ResNet-50 and
  5 classes, random weights and BatchNorm statistics, in eval mode."""
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNConvFCHead
  from torchvision.models.detection.rpn import RPNHead
  from torchvision.models.resnet import Bottleneck, ResNet

  torch.manual_seed(0)
  backbone = _resnet_fpn_extractor(
    ResNet(Bottleneck, [1, 1, 1, 1]), 3, norm_layer=torch.nn.BatchNorm2d
  )
  model = FasterRCNN(
    backbone,
    num_classes=6,
    rpn_head=RPNHead(256, 3, conv_depth=2),
    box_head=FastRCNNConvFCHead(
      (256, 7, 7), [256, 256, 256, 256], [1024], norm_layer=torch.nn.BatchNorm2d
    ),
    min_size=V2_SHAPE[0],
    max_size=V2_SHAPE[1],
    rpn_pre_nms_top_n_test=V2_RPN_TOP_N[0],
    rpn_post_nms_top_n_test=V2_RPN_TOP_N[1],
    image_mean=[0.0] * 3,
    image_std=[1.0] * 3,
  )
  randomise_batchnorms(model, seed=1)
  return model.eval()


def test_fasterrcnn_v2_matches_torchvision(torchvision_v2):
  reference = torchvision_v2
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables, conversion = load(
    state, 'fasterrcnn_resnet50_fpn_v2', backbone_overrides={'depths': (1, 1, 1, 1)}
  )
  assert (model.neck.norm, model.rpn.num_convs, model.roi.norm) == ('bn', 2, 'bn')
  assert (model.roi.num_convs, model.roi.num_fcs, model.roi.class_agnostic) == (4, 1, False)
  assert conversion.sources['batch_stats/box_heads_0/bn_3/var'] == (
    'roi_heads.box_head.3.1.running_var'
  )
  assert conversion.sources['box_heads_0/fc_0/kernel'] == 'roi_heads.box_head.5.weight'
  assert conversion.sources['batch_stats/neck/output_p4_bn/mean'] == (
    'backbone.fpn.layer_blocks.2.1.running_mean'
  )
  assert set(conversion.skipped.values()) == {'BatchNorm step counter, no counterpart'}
  rpn = model.rpn
  assert (rpn.pre_nms_top_n_test, rpn.post_nms_top_n_test) == (1000, 1000)  # torchvision's
  model = model.clone(
    rpn=dataclasses.replace(
      rpn, pre_nms_top_n_test=V2_RPN_TOP_N[0], post_nms_top_n_test=V2_RPN_TOP_N[1]
    )
  )
  height, width = V2_SHAPE
  photo = skimage_data.astronaut()[100 : 100 + 2 * height : 2, 150 : 150 + 2 * width : 2]
  x = ((photo.astype(np.float32) / 255.0 - MEAN) / STD)[None]
  image_shape = jnp.array([[height, width]], jnp.float32)

  with torch.no_grad():
    features = reference.backbone(nchw(x))
    images_ = ImageList(nchw(x), [V2_SHAPE])
    want_proposals = reference.rpn(images_, features)[0][0].numpy()
    want_objectness = torch_objectness(reference.rpn.head(list(features.values()))[0])
    pooled = reference.roi_heads.box_roi_pool(
      features, [torch.from_numpy(want_proposals)], images_.image_sizes
    )
    want_logits, want_deltas = reference.roi_heads.box_predictor(
      reference.roi_heads.box_head(pooled)
    )
    want = reference([nchw(x)[0]])[0]

  def heads(m, x, rois):
    levels = m.pyramid(x, train=False)
    proposals, objectness, _, _ = m.propose(levels, image_shape, V2_SHAPE, train=False)
    return proposals, objectness, m.box_head(0, levels, rois, V2_SHAPE), m.detect(x, image_shape)

  proposals, objectness, (logits, deltas), detections = jax.jit(
    lambda v, x, r: model.apply(v, x, r, method=heads)
  )(variables, jnp.asarray(x), jnp.asarray(want_proposals)[None])
  assert_close(objectness, want_objectness, 'RPN objectness')
  got = np.asarray(proposals.boxes[0])[np.asarray(proposals.valid[0])]
  assert got.shape == want_proposals.shape and len(got) < V2_RPN_TOP_N[1]
  rows_equal = np.abs(got - want_proposals).max(axis=1) <= 0.05
  assert rows_equal.mean() >= 0.99, f'{(~rows_equal).sum()} of {len(got)} proposals differ'
  classes = model.num_classes
  assert_close(logits[0], want_logits.numpy()[:, list(range(1, classes + 1)) + [0]], 'logits')
  assert_close(deltas[0], want_deltas.numpy()[:, 4:], 'box deltas')
  valid = np.asarray(detections['valid'][0])
  assert 10 <= valid.sum() == len(want['scores'])
  assert_same_detections(
    (
      np.asarray(detections['boxes'][0])[valid],
      np.asarray(detections['scores'][0])[valid],
      np.asarray(detections['labels'][0])[valid] + 1,
    ),
    (want['boxes'].numpy(), want['scores'].numpy(), want['labels'].numpy()),
  )


# -------------------------------------------- 2. the official Swin detection release

COCO_CLASSES = 80


def official_swin_release(seed: int = 0) -> dict[str, np.ndarray]:
  """A `cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco`
  state dict as the Swin-Transformer-Object-Detection release lays it out: the Swin-T
  backbone and FPN of `swin_cascade_state`, then per stage 4 bias-free convs + SyncBN
  (`shared_convs.K.bn`, with running statistics and step counter), one FC, 81 classes
  and class-specific regression (320 outputs), and the three stages' mask heads."""
  state = {k: v for k, v in swin_cascade_state(seed).items() if not k.startswith('roi_head.')}
  rng = np.random.default_rng(seed + 1)
  normal = lambda *shape: (0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
  for stage in range(3):
    head = f'roi_head.bbox_head.{stage}'
    for j in range(4):
      state[f'{head}.shared_convs.{j}.conv.weight'] = normal(256, 256, 3, 3)
      bn = f'{head}.shared_convs.{j}.bn'
      state[f'{bn}.weight'], state[f'{bn}.bias'] = 1 + normal(256), normal(256)
      state[f'{bn}.running_mean'] = normal(256)
      state[f'{bn}.running_var'] = rng.uniform(0.5, 2.0, 256).astype(np.float32)
      state[f'{bn}.num_batches_tracked'] = np.array(1000, np.int64)
    state[f'{head}.shared_fcs.0.weight'] = normal(1024, 256 * 49) / 4
    state[f'{head}.shared_fcs.0.bias'] = normal(1024)
    state[f'{head}.fc_cls.weight'] = normal(COCO_CLASSES + 1, 1024)
    state[f'{head}.fc_cls.bias'] = normal(COCO_CLASSES + 1)
    state[f'{head}.fc_reg.weight'] = normal(4 * COCO_CLASSES, 1024)
    state[f'{head}.fc_reg.bias'] = normal(4 * COCO_CLASSES)
    mask = f'roi_head.mask_head.{stage}'
    for j in range(4):
      state[f'{mask}.convs.{j}.conv.weight'] = normal(256, 256, 3, 3)
      state[f'{mask}.convs.{j}.conv.bias'] = normal(256)
    state[f'{mask}.upsample.weight'], state[f'{mask}.upsample.bias'] = (
      normal(256, 256, 2, 2),
      normal(256),
    )
    state[f'{mask}.conv_logits.weight'] = normal(COCO_CLASSES, 256, 1, 1)
    state[f'{mask}.conv_logits.bias'] = normal(COCO_CLASSES)
  return state


MASK_TENSORS = 3 * (4 * 2 + 2 + 2)


@pytest.fixture(scope='module')
def official_state():
  return official_swin_release()


@pytest.fixture(scope='module')
def official_release(official_state, tmp_path_factory):
  """The path of the release-style file: {'meta': ..., 'state_dict': ...}."""
  state = official_state
  path = tmp_path_factory.mktemp('swin_release') / 'cascade_mask_rcnn_swin_tiny.pth'
  meta = {'mmdet_version': '2.11.0', 'CLASSES': tuple(f'class_{i}' for i in range(80)), 'epoch': 36}
  torch.save({'meta': meta, 'state_dict': {k: torch.from_numpy(v) for k, v in state.items()}}, path)
  return str(path)


def torch_box_head(state, stage, features):
  """The release's ConvFCBBoxHead in eval mode: 4 x (conv3x3, SyncBN, ReLU), flatten
  (C, h, w), FC + ReLU, fc_cls and fc_reg."""
  tensor = lambda key: torch.from_numpy(np.asarray(state[f'roi_head.bbox_head.{stage}.{key}']))
  functional = torch.nn.functional
  with torch.no_grad():
    x = torch.from_numpy(features)
    for j in range(4):
      bn = f'shared_convs.{j}.bn'
      x = functional.conv2d(x, tensor(f'shared_convs.{j}.conv.weight'), padding=1)
      x = functional.batch_norm(
        x,
        tensor(f'{bn}.running_mean'),
        tensor(f'{bn}.running_var'),
        tensor(f'{bn}.weight'),
        tensor(f'{bn}.bias'),
        training=False,
      )
      x = torch.relu(x)
    x = torch.relu(x.flatten(1) @ tensor('shared_fcs.0.weight').T + tensor('shared_fcs.0.bias'))
    logits = x @ tensor('fc_cls.weight').T + tensor('fc_cls.bias')
    deltas = x @ tensor('fc_reg.weight').T + tensor('fc_reg.bias')
  return logits.numpy(), deltas.numpy()


def test_the_official_swin_release_converts_with_its_batchnorm_heads(official_state):
  state = official_state
  conversion = convert_state_dict(state, 'cascade_rcnn_swin_t_fpn', source='release.pth')
  model, variables = conversion.model, conversion.variables()
  roi = model.roi
  assert (roi.num_stages, roi.num_convs, roi.num_fcs, roi.norm) == (3, 4, 1, 'bn')
  assert not roi.class_agnostic and model.num_classes == COCO_CLASSES
  stats = variables['batch_stats']['box_heads_2']['bn_3']
  np.testing.assert_array_equal(
    stats['var'], state['roi_head.bbox_head.2.shared_convs.3.bn.running_var']
  )
  features = np.random.default_rng(1).standard_normal((5, 256, 7, 7)).astype(np.float32)
  stage = 2
  logits, deltas = model.apply(
    variables,
    jnp.asarray(features.transpose(0, 2, 3, 1))[None],
    method=lambda m, f: m.box_heads[stage](f),
  )
  want_logits, want_deltas = torch_box_head(state, stage, features)
  assert_close(logits[0], want_logits, 'logits')
  assert_close(deltas[0], want_deltas, 'class-specific deltas')

  # The report: the mask branch in one line with its count, every box-head key used.
  lines = report_lines(conversion, 'release.pth')
  mask_lines = [line for line in lines if 'mask_head' in line]
  assert mask_lines == [
    f'  skipped {MASK_TENSORS} tensors (mask branch of a Cascade Mask R-CNN (not used)): '
    'roi_head.mask_head.0.conv_logits.bias, ...'
  ]
  assert not [
    k
    for k in conversion.skipped
    if k.startswith('roi_head.bbox_head') and not k.endswith('num_batches_tracked')
  ]

  # Our 10 parts: the classifier and the class-specific regressor are re-initialised.
  parts = convert_state_dict(state, 'cascade_rcnn_swin_t_fpn', num_classes=10)
  assert parts.params['box_heads_0/bbox_pred/kernel'].shape == (1024, 40)
  assert 'class head of 80 classes' in parts.skipped['roi_head.bbox_head.0.fc_reg.weight']


@pytest.mark.slow
def test_the_official_swin_release_loads_runs_and_its_box_head_statistics_matter(
  official_release,
):
  path = official_release
  model, variables = load_pytorch_weights(
    path, 'cascade_rcnn_swin_t_fpn', rpn={'pre_nms_top_n_test': 200, 'post_nms_top_n_test': 50}
  )
  photo = skimage_data.astronaut()[::8, ::8][:64, :64]
  x = jnp.asarray(((photo.astype(np.float32) / 255.0 - MEAN) / STD)[None])
  detect = jax.jit(lambda v: model.apply(v, x, train=False))
  before = detect(variables)
  assert np.asarray(before['valid']).sum() > 0
  stats = variables['batch_stats']['box_heads_1']['bn_0']
  shifted = jax.tree.map(lambda a: a, variables)
  shifted['batch_stats']['box_heads_1']['bn_0'] = {**stats, 'mean': stats['mean'] + 0.5}
  after = detect(shifted)
  assert np.abs(np.asarray(after['scores']) - np.asarray(before['scores'])).max() > 1e-3


# ----------------------------------------------------- 5. a subset of the train split


@pytest.fixture(scope='module')
def humans_tfds(synthetic_root, tmp_path_factory):
  """The synthetic root's `tps_humans` dataset (6 videos, most of them train)."""
  out = tmp_path_factory.mktemp('subset_tfds')
  build.build_datasets(str(synthetic_root), out=str(out), datasets=['humans'], progress=False)
  return out


def test_video_subset_is_drawn_by_the_seed():
  videos = ['c', 'a', 'b', 'a', 'c', 'd', 'b', 'e', 'a']
  first = pipelines.video_subset(videos, 2, seed=0, where='x')
  assert np.array_equal(first, pipelines.video_subset(videos, 2, seed=0, where='x'))
  assert len({videos[i] for i in first}) == 2
  assert all(videos[i] not in {videos[j] for j in first} for i in range(9) if i not in first)
  draws = {tuple(pipelines.video_subset(videos, 2, seed=s, where='x')) for s in range(8)}
  assert len(draws) > 1
  assert len(pipelines.video_subset(videos, 5, seed=3, where='x')) == len(videos)
  with pytest.raises(ValueError, match=r'config.data.train_videos: 6 videos asked, x has 5'):
    pipelines.video_subset(videos, 6, seed=0, where='x')


def test_train_videos_trains_on_the_examples_of_that_many_videos(humans_tfds):
  config = data_config(
    'humans', tfds_dir=str(humans_tfds), image_size=(32, 48), flip=False, train_videos=2
  )
  config.batch_size = 4
  directory = pipelines.dataset_path('humans', pipelines.data_fields('humans', config))
  source = tfds.builder_from_directory(directory).as_data_source('train')
  videos = [pipelines._text(source[i]['video']) for i in range(len(source))]
  chosen = pipelines.video_subset(videos, 2, seed=7, where='')
  evaluated = pipelines.make_pipeline('humans', config, 'train', train=False, batch_size=64)
  images = np.concatenate([batch['image'] for batch in evaluated])
  digest = lambda image: hash(image.tobytes())
  allowed = {digest(images[i]) for i in chosen}
  trained = pipelines.make_pipeline('humans', config, 'train', train=True, seed=7)
  seen = {
    digest(image) for _ in range(2 * len(chosen) // 4 + 2) for image in next(trained)['image']
  }
  assert seen == allowed and len(allowed) < len(set(map(digest, images)))
  config.data.train_videos = 99
  message = rf"config.data.train_videos: 99 videos asked, .* split 'train' has {len(set(videos))}$"
  with pytest.raises(ValueError, match=message):
    pipelines.make_pipeline('humans', config, 'train', train=True, seed=7)


def test_train_videos_is_recorded_and_a_resume_with_another_count_is_refused(tmp_path):
  config = part_detector.get_config('tiny')
  config.data.train_videos = 5
  with open(run_config.store(str(tmp_path), config)) as f:
    assert json.load(f)['data']['train_videos'] == 5
  config.data.train_videos = 50
  with pytest.raises(run_config.RunConfigError, match=r'data.train_videos 5 -> 50'):
    run_config.check_resume(str(tmp_path), config)


# ------------------------------------------------------------------- 4. GFL v2


def gflv2_release():
  """(our GFL v2 model, its random variables, the same tensors as an mmdetection
  GFocalHead / GFocalV2 release checkpoint: towers, gfl_cls, gfl_reg, scales and DGQP's
  `reg_conf.0` (20 -> 16, 1x1) and `reg_conf.2` (16 -> 1, 1x1))."""
  model = gfl.build_gfl(
    'resnet50',
    5,
    backbone_overrides={'depths': (1, 1, 1, 1)},
    neck={'out_channels': 32},
    head={'num_convs': 1, 'feat_channels': 32, 'num_groups': 8, 'dgqp': True, 'reg_channels': 16},
  )
  variables = gfl_random_variables(model, (1, 64, 64, 3))
  head = variables['params']['head']
  dgqp = {name: head.pop(name) for name in ('reg_conf_0', 'reg_conf_1')}
  state = to_mmdetection(variables, 'gfl')
  for name, index in (('reg_conf_0', 0), ('reg_conf_1', 2)):
    state[f'bbox_head.reg_conf.{index}.weight'] = dgqp[name]['kernel'].transpose(3, 2, 0, 1)
    state[f'bbox_head.reg_conf.{index}.bias'] = dgqp[name]['bias']
  head.update(dgqp)
  return model, variables, state


def torch_gflv2_head(state, levels, num_convs: int, groups: int, topk: int = 4):
  """GFL v2's head (Li et al. 2021, Fig. 3; mmdetection's GFocalHead.forward_single) on
  NCHW levels: the class score is sigmoid(gfl_cls) x the DGQP quality of the regression
  distribution's per-side top-k and mean. Returns (scores, distribution logits) in our
  flattened (B, A, C) / (B, A, 4, n + 1) layout."""
  tensor = lambda key: torch.from_numpy(np.asarray(state[f'bbox_head.{key}']))
  functional = torch.nn.functional
  scores, distributions = [], []
  with torch.no_grad():
    for level, x in enumerate(levels):
      towers = {}
      for branch in ('cls', 'reg'):
        y = torch.from_numpy(x)
        for i in range(num_convs):
          y = functional.conv2d(y, tensor(f'{branch}_convs.{i}.conv.weight'), padding=1)
          y = functional.group_norm(
            y,
            groups,
            tensor(f'{branch}_convs.{i}.gn.weight'),
            tensor(f'{branch}_convs.{i}.gn.bias'),
          )
          towers[branch] = y = torch.relu(y)
      regression = tensor(f'scales.{level}.scale') * functional.conv2d(
        towers['reg'], tensor('gfl_reg.weight'), tensor('gfl_reg.bias'), padding=1
      )
      n, _, height, width = regression.shape
      probs = torch.softmax(regression.reshape(n, 4, -1, height, width), dim=2)
      top = probs.topk(topk, dim=2).values
      stats = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2).reshape(n, -1, height, width)
      hidden = torch.relu(
        functional.conv2d(stats, tensor('reg_conf.0.weight'), tensor('reg_conf.0.bias'))
      )
      quality = torch.sigmoid(
        functional.conv2d(hidden, tensor('reg_conf.2.weight'), tensor('reg_conf.2.bias'))
      )
      logits = functional.conv2d(
        towers['cls'], tensor('gfl_cls.weight'), tensor('gfl_cls.bias'), padding=1
      )
      score = torch.sigmoid(logits) * quality
      scores.append(score.permute(0, 2, 3, 1).reshape(n, height * width, -1))
      distributions.append(regression.permute(0, 2, 3, 1).reshape(n, height * width, 4, -1))
  return torch.cat(scores, 1).numpy(), torch.cat(distributions, 1).numpy()


def test_gflv2_imports_from_its_release_layout_and_its_head_matches_torch():
  model, variables, state = gflv2_release()
  conversion = convert_state_dict(
    state,
    'gfl_r50_fpn',
    backbone_overrides={'depths': (1, 1, 1, 1)},
    neck={'out_channels': 32},
    head={'num_groups': 8},  # GroupNorm's group count is not in a checkpoint
  )
  settings_ = conversion.model.settings
  assert (settings_.dgqp, settings_.reg_topk, settings_.reg_channels) == (True, 4, 16)
  assert conversion.sources['head/reg_conf_1/kernel'] == 'bbox_head.reg_conf.2.weight'
  got = conversion.variables()['params']['head']['reg_conf_0']['kernel']
  np.testing.assert_array_equal(got, variables['params']['head']['reg_conf_0']['kernel'])

  rng = np.random.default_rng(2)
  levels = [rng.standard_normal((2, 32, side, side)).astype(np.float32) for side in (8, 4, 2)]
  logits, distributions = conversion.model.apply(
    conversion.variables(),
    [jnp.asarray(x.transpose(0, 2, 3, 1)) for x in levels],
    method=lambda m, levels: m.head(levels),
  )
  want_scores, want_distributions = torch_gflv2_head(state, levels, num_convs=1, groups=8)
  assert_close(distributions, want_distributions, 'distribution logits')
  assert_close(jax.nn.sigmoid(logits), want_scores, 'joint scores', rtol=1e-5)


def test_box_head_batch_statistics_are_the_global_batch_s_under_sharded_jit():
  """The release's SyncBN: 8 devices, each holding an image's RoIs (shifted by image, some
  padding), normalise with the statistics of every valid RoI of the batch."""
  script = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tps_jax.models.cascade_rcnn import BoxHead
head = BoxHead(3, False, num_convs=1, conv_channels=4, num_fcs=1, fc_dim=8, norm='bn')
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 5, 3, 3, 4)).astype(np.float32)
x += np.arange(8, dtype=np.float32)[:, None, None, None, None]  # image-dependent
valid = rng.random((8, 5)) < 0.6
variables = head.init(jax.random.key(0), x)
step = jax.jit(lambda v, x, m: head.apply(v, x, m, True, mutable=['batch_stats']))
mesh = Mesh(np.array(jax.devices()), ('data',))
shard = lambda a: jax.device_put(a, NamedSharding(mesh, P('data')))
(y1, s1), (y8, s8) = step(variables, x, valid), step(variables, shard(x), shard(valid))
assert len(shard(x).sharding.device_set) == 8
np.testing.assert_allclose(y8[0], y1[0], rtol=1e-5, atol=1e-5)
for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print('ok')
"""
  proc = run_on_devices(script, 8, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr


def test_multi_scale_training_fills_a_drawn_fraction_of_the_canvas():
  settings = pipelines.data_fields(
    'parts', data_config('parts', image_size=(80, 60), flip=False, scale_range=(0.6, 1.0))
  )
  image = np.full((40, 30, 3), 200, np.uint8)
  record = {
    'image': encode_jpeg(image),
    'boxes': np.array([[4, 8, 19, 27]], np.float32),
    'labels': np.zeros(1, np.int32),
    'ignore': np.zeros(1, bool),
  }
  fractions = []
  for seed in range(12):
    out = pipelines.detector_example(
      record, np.random.default_rng(seed), settings=settings, swap_parts=False
    )
    fraction = out['scale'] / 2.0  # the 40 x 30 image fits the 80 x 60 canvas at 2
    fractions.append(fraction)
    # The box keeps bounding the same pixels: it scales with the resized content.
    rows, cols = round(40 * out['scale']), round(30 * out['scale'])
    np.testing.assert_allclose(out['boxes'][0, :2], [4 * cols / 30, 8 * rows / 40], atol=1e-4)
    assert (out['image'][rows + 1 :] != 200).all() and (out['image'][: rows - 1, 1] > 150).all()
  assert 0.6 <= min(fractions) < max(fractions) <= 1.0 and np.ptp(fractions) > 0.1
  evaluated = pipelines.detector_example(record, None, settings=settings, swap_parts=False)
  assert evaluated['scale'] == 2.0  # evaluation fills the canvas
