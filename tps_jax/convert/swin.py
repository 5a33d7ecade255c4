"""Swin / Video Swin checkpoints -> `tps_jax.models.swin.SwinTransformer` params.

Every flavour is first renamed to the official microsoft naming without prefix
(`patch_embed.proj`, `layers.i.blocks.j.attn.qkv`, `layers.i.downsample`, `norm`,
`head`); one function then maps official names onto the flax tree. Flavours, detected
from the keys:
- torchvision `swin_*`: `features.0.0` (patch conv), `features.{2i+1}.{j}` (blocks),
  `features.{2i+2}` (merging), `mlp.0` / `mlp.3`;
- torchvision `swin3d_*`: `patch_embed`, `features.{2i}.{j}`, `features.{2i+1}`;
- official Swin: `layers.i.blocks.j...`, often under 'model';
- `backbone.`-prefixed OpenMMLab checkpoints, usually under 'state_dict':
  official Video Swin / mmaction2 (head `cls_head.fc_cls`), mmpretrain (head `head.fc`),
  mmdetection (no head; per-stage norms `norm0..3`; its `neck.` / `rpn_head.` /
  `roi_head.` / ... keys are skipped and reported). Their inner names are either the
  official ones (Swin-Transformer-Object-Detection, Video Swin) or OpenMMLab's own
  (`stages.i`, `attn.w_msa`, `ffn.layers`, an Unfold-ordered patch merging). Per-stage
  norms `norm0..3` become `feature_norm_1..3` and the final `norm`.
Buffers (`relative_position_index`, `attn_mask`) are recomputed, never loaded.

Adapting to the model, as the Video Swin / Swin fine-tuning code does:
- a 2D checkpoint into a 3D arch (inflation): the patch-embedding kernel is repeated
  over the temporal patch and divided by its length, so a static clip embeds as the
  image did; each relative-position-bias table is repeated over the 2*Wt-1 temporal
  offsets (time is the slowest axis of the 3D index);
- a bias table of another window size (e.g. ImageNet-22K window 7 -> 384 window 12) is
  resized per axis with torch's bicubic interpolation (align_corners=False).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.convert.io import ConversionError, Rule, conv_to_flax, linear_to_flax, rename
from tps_jax.convert.registry import Conversion, register
from tps_jax.models.swin import SWIN_ARCHS, SwinTransformer, build_swin

_BUFFERS = re.compile(r'(^|\.)(relative_position_index|attn_mask)$')
_BLOCK_RULES: list[Rule] = [(r'\.mlp\.0\.', '.mlp.fc1.'), (r'\.mlp\.3\.', '.mlp.fc2.')]
_TORCHVISION_2D: list[Rule] = [
  (r'^features\.0\.0\.', 'patch_embed.proj.'),
  (r'^features\.0\.2\.', 'patch_embed.norm.'),
  (r'^features\.(\d+)\.(\d+)\.', lambda m: f'layers.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.'),
  (
    r'^features\.(\d+)\.(norm|reduction)\.',
    lambda m: f'layers.{(int(m[1]) - 2) // 2}.downsample.{m[2]}.',
  ),
  *_BLOCK_RULES,
]
_TORCHVISION_3D: list[Rule] = [
  (r'^features\.(\d+)\.(\d+)\.', lambda m: f'layers.{int(m[1]) // 2}.blocks.{m[2]}.'),
  (
    r'^features\.(\d+)\.(norm|reduction)\.',
    lambda m: f'layers.{(int(m[1]) - 1) // 2}.downsample.{m[2]}.',
  ),
  *_BLOCK_RULES,
]
_OPENMMLAB: list[Rule] = [  # mmdetection / mmpretrain's own Swin naming
  (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
  (r'^stages\.(\d+)\.', r'layers.\1.'),
  (r'\.attn\.w_msa\.', '.attn.'),
  (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
  (r'\.ffn\.layers\.1\.', '.mlp.fc2.'),
]
_HEADS = {'cls_head.fc_cls.': 'official Video Swin / mmaction2', 'head.fc.': 'mmpretrain'}


@dataclasses.dataclass
class Canonical:
  """A Swin checkpoint in official names (no prefix)."""

  flavour: str
  tensors: dict[str, np.ndarray]  # official name -> array (torch layout)
  sources: dict[str, str]  # official name -> checkpoint key
  skipped: dict[str, str]  # checkpoint key -> why it is not used

  @property
  def is_3d(self) -> bool:
    return self.tensors['patch_embed.proj.weight'].ndim == 5


def canonical_swin(state: dict[str, np.ndarray]) -> Canonical:
  """Detects the flavour of a Swin state dict and renames it to official names."""
  keys = set(state)
  skipped = {}
  names = {key: key for key in state}  # name without prefix -> checkpoint key
  if 'features.0.0.weight' in keys:
    flavour, rules = 'torchvision swin', _TORCHVISION_2D
  elif 'patch_embed.proj.weight' in keys and any(k.startswith('features.') for k in keys):
    flavour, rules = 'torchvision swin3d', _TORCHVISION_3D
  elif 'patch_embed.proj.weight' in keys and any(k.startswith('layers.') for k in keys):
    flavour, rules = 'official Swin', []
  elif any(k.startswith('backbone.') for k in keys):
    head = next((h for h in _HEADS if any(k.startswith(h) for k in keys)), None)
    names = {}
    for key in state:
      if key.startswith('backbone.'):
        names[key[len('backbone.') :]] = key
      elif head and key.startswith(head):
        names['head.' + key[len(head) :]] = key
      else:
        skipped[key] = 'not part of a Swin classifier (neck, detection or other heads)'
    video = getattr(state.get('backbone.patch_embed.proj.weight'), 'ndim', 0) == 5
    flavour = _HEADS[head] if head else f'mm{"action2" if video else "detection"} backbone'
    rules = [(r'^norm(\d+)\.', r'stage_norm.\1.')]
    if 'patch_embed.projection.weight' in names:
      rules += _OPENMMLAB
      flavour += ' (OpenMMLab naming)'
  else:
    raise ConversionError(
      'not a Swin checkpoint of a known flavour (torchvision swin / swin3d, official '
      'Swin, official Video Swin / mmaction2, mmdetection / mmpretrain); first keys: '
      f'{", ".join(sorted(keys)[:6])}'
    )
  tensors, sources = {}, {}
  for new, old in rename(names, rules).items():
    key = names[old]
    if _BUFFERS.search(new):
      skipped[key] = 'buffer, recomputed from the window size'
      continue
    value = state[key]
    if flavour.endswith('(OpenMMLab naming)'):
      value = _unfold_to_official_order(new, value)
    tensors[new] = value
    sources[new] = key
  if 'patch_embed.proj.weight' not in tensors:
    raise ConversionError(
      f'{flavour} checkpoint without a patch embedding (patch_embed.proj.weight)'
    )
  return Canonical(flavour, tensors, sources, skipped)


def _unfold_to_official_order(name: str, value: np.ndarray) -> np.ndarray:
  """OpenMMLab's patch merging (nn.Unfold) orders its 4C inputs (C, dh, dw); the official
  one (dw, dh, C). Reorders the reduction's input axis and the norm's parameters."""
  if not re.search(r'\.downsample\.(reduction\.weight|norm\.(weight|bias))$', name):
    return value
  lead = value.shape[:-1]
  value = value.reshape(*lead, -1, 2, 2)  # (..., C, dh, dw)
  return np.ascontiguousarray(
    np.moveaxis(value, -3, -1).swapaxes(-3, -2)  # (..., dh, dw, C)
  ).reshape(*lead, -1)  # (..., dw, dh, C)


def checkpoint_fields(canonical: Canonical) -> dict:
  """Model fields the checkpoint decides: head size, per-stage norms, patch norm."""
  head = canonical.tensors.get('head.weight')
  return dict(
    num_classes=0 if head is None else int(head.shape[0]),
    feature_norms=any(k.startswith('stage_norm.') for k in canonical.tensors),
    patch_norm='patch_embed.norm.weight' in canonical.tensors,
  )


# ------------------------------------------------------------------ bias-table adaptation


def torch_bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
  """(size_out, size_in) matrix of torch's bicubic interpolation along one axis
  (align_corners=False, border samples repeated)."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  matrix = np.zeros((size_out, size_in))
  for i in range(size_out):
    source = (i + 0.5) * size_in / size_out - 0.5
    base = math.floor(source)
    t = source - base
    for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
      matrix[i, min(max(base + offset, 0), size_in - 1)] += weight
  return matrix


def table_window(length: int, ndim: int, spatial_hint: int | None = None) -> tuple[int, ...]:
  """The (square-in-space) window of a (length, heads) bias table of `ndim` axes."""
  side = math.isqrt(length)
  if ndim == 2:
    if side * side != length or side % 2 == 0:
      raise ConversionError(f'bias table of {length} rows is not a square odd side')
    return ((side + 1) // 2,) * 2
  sides = [
    s for s in range(side, 0, -1) if s % 2 and length % (s * s) == 0 and (length // (s * s)) % 2
  ]
  if spatial_hint in sides:
    sides = [spatial_hint]
  if not sides:
    raise ConversionError(f'bias table of {length} rows is not (2Wt-1)(2W-1)^2')
  time = length // (sides[0] * sides[0])
  return ((time + 1) // 2, (sides[0] + 1) // 2, (sides[0] + 1) // 2)


def adapt_bias_table(table: np.ndarray, source_window, target_window) -> np.ndarray:
  """A (prod(2w-1), heads) table for `target_window`: 2D tables repeated over time for
  a 3D target, then every axis resized with torch's bicubic interpolation."""
  heads = table.shape[-1]
  grid = table.reshape(*[2 * w - 1 for w in source_window], heads)
  if len(source_window) == 2 and len(target_window) == 3:
    grid = np.repeat(grid[None], 2 * target_window[0] - 1, axis=0)
  elif len(source_window) != len(target_window):
    raise ConversionError(
      f'cannot adapt a {len(source_window)}D bias table to a {len(target_window)}D window'
    )
  for axis, window in enumerate(target_window):
    size = 2 * window - 1
    if grid.shape[axis] != size:
      matrix = torch_bicubic_matrix(grid.shape[axis], size)
      grid = np.moveaxis(np.tensordot(matrix, grid, axes=(1, axis)), 0, axis)
  return grid.reshape(-1, heads).astype(np.float32)


def adapt_flax_leaf(
  name: str, value: np.ndarray, shape: tuple[int, ...], window_size: tuple[int, ...]
) -> np.ndarray | None:
  """A trained Swin's flax leaf reshaped for a Swin of `window_size` whose leaf has
  `shape`, as the import of a 2D checkpoint does: the patch-embedding kernel
  (H, W, C, D) inflated over the T frames of a (T, H, W, C, D) one (repeated, / T),
  a relative position bias table adapted to the window (`adapt_bias_table`). None for
  any other leaf or shape. For `init_from` between trained networks (Task hook
  `adapt_init_leaf`), e.g. an image Swin starting a video Swin."""
  if name.endswith('patch_embed/proj/kernel') and value.shape == shape[1:]:
    return np.repeat(value[None], shape[0], axis=0) / shape[0]
  if name.endswith('relative_position_bias_table') and value.shape[1:] == shape[1:]:
    side = math.isqrt(value.shape[0])
    source_ndim = 2 if side * side == value.shape[0] else 3
    try:
      source_window = table_window(
        value.shape[0], source_ndim, spatial_hint=2 * window_size[-1] - 1
      )
      return adapt_bias_table(value, source_window, tuple(window_size))
    except ConversionError:
      return None
  return None


# ------------------------------------------------------------------- official -> flax


def _flax_path(name: str, value: np.ndarray, num_stages: int) -> str:
  """'layers.0.blocks.1.attn.qkv.weight' -> 'layers_0/blocks_1/attn/qkv/kernel'."""
  name = re.sub(r'(layers|blocks)\.(\d+)', r'\1_\2', name)
  stage_norm = re.match(r'stage_norm\.(\d+)\.', name)
  if stage_norm:  # OpenMMLab's per-stage norms: the last one is the final `norm`
    stage = int(stage_norm[1]) + 1
    module = 'norm' if stage == num_stages else f'feature_norm_{stage}'
    name = module + name[stage_norm.end() - 1 :]
  *path, leaf = name.split('.')
  if leaf == 'weight':
    leaf = 'scale' if value.ndim == 1 else 'kernel'
  return '/'.join([*path, leaf])


def swin_params(
  canonical: Canonical, model: SwinTransformer
) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
  """(flat flax params, {flax path: checkpoint key}, notes) of `model` from a checkpoint;
  inflates 2D into 3D and resizes bias tables as the model needs."""
  target_window = tuple(model.window_size)
  model_3d = len(model.patch_size) == 3
  if canonical.is_3d and not model_3d:
    raise ConversionError('a video (3D) Swin checkpoint cannot initialise a 2D (image) Swin arch')
  notes = []
  params, sources = {}, {}
  resized = set()
  for name, value in canonical.tensors.items():
    if name == 'patch_embed.proj.weight' and model_3d and value.ndim == 4:
      frames = model.patch_size[0]
      value = np.repeat(value[:, :, None], frames, axis=2) / frames
      notes.append(f'inflated the 2D patch embedding over {frames} frames')
    if name.endswith('relative_position_bias_table'):
      try:
        source_window = table_window(
          value.shape[0], 3 if canonical.is_3d else 2, spatial_hint=2 * target_window[-1] - 1
        )
      except ConversionError as e:
        raise ConversionError(f'{canonical.sources[name]}: {e}') from None
      if source_window != target_window:
        value = adapt_bias_table(value, source_window, target_window)
        resized.add(f'{source_window} -> {target_window}')
    path = _flax_path(name, value, len(model.depths))
    if path.endswith('/kernel'):
      value = linear_to_flax(value) if value.ndim == 2 else conv_to_flax(value)
    params[path] = np.asarray(value, np.float32) if value.dtype.kind == 'f' else value
    sources[path] = canonical.sources[name]
  notes += [f'relative position bias tables adapted, window {r}' for r in sorted(resized)]
  return params, sources, notes


def _geometry(canonical: Canonical) -> str:
  """'embed_dim 192, depths (2, 2, 18, 2)', read off the checkpoint's keys."""
  depths = {}
  for name in canonical.tensors:
    m = re.match(r'layers\.(\d+)\.blocks\.(\d+)\.', name)
    if m:
      depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
  embed_dim = canonical.tensors['patch_embed.proj.weight'].shape[0]
  return f'embed_dim {embed_dim}, depths {tuple(depths[i] for i in sorted(depths))}'


def convert_swin(state: dict[str, np.ndarray], arch: str, **overrides) -> Conversion:
  """The registered converter of every `SWIN_ARCHS` name (see the module docstring)."""
  canonical = canonical_swin(state)
  model_kwargs = {**checkpoint_fields(canonical), **overrides}
  model = build_swin(arch, **model_kwargs)
  if len(model.window_size) != len(model.patch_size):
    raise ConversionError(
      f'window_size {tuple(model.window_size)} has not the {len(model.patch_size)} axes of {arch}'
    )
  params, sources, notes = swin_params(canonical, model)
  patch = tuple(model.patch_size)
  init_shape = (1, *patch[:-2], *[p * 2 ** (len(model.depths) - 1) for p in patch[-2:]], 3)
  inflated = len(patch) == 3 and not canonical.is_3d
  return Conversion(
    model=model,
    params=params,
    sources=sources,
    skipped=canonical.skipped,
    flavour=f'{canonical.flavour}{" 2D, inflated" if inflated else ""}: {_geometry(canonical)}',
    init_inputs=(jax.ShapeDtypeStruct(init_shape, jnp.float32),),
    model_kwargs=model_kwargs,
    notes=notes,
  )


register(SWIN_ARCHS, convert_swin)
