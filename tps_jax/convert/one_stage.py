"""One-stage detector checkpoints -> `tps_jax.models.retinanet` / `tps_jax.models.gfl` variables.

Archs (registered with the converter registry):
- 'retinanet_resnet50_fpn': torchvision's RetinaNet (v1; head convs named `conv.<i>.0`
  or, in checkpoints from before torchvision 0.13, `conv.<2i>`) -> RetinaNet with
  torchvision's conventions (`retinanet.CONVENTIONS['torchvision']`).
- 'retinanet_{r50,r101,x101_32x4d,x101_64x4d}_fpn': mmdetection's RetinaNet (2.x and 3.x
  name the tensors alike) -> RetinaNet with mmdetection's conventions.
- 'gfl_{r50,r101,x101_32x4d}_fpn': mmdetection's GFL (the plain-conv checkpoints; the
  deformable-conv 'dconv' ones have `conv_offset` tensors that no arch here has, and are
  refused by name), v1 or v2: a checkpoint with GFL v2's DGQP (`bbox_head.reg_conf.0` /
  `.2`, mmdetection's GFocalHead and the official GFocalV2 release's layout) gets
  `dgqp=True`, its top-k and width read off `reg_conf.0`.

The head's structure (tower depth and width, class count, GFL's reg_max) is read off the
checkpoint; model overrides (`num_classes`, `head`, `neck`, `backbone_overrides`, `dtype`)
win. A `num_classes` other than the checkpoint's re-initialises the classification conv
(the regression is class-agnostic and is kept); `Conversion.skipped` and `notes` say so.
GFL's `integral.project` buffer (the constants 0..reg_max) has no parameter counterpart.
Backbones and FPN go through tps_jax/convert/resnet.py; their BatchNorm statistics come
back in `model_state` ('batch_stats/...').

A checkpoint of another detector (a GFL given to a RetinaNet arch, a Cascade R-CNN, a
classification ResNet) is refused with one line naming what was expected and found.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.convert.io import ConversionError, conv_to_flax, listing
from tps_jax.convert.registry import Conversion, register
from tps_jax.convert.resnet import combine, fpn_part, resnet_part
from tps_jax.models import gfl, retinanet
from tps_jax.models.detector_backbone import stage_channels


@dataclasses.dataclass(frozen=True)
class OneStageArch:
  flavour: str  # 'torchvision' | 'mmdetection'
  family: str  # 'retinanet' | 'gfl'
  backbone: str  # a detector_backbone arch


ONE_STAGE_ARCHS = {
  'retinanet_resnet50_fpn': OneStageArch('torchvision', 'retinanet', 'resnet50'),
  'retinanet_r50_fpn': OneStageArch('mmdetection', 'retinanet', 'resnet50'),
  'retinanet_r101_fpn': OneStageArch('mmdetection', 'retinanet', 'resnet101'),
  'retinanet_x101_32x4d_fpn': OneStageArch('mmdetection', 'retinanet', 'resnext101_32x4d'),
  'retinanet_x101_64x4d_fpn': OneStageArch('mmdetection', 'retinanet', 'resnext101_64x4d'),
  'gfl_r50_fpn': OneStageArch('mmdetection', 'gfl', 'resnet50'),
  'gfl_r101_fpn': OneStageArch('mmdetection', 'gfl', 'resnet101'),
  'gfl_x101_32x4d_fpn': OneStageArch('mmdetection', 'gfl', 'resnext101_32x4d'),
}

# Head module name in the checkpoint -> flax module path under 'head/'.
_HEAD_MODULES = {
  ('torchvision', 'retinanet'): [
    (re.compile(r'^head\.classification_head\.conv\.(\d+)\.0$'), 'cls_tower/conv_{0}'),
    (re.compile(r'^head\.regression_head\.conv\.(\d+)\.0$'), 'reg_tower/conv_{0}'),
    (re.compile(r'^head\.classification_head\.cls_logits$'), 'cls_logits'),
    (re.compile(r'^head\.regression_head\.bbox_reg$'), 'bbox_pred'),
  ],
  ('mmdetection', 'retinanet'): [
    (re.compile(r'^bbox_head\.cls_convs\.(\d+)\.conv$'), 'cls_tower/conv_{0}'),
    (re.compile(r'^bbox_head\.reg_convs\.(\d+)\.conv$'), 'reg_tower/conv_{0}'),
    (re.compile(r'^bbox_head\.retina_cls$'), 'cls_logits'),
    (re.compile(r'^bbox_head\.retina_reg$'), 'bbox_pred'),
  ],
  ('mmdetection', 'gfl'): [
    (re.compile(r'^bbox_head\.cls_convs\.(\d+)\.conv$'), 'cls_tower/conv_{0}'),
    (re.compile(r'^bbox_head\.reg_convs\.(\d+)\.conv$'), 'reg_tower/conv_{0}'),
    (re.compile(r'^bbox_head\.cls_convs\.(\d+)\.gn$'), 'cls_tower/gn_{0}'),
    (re.compile(r'^bbox_head\.reg_convs\.(\d+)\.gn$'), 'reg_tower/gn_{0}'),
    (re.compile(r'^bbox_head\.gfl_cls$'), 'cls_logits'),
    (re.compile(r'^bbox_head\.gfl_reg$'), 'bbox_pred'),
    (re.compile(r'^bbox_head\.scales\.(\d+)$'), 'scale_{0}'),
    # GFL v2's DGQP: reg_conf is (1x1 conv, ReLU, 1x1 conv, Sigmoid).
    (re.compile(r'^bbox_head\.reg_conf\.0$'), 'reg_conf_0'),
    (re.compile(r'^bbox_head\.reg_conf\.2$'), 'reg_conf_1'),
  ],
}
# The key that marks each (flavour, family)'s classification output.
_SIGNATURE = {
  ('torchvision', 'retinanet'): 'head.classification_head.cls_logits.weight',
  ('mmdetection', 'retinanet'): 'bbox_head.retina_cls.weight',
  ('mmdetection', 'gfl'): 'bbox_head.gfl_cls.weight',
}
_KNOWN_DETECTORS = {
  'head.classification_head.cls_logits.weight': 'a torchvision RetinaNet',
  'bbox_head.retina_cls.weight': 'an mmdetection RetinaNet',
  'bbox_head.gfl_cls.weight': 'an mmdetection GFL',
  'bbox_head.atss_cls.weight': 'an mmdetection ATSS',
  'rpn.head.cls_logits.weight': 'a torchvision Faster / Mask R-CNN',
  'rpn_head.rpn_cls.weight': 'an mmdetection two-stage (Faster / Cascade R-CNN)',
  'fc.weight': 'a classification network',
}
_TORCHVISION_V1_CONV = re.compile(r'^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.')
_CONSTANTS = {'bbox_head.integral.project': "GFL's constant distances 0..reg_max (computed)"}
_HEAD_PREFIXES = ('head.', 'bbox_head.')


def _canonical_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, str]:
  """{current torchvision key: checkpoint key}: pre-0.13 `conv.<2i>` -> `conv.<i>.0`."""
  names = {}
  for key in state:
    match = _TORCHVISION_V1_CONV.match(key)
    if match and key.count('.') == 4:  # head.<branch>.conv.<2i>.<leaf>
      names[f'{match[1]}.{int(match[2]) // 2}.0.{key[match.end() :]}'] = key
    else:
      names[key] = key
  return names


def _what_it_is(state: Mapping[str, np.ndarray]) -> str:
  for key, name in _KNOWN_DETECTORS.items():
    if key in state:
      return name
  if any(k.endswith('conv_offset.weight') for k in state):
    return 'a detector with deformable convolutions'
  return 'an unknown network (first keys: ' + ', '.join(list(state)[:5]) + ')'


def _head_tensors(state: Mapping[str, np.ndarray], spec: OneStageArch, source: str):
  """({flax module under head/: {torch leaf: array}}, {flax module/leaf: checkpoint key})."""
  names = _canonical_torchvision(state) if spec.flavour == 'torchvision' else {k: k for k in state}
  rules = _HEAD_MODULES[(spec.flavour, spec.family)]
  modules: dict[str, dict[str, np.ndarray]] = {}
  keys: dict[str, str] = {}
  unknown = []
  for name, key in names.items():
    if not name.startswith(_HEAD_PREFIXES) or name in _CONSTANTS:
      continue
    module, _, leaf = name.rpartition('.')
    target = next(
      (path.format(*m.groups()) for pattern, path in rules if (m := pattern.match(module))), None
    )
    if target is None:
      unknown.append(key)
      continue
    modules.setdefault(target, {})[leaf] = np.asarray(state[key], np.float32)
    keys[f'{target}/{leaf}'] = key
  if unknown:
    raise ConversionError(
      f'{source}: head tensors a {spec.flavour} {spec.family} does not have: {listing(unknown)}'
    )
  return modules, keys


def _head_structure(modules, spec: OneStageArch, num_anchors: int) -> dict:
  """num_classes and head settings read off the head's tensors."""
  convs = sorted(int(p.rsplit('_', 1)[1]) for p in modules if p.startswith('cls_tower/conv_'))
  if convs != list(range(len(convs))):
    raise ConversionError(f'classification tower convs are not numbered 0..n-1: {convs}')
  for needed in ('cls_logits', 'bbox_pred'):
    if 'weight' not in modules.get(needed, {}):
      raise ConversionError(f'the head lacks its {needed.replace("_", " ")} weight')
  cls_out = modules['cls_logits']['weight'].shape[0]
  if cls_out % num_anchors:
    raise ConversionError(
      f'classification conv has {cls_out} outputs, not a multiple of {num_anchors} anchors'
    )
  head = {'num_convs': len(convs)}
  if convs:
    head['feat_channels'] = int(modules['cls_tower/conv_0']['weight'].shape[0])
  if spec.family == 'gfl':
    head['reg_max'] = int(modules['bbox_pred']['weight'].shape[0] // 4 - 1)
  if 'reg_conf_0' in modules:  # GFL v2: 4 x (top-k + mean) statistics in
    dgqp = modules['reg_conf_0']['weight']
    head.update(dgqp=True, reg_topk=dgqp.shape[1] // 4 - 1, reg_channels=int(dgqp.shape[0]))
  return {'num_classes': cls_out // num_anchors, 'head': head}


def _flax_leaf(module: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """A torch tensor of head module `module` as its flax (path, array)."""
  if module.startswith('scale_'):
    return f'head/{module}', np.asarray(value, np.float32).reshape(())
  if leaf == 'bias':
    return f'head/{module}/bias', value
  if value.ndim == 1:  # GroupNorm weight
    return f'head/{module}/scale', value
  return f'head/{module}/kernel', np.asarray(conv_to_flax(value), np.float32)


def _fresh_classifier(model, rng) -> dict[str, np.ndarray]:
  """A newly initialised classification conv {'kernel', 'bias'} for the model's classes."""
  s = model.settings
  anchors = s.anchors.num_anchors_per_location[0]
  kernel = retinanet.head_init(rng, (3, 3, s.feat_channels, anchors * model.num_classes))
  bias = np.full(anchors * model.num_classes, retinanet.prior_bias(s.prior_prob), np.float32)
  return {'kernel': np.asarray(kernel, np.float32), 'bias': bias}


def convert_one_stage(
  state: Mapping[str, np.ndarray],
  arch: str,
  *,
  num_classes=None,
  dtype=jnp.float32,
  rng=None,
  **overrides,
) -> Conversion:
  """The registered converter of every `ONE_STAGE_ARCHS` name (see the module docstring).

  `overrides`: `backbone_overrides`, `neck`, `head` (dicts of fields, as
  `retinanet.build_retinanet` / `gfl.build_gfl`).
  """
  if arch not in ONE_STAGE_ARCHS:
    raise ConversionError(
      f'unknown one-stage detector arch {arch!r}; supported: {", ".join(ONE_STAGE_ARCHS)}'
    )
  spec = ONE_STAGE_ARCHS[arch]
  source = f'{arch} checkpoint'
  signature = _SIGNATURE[(spec.flavour, spec.family)]
  if signature not in state:
    raise ConversionError(
      f'{source}: not {"an" if spec.flavour[0] == "m" else "a"} '
      f'{spec.flavour} {spec.family} checkpoint (no {signature}); it looks '
      f'like {_what_it_is(state)}'
    )
  modules, head_keys = _head_tensors(state, spec, source)
  anchors_per_location = 9 if spec.family == 'retinanet' else 1
  found = _head_structure(modules, spec, anchors_per_location)
  head = {**found['head'], **dict(overrides.pop('head', None) or {})}
  model_kwargs = dict(
    backbone=spec.backbone,
    num_classes=found['num_classes'] if num_classes is None else int(num_classes),
    backbone_overrides=dict(overrides.pop('backbone_overrides', None) or {}),
    neck=dict(overrides.pop('neck', None) or {}),
    head=head,
  )
  if spec.family == 'retinanet':
    model_kwargs['convention'] = 'torchvision' if spec.flavour == 'torchvision' else 'mmdet'
  if overrides:
    raise ConversionError(f'{arch}: unknown model overrides {sorted(overrides)}')
  build = retinanet.build_retinanet if spec.family == 'retinanet' else gfl.build_gfl
  model = build(**model_kwargs, dtype=dtype)

  parts = combine(
    [
      resnet_part(state, model.backbone, source=source).nested('backbone'),
      fpn_part(state, model.neck, stage_channels(model.backbone), source=source).nested('neck'),
    ]
  )
  params, sources, notes = dict(parts.params), dict(parts.sources), list(parts.notes)
  skipped = {k: r for k, r in parts.skipped.items() if k not in head_keys.values()}
  for key in state:
    if key in _CONSTANTS:
      skipped[key] = _CONSTANTS[key]
  reinit = found['num_classes'] != model.num_classes
  for module, tensors in modules.items():
    if reinit and module == 'cls_logits':
      for leaf in tensors:
        skipped[head_keys[f'{module}/{leaf}']] = (
          f'classifier of {found["num_classes"]} classes; the model has '
          f'{model.num_classes}: re-initialised'
        )
      rng = jax.random.key(0) if rng is None else rng
      for leaf, value in _fresh_classifier(model, rng).items():
        params[f'head/cls_logits/{leaf}'] = value
      notes.append(f'head/cls_logits re-initialised ({model.num_classes} classes)')
      continue
    for leaf, value in tensors.items():
      path, array = _flax_leaf(module, leaf, value)
      params[path] = array
      sources[path] = head_keys[f'{module}/{leaf}']
  family = 'RetinaNet' if spec.family == 'retinanet' else 'GFL'
  return Conversion(
    model=model,
    params=params,
    sources=sources,
    skipped=skipped,
    flavour=f'{spec.flavour} {family} ({found["num_classes"]} classes, {parts.flavour} backbone)',
    init_inputs=(jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32),),
    model_kwargs={'family': spec.family, **model_kwargs},
    notes=notes,
    model_state=dict(parts.model_state),
  )


register(ONE_STAGE_ARCHS, convert_one_stage)
