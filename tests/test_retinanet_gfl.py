"""RetinaNet and GFL: parity with torchvision, checkpoint import, hand-computed GFL, bad input.

RetinaNet's reference is torchvision's retinanet_resnet50_fpn, random-initialised (CPU),
saved to a .pth and imported through `load_pytorch_weights`. Its BatchNorm statistics
are randomised, and its head convs re-drawn with He-normal weights (torchvision's
N(0, 0.01) makes every score ~sigmoid(bias): all near-ties) and a class bias that lets
a few hundred (anchor, class) pairs pass the 0.05 score threshold. The photograph is
scikit-image's `astronaut`, 300x370 pixels of content zero-padded to 320x384 (the
normalised image torchvision's transform would give, fed to both past its resize), so
the clipping to the content and the anchors on the padding are exercised.

GFL has no torchvision reference: its pieces are pinned by hand-computed cases and an
mmdetection-named state dict round trip. Behaviour tests use tiny ResNet detectors
with random numpy weights (no `init` compile) sharing compiled functions.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from skimage import data as skimage_data
from torchvision.models.detection.image_list import ImageList

import tps_jax.convert.one_stage  # noqa: F401  (registers the one-stage converters)
from configs import part_detector_gfl, part_detector_retinanet
from tests import detector_batches
from tests.detector_batches import (
  FULL,
  OBJECTS,
  TINY_SHAPE,
  images,
  targets,
  total,
  train_and_evaluate_briefly,
)
from tps_jax import ops
from tps_jax.convert import ConversionError, convert_state_dict, load_pytorch_weights
from tps_jax.models import detector_backbone, gfl, retinanet
from tps_jax.tasks import base as tasks

HEIGHT, WIDTH = 320, 384  # padded input
CONTENT = (300, 370)  # the photograph inside it
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# ------------------------------------------------------------------ references


@pytest.fixture(scope='module')
def photograph() -> np.ndarray:
  """(1, 320, 384, 3): the normalised astronaut, zero-padded at the bottom and right."""
  crop = skimage_data.astronaut()[100 : 100 + CONTENT[0], 60 : 60 + CONTENT[1]]
  image = np.zeros((1, HEIGHT, WIDTH, 3), np.float32)
  image[0, : CONTENT[0], : CONTENT[1]] = (crop.astype(np.float32) / 255.0 - MEAN) / STD
  return image


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random BatchNorm statistics / affines and He-normal head convs (module docstring)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        n = module.running_mean.shape[0]
        module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
        module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
        module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
        module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
    for module in model.head.modules():
      if isinstance(module, torch.nn.Conv2d):
        module.weight.normal_(0.0, math.sqrt(2.0 / module.weight[0].numel()), generator=generator)
        module.bias.normal_(0.0, 0.1, generator=generator)
    model.head.classification_head.cls_logits.bias.fill_(-6.2)
  return model


@pytest.fixture(scope='module')
def torchvision_retinanet(tmp_path_factory):
  """(random-initialised retinanet_resnet50_fpn with 5 classes in eval mode, .pth path)."""
  torch.manual_seed(0)
  model = torchvision.models.detection.retinanet_resnet50_fpn(
    weights=None, weights_backbone=None, num_classes=5
  )
  model = randomise(model.eval(), seed=1)
  path = tmp_path_factory.mktemp('retinanet') / 'retinanet.pth'
  torch.save(model.state_dict(), path)
  return model, str(path)


@pytest.fixture(scope='module')
def reference_outputs(torchvision_retinanet, photograph):
  """torchvision's per-level head outputs (ours: NHWC-flattened order) and detections."""
  model, _ = torchvision_retinanet
  x = torch.from_numpy(np.ascontiguousarray(photograph.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    features = list(model.backbone(x).values())
    head = model.head(features)
    images = ImageList(x, [CONTENT])
    anchors = model.anchor_generator(images, features)
    per_level = [f.shape[2] * f.shape[3] * 9 for f in features]
    split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
    detections = model.postprocess_detections(
      split, [list(a.split(per_level)) for a in anchors], images.image_sizes
    )[0]
  return {
    'features': features,
    'head': head,
    'anchors': anchors[0].numpy(),
    'per_level': per_level,
    'detections': {k: v.numpy() for k, v in detections.items()},
  }


def load(path, arch, **overrides):
  """(model, variables) through `load_pytorch_weights`, BatchNorm statistics included."""
  model, variables = load_pytorch_weights(path, arch, **overrides)
  assert 'batch_stats' in variables, (
    "load_pytorch_weights dropped the backbone's BatchNorm statistics (model_state)"
  )
  return model, variables


@pytest.fixture(scope='module')
def imported(torchvision_retinanet):
  return load(torchvision_retinanet[1], 'retinanet_resnet50_fpn')


def assert_close(got, want, name, rtol=1e-4):
  """|got - want| <= rtol * max|want|."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f'{name}: shape {got.shape} vs {want.shape}'
  error, scale = np.abs(got - want).max(), np.abs(want).max()
  assert error <= rtol * scale, f'{name}: max error {error:.3g} at scale {scale:.3g}'


def assert_same_detections(got, want, *, score_tol=1e-4, box_tol=0.05, max_swaps=2):
  """Detections equal up to near-ties.

  The two libraries' float32 convolutions agree to ~1e-6 of the logits' scale, so two
  candidates whose scores differ by less than that may come out in either order: NMS
  may then keep the other one of an overlapping pair, and the last of the top-D slots
  may go to another candidate. Every detection must have a twin (same label, box within
  `box_tol` pixels, score within `score_tol`) except at most `max_swaps`, and each of
  those must have a same-class near-tie (score within `score_tol`) among the other
  side's detections or score within `score_tol` of the cut.
  """
  (gb, gs, gl), (wb, ws, wl) = got, want
  assert len(gs) == len(ws), f'{len(gs)} detections vs {len(ws)}'
  free = np.ones(len(ws), bool)
  unmatched = []
  for box, score, label in zip(gb, gs, gl):
    twins = (
      free
      & (wl == label)
      & (np.abs(ws - score) <= score_tol)
      & (np.abs(wb - box).max(axis=1) <= box_tol)
    )
    if twins.any():
      free[np.argmax(twins)] = False
    else:
      unmatched.append((score, label))
  assert len(unmatched) <= max_swaps, f'{len(unmatched)} detections without a twin'
  cut = ws.min() if len(ws) else 0.0
  for score, label in unmatched:
    tie = np.any((wl[free] == label) & (np.abs(ws[free] - score) <= score_tol))
    assert tie or abs(score - cut) <= score_tol, (score, label, cut)


# ---------------------------------------------------------------- torchvision parity


@pytest.mark.slow
def test_retinanet_head_outputs_match_torchvision_per_level(
  imported, reference_outputs, photograph
):
  model, variables = imported
  assert model.num_classes == 5 and model.settings.max_detections == 300
  logits, deltas = jax.jit(lambda v, x: model.apply(v, x, method='head_outputs')[1:])(
    variables, jnp.asarray(photograph)
  )
  shapes = [(f.shape[2], f.shape[3]) for f in reference_outputs['features']]
  # Anchors (torchvision's strides from the padded size, rounded cells) agree exactly.
  np.testing.assert_array_equal(
    model.anchor_boxes(shapes, (HEIGHT, WIDTH)), reference_outputs['anchors']
  )
  bounds = np.cumsum([0] + reference_outputs['per_level'])
  for level, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
    for name, got, want in (
      ('cls_logits', logits, reference_outputs['head']['cls_logits']),
      ('bbox_regression', deltas, reference_outputs['head']['bbox_regression']),
    ):
      assert_close(got[:, start:stop], want[:, start:stop].numpy(), f'P{level + 3} {name}')


@pytest.mark.slow
def test_retinanet_detections_match_torchvision_on_a_photograph(
  imported, reference_outputs, photograph
):
  model, variables = imported
  want = reference_outputs['detections']
  assert 20 < len(want['scores']) < 300, 'the reference should keep some, not all, boxes'
  out = jax.jit(functools.partial(model.apply, train=False))(
    variables, jnp.asarray(photograph), jnp.asarray([CONTENT], jnp.float32)
  )
  valid = np.asarray(out['valid'][0])
  got = (
    np.asarray(out['boxes'][0])[valid],
    np.asarray(out['scores'][0])[valid],
    np.asarray(out['labels'][0])[valid],
  )
  assert_same_detections(got, (want['boxes'], want['scores'], want['labels']))
  assert np.all(got[0][:, 2] <= CONTENT[1]) and np.all(got[0][:, 3] <= CONTENT[0])


@pytest.mark.slow
def test_retinanet_loss_matches_torchvision(torchvision_retinanet, reference_outputs, imported):
  reference, _ = torchvision_retinanet
  model, _ = imported
  boxes = np.array([[40, 30, 160, 200], [150, 120, 300, 290], [10, 250, 60, 298]], np.float32)
  labels = np.array([1, 4, 2])
  head = reference_outputs['head']
  anchors = reference_outputs['anchors']
  with torch.no_grad():
    want = reference.compute_loss(
      [{'boxes': torch.from_numpy(boxes), 'labels': torch.from_numpy(labels)}],
      head,
      [torch.from_numpy(anchors)],
    )
  padded = lambda x, fill: np.concatenate([x, np.full((2,) + x.shape[1:], fill, x.dtype)])[None]
  got = retinanet.retinanet_loss(
    jnp.asarray(head['cls_logits'].numpy()),
    jnp.asarray(head['bbox_regression'].numpy()),
    anchors,
    np.ones((1, len(anchors)), bool),
    padded(boxes, 0),
    padded(labels, 0),
    padded(np.ones(3, bool), False),
    np.zeros((1, 5), bool),
    model.settings,
  )
  assert float(got['positives']) > 3
  np.testing.assert_allclose(got['loss_cls'], want['classification'].numpy(), rtol=2e-5)
  np.testing.assert_allclose(got['loss_box'], want['bbox_regression'].numpy(), rtol=2e-5)


def torchvision_head_state(state):
  return {k: v for k, v in state.items() if k.startswith('head.')}


def test_torchvision_names_before_0_13_load_the_same(torchvision_retinanet):
  state = {k: v.numpy() for k, v in torchvision_retinanet[0].state_dict().items()}
  old = {
    re.sub(r'(_head\.conv)\.(\d)\.0\.', lambda m: f'{m[1]}.{2 * int(m[2])}.', k): v
    for k, v in state.items()
  }
  assert 'head.classification_head.conv.6.weight' in old
  new, legacy = (convert_state_dict(s, 'retinanet_resnet50_fpn') for s in (state, old))
  assert new.params.keys() == legacy.params.keys()
  for path in new.params:
    np.testing.assert_array_equal(new.params[path], legacy.params[path])
  assert legacy.sources['head/cls_tower/conv_3/kernel'] == (
    'head.classification_head.conv.6.weight'
  )


def test_class_head_is_reinitialised_for_another_class_count(torchvision_retinanet):
  state = {k: v.numpy() for k, v in torchvision_retinanet[0].state_dict().items()}
  conversion = convert_state_dict(state, 'retinanet_resnet50_fpn', num_classes=10)
  assert conversion.model.num_classes == 10
  assert conversion.params['head/cls_logits/kernel'].shape == (3, 3, 256, 90)
  np.testing.assert_allclose(
    conversion.params['head/cls_logits/bias'], retinanet.prior_bias(0.01), rtol=1e-6
  )
  reinitialised = {k for k, why in conversion.skipped.items() if 're-initialised' in why}
  assert reinitialised == {
    'head.classification_head.cls_logits.weight',
    'head.classification_head.cls_logits.bias',
  }
  # Everything else is loaded: the class-agnostic regression and every tower conv.
  loaded = set(conversion.sources.values())
  assert set(torchvision_head_state(state)) - reinitialised <= loaded
  assert all(k.endswith('num_batches_tracked') for k in set(conversion.skipped) - reinitialised)
  assert any('re-initialised (10 classes)' in note for note in conversion.notes)


def test_checkpoints_of_another_architecture_are_refused(torchvision_retinanet):
  state = {k: v.numpy() for k, v in torchvision_retinanet[0].state_dict().items()}
  with pytest.raises(
    ConversionError, match='not an mmdetection gfl checkpoint.*torchvision RetinaNet'
  ):
    convert_state_dict(state, 'gfl_r50_fpn')
  classifier = {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}
  with pytest.raises(ConversionError, match='not a torchvision retinanet.*classification'):
    convert_state_dict(classifier, 'retinanet_resnet50_fpn')
  # A RetinaNet head of another structure (torchvision v2's GroupNorm head) is named.
  v2_like = dict(state, **{'head.classification_head.conv.0.1.weight': np.ones(256, np.float32)})
  with pytest.raises(ConversionError, match=r'head tensors .*conv\.0\.1\.weight'):
    convert_state_dict(v2_like, 'retinanet_resnet50_fpn')
  # A ResNet-50 backbone under a ResNet-101 arch: the first missing blocks, and a count.
  mmdet = mmdetection_names(state)
  with pytest.raises(ConversionError, match=r'missing keys: params/layer3_6/.* and \d+ more'):
    convert_state_dict(mmdet, 'retinanet_r101_fpn')
  with pytest.raises(ConversionError, match='unknown one-stage detector arch|unknown arch'):
    convert_state_dict(state, 'retinanet_r18_fpn')


def mmdetection_names(torchvision_state: dict) -> dict:
  """A torchvision RetinaNet state renamed, by hand, as mmdetection names its tensors."""
  renamed = {}
  for key, value in torchvision_state.items():
    key = key.replace('backbone.body.', 'backbone.')
    key = re.sub(r'backbone\.fpn\.inner_blocks\.(\d)\.0\.', r'neck.lateral_convs.\1.conv.', key)
    key = re.sub(r'backbone\.fpn\.layer_blocks\.(\d)\.0\.', r'neck.fpn_convs.\1.conv.', key)
    key = re.sub(
      r'backbone\.fpn\.extra_blocks\.p(\d)\.',
      lambda m: f'neck.fpn_convs.{int(m[1]) - 3}.conv.',
      key,
    )
    key = re.sub(
      r'head\.classification_head\.conv\.(\d)\.0\.', r'bbox_head.cls_convs.\1.conv.', key
    )
    key = re.sub(r'head\.regression_head\.conv\.(\d)\.0\.', r'bbox_head.reg_convs.\1.conv.', key)
    key = key.replace('head.classification_head.cls_logits.', 'bbox_head.retina_cls.')
    key = key.replace('head.regression_head.bbox_reg.', 'bbox_head.retina_reg.')
    renamed[key] = value
  return renamed


# ----------------------------------------------------- mmdetection names, round trips


def random_variables(model, shape, seed=0):
  return detector_batches.random_variables(model, shape, seed, norms='near_unit')


def flat(tree, prefix=''):
  return {
    f'{prefix}{"/".join(k.key for k in path)}': np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def to_mmdetection(variables, family: str) -> dict:
  """Our variables written as an mmdetection checkpoint (the inverse mapping, by hand)."""
  heads = {'retinanet': ('retina_cls', 'retina_reg'), 'gfl': ('gfl_cls', 'gfl_reg')}[family]
  state = {}
  for path, value in {
    **flat(variables['params'], 'params/'),
    **flat(variables['batch_stats'], 'batch_stats/'),
  }.items():
    collection, module, *rest = path.split('/')
    leaf = rest[-1]
    torch_value = value
    if leaf == 'kernel':
      torch_value = np.moveaxis(value, (-1, -2), (0, 1))  # (kh, kw, in, out) -> torch
    if module == 'backbone':
      block = rest[0]
      if m := re.fullmatch(r'layer(\d)_(\d+)', block):
        name = f'layer{m[1]}.{m[2]}.' + {
          'downsample_conv': 'downsample.0',
          'downsample_bn': 'downsample.1',
        }.get(rest[1], rest[1])
      else:
        name = block
      torch_leaf = {
        'kernel': 'weight',
        'scale': 'weight',
        'bias': 'bias',
        'mean': 'running_mean',
        'var': 'running_var',
      }[leaf]
      state[f'backbone.{name}.{torch_leaf}'] = torch_value
    elif module == 'neck':
      kind, level = re.fullmatch(r'(lateral|output|extra)_p(\d)', rest[0]).groups()
      index = int(level) - 3
      group = 'lateral_convs' if kind == 'lateral' else 'fpn_convs'
      state[f'neck.{group}.{index}.conv.{"weight" if leaf == "kernel" else "bias"}'] = torch_value
    else:  # head
      if rest[0].startswith('scale_'):
        state[f'bbox_head.scales.{rest[0][len("scale_") :]}.scale'] = value.reshape(1)
        continue
      torch_leaf = 'bias' if leaf == 'bias' else 'weight'
      if rest[0] in ('cls_logits', 'bbox_pred'):
        name = heads[0] if rest[0] == 'cls_logits' else heads[1]
      else:
        branch = rest[0].split('_')[0]
        kind, index = rest[1].split('_')
        name = f'{branch}_convs.{index}.{kind}'
      state[f'bbox_head.{name}.{torch_leaf}'] = torch_value
  if family == 'gfl':
    state['bbox_head.integral.project'] = np.arange(17, dtype=np.float32)
  return state


@pytest.mark.slow
@pytest.mark.parametrize(
  'arch,family,backbone',
  [
    ('gfl_r50_fpn', 'gfl', 'resnet50'),
    ('gfl_x101_32x4d_fpn', 'gfl', 'resnext101_32x4d'),
    ('retinanet_r50_fpn', 'retinanet', 'resnet50'),
  ],
)
def test_mmdetection_state_dict_round_trip(arch, family, backbone):
  build = gfl.build_gfl if family == 'gfl' else retinanet.build_retinanet
  model = build(backbone, 7)
  variables = random_variables(model, (1, 64, 64, 3))
  state = to_mmdetection(variables, family)
  conversion = convert_state_dict(state, arch)
  assert conversion.model == model
  got = conversion.variables()
  assert flat(got).keys() == flat(variables).keys()
  for path, value in flat(variables).items():
    np.testing.assert_array_equal(flat(got)[path], value, err_msg=path)
  expected_skips = {'bbox_head.integral.project'} if family == 'gfl' else set()
  assert set(conversion.skipped) == expected_skips
  assert conversion.sources['head/cls_logits/kernel'] == (
    'bbox_head.gfl_cls.weight' if family == 'gfl' else 'bbox_head.retina_cls.weight'
  )
  assert conversion.model_kwargs['family'] == family


def test_gfl_checkpoint_of_another_class_count_and_a_retinanet_one():
  model = gfl.build_gfl('resnet50', 80, head={'num_convs': 2})
  state = to_mmdetection(random_variables(model, (1, 64, 64, 3)), 'gfl')
  conversion = convert_state_dict(state, 'gfl_r50_fpn', num_classes=10)
  assert conversion.model.settings.num_convs == 2 and conversion.model.settings.reg_max == 16
  assert conversion.params['head/cls_logits/kernel'].shape == (3, 3, 256, 10)
  assert 're-initialised' in conversion.skipped['bbox_head.gfl_cls.weight']
  assert conversion.sources['head/bbox_pred/kernel'] == 'bbox_head.gfl_reg.weight'
  with pytest.raises(ConversionError, match='not an mmdetection retinanet.*mmdetection GFL'):
    convert_state_dict(state, 'retinanet_r50_fpn')
  dcn = dict(state, **{'backbone.layer4.0.conv2.conv_offset.weight': np.zeros((27, 512, 3, 3))})
  with pytest.raises(ConversionError, match='conv_offset'):
    convert_state_dict(dcn, 'gfl_r50_fpn')


# ------------------------------------------------------------- GFL by hand

# One level of stride 8, 3x3 cells, one 16x16 anchor per cell centred on (8x, 8y).
HAND_ANCHORS = ops.AnchorGenerator(((16.0,),), ((1.0,),), strides=(8,))


def test_integral_by_hand():
  logits = np.full((3, 17), -1e4, np.float32)
  logits[0, 5] = 0.0  # all mass on 5
  logits[1, [2, 3]] = 0.0  # half on 2, half on 3
  logits[2] = np.log(np.arange(1, 18, dtype=np.float32))  # p_i proportional to i + 1
  expected = [5.0, 2.5, sum(i * (i + 1) for i in range(17)) / sum(range(1, 18))]
  np.testing.assert_allclose(gfl.integral(jnp.asarray(logits)), expected, rtol=1e-6)


def test_gfl_loss_by_hand():
  """ATSS, QFL, GIoU and DFL on a 3x3 grid with one GT, every number by hand.

  GT (2, 2, 14, 14) is centred on the middle anchor (0, 0, 16, 16): IoU 144/256 =
  0.5625. The 4 edge anchors overlap it 72/328, the 4 corners 36/364; the 9 candidates'
  mean + std is ~0.351, so the middle anchor alone is positive. Its distributions put
  all mass on distance 1 stride for every side: the predicted box is (0, 0, 16, 16),
  i.e. (0, 0, 2, 2) in strides, against the target (0.25, 0.25, 1.75, 1.75): IoU (and
  GIoU, the prediction encloses the target) 0.5625; each side's target distance 0.75
  puts 0.25 on bin 0 (log-probability -40) and 0.75 on bin 1 (log-probability 0).
  """
  shapes = [(3, 3)]
  anchors = np.concatenate(HAND_ANCHORS.grid_anchors(shapes))
  centers = (anchors[:, :2] + anchors[:, 2:]) / 2
  strides = np.full(9, 8.0, np.float32)
  settings = gfl.GFLSpec(anchors=HAND_ANCHORS)
  num_classes = 2
  logits = np.zeros((1, 9, num_classes), np.float32)  # every score 0.5
  distributions = np.full((1, 9, 4, 17), -40.0, np.float32)
  distributions[..., 1] = 0.0
  gt = np.array([[[2, 2, 14, 14], [0, 0, 0, 0]]], np.float32)
  loss = jax.jit(gfl.gfl_loss, static_argnames=('num_anchors_per_level', 'settings'))
  out = loss(
    jnp.asarray(logits),
    jnp.asarray(distributions),
    anchors,
    centers,
    strides,
    num_anchors_per_level=(9,),
    anchor_valid=np.ones((1, 9), bool),
    gt_boxes=gt,
    gt_labels=np.array([[1, 0]]),
    gt_valid=np.array([[True, False]]),
    gt_ignore=np.zeros((1, 2), bool),
    settings=settings,
  )
  assert float(out['positives']) == 1.0
  np.testing.assert_allclose(out['mean_quality'], 0.5625, rtol=1e-6)
  log2 = math.log(2.0)
  # QFL: BCE(0, y) = log 2 for any target y; scale |y - 0.5|^2. 17 zero targets, one 0.5625.
  qfl = 17 * log2 * 0.25 + log2 * (0.5625 - 0.5) ** 2
  np.testing.assert_allclose(out['loss_cls'], qfl, rtol=1e-5)
  # The positive's weight 0.5 (its best score); normaliser max(0.5, 1) = 1.
  np.testing.assert_allclose(out['loss_box'], 2.0 * 0.5 * (1 - 0.5625), rtol=1e-5)
  np.testing.assert_allclose(out['loss_dfl'], 0.25 * 0.5 * 4 * (0.25 * 40.0) / 4.0, rtol=1e-5)


def test_gfl_head_output_layout_and_level_scales():
  """Channel side * (n + 1) + bin of the regression conv is (side, bin); scales multiply."""
  head = gfl.GFLHead(num_classes=3, num_convs=1, feat_channels=8, num_groups=2, reg_max=4)
  levels = [jnp.ones((1, 2, 2, 8)), jnp.ones((1, 1, 1, 8))]
  variables = jax.jit(head.init)(jax.random.key(0), levels)
  params = variables['params']
  params['bbox_pred']['bias'] = jnp.arange(20, dtype=jnp.float32)
  for name in ('bbox_pred', 'cls_logits'):
    params[name]['kernel'] = jnp.zeros_like(params[name]['kernel'])
  params['scale_1'] = jnp.float32(2.0)
  logits, distributions = jax.jit(head.apply)({'params': params}, levels)
  assert logits.shape == (1, 5, 3) and distributions.shape == (1, 5, 4, 5)
  np.testing.assert_array_equal(distributions[0, 0], np.arange(20).reshape(4, 5))
  np.testing.assert_array_equal(distributions[0, 4], 2 * np.arange(20).reshape(4, 5))
  np.testing.assert_allclose(logits, retinanet.prior_bias(0.01), rtol=1e-6)


# ---------------------------------------------------------- tiny model behaviour

NUM_CLASSES = 3
TINY = dict(backbone_overrides={'depths': (1, 1, 1, 1)}, neck={'out_channels': 32})


def tiny_model(family: str):
  if family == 'retinanet':
    return retinanet.build_retinanet(
      'resnet18',
      NUM_CLASSES,
      head={'num_convs': 1, 'feat_channels': 32, 'max_detections': 20},
      **TINY,
    )
  return gfl.build_gfl(
    'resnet18',
    NUM_CLASSES,
    head={'num_convs': 1, 'feat_channels': 32, 'num_groups': 8, 'max_detections': 20},
    **TINY,
  )


@pytest.fixture(scope='module', params=['retinanet', 'gfl'])
def tiny(request):
  """(model, variables, losses(variables, images, image_shape, targets), jitted
  losses_and_grads(...same...): the losses and the gradient of their sum with respect to
  the params, jitted detect). `losses` is `losses_and_grads`'s first output: one
  compiled training program for both (the tiny backward pass runs in far less time than
  a second, forward-only program compiles)."""
  model = tiny_model(request.param)
  variables = random_variables(model, TINY_SHAPE)

  @jax.jit
  def losses_and_grads(variables, images, image_shape, targets):
    def summed(params):
      out = model.apply({**variables, 'params': params}, images, image_shape, targets, train=True)
      return total(out), out

    (_, out), grads = jax.value_and_grad(summed, has_aux=True)(variables['params'])
    return out, grads

  losses = lambda *args: losses_and_grads(*args)[0]
  detect = functools.partial(model.apply, train=False)
  return (model, variables, losses, losses_and_grads, jax.jit(detect))


@pytest.mark.slow
def test_losses_train_every_head_and_no_frozen_parameter(tiny):
  model, variables, _, losses_and_grads, _ = tiny
  batch = targets(OBJECTS, labels=[[0, 2], [1]])
  out, grads = losses_and_grads(variables, images(), FULL, batch)
  assert all(np.isfinite(v) for v in out.values()) and out['positives'] > 0
  assert all(out[k] > 0 for k in out if k.startswith('loss_'))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    names = [k.key for k in path]
    assert np.isfinite(g).all(), names
    if names[0] == 'head' and names[-1] == 'kernel':
      assert np.abs(g).max() > 0, f'no gradient for {"/".join(names)}'
    if not detector_backbone.is_trainable(model, names):
      assert np.abs(g).max() == 0, f'frozen {"/".join(names)} has gradient'


@pytest.mark.slow
@pytest.mark.parametrize('build', [retinanet.build_retinanet, gfl.build_gfl])
def test_bfloat16_compute_keeps_float32_params_and_finite_outputs(build):
  model = build(
    'resnet18', NUM_CLASSES, dtype=jnp.bfloat16, head={'num_convs': 1, 'feat_channels': 32}, **TINY
  )
  variables = random_variables(model, TINY_SHAPE)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  losses = jax.jit(functools.partial(model.apply, train=True))(
    variables, images(), FULL, targets(OBJECTS, labels=[[0, 2], [1]])
  )
  assert all(np.isfinite(v) for v in losses.values()) and total(losses) > 0
  out = jax.jit(functools.partial(model.apply, train=False))(variables, images(), FULL)
  assert out['boxes'].dtype == jnp.float32 and np.isfinite(np.asarray(out['boxes'])).all()


def test_images_without_boxes_give_finite_losses_and_gradients(tiny):
  _, variables, _, losses_and_grads, _ = tiny
  out, grads = losses_and_grads(variables, images(), FULL, targets([[], []]))
  assert all(np.isfinite(v) for v in out.values())
  assert out['positives'] == 0 and out['loss_box'] == 0 and out['loss_cls'] > 0
  assert out.get('loss_dfl', 0.0) == 0
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_degenerate_and_out_of_image_boxes_are_dropped_and_counted(tiny):
  _, variables, losses, _, _ = tiny
  clean = losses(variables, images(), FULL, targets(OBJECTS))
  bad = [
    OBJECTS[0] + [(50, 50, 50, 80), (200, 10, 260, 60)],  # zero width; outside
    OBJECTS[1] + [(np.nan, 0, 10, 10), (20, 20, 10, 10)],
  ]  # NaN; inverted
  dirty = losses(variables, images(), FULL, targets(bad))
  assert float(dirty['gt_dropped']) == 4 and float(clean['gt_dropped']) == 0
  for name in clean:
    if name != 'gt_dropped':
      np.testing.assert_allclose(dirty[name], clean[name], rtol=1e-6, err_msg=name)


def test_ignore_regions_are_neither_positive_nor_negative(tiny):
  model, variables, losses, _, _ = tiny
  region = (20, 10, 100, 90)
  as_object = losses(variables, images(), FULL, targets([[region], [region]]))
  ignored = losses(
    variables, images(), FULL, targets([[region], [region]], ignore=[[True], [True]])
  )
  assert as_object['positives'] > 0 and ignored['positives'] == 0
  # The classification loss skips exactly the anchors the region covers: with zero
  # logits there, it equals the loss of the same anchors marked invalid.
  s = model.settings
  shapes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
  anchors = np.concatenate(s.anchors.grid_anchors(shapes, TINY_SHAPE[1:3]))
  covered = (
    np.asarray(ops.box_overlaps(jnp.asarray(anchors), jnp.asarray([region], jnp.float32), 'iof'))[
      :, 0
    ]
    > s.ignore_iof_thr
  )
  assert 0 < covered.sum() < len(anchors)
  batch = targets([[region], [region]], ignore=[[True], [True]])
  logits = jnp.asarray(
    np.random.default_rng(1).standard_normal((2, len(anchors), NUM_CLASSES)), jnp.float32
  )
  valid = np.ones((2, len(anchors)), bool)
  if isinstance(model, gfl.GFL):
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    strides = retinanet.level_strides(s.anchors, shapes, TINY_SHAPE[1:3])
    dist = jnp.zeros((2, len(anchors), 4, s.reg_max + 1))
    loss = lambda valid, batch: gfl.gfl_loss(
      logits,
      dist,
      anchors,
      centers,
      strides,
      s.anchors.num_anchors_per_level(shapes),
      valid,
      batch['boxes'],
      batch['labels'],
      batch['valid'],
      batch['ignore'],
      s,
    )['loss_cls']
  else:
    deltas = jnp.zeros((2, len(anchors), 4))
    loss = lambda valid, batch: retinanet.retinanet_loss(
      logits,
      deltas,
      anchors,
      valid,
      batch['boxes'],
      batch['labels'],
      batch['valid'],
      batch['ignore'],
      s,
    )['loss_cls']
  loss = jax.jit(loss)
  nothing = targets([[], []])
  np.testing.assert_allclose(loss(valid, batch), loss(valid & ~covered, nothing), rtol=1e-6)
  assert loss(valid, batch) < loss(valid, nothing)


def test_detections_are_padded_sorted_and_inside_each_image(tiny):
  _, variables, _, _, detect = tiny
  image_shape = np.array([[96.0, 128.0], [60.0, 70.0]], np.float32)  # 2nd image padded
  out = detect(variables, images(), image_shape)
  assert out['boxes'].shape == (2, 20, 4) and out['labels'].dtype == jnp.int32
  boxes, valid = np.asarray(out['boxes']), np.asarray(out['valid'])
  scores = np.asarray(out['scores'])
  assert valid.any()
  assert np.all(boxes[1, :, 2] <= 70.0) and np.all(boxes[1, :, 3] <= 60.0)
  assert np.all(np.asarray(out['labels'])[valid] < NUM_CLASSES)
  assert np.all(scores[valid] > 0.05) and np.all(scores[~valid] == 0)
  assert np.all(boxes[valid][:, 2:] > boxes[valid][:, :2])  # no zero-area boxes
  for b in range(2):
    assert np.all(np.diff(scores[b][valid[b]]) <= 0)


# ------------------------------------------------------------------------- configs


@pytest.mark.parametrize('module', [part_detector_retinanet, part_detector_gfl])
def test_configs_build_the_reports_models(module):
  full = tasks.get_task('detection', module.get_config()).model
  tiny = tasks.get_task('detection', module.get_config('tiny')).model
  for model in (full, tiny):
    assert model.num_classes == 10 and model.neck.in_keys == retinanet.FPN_INPUTS
    assert model.neck.num_extra == 2 and model.settings.anchors.num_levels == 5
  if module is part_detector_retinanet:
    assert full.backbone.depths == (3, 4, 6, 3) and full.backbone.groups == 1
    assert full.neck.extra == 'conv_on_input' and full.settings.num_convs == 4
    assert full.settings.anchors.num_anchors_per_location == (9,) * 5
    assert full.settings.anchors.sizes[0] == pytest.approx(
      (32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3))
    )
  else:
    assert full.backbone.depths == (3, 4, 23, 3) and full.backbone.groups == 32
    assert full.backbone.width_per_group == 4 and full.neck.extra == 'conv_on_output'
    assert (full.settings.num_groups, full.settings.reg_max) == (32, 16)
    assert full.settings.anchors.sizes[0] == (64.0,)
  assert full.backbone.frozen_stages == 1 and full.backbone.norm == 'frozen'
  with pytest.raises(ValueError, match='unknown variant'):
    module.get_config('huge')


@pytest.mark.slow
@pytest.mark.parametrize(
  'config,in_subprocess',
  [('configs/part_detector_retinanet.py:tiny', False), ('configs/part_detector_gfl.py:tiny', True)],
)
def test_tiny_configs_train_export_and_evaluate(config, in_subprocess, synthetic_root, tmp_path):
  """run_train.py on the synthetic fixture for a few steps, then the evaluation command
  on the export: once in a fresh process, as a user types it (the suite's one such run
  of `python -m tps_jax.evaluate_detector`), once in this one."""
  final = train_and_evaluate_briefly(
    config, synthetic_root, tmp_path, 'parts', steps=3, subprocess_=in_subprocess
  )
  assert {'eval_AP', 'eval_AP50', 'eval_AP_left_hand'} <= set(final)
