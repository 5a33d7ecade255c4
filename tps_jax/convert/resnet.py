"""ResNet / ResNeXt and FPN checkpoints -> `tps_jax.models.resnet` / `.fpn` variables.

Pure numpy (no torch). Three namings of the same tensors are recognised:
- 'torchvision': classification resnet* / resnext* / wide_resnet* (`conv1`, `bn1`,
  `layer1.0.conv1`, `layer1.0.downsample.0` / `.1`, `fc`);
- 'torchvision detection': fasterrcnn_ / retinanet_resnet50_fpn (`backbone.body.<as
  above>`, `backbone.fpn.inner_blocks.i.0`, `.layer_blocks.i.0`, `.extra_blocks.p6`);
- 'mmdetection': mmdetection detectors and mmpretrain classifiers (`backbone.<as
  above>`, `head.fc`, `neck.lateral_convs.i.conv`, `neck.fpn_convs.i.conv`), 'pytorch'
  style (stride on the 3x3 conv; 'caffe'-style checkpoints would load but compute
  something else).

A network part (backbone or neck) is converted into a `Part`: its flat params and
BatchNorm statistics, where each came from and, for every other checkpoint key, why it
was not used. A detector converter converts each part, nests it under the part's
module name and combines them (`combine`): the keys no part used (RPN, RoI heads...)
stay listed as skipped. `convert_resnet_arch` is the registry converter of every
`RESNET_ARCHS` name (classification and backbone checkpoints).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.convert.io import ConversionError, check_tree, conv_to_flax, linear_to_flax, unflatten
from tps_jax.convert.registry import Conversion, register
from tps_jax.models.fpn import FPN
from tps_jax.models.resnet import RESNET_ARCHS, ResNet, build_resnet, classification_head

_BACKBONE_PREFIX = {
  'torchvision': '',
  'torchvision detection': 'backbone.body.',
  'mmdetection': 'backbone.',
}
_HEAD_PREFIX = {'torchvision': 'fc.', 'mmdetection': 'head.fc.'}
_COUNTER = re.compile(r'(^|\.)num_batches_tracked$')

# Torchvision backbone module names (prefix removed) -> flax module paths.
_STEM_MODULE = re.compile(r'^(conv1|bn1)$')
_BLOCK_MODULE = re.compile(r'^layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)$')
_NORM_MODULE = re.compile(r'(^|/)(bn\d|downsample_bn)$')
_BN_LEAVES = {
  'weight': 'scale',
  'bias': 'bias',
  'running_mean': 'batch_stats/mean',
  'running_var': 'batch_stats/var',
}

# torchvision's v2 FPN blocks are (conv, BatchNorm): '.0' the conv, '.1' the norm.
_TORCHVISION_FPN = re.compile(
  r'^backbone\.fpn\.(?:(inner_blocks|layer_blocks)\.(\d+)(?:\.([01]))?|extra_blocks\.p(\d+))'
  r'\.(weight|bias|running_mean|running_var)$'
)
_MMDET_FPN = re.compile(r'^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$')


@dataclasses.dataclass
class Part:
  """The tensors of one network part found in a checkpoint, in flax paths and layouts.

  `params` paths are relative to the 'params' collection ('layer1_0/conv1/kernel', as
  the registry's `Conversion.params`); `model_state` paths name their collection
  ('batch_stats/layer1_0/bn1/mean'). `sources` maps both kinds of path to checkpoint
  keys; `skipped` gives every checkpoint key this part did not use, with the reason.
  """

  flavour: str
  params: dict[str, np.ndarray]
  model_state: dict[str, np.ndarray]
  sources: dict[str, str]
  skipped: dict[str, str]
  notes: list[str] = dataclasses.field(default_factory=list)

  def variables(self) -> dict[str, Any]:
    """{'params': tree, 'batch_stats': tree} for `model.apply`."""
    return {'params': unflatten(self.params), **unflatten(self.model_state)}

  def nested(self, name: str) -> Part:
    """The part as the submodule `name` of a bigger model ('backbone/layer1_0/...')."""

    def move(path):
      if path in self.model_state:
        collection, rest = path.split('/', 1)
        return f'{collection}/{name}/{rest}'
      return f'{name}/{path}'

    return Part(
      self.flavour,
      {f'{name}/{p}': v for p, v in self.params.items()},
      {move(p): v for p, v in self.model_state.items()},
      {move(p): k for p, k in self.sources.items()},
      dict(self.skipped),
      [f'{name}: {n}' for n in self.notes],
    )

  def summary(self) -> str:
    """What was loaded and what was not, skipped keys grouped by reason."""
    lines = [
      f'{self.flavour}: loaded {len(self.sources)} tensors, skipped {len(self.skipped)}',
      *self.notes,
    ]
    reasons: dict[str, list[str]] = {}
    for key, reason in self.skipped.items():
      reasons.setdefault(reason, []).append(key)
    for reason, keys in reasons.items():
      shown = ', '.join(keys[:4]) + (f', ... ({len(keys)} in all)' if len(keys) > 4 else '')
      lines.append(f'skipped ({reason}): {shown}')
    return '\n'.join(lines)


def combine(parts: list[Part]) -> Part:
  """Nested parts of one checkpoint as one; a key is skipped only if every part skipped it."""
  used = {key for part in parts for key in part.sources.values()}
  skipped = {}
  for part in parts:
    for key, reason in part.skipped.items():
      if key not in used:
        skipped.setdefault(key, reason)
  flavours = list(dict.fromkeys(part.flavour for part in parts))
  return Part(
    ' + '.join(flavours),
    {p: v for part in parts for p, v in part.params.items()},
    {p: v for part in parts for p, v in part.model_state.items()},
    {p: k for part in parts for p, k in part.sources.items()},
    skipped,
    [n for part in parts for n in part.notes],
  )


# ------------------------------------------------------------------------ helpers


def detect_flavour(state: Mapping[str, Any]) -> str:
  """The naming of a ResNet(-FPN) checkpoint: 'torchvision', 'torchvision detection'
  or 'mmdetection'."""
  for flavour in ('torchvision detection', 'mmdetection', 'torchvision'):
    if _BACKBONE_PREFIX[flavour] + 'conv1.weight' in state:
      return flavour
  if any(k.startswith('backbone.fpn.') for k in state):
    return 'torchvision detection'
  if any(k.startswith('neck.') for k in state):
    return 'mmdetection'
  raise ConversionError(
    'not a ResNet / FPN checkpoint of a known flavour (torchvision, '
    'torchvision detection, mmdetection); first keys: '
    f'{", ".join(list(state)[:5])}'
  )


def flatten(variables) -> dict[str, Any]:
  """{'params/a/b/kernel': leaf} of a variable tree."""
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  return {'/'.join(k.key for k in path): leaf for path, leaf in leaves}


def _flax_layout(path: str, value: np.ndarray) -> np.ndarray:
  """A float32 copy (never a view of the caller's state) in flax layout."""
  value = np.array(value, np.float32)
  if not path.endswith('kernel'):
    return value
  return linear_to_flax(value) if value.ndim == 2 else conv_to_flax(value)


def _check(part: Part, expected_variables, source: str, allow_missing=()) -> None:
  """One ConversionError for every missing / unexpected / mis-shaped tensor of `part`."""
  expected = {p: tuple(v.shape) for p, v in flatten(expected_variables).items()}
  got = {**{f'params/{p}': v for p, v in part.params.items()}, **part.model_state}
  check_tree(
    expected,
    got,
    f'{source} ({part.flavour})',
    allow_missing=[f'params/{p}' for p in allow_missing],
  )


def _resnet_path(name: str) -> str | None:
  """Torchvision backbone key ('layer1.0.downsample.1.running_var') -> flax path
  ('batch_stats/layer1_0/downsample_bn/var'), or None when it is no ResNet tensor."""
  module, _, leaf = name.rpartition('.')
  if _STEM_MODULE.match(module):
    path = module
  elif match := _BLOCK_MODULE.match(module):
    sub = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(
      match[3], match[3]
    )
    path = f'layer{match[1]}_{match[2]}/{sub}'
  else:
    return None
  if _NORM_MODULE.search(path):
    if leaf not in _BN_LEAVES:
      return None
    collection, _, flax_leaf = _BN_LEAVES[leaf].rpartition('/')
    return f'{collection}/{path}/{flax_leaf}' if collection else f'{path}/{flax_leaf}'
  return f'{path}/kernel' if leaf == 'weight' else None


# ------------------------------------------------------------------------- ResNet


def resnet_part(
  state: Mapping[str, np.ndarray], model: ResNet, *, source: str = 'checkpoint'
) -> Part:
  """The ResNet tensors of `state` for `model`, checked against its shapes.

  The classification head is taken when the model has one of the checkpoint's size;
  a head of another size, or none in the checkpoint, is left out (skipped, and absent
  from `params`: `convert_resnet` initialises it). Anything else missing, unexpected or
  mis-shaped raises one ConversionError naming the keys and both shapes.
  """
  flavour = detect_flavour(state)
  prefix, head_prefix = _BACKBONE_PREFIX[flavour], _HEAD_PREFIX.get(flavour)
  expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), _dummy_image())
  expected_head = {
    p[len('params/') :]: tuple(v.shape)
    for p, v in flatten(expected).items()
    if p.startswith('params/head/')
  }
  part = Part(flavour, {}, {}, {}, {})
  unrecognised = []
  for key, value in state.items():
    if head_prefix and key.startswith(head_prefix):
      path = {'weight': 'head/kernel', 'bias': 'head/bias'}.get(key[len(head_prefix) :])
      if path is None:
        unrecognised.append(key)
      elif path not in expected_head:
        part.skipped[key] = 'classification head; the model has none'
      elif _flax_layout(path, value).shape != expected_head[path]:
        part.skipped[key] = (
          f"classification head of {value.shape[0]} classes; the model's has {model.num_classes}"
        )
      else:
        part.params[path] = _flax_layout(path, value)
        part.sources[path] = key
      continue
    if not key.startswith(prefix):
      part.skipped[key] = 'not part of the ResNet backbone'
      continue
    if _COUNTER.search(key):
      part.skipped[key] = 'BatchNorm step counter, no counterpart'
      continue
    path = _resnet_path(key[len(prefix) :])
    if path is None:
      unrecognised.append(key)
      continue
    target = part.model_state if path.startswith('batch_stats/') else part.params
    target[path] = _flax_layout(path, value)
    part.sources[path] = key
  if unrecognised:
    raise ConversionError(
      f'{source}: keys that are not part of a ResNet ({flavour} naming): {", ".join(unrecognised)}'
    )
  _check(part, expected, source, allow_missing=expected_head)
  return part


def _dummy_image():
  return jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)


def convert_resnet(
  state: Mapping[str, np.ndarray], model: ResNet, *, rng=None, source: str = 'checkpoint'
) -> tuple[dict, Part]:
  """`model`'s complete variables ({'params', 'batch_stats'}) and the `Part` they came
  from; a head the checkpoint lacks (or has at another size) is freshly initialised."""
  part = resnet_part(state, model, source=source)
  variables = part.variables()
  if model.num_classes and 'head/kernel' not in part.params:
    rng = jax.random.key(0) if rng is None else rng
    # Only the head is initialised: a whole-model init costs a long compile on CPU.
    pooled = jnp.zeros((1, model.stage_channels[f'stage_{len(model.depths)}']))
    head = classification_head(model.num_classes, model.dtype).init(rng, pooled)['params']
    variables['params']['head'] = jax.tree.map(np.asarray, head)
    part.notes.append(f'classification head ({model.num_classes} classes) initialised')
  return variables, part


# ---------------------------------------------------------------------------- FPN


def _fpn_path(key: str, fpn: FPN) -> str | None:
  """Checkpoint FPN key -> flax path in `fpn`; None when the key is not an FPN tensor."""
  levels = fpn.input_levels
  if match := _TORCHVISION_FPN.match(key):
    kind, index, sub, extra_level, leaf = match.groups()
    if extra_level is not None:
      module = f'extra_p{extra_level}'
    else:
      index = int(index)
      if index >= len(levels):
        raise ConversionError(
          f"{key}: FPN input {index}, but the model's FPN has "
          f'{len(levels)} inputs {tuple(fpn.in_keys)}'
        )
      module = f'{"lateral" if kind == "inner_blocks" else "output"}_p{levels[index]}'
      if sub == '1':
        collection, _, flax_leaf = _BN_LEAVES[leaf].rpartition('/')
        return '/'.join(filter(None, (collection, f'{module}_bn', flax_leaf)))
  elif match := _MMDET_FPN.match(key):
    kind, index, leaf = match[1], int(match[2]), match[3]
    level = levels[0] + index
    if kind == 'lateral_convs':
      module = f'lateral_p{level}'
    else:
      module = f'{"output" if index < len(levels) else "extra"}_p{level}'
  else:
    return None
  return f'{module}/{"kernel" if leaf == "weight" else "bias"}'


def fpn_part(
  state: Mapping[str, np.ndarray],
  fpn: FPN,
  in_channels: Mapping[str, int],
  *,
  source: str = 'checkpoint',
) -> Part:
  """The FPN tensors of `state` for `fpn`, checked against its shapes.

  `in_channels`: channels of each backbone stage feeding the FPN (`ResNet.stage_channels`
  or Swin's). Torchvision's inner / layer block i and mmdetection's lateral / fpn conv i
  serve `fpn.in_keys[i]`; mmdetection's fpn convs past the inputs and torchvision's
  `extra_blocks.p<l>` are the extra levels.
  """
  features = {k: jax.ShapeDtypeStruct((1, 4, 4, in_channels[k]), jnp.float32) for k in fpn.in_keys}
  expected = jax.eval_shape(lambda f: fpn.init(jax.random.key(0), f), features)
  part = Part(detect_flavour(state), {}, {}, {}, {})
  for key, value in state.items():
    if not key.startswith(('backbone.fpn.', 'neck.')):
      part.skipped[key] = 'not part of the FPN'
      continue
    if _COUNTER.search(key):
      part.skipped[key] = 'BatchNorm step counter, no counterpart'
      continue
    path = _fpn_path(key, fpn)
    if path is None:
      raise ConversionError(f'{source}: {key} is not a tensor of an FPN')
    target = part.model_state if path.startswith('batch_stats/') else part.params
    target[path] = _flax_layout(path, value)
    part.sources[path] = key
  if not part.params:
    raise ConversionError(f'{source}: no FPN tensors (backbone.fpn.* or neck.*)')
  _check(part, expected, source)
  return part


def convert_fpn(
  state: Mapping[str, np.ndarray],
  fpn: FPN,
  in_channels: Mapping[str, int],
  *,
  source: str = 'checkpoint',
) -> tuple[dict, Part]:
  """`fpn`'s variables ({'params'}) and the `Part` they came from."""
  part = fpn_part(state, fpn, in_channels, source=source)
  return part.variables(), part


# --------------------------------------------------------------- registry converter


def num_classes_of(state: Mapping[str, np.ndarray]) -> int:
  """The class count of a classification checkpoint's head; 0 when it has none."""
  head = _HEAD_PREFIX.get(detect_flavour(state))
  weight = state.get(f'{head}weight') if head else None
  return 0 if weight is None else int(weight.shape[0])


def convert_resnet_arch(state: Mapping[str, np.ndarray], arch: str, **overrides) -> Conversion:
  """The registry converter of every `RESNET_ARCHS` name.

  `num_classes` defaults to the checkpoint head's size (0 for detector backbones, whose
  FPN and heads are then skipped); another size gets a freshly initialised head.
  """
  if arch not in RESNET_ARCHS:
    raise ConversionError(f'unknown ResNet arch {arch!r}; supported: {", ".join(RESNET_ARCHS)}')
  model_kwargs = {'num_classes': num_classes_of(state), **overrides}
  model = build_resnet(arch, **model_kwargs)
  variables, part = convert_resnet(state, model, source=f'{arch} checkpoint')
  return Conversion(
    model=model,
    params=flatten(variables['params']),
    sources=part.sources,
    skipped=part.skipped,
    flavour=part.flavour,
    init_inputs=(_dummy_image(),),
    model_kwargs={k: v for k, v in model_kwargs.items() if k != 'dtype'},
    notes=part.notes,
    model_state={f'batch_stats/{p}': v for p, v in flatten(variables['batch_stats']).items()},
  )


register(RESNET_ARCHS, convert_resnet_arch)
