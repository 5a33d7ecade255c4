"""Two-stage detector checkpoints -> `tps_jax.models.cascade_rcnn.CascadeRCNN` variables.

Archs (registered with the converter registry):
- 'fasterrcnn_resnet50_fpn': torchvision's Faster R-CNN (v1) -> one stage,
  class-specific regression, torchvision's conventions (`cascade_rcnn.CONVENTIONS`).
- 'fasterrcnn_resnet50_fpn_v2': torchvision's v2 (Li et al. 2021's recipe): the same
  with BatchNorm after every FPN conv, a 2-conv RPN head and a box head of 4 convs +
  BatchNorm and one FC (`roi_heads.box_head.<i>.0` conv, `.<i>.1` BatchNorm, FC last).
- 'faster_rcnn_r50_fpn', 'cascade_rcnn_{r50,r101,x101_32x4d,x101_64x4d}_fpn' and
  'cascade_rcnn_swin_{t,s,b,l}_fpn': mmdetection (2.x and 3.x share these names; also
  the Swin-Transformer-Object-Detection release) -> as many stages as the checkpoint
  has `roi_head.bbox_head.<i>`, mmdetection's conventions. The head's structure
  (shared convs + GroupNorm `.gn` or BatchNorm `.bn` (the Swin release's SyncBN), FCs,
  their width, class-agnostic or not) is read off the checkpoint; mask branches of
  Cascade Mask R-CNN checkpoints are skipped (reported in one line with their count).

BatchNorm statistics of the heads and the FPN come back in `Conversion.model_state`;
their step counters (`num_batches_tracked`) are skipped.

Layouts: torch flattens RoI features channel-first (C, h, w), ours (h, w, C), so the
first FC's input axis is permuted. torchvision's classifier has the background first
and one box per class including the background: rows are reordered to put the
background last and its box dropped (mmdetection's heads are background-last already).

Backbones and FPN go through tps_jax/convert/resnet.py (`resnet_part`, `fpn_part`) and
tps_jax/convert/swin.py (`canonical_swin`, `swin_params`); ResNet BatchNorm statistics
come back in `Conversion.model_state` ('batch_stats/...').

Class heads: `num_classes=N` (a model override) other than the checkpoint's count
re-initialises the classifier and any class-specific regressor (named in the notes and
`skipped`); class-agnostic regressors are kept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.convert.io import ConversionError, conv_to_flax, linear_to_flax, listing
from tps_jax.convert.registry import Conversion, register
from tps_jax.convert.resnet import Part, combine, fpn_part, resnet_part
from tps_jax.convert.swin import canonical_swin, checkpoint_fields, swin_params
from tps_jax.models import cascade_rcnn
from tps_jax.models.detector_backbone import stage_channels
from tps_jax.models.resnet import ResNet


@dataclasses.dataclass(frozen=True)
class DetectorArch:
  flavour: str  # 'torchvision' | 'mmdetection'
  backbone: str  # a detector_backbone arch


DETECTOR_ARCHS = {
  'fasterrcnn_resnet50_fpn': DetectorArch('torchvision', 'resnet50'),
  'fasterrcnn_resnet50_fpn_v2': DetectorArch('torchvision', 'resnet50'),
  'faster_rcnn_r50_fpn': DetectorArch('mmdetection', 'resnet50'),
  'cascade_rcnn_r50_fpn': DetectorArch('mmdetection', 'resnet50'),
  'cascade_rcnn_r101_fpn': DetectorArch('mmdetection', 'resnet101'),
  'cascade_rcnn_x101_32x4d_fpn': DetectorArch('mmdetection', 'resnext101_32x4d'),
  'cascade_rcnn_x101_64x4d_fpn': DetectorArch('mmdetection', 'resnext101_64x4d'),
  'cascade_rcnn_swin_t_fpn': DetectorArch('mmdetection', 'swin_t'),
  'cascade_rcnn_swin_s_fpn': DetectorArch('mmdetection', 'swin_s'),
  'cascade_rcnn_swin_b_fpn': DetectorArch('mmdetection', 'swin_b'),
  'cascade_rcnn_swin_l_fpn': DetectorArch('mmdetection', 'swin_l'),
}
_CONVENTION = {'torchvision': 'torchvision', 'mmdetection': 'mmdet'}

# Checkpoint module name -> (flax module, kind); kind 'fc_first' permutes (C,h,w) inputs.
# The v2 box head is a Sequential: (conv, BatchNorm) blocks, a Flatten, (Linear, ReLU)s,
# so its FC j sits at index num_convs + 1 + 2 j.
_TORCHVISION_HEADS = [
  (re.compile(r'^rpn\.head\.conv(?:\.0\.0)?$'), lambda m, n: 'rpn_head/conv'),
  (re.compile(r'^rpn\.head\.conv\.([1-9]\d*)\.0$'), lambda m, n: f'rpn_head/conv_{m[1]}'),
  (re.compile(r'^rpn\.head\.cls_logits$'), lambda m, n: 'rpn_head/objectness'),
  (re.compile(r'^rpn\.head\.bbox_pred$'), lambda m, n: 'rpn_head/box_deltas'),
  (re.compile(r'^roi_heads\.box_head\.fc6$'), lambda m, n: 'box_heads_0/fc_0'),
  (re.compile(r'^roi_heads\.box_head\.fc7$'), lambda m, n: 'box_heads_0/fc_1'),
  (re.compile(r'^roi_heads\.box_head\.(\d+)\.0$'), lambda m, n: f'box_heads_0/conv_{m[1]}'),
  (re.compile(r'^roi_heads\.box_head\.(\d+)\.1$'), lambda m, n: f'box_heads_0/bn_{m[1]}'),
  (
    re.compile(r'^roi_heads\.box_head\.(\d+)$'),
    lambda m, n: f'box_heads_0/fc_{(int(m[1]) - n - 1) // 2}',
  ),
  (re.compile(r'^roi_heads\.box_predictor\.cls_score$'), lambda m, n: 'box_heads_0/cls_score'),
  (re.compile(r'^roi_heads\.box_predictor\.bbox_pred$'), lambda m, n: 'box_heads_0/bbox_pred'),
]
_TORCHVISION_HEAD_CONV = re.compile(r'^roi_heads\.box_head\.\d+\.0\.weight$')
_MMDET_RPN = {'rpn_conv': 'conv', 'rpn_cls': 'objectness', 'rpn_reg': 'box_deltas'}
_MMDET_BOX = re.compile(
  r'^roi_head\.bbox_head\.(?:(\d+)\.)?(shared_fcs\.(\d+)|shared_convs\.(\d+)\.(conv|gn|bn)'
  r'|fc_cls|fc_reg)$'
)
_COUNTER = 'num_batches_tracked'
MASK_BRANCH = 'mask branch of a Cascade Mask R-CNN (not used)'
_BN_STATISTICS = {'running_mean': 'mean', 'running_var': 'var'}
_FPN_NORM = re.compile(r'^backbone\.fpn\.inner_blocks\.\d+\.1\.running_mean$')
_MMDET_UNUSED = re.compile(r'^roi_head\.(mask_head|mask_roi_extractor|semantic_head)\.')
# Keys of the RPN and RoI heads: every one must be understood (or be a mask branch).
_HEAD_PREFIXES = ('rpn.', 'roi_heads.', 'rpn_head.', 'roi_head.')


def _leaf(path: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """A torch weight / bias of module `path` in flax layout (GroupNorm / BatchNorm weight
  -> scale); BatchNorm statistics as 'batch_stats/<path>/mean' and '/var'."""
  if leaf in _BN_STATISTICS:
    return f'batch_stats/{path}/{_BN_STATISTICS[leaf]}', np.asarray(value, np.float32)
  if leaf == 'bias':
    return f'{path}/bias', np.asarray(value, np.float32)
  if value.ndim == 1:
    return f'{path}/scale', np.asarray(value, np.float32)
  kernel = linear_to_flax(value) if value.ndim == 2 else conv_to_flax(value)
  return f'{path}/kernel', np.asarray(kernel, np.float32)


def _chw_to_hwc_fc(weight: np.ndarray, channels: int) -> np.ndarray:
  """torch (out, C*h*w) on channel-first RoI features -> (out, h*w*C) on channels-last."""
  out, size = weight.shape
  side = int(round((size // channels) ** 0.5))
  if channels * side * side != size:
    raise ConversionError(
      f'first box-head FC of {size} inputs is not {channels} channels x a square RoI'
    )
  return weight.reshape(out, channels, side, side).transpose(0, 2, 3, 1).reshape(out, size)


def _head_tensors(state: Mapping[str, np.ndarray], flavour: str, fpn_channels: int):
  """{flax module path: {'weight', 'bias'}} of the RPN and box heads, and {path: key}.

  Torch layouts, but in our class order (background last, no background box) and with
  the first FC's inputs in (h, w, C) order.
  """
  modules: dict[str, dict[str, np.ndarray]] = {}
  keys: dict[str, str] = {}
  first_fc_input = {}  # stage -> channels of what its first FC flattens
  head_convs = sum(1 for key in state if _TORCHVISION_HEAD_CONV.match(key))
  for key, value in state.items():
    module, _, leaf = key.rpartition('.')
    target = None
    if flavour == 'torchvision':
      target = next(
        (
          path(m, head_convs)
          for pattern, path in _TORCHVISION_HEADS
          if (m := pattern.match(module))
        ),
        None,
      )
    elif module.startswith('rpn_head.'):
      target = (
        f'rpn_head/{_MMDET_RPN[module[len("rpn_head.") :]]}'
        if module[len('rpn_head.') :] in _MMDET_RPN
        else None
      )
    elif match := _MMDET_BOX.match(module):
      stage = int(match[1] or 0)
      if match[3] is not None:
        target = f'box_heads_{stage}/fc_{match[3]}'
      elif match[4] is not None:
        target = f'box_heads_{stage}/{match[5]}_{match[4]}'
      else:
        target = f'box_heads_{stage}/{"cls_score" if match[2] == "fc_cls" else "bbox_pred"}'
    if target is not None:
      keys[f'{target}/{leaf}'] = key  # a BatchNorm step counter is known, not converted
      if leaf != _COUNTER:
        modules.setdefault(target, {})[leaf] = np.asarray(value, np.float32)
  for path in list(modules):
    stage = path.split('/')[0]
    if path.endswith('/conv_0'):
      first_fc_input[stage] = modules[path]['weight'].shape[0]
  for stage in {p.split('/')[0] for p in modules if p.startswith('box_heads_')}:
    fc = modules.get(f'{stage}/fc_0')
    if fc is not None:
      fc['weight'] = _chw_to_hwc_fc(fc['weight'], first_fc_input.get(stage, fpn_channels))
  if flavour == 'torchvision':
    cls = modules.get('box_heads_0/cls_score')
    if cls is not None:  # background first -> last
      order = np.r_[1 : cls['weight'].shape[0], 0]
      modules['box_heads_0/cls_score'] = {k: v[order] for k, v in cls.items()}
    box = modules.get('box_heads_0/bbox_pred')
    if box is not None:  # drop the background's box
      modules['box_heads_0/bbox_pred'] = {k: v[4:] for k, v in box.items()}
  return modules, keys


def _head_structure(modules: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """RoI settings and num_classes read off the converted head tensors."""
  stages = sorted(
    {int(p.split('/')[0].rsplit('_', 1)[1]) for p in modules if p.startswith('box_heads_')}
  )
  if not stages or stages != list(range(len(stages))):
    raise ConversionError(
      'no box head (roi_heads.box_predictor / roi_head.bbox_head.*) '
      'found, or its stages are not numbered 0..n-1'
    )
  head = lambda name: modules.get(f'box_heads_0/{name}')
  if head('cls_score') is None or head('bbox_pred') is None:
    raise ConversionError('the box head lacks its classifier or its regressor')
  num_classes = head('cls_score')['weight'].shape[0] - 1
  num_fcs = sum(1 for p in modules if re.fullmatch(r'box_heads_0/fc_\d+', p))
  num_convs = sum(1 for p in modules if re.fullmatch(r'box_heads_0/conv_\d+', p))
  reg_outputs = head('bbox_pred')['weight'].shape[0]
  roi = dict(
    num_stages=len(stages), num_fcs=num_fcs, num_convs=num_convs, class_agnostic=reg_outputs == 4
  )
  if 'box_heads_0/bn_0' in modules:
    roi['norm'] = 'bn'
  if num_fcs:
    roi['fc_dim'] = head('fc_0')['weight'].shape[0]
  if num_convs:
    roi['conv_channels'] = head('conv_0')['weight'].shape[0]
  if len(stages) < 3:
    defaults = cascade_rcnn.RoISpec()
    roi.update(
      iou_thresholds=defaults.iou_thresholds[: len(stages)],
      box_stds=defaults.box_stds[: len(stages)],
      stage_weights=defaults.stage_weights[: len(stages)],
    )
  rpn_convs = sum(1 for p in modules if re.fullmatch(r'rpn_head/conv(_\d+)?', p))
  return {'num_classes': num_classes, 'roi': roi, 'rpn': {'num_convs': rpn_convs}}


def _fresh_predictors(model: cascade_rcnn.CascadeRCNN, rng) -> dict:
  """Fresh {'cls_score', 'bbox_pred'} params of a stage (only those are initialised)."""
  roi = model.roi
  head = cascade_rcnn.BoxHead(
    model.num_classes, roi.class_agnostic, 0, roi.conv_channels, 0, roi.fc_dim
  )
  width = roi.fc_dim if roi.num_fcs else roi.conv_channels * roi.output_size**2
  params = head.init(rng, jnp.zeros((1, 1, 1, 1, width)))['params']
  return jax.tree.map(np.asarray, params)


def check_head_keys(state: Mapping[str, Any], mapped: set[str], source: str, flavour: str):
  """Refuses RPN / RoI head keys that nothing maps (a head of another structure),
  naming the first few and a count: an official checkpoint of another design has
  dozens, and the line stays readable."""
  unknown = [
    k
    for k in state
    if k.startswith(_HEAD_PREFIXES) and k not in mapped and not _MMDET_UNUSED.match(k)
  ]
  if unknown:
    raise ConversionError(
      f'{source}: {len(unknown)} keys of an RPN / RoI head this arch does not have '
      f'({flavour} naming): {listing(unknown)}'
    )


def convert_detector(
  state: Mapping[str, np.ndarray],
  arch: str,
  *,
  num_classes=None,
  dtype=jnp.float32,
  rng=None,
  **overrides,
) -> Conversion:
  """The registered converter of every `DETECTOR_ARCHS` name (see the module docstring).

  `overrides`: `backbone_overrides`, `neck`, `rpn`, `roi` (dicts of fields, as
  `cascade_rcnn.build_cascade_rcnn`).
  """
  if arch not in DETECTOR_ARCHS:
    raise ConversionError(f'unknown detector arch {arch!r}; supported: {", ".join(DETECTOR_ARCHS)}')
  spec = DETECTOR_ARCHS[arch]
  flavour_keys = {'torchvision': 'rpn.head.', 'mmdetection': 'rpn_head.'}
  if not any(k.startswith(flavour_keys[spec.flavour]) for k in state):
    raise ConversionError(
      f'not a {spec.flavour} two-stage detector checkpoint (no {flavour_keys[spec.flavour]}* '
      f'keys) for arch {arch}; first keys: {", ".join(list(state)[:5])}'
    )
  fpn_channels = next(
    (
      v.shape[0]
      for k, v in state.items()
      if k.endswith(('fpn.layer_blocks.0.0.weight', 'fpn_convs.0.conv.weight'))
    ),
    256,
  )
  modules, head_keys = _head_tensors(state, spec.flavour, fpn_channels)
  found = _head_structure(modules)
  backbone_overrides = dict(overrides.pop('backbone_overrides', None) or {})
  if spec.backbone.startswith('swin'):
    canonical = canonical_swin(dict(state))
    fields = checkpoint_fields(canonical)
    backbone_overrides = {
      'patch_norm': fields['patch_norm'],
      'feature_norms': fields['feature_norms'],
      **backbone_overrides,
    }
  roi = {**found['roi'], **dict(overrides.pop('roi', None) or {})}
  model_kwargs = dict(
    backbone=spec.backbone,
    num_classes=found['num_classes'] if num_classes is None else int(num_classes),
    convention=_CONVENTION[spec.flavour],
    backbone_overrides=backbone_overrides,
    neck={
      'out_channels': int(fpn_channels),
      **({'norm': 'bn'} if any(_FPN_NORM.match(k) for k in state) else {}),
      **dict(overrides.pop('neck', None) or {}),
    },
    rpn={**found['rpn'], **dict(overrides.pop('rpn', None) or {})},
    roi=roi,
  )
  if overrides:
    raise ConversionError(f'{arch}: unknown model overrides {sorted(overrides)}')
  model = cascade_rcnn.build_cascade_rcnn(**model_kwargs, dtype=dtype)
  source = f'{arch} checkpoint'

  # Backbone and FPN.
  if isinstance(model.backbone, ResNet):
    backbone = resnet_part(state, model.backbone, source=source).nested('backbone')
  else:
    params, sources, notes = swin_params(canonical, model.backbone)
    backbone_sources = {f'backbone/{p}': k for p, k in sources.items()}
    used = set(sources.values())
    skipped = {k: r for k, r in canonical.skipped.items()}
    skipped.update(
      {k: 'not part of the Swin backbone' for k in state if k not in used and k not in skipped}
    )
    backbone = Part(
      canonical.flavour,
      {f'backbone/{p}': v for p, v in params.items()},
      {},
      backbone_sources,
      skipped,
      [f'backbone: {n}' for n in notes],
    )
  neck = fpn_part(state, model.neck, stage_channels(model.backbone), source=source).nested('neck')
  parts = combine([backbone, neck])

  # RPN and box heads.
  params = dict(parts.params)
  sources = dict(parts.sources)
  skipped = {k: r for k, r in parts.skipped.items() if k not in head_keys.values()}
  notes = list(parts.notes)
  model_state = dict(parts.model_state)
  reinit = found['num_classes'] != model.num_classes
  rng = jax.random.key(0) if rng is None else rng
  for path, tensors in modules.items():
    module, name = path.split('/')
    class_specific = name == 'cls_score' or (name == 'bbox_pred' and not model.roi.class_agnostic)
    if reinit and class_specific and module.startswith('box_heads_'):
      for leaf in tensors:
        skipped[head_keys[f'{path}/{leaf}']] = (
          f'class head of {found["num_classes"]} classes; the model has '
          f'{model.num_classes}: re-initialised'
        )
      stage = int(module.rsplit('_', 1)[1])
      fresh = _fresh_predictors(model, jax.random.fold_in(rng, stage))
      for leaf, value in fresh[name].items():
        params[f'{path}/{leaf}'] = value
      notes.append(f'{path} re-initialised ({model.num_classes} classes)')
      continue
    for leaf, value in tensors.items():
      flax_path, flax_value = _leaf(path, leaf, value)
      target = model_state if flax_path.startswith('batch_stats/') else params
      target[flax_path] = flax_value
      sources[flax_path] = head_keys[f'{path}/{leaf}']
  check_head_keys(state, set(head_keys.values()), source, spec.flavour)
  for key in state:
    if _MMDET_UNUSED.match(key):
      skipped[key] = MASK_BRANCH
    elif key.endswith(_COUNTER):
      skipped[key] = 'BatchNorm step counter, no counterpart'
  return Conversion(
    model=model,
    params=params,
    sources=sources,
    skipped=skipped,
    flavour=f'{spec.flavour} {"Faster" if model.roi.num_stages == 1 else "Cascade"} '
    f'R-CNN ({model.roi.num_stages} stage(s), {found["num_classes"]} classes, '
    f'{parts.flavour} backbone)',
    init_inputs=(jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32),),
    model_kwargs=model_kwargs,
    notes=notes,
    model_state=model_state,
    grouped_reasons=(MASK_BRANCH,),
  )


register(DETECTOR_ARCHS, convert_detector)
