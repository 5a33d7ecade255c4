"""Cascade R-CNN / Faster R-CNN: parity with torchvision, checkpoint import, bad input.

References are random-initialised torchvision models (CPU). The photograph is
scikit-image's `astronaut`, cropped to 320x384 so that H != W and both are multiples
of 32 (torchvision's transform then neither resizes nor pads: its min/max size are
set to the image's sides and it is fed the same normalised image).

Behaviour tests use a tiny ResNet detector with random numpy weights (no `init`,
whose compile is slow on CPU) and share one compiled loss / detect function.
"""

import dataclasses
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

import tps_jax.convert.detection  # noqa: F401  (registers the detector converters)
from tests.detector_batches import (
  FULL,
  OBJECTS,
  TINY_SHAPE,
  images,
  random_variables,
  targets,
  total,
)
from tps_jax import ops
from tps_jax.convert import ConversionError, convert_state_dict, read_state_dict
from tps_jax.models import detector_backbone
from tps_jax.models import rpn as rpn_lib
from tps_jax.models.cascade_rcnn import CASCADE_STDS, build_cascade_rcnn

HEIGHT, WIDTH = 320, 384
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# ------------------------------------------------------------------ references


@pytest.fixture(scope='module')
def photograph() -> np.ndarray:
  """(1, 320, 384, 3) normalised astronaut."""
  image = skimage_data.astronaut()[:HEIGHT, 64 : 64 + WIDTH].astype(np.float32) / 255.0
  return ((image - MEAN) / STD)[None]


@pytest.fixture(scope='module')
def torchvision_rcnn(tmp_path_factory):
  """(random-initialised fasterrcnn_resnet50_fpn in eval mode, path of its .pth)."""
  torch.manual_seed(0)
  model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
    weights=None, weights_backbone=None
  ).eval()
  path = tmp_path_factory.mktemp('fasterrcnn') / 'fasterrcnn.pth'
  torch.save(model.state_dict(), path)
  return model, str(path)


def load(path_or_state, arch, **overrides):
  """(model, variables, conversion) of a checkpoint through the converter registry."""
  if isinstance(path_or_state, str):
    conversion = convert_state_dict(
      read_state_dict(path_or_state), arch, source=path_or_state, **overrides
    )
  else:
    conversion = convert_state_dict(path_or_state, arch, **overrides)
  return conversion.model, conversion.variables(), conversion


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def torch_objectness(head_outputs) -> np.ndarray:
  """torchvision's per-level (N, A, H, W) objectness flattened in our anchor order."""
  return torch.cat([o.permute(0, 2, 3, 1).reshape(o.shape[0], -1) for o in head_outputs], 1).numpy()


def assert_close(got, want, name, rtol=1e-4):
  """|got - want| <= rtol * max|want|."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f'{name}: shape {got.shape} vs {want.shape}'
  error, scale = np.abs(got - want).max(), np.abs(want).max()
  assert error <= rtol * scale, f'{name}: max error {error:.3g} at scale {scale:.3g}'


def assert_same_detections(got, want, *, score_tol=1e-4, box_tol=0.05, max_swaps=2):
  """Detections (boxes, scores, labels) equal up to near-ties.

  With float32 arithmetic in two libraries, two candidates whose scores differ by
  less than ~1e-6 may come out in either order, and the one at the top-D cut may be
  another; so every detection must have a twin (same label, box within `box_tol`
  pixels, score within `score_tol`) except at most `max_swaps`, each of which must
  score within `score_tol` of the cut.
  """
  (gb, gs, gl), (wb, ws, wl) = got, want
  assert len(gs) == len(ws), f'{len(gs)} detections vs {len(ws)}'
  unmatched = []
  free = np.ones(len(ws), bool)
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
      unmatched.append(score)
  assert len(unmatched) <= max_swaps, f'{len(unmatched)} detections without a twin'
  cut = ws.min() if len(ws) else 0.0
  assert all(abs(s - cut) <= score_tol for s in unmatched), (unmatched, cut)


@pytest.mark.slow
def test_faster_rcnn_matches_torchvision_on_a_photograph(torchvision_rcnn, photograph):
  reference, path = torchvision_rcnn
  model, variables, conversion = load(path, 'fasterrcnn_resnet50_fpn')
  assert model.roi.num_stages == 1 and not model.roi.class_agnostic
  assert model.num_classes == 90  # torchvision's 91 outputs, background moved last
  image_shape = jnp.array([[HEIGHT, WIDTH]], jnp.float32)
  x = jnp.asarray(photograph)

  with torch.no_grad():
    features = reference.backbone(nchw(photograph))
    images = ImageList(nchw(photograph), [(HEIGHT, WIDTH)])
    want_proposals = reference.rpn(images, features)[0][0].numpy()
    want_objectness = torch_objectness(reference.rpn.head(list(features.values()))[0])
    pooled = reference.roi_heads.box_roi_pool(
      features, [torch.from_numpy(want_proposals)], images.image_sizes
    )
    want_logits, want_deltas = reference.roi_heads.box_predictor(
      reference.roi_heads.box_head(pooled)
    )

  # Whole inference: torchvision's transform neither resizes nor renormalises.
  reference.transform.min_size, reference.transform.max_size = (HEIGHT,), WIDTH
  reference.transform.image_mean, reference.transform.image_std = [0.0] * 3, [1.0] * 3
  with torch.no_grad():
    want = reference([nchw(photograph)[0]])[0]

  def heads(m, x, rois):  # one program: the backbone compiled and run once
    levels = m.pyramid(x, train=False)
    proposals, objectness, _, _ = m.propose(levels, image_shape, (HEIGHT, WIDTH), train=False)
    return (
      proposals,
      objectness,
      m.box_head(0, levels, rois, (HEIGHT, WIDTH)),
      m.detect(x, image_shape),
    )

  proposals, objectness, (logits, deltas), detections = jax.jit(
    lambda v, x, r: model.apply(v, x, r, method=heads)
  )(variables, x, jnp.asarray(want_proposals)[None])

  # RPN: objectness of every anchor and the proposals (same order).
  assert_close(objectness, want_objectness, 'RPN objectness')
  got = np.asarray(proposals.boxes[0])[np.asarray(proposals.valid[0])]
  assert got.shape == want_proposals.shape
  rows_equal = np.abs(got - want_proposals).max(axis=1) <= 0.05
  assert rows_equal.mean() >= 0.99, f'{(~rows_equal).sum()} of {len(got)} proposals differ'

  # RoI head on torchvision's proposals: logits (background moved last) and deltas
  # (the background's box dropped).
  assert_close(logits[0], want_logits.numpy()[:, list(range(1, 91)) + [0]], 'class logits')
  assert_close(deltas[0], want_deltas.numpy()[:, 4:], 'box deltas')

  # Whole inference.
  valid = np.asarray(detections['valid'][0])
  assert 20 <= valid.sum() == len(want['scores'])
  assert_same_detections(
    (
      np.asarray(detections['boxes'][0])[valid],
      np.asarray(detections['scores'][0])[valid],
      np.asarray(detections['labels'][0])[valid] + 1,
    ),
    (want['boxes'].numpy(), want['scores'].numpy(), want['labels'].numpy()),
  )


# ------------------------------------------------------- mmdetection cascade names


def mmdetection_state(reference: torch.nn.Module, seed: int = 1) -> dict[str, np.ndarray]:
  """A Cascade R-CNN state dict in mmdetection's names, built from torchvision's.

  Backbone, FPN and RPN are renamed; each of the three stages gets torchvision's FCs
  (perturbed per stage), its classifier with the background moved last (perturbed) and
  a class-agnostic regressor (class 1's box rows, perturbed).
  """
  rng = np.random.default_rng(seed)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  out = {}
  for key, value in state.items():
    if key.startswith('backbone.body.'):
      out['backbone.' + key[len('backbone.body.') :]] = value
    elif key.startswith('backbone.fpn.inner_blocks.'):
      i, leaf = key.split('.')[3], key.split('.')[-1]
      out[f'neck.lateral_convs.{i}.conv.{leaf}'] = value
    elif key.startswith('backbone.fpn.layer_blocks.'):
      i, leaf = key.split('.')[3], key.split('.')[-1]
      out[f'neck.fpn_convs.{i}.conv.{leaf}'] = value
  for name, new in (('conv.0.0', 'rpn_conv'), ('cls_logits', 'rpn_cls'), ('bbox_pred', 'rpn_reg')):
    for leaf in ('weight', 'bias'):
      out[f'rpn_head.{new}.{leaf}'] = state[f'rpn.head.{name}.{leaf}']
  noise = lambda x, scale: (x + scale * np.abs(x).mean() * rng.standard_normal(x.shape)).astype(
    np.float32
  )
  order = list(range(1, 91)) + [0]
  for stage in range(3):
    head = f'roi_head.bbox_head.{stage}'
    for leaf in ('weight', 'bias'):
      out[f'{head}.shared_fcs.0.{leaf}'] = noise(state[f'roi_heads.box_head.fc6.{leaf}'], 0.3)
      out[f'{head}.shared_fcs.1.{leaf}'] = noise(state[f'roi_heads.box_head.fc7.{leaf}'], 0.3)
      out[f'{head}.fc_cls.{leaf}'] = noise(
        state[f'roi_heads.box_predictor.cls_score.{leaf}'][order], 0.3
      )
      out[f'{head}.fc_reg.{leaf}'] = noise(
        state[f'roi_heads.box_predictor.bbox_pred.{leaf}'][4:8], 0.3
      )
  out['roi_head.mask_head.0.conv.weight'] = np.zeros((4, 4, 3, 3), np.float32)  # skipped
  return out


@torch.no_grad()
def torch_cascade(reference, state, photograph, proposals) -> tuple[np.ndarray, ...]:
  """mmdetection's Cascade R-CNN test path written with torch / torchvision ops.

  RoIAlign aligned=True with adaptive sampling on level floor(log2(sqrt(area) / 56)),
  three class-agnostic stages each regressing the previous one's boxes (deltas times
  the stage's stds, log-scale clamped to +-log(1000/16), clipped to the image), the
  mean of the stages' logits, softmax, score > 0.05, per-class NMS 0.5, top 100.
  """
  features = reference.backbone(nchw(photograph))
  levels = [features[str(i)] for i in range(4)]
  tensor = lambda key: torch.from_numpy(state[key])
  rois = torch.from_numpy(proposals)
  clip = math.log(1000.0 / 16)

  def decode(deltas, boxes, stds):
    deltas = deltas * torch.tensor(stds)
    sizes = boxes[:, 2:] - boxes[:, :2]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 + sizes * deltas[:, :2]
    sizes = sizes * torch.exp(deltas[:, 2:].clamp(-clip, clip))
    out = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    return torchvision.ops.clip_boxes_to_image(out, (HEIGHT, WIDTH))

  logits_sum = 0.0
  for stage in range(3):
    head = f'roi_head.bbox_head.{stage}'
    scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
    level = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()
    pooled = torch.zeros(len(rois), 256, 7, 7)
    for i, feature in enumerate(levels):
      mine = level == i
      if mine.any():
        pooled[mine] = torchvision.ops.roi_align(
          feature, [rois[mine]], 7, 0.25 / 2**i, 0, aligned=True
        )
    x = torch.relu(
      pooled.flatten(1) @ tensor(f'{head}.shared_fcs.0.weight').T
      + tensor(f'{head}.shared_fcs.0.bias')
    )
    x = torch.relu(
      x @ tensor(f'{head}.shared_fcs.1.weight').T + tensor(f'{head}.shared_fcs.1.bias')
    )
    logits = x @ tensor(f'{head}.fc_cls.weight').T + tensor(f'{head}.fc_cls.bias')
    deltas = x @ tensor(f'{head}.fc_reg.weight').T + tensor(f'{head}.fc_reg.bias')
    logits_sum = logits_sum + logits
    rois = decode(deltas, rois, CASCADE_STDS[stage])
  scores = torch.softmax(logits_sum / 3, -1)[:, :-1]
  keep_pairs = torch.nonzero(scores > 0.05)
  boxes, labels = rois[keep_pairs[:, 0]], keep_pairs[:, 1]
  scores = scores[keep_pairs[:, 0], keep_pairs[:, 1]]
  keep = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)[:100]
  return boxes[keep].numpy(), scores[keep].numpy(), labels[keep].numpy()


@pytest.mark.slow
def test_mmdetection_names_give_a_three_stage_cascade(torchvision_rcnn, photograph):
  reference, _ = torchvision_rcnn
  state = mmdetection_state(reference)
  # mmdetection's adaptive RoIAlign takes ceil(side / 7) samples per bin; under jit the
  # count is capped (default 4): exact here only with a cap covering the longest
  # side of a level-0 RoI (384 / 4 / 7 -> 14), e.g. the thin full-height proposals.
  # 14 x 14 sample slots per bin make each RoI costly to run (about 0.02 s of CPU per RoI
  # and stage): 64 RoI slots, not 1000, which the top 24 anchors per level fill with
  # about 26 proposals after NMS (the rest padding), on levels 0 to 2, some needing
  # more than the default cap's samples (asserted below). The 1000-proposal RPN is
  # checked against torchvision's by the test above.
  rpn = {'pre_nms_top_n_test': 24, 'post_nms_top_n_test': 64}
  model, variables, conversion = load(
    state, 'cascade_rcnn_r50_fpn', roi={'max_sampling_ratio': 14}, rpn=rpn
  )
  assert model.roi.num_stages == 3 and model.roi.class_agnostic and model.num_classes == 90
  assert conversion.skipped['roi_head.mask_head.0.conv.weight'].startswith('mask branch')
  assert conversion.sources['box_heads_2/cls_score/kernel'] == 'roi_head.bbox_head.2.fc_cls.weight'
  x = jnp.asarray(photograph)
  image_shape = jnp.array([[HEIGHT, WIDTH]], jnp.float32)

  def propose_and_detect(m, x):  # one program: the backbone compiled and run once
    proposals, objectness, _, _ = m.propose(
      m.pyramid(x, train=False), image_shape, (HEIGHT, WIDTH), train=False
    )
    return proposals, objectness, m.detect(x, image_shape)

  proposals, objectness, detections = jax.jit(
    lambda v, x: model.apply(v, x, method=propose_and_detect)
  )(variables, x)
  with torch.no_grad():
    features = reference.backbone(nchw(photograph))
    want_objectness = torch_objectness(reference.rpn.head(list(features.values()))[0])
  assert_close(objectness, want_objectness, 'RPN objectness (mmdetection names)')

  boxes = np.asarray(proposals.boxes[0])[np.asarray(proposals.valid[0])]
  assert 20 <= len(boxes) < rpn['post_nms_top_n_test']
  sizes = boxes[:, 2:] - boxes[:, :2]
  levels = np.floor(np.log2(np.sqrt(sizes.prod(1)) / 56 + 1e-6)).clip(0, 3)
  assert set(levels) == {0, 1, 2}
  samples = np.ceil(sizes.max(1) / (4 * 2**levels) / 7)  # per bin, on the RoI's level
  assert 4 < samples.max() <= 14  # beyond the default cap, within this one
  want = torch_cascade(reference, state, photograph, boxes)
  valid = np.asarray(detections['valid'][0])
  assert valid.sum() >= 20
  assert_same_detections(
    (
      np.asarray(detections['boxes'][0])[valid],
      np.asarray(detections['scores'][0])[valid],
      np.asarray(detections['labels'][0])[valid],
    ),
    want,
  )


# --------------------------------------------------------------- import checks


@pytest.fixture(scope='module')
def torchvision_state(torchvision_rcnn):
  return {k: v.numpy() for k, v in torchvision_rcnn[0].state_dict().items()}


def test_class_heads_are_reinitialised_for_another_class_count(torchvision_state):
  _, _, conversion = load(torchvision_state, 'fasterrcnn_resnet50_fpn', num_classes=1)
  params = conversion.params
  assert params['box_heads_0/cls_score/kernel'].shape == (1024, 2)
  assert params['box_heads_0/bbox_pred/kernel'].shape == (1024, 4)
  for key in ('roi_heads.box_predictor.cls_score.weight', 'roi_heads.box_predictor.bbox_pred.bias'):
    assert 're-initialised' in conversion.skipped[key]
  assert 'box_heads_0/cls_score/kernel' not in conversion.sources
  # Everything else came from the checkpoint, BatchNorm statistics included.
  assert conversion.sources['box_heads_0/fc_0/kernel'] == 'roi_heads.box_head.fc6.weight'
  assert conversion.sources['rpn_head/objectness/kernel'] == 'rpn.head.cls_logits.weight'
  assert 'batch_stats/backbone/layer1_0/bn1/mean' in conversion.model_state
  assert any('re-initialised' in note for note in conversion.notes)


def test_checkpoints_of_another_architecture_are_refused(torchvision_state):
  with pytest.raises(ConversionError, match='not a mmdetection two-stage detector'):
    load(torchvision_state, 'cascade_rcnn_r50_fpn')
  classifier = {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}
  with pytest.raises(ConversionError, match='not a torchvision two-stage detector'):
    load(classifier, 'fasterrcnn_resnet50_fpn')
  extra = dict(torchvision_state)
  extra['roi_heads.box_head.fc8.weight'] = np.zeros((4, 4), np.float32)
  with pytest.raises(ConversionError, match='roi_heads.box_head.fc8.weight'):
    load(extra, 'fasterrcnn_resnet50_fpn')
  with pytest.raises(ConversionError, match='cascade_rcnn_swin_l_fpn'):
    load(torchvision_state, 'cascade_rcnn_swin_l_fpn')  # a ResNet into a Swin arch


# ---------------------------------------------------------- tiny model behaviour

NUM_CLASSES = 3


def tiny_model(**roi):
  return build_cascade_rcnn(
    'resnet18',
    NUM_CLASSES,
    backbone_overrides={'depths': (1, 1, 1, 1)},
    neck={'out_channels': 32},
    # Anchors crossing the border train too: on 96x128 images the default border
    # rule would leave the coarse levels without any trainable anchor.
    rpn={
      'pre_nms_top_n_train': 200,
      'post_nms_top_n_train': 100,
      'pre_nms_top_n_test': 100,
      'post_nms_top_n_test': 50,
      'allowed_border': None,
    },
    roi={'fc_dim': 64, 'num_samples': 64, 'max_detections': 20, **roi},
  )


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, losses(variables, images, image_shape, targets, key),
  jitted losses_and_grads(...same...), jitted detect(variables, images, image_shape)).

  `losses` is `losses_and_grads`'s first output: one compiled training program serves
  the tests of the losses and of their gradients (running the backward pass of this
  tiny model costs far less than compiling the forward pass alone a second time)."""
  model = tiny_model()
  variables = random_variables(model, TINY_SHAPE)

  @jax.jit
  def losses_and_grads(variables, images, image_shape, targets, key):
    """(the losses, the gradient of their sum with respect to variables['params'])."""

    def summed(params):
      out = model.apply(
        {**variables, 'params': params},
        images,
        image_shape,
        targets,
        train=True,
        rngs={'sampling': key},
      )
      return total(out), out

    (_, out), grads = jax.value_and_grad(summed, has_aux=True)(variables['params'])
    return out, grads

  @jax.jit
  def detect(variables, images, image_shape):
    return model.apply(variables, images, image_shape, train=False)

  losses = lambda *args: losses_and_grads(*args)[0]
  return model, variables, losses, losses_and_grads, detect


@pytest.mark.slow
def test_losses_are_finite_and_every_trainable_parameter_learns(tiny):
  model, variables, _, losses_and_grads, _ = tiny
  batch = targets(OBJECTS, labels=[[0, 2], [1]])
  out, grads = losses_and_grads(variables, images(), FULL, batch, jax.random.key(0))
  value = total(out)
  assert np.isfinite(value) and value > 0
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert all(np.isfinite(g).all() for _, g in flat)
  for path, grad in flat:
    names = [k.key for k in path]
    if detector_backbone.is_trainable(model, names) and names[-1] == 'kernel':
      assert np.abs(grad).max() > 0, f'no gradient for {"/".join(names)}'
    if not detector_backbone.is_trainable(model, names):
      assert np.abs(grad).max() == 0, f'frozen {"/".join(names)} has gradient'


def test_images_without_boxes_train_without_nan(tiny):
  _, variables, losses, _, _ = tiny
  out = losses(variables, images(), FULL, targets([[], []]), jax.random.key(0))
  assert all(np.isfinite(v) for v in out.values())
  assert out['loss_rpn_box'] == 0 and out['loss_box_0'] == 0 and out['rpn_positives'] == 0
  assert out['loss_rpn_cls'] > 0 and out['loss_cls_0'] > 0


def test_degenerate_and_out_of_image_boxes_are_dropped_and_counted(tiny):
  _, variables, losses, _, _ = tiny
  key = jax.random.key(3)
  clean = losses(variables, images(), FULL, targets(OBJECTS), key)
  bad = [
    OBJECTS[0] + [(50, 50, 50, 80), (200, 10, 260, 60)],  # zero width; outside
    OBJECTS[1] + [(np.nan, 0, 10, 10), (20, 20, 10, 10)],
  ]  # NaN; inverted
  dirty = losses(variables, images(), FULL, targets(bad), key)
  assert float(dirty['gt_dropped']) == 4 and float(clean['gt_dropped']) == 0
  for name in clean:
    if name != 'gt_dropped':
      np.testing.assert_allclose(dirty[name], clean[name], rtol=1e-6, err_msg=name)
  # Labels outside the classes are dropped too; a box half outside is clipped, kept.
  partly = losses(
    variables,
    images(),
    FULL,
    targets([[(100, 20, 400, 90)], [(30, 30, 90, 80)]], labels=[[0], [NUM_CLASSES]]),
    key,
  )
  assert float(partly['gt_dropped']) == 1 and np.isfinite(total(partly))


def test_ignore_regions_are_neither_positive_nor_negative(tiny):
  model, variables, losses, _, _ = tiny
  settings = model.rpn
  shapes = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
  anchors = rpn_lib.anchors_for(settings, shapes, TINY_SHAPE[1:3])
  region = (20, 10, 100, 90)
  batch = targets([[region], [region]], ignore=[[True], [True]])
  anchor_valid = rpn_lib.trainable_anchors(settings, anchors, shapes, TINY_SHAPE[1:3], FULL)
  _, sample = rpn_lib.sample_anchors(
    anchors,
    anchor_valid,
    batch['boxes'],
    batch['valid'],
    batch['ignore'],
    jax.random.key(0),
    settings,
  )
  sampled = anchors[np.asarray(sample.indices)][np.asarray(sample.valid)]
  inside = ops.box_overlaps(jnp.asarray(sampled), jnp.asarray([region], jnp.float32), 'iof')
  assert not np.any(np.asarray(sample.positive))
  assert np.all(np.asarray(inside) <= settings.ignore_iof_thr)
  # As an object the same box gives positives; as an ignore region none, anywhere.
  as_object = losses(variables, images(), FULL, targets([[region], [region]]), jax.random.key(0))
  ignored = losses(variables, images(), FULL, batch, jax.random.key(0))
  assert as_object['rpn_positives'] > 0 and as_object['positives_0'] > 0
  assert ignored['rpn_positives'] == 0
  assert all(ignored[f'positives_{s}'] == 0 for s in range(3))
  assert np.isfinite(total(ignored))


def test_detections_are_padded_and_inside_each_image(tiny):
  _, variables, _, _, detect = tiny
  image_shape = np.array([[96.0, 128.0], [60.0, 70.0]], np.float32)  # 2nd image padded
  out = detect(variables, images(), image_shape)
  assert out['boxes'].shape == (2, 20, 4) and out['labels'].dtype == jnp.int32
  boxes, valid = np.asarray(out['boxes']), np.asarray(out['valid'])
  assert valid.any()
  assert np.all(boxes[1, :, 2] <= 70.0) and np.all(boxes[1, :, 3] <= 60.0)
  assert np.all(np.asarray(out['labels'])[valid] < NUM_CLASSES)
  scores = np.asarray(out['scores'])
  assert np.all(scores[valid] > 0.05) and np.all(scores[~valid] == 0)
  assert np.all(np.diff(scores[0][valid[0]]) <= 0)


@pytest.mark.slow
def test_one_stage_class_specific_and_bfloat16_variants_train():
  model = tiny_model(num_stages=1, class_agnostic=False)
  bf16 = build_cascade_rcnn(
    'resnet18',
    NUM_CLASSES,
    backbone_overrides={'depths': (1,) * 4},
    neck={'out_channels': 32},
    roi={'fc_dim': 64, 'num_samples': 64},
    rpn={'pre_nms_top_n_train': 200, 'post_nms_top_n_train': 100},
    dtype=jnp.bfloat16,
  )
  for m in (model, bf16):
    variables = random_variables(m, TINY_SHAPE)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    out = jax.jit(functools.partial(m.apply, train=True))(
      variables,
      images(),
      FULL,
      targets(OBJECTS, labels=[[0, 2], [1]]),
      rngs={'sampling': jax.random.key(0)},
    )
    assert np.isfinite(total(out)) and total(out) > 0
  assert variables['params']['box_heads_0']['bbox_pred']['kernel'].shape[-1] == 4
  one_stage = random_variables(model, TINY_SHAPE)
  assert one_stage['params']['box_heads_0']['bbox_pred']['kernel'].shape[-1] == 4 * NUM_CLASSES
  assert 'box_heads_1' not in one_stage['params']


def swin_cascade_state(seed: int = 0) -> dict[str, np.ndarray]:
  """A Cascade Mask R-CNN Swin-T checkpoint in the Swin-Transformer-Object-Detection
  layout: official Swin names under backbone. with per-stage norms norm0..3, an FPN
  neck, and 4conv1fc box heads (conv + GroupNorm x4, one FC), 10 classes, plus a mask
  head that the import skips."""
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  state = {}
  for key, value in torchvision.models.swin_t().state_dict().items():
    if key.startswith('head.') or key.endswith('relative_position_index'):
      continue
    key = key.replace('features.0.0.', 'patch_embed.proj.').replace(
      'features.0.2.', 'patch_embed.norm.'
    )
    key = official_swin_name(key)
    state['backbone.' + key.replace('.mlp.0.', '.mlp.fc1.').replace('.mlp.3.', '.mlp.fc2.')] = (
      value.numpy()
    )
  state['backbone.norm3.weight'] = state.pop('backbone.norm.weight')
  state['backbone.norm3.bias'] = state.pop('backbone.norm.bias')
  normal = lambda *shape: (0.05 * rng.standard_normal(shape)).astype(np.float32)
  for i, dim in enumerate((96, 192, 384)):
    state[f'backbone.norm{i}.weight'] = 1 + normal(dim)
    state[f'backbone.norm{i}.bias'] = normal(dim)
  for i, dim in enumerate((96, 192, 384, 768)):
    state[f'neck.lateral_convs.{i}.conv.weight'] = normal(256, dim, 1, 1)
    state[f'neck.lateral_convs.{i}.conv.bias'] = normal(256)
    state[f'neck.fpn_convs.{i}.conv.weight'] = normal(256, 256, 3, 3)
    state[f'neck.fpn_convs.{i}.conv.bias'] = normal(256)
  for name, out in (('rpn_conv', 256), ('rpn_cls', 3), ('rpn_reg', 12)):
    state[f'rpn_head.{name}.weight'] = normal(out, 256, *((3, 3) if name == 'rpn_conv' else (1, 1)))
    state[f'rpn_head.{name}.bias'] = normal(out)
  for stage in range(3):
    head = f'roi_head.bbox_head.{stage}'
    for j in range(4):
      state[f'{head}.shared_convs.{j}.conv.weight'] = normal(256, 256, 3, 3)
      state[f'{head}.shared_convs.{j}.gn.weight'] = 1 + normal(256)
      state[f'{head}.shared_convs.{j}.gn.bias'] = normal(256)
    state[f'{head}.shared_fcs.0.weight'] = normal(1024, 256 * 49) / 4
    state[f'{head}.shared_fcs.0.bias'] = normal(1024)
    state[f'{head}.fc_cls.weight'], state[f'{head}.fc_cls.bias'] = normal(11, 1024), normal(11)
    state[f'{head}.fc_reg.weight'], state[f'{head}.fc_reg.bias'] = normal(4, 1024), normal(4)
  state['roi_head.mask_head.0.convs.0.conv.weight'] = normal(256, 256, 3, 3)
  return state


def official_swin_name(key: str) -> str:
  """torchvision swin_t 'features.<i>.<j>.' / 'features.<i>.' -> official layer names."""
  key = re.sub(
    r'^features\.(\d+)\.(\d+)\.', lambda m: f'layers.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.', key
  )
  return re.sub(r'^features\.(\d+)\.', lambda m: f'layers.{(int(m[1]) - 2) // 2}.downsample.', key)


@pytest.mark.slow
def test_mmdetection_swin_cascade_with_4conv1fc_heads_imports():
  state = swin_cascade_state()
  model, variables, conversion = load(state, 'cascade_rcnn_swin_t_fpn')
  assert model.backbone.feature_norms and model.num_classes == 10
  assert (model.roi.num_convs, model.roi.num_fcs, model.roi.num_stages) == (4, 1, 3)
  assert conversion.sources['backbone/feature_norm_2/scale'] == 'backbone.norm1.weight'
  assert (
    conversion.sources['box_heads_1/gn_3/scale'] == 'roi_head.bbox_head.1.shared_convs.3.gn.weight'
  )
  assert 'mask branch' in conversion.skipped['roi_head.mask_head.0.convs.0.conv.weight']
  # The box head against torch: 4 x (conv3x3, GroupNorm(32), ReLU), flatten (C, h, w), FC.
  features = np.random.default_rng(1).standard_normal((5, 256, 7, 7)).astype(np.float32)
  tensor = lambda key: torch.from_numpy(state[f'roi_head.bbox_head.1.{key}'])
  with torch.no_grad():
    x = torch.from_numpy(features)
    for j in range(4):
      x = torch.nn.functional.conv2d(x, tensor(f'shared_convs.{j}.conv.weight'), padding=1)
      x = torch.relu(
        torch.nn.functional.group_norm(
          x, 32, tensor(f'shared_convs.{j}.gn.weight'), tensor(f'shared_convs.{j}.gn.bias')
        )
      )
    x = torch.relu(x.flatten(1) @ tensor('shared_fcs.0.weight').T + tensor('shared_fcs.0.bias'))
    want_logits = x @ tensor('fc_cls.weight').T + tensor('fc_cls.bias')
    want_deltas = x @ tensor('fc_reg.weight').T + tensor('fc_reg.bias')
  logits, deltas = model.apply(
    variables,
    jnp.asarray(features.transpose(0, 2, 3, 1))[None],
    method=lambda m, f: m.box_heads[1](f),
  )
  assert_close(logits[0], want_logits.numpy(), '4conv1fc logits')
  assert_close(deltas[0], want_deltas.numpy(), '4conv1fc deltas')


def test_the_configs_write_mmdetections_cascade_settings():
  # configs/common.py writes every RPN / RoI value rather than reading them from the
  # model: they must stay the model's 'mmdet' convention.
  from configs import common
  from tps_jax.models.cascade_rcnn import make_specs

  rpn, roi = make_specs('mmdet')
  want_rpn = {f.name: getattr(rpn, f.name) for f in dataclasses.fields(rpn) if f.name != 'anchors'}
  got_rpn = {k: v for k, v in common.CASCADE_RCNN_RPN.items() if k != 'anchors'}
  assert got_rpn == want_rpn
  assert make_specs('mmdet', common.CASCADE_RCNN_RPN)[0] == rpn
  assert common.CASCADE_RCNN_ROI == {f.name: getattr(roi, f.name) for f in dataclasses.fields(roi)}
