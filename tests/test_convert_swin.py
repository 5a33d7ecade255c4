"""PyTorch weight import for Swin / Video Swin.

Parity with random-initialised torchvision models through `load_pytorch_weights`
(.pth and .safetensors), the official / OpenMMLab key names (built by renaming
torchvision's), inflation of a 2D checkpoint into Video Swin, bias-table resizing,
errors, and the command line.
"""

import functools
import json
import os
import re

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models import swin_t
from torchvision.models import swin_transformer as tv_swin
from torchvision.models.video import swin3d_b, swin3d_t
from torchvision.models.video import swin_transformer as tv_video_swin

from tests.conftest import run_module
from tps_jax.convert import (
  ConversionError,
  convert_checkpoint,
  convert_state_dict,
  load_pytorch_weights,
)
from tps_jax.convert import swin as swin_convert
from tps_jax.convert.io import unflatten
from tps_jax.train.checkpointing import load_params

IMAGE_SHAPE = (2, 232, 200, 3)  # token grids 58x50, 29x25, 15x13, 8x7: padding, shifts
CLIP_SHAPE = (1, 5, 72, 60, 3)  # time padded and clipped; grids 18x15 .. 3x2: clipped too


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Norms, bias tables and head away from their trivial initial values."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if 'norm' in name:
        p.copy_(1 + 0.2 * noise if name.endswith('weight') else 0.2 * noise)
      elif 'relative_position_bias_table' in name:
        p.copy_(noise)
      elif name.startswith('head.'):
        p.copy_(0.5 * noise)
  return model.eval()


def _state(model) -> dict[str, torch.Tensor]:
  return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _channels_first(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


@torch.no_grad()
def _torch_features(model, x: np.ndarray) -> dict[str, np.ndarray]:
  """torchvision's stage features (channels last) and logits, as our contract names them."""
  if isinstance(model, tv_swin.SwinTransformer):
    h = model.features[0](_channels_first(x))
    stages = model.features[1:]
  else:
    h = model.pos_drop(model.patch_embed(_channels_first(x)))
    stages = model.features
  out = {}
  for i in range(4):
    h = stages[2 * i](h)
    out[f'stage_{i + 1}'] = h
    if i < 3:
      h = stages[2 * i + 1](h)
  out['stage_4'] = h = model.norm(h)
  out['logits'] = model.head(h.flatten(1, -2).mean(1))
  return {k: v.numpy() for k, v in out.items()}


@functools.partial(jax.jit, static_argnames='model')
def _features(model, variables, x):
  return model.apply(variables, x, train=False, return_features=True)


def _assert_scaled_close(got, expected, rel=1e-4, what=''):
  scale = np.abs(expected).max()
  error = np.abs(np.asarray(got) - expected).max()
  assert error <= rel * scale, f'{what}: max |diff| {error} > {rel} x scale {scale}'


def _assert_matches(
  model,
  variables,
  reference,
  x,
  keys=('stage_1', 'stage_2', 'stage_3', 'stage_4', 'logits'),
  reference_x=None,
):
  """Our features of x against the reference's of reference_x (default: x)."""
  got = _features(model, variables, x)
  expected = _torch_features(reference, x if reference_x is None else reference_x)
  for key in keys:
    assert got[key].shape == expected[key].shape, key
    _assert_scaled_close(got[key], expected[key], what=key)


def _input(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _official_names(state: dict, video: bool) -> dict:
  """torchvision names -> the official Swin / Video Swin release's names."""
  out = {}
  for key, value in state.items():
    if video:
      key = re.sub(
        r'^features\.(\d+)\.(\d+)\.', lambda m: f'layers.{int(m[1]) // 2}.blocks.{m[2]}.', key
      )
      key = re.sub(
        r'^features\.(\d+)\.', lambda m: f'layers.{(int(m[1]) - 1) // 2}.downsample.', key
      )
    else:
      key = key.replace('features.0.0.', 'patch_embed.proj.')
      key = key.replace('features.0.2.', 'patch_embed.norm.')
      key = re.sub(
        r'^features\.(\d+)\.(\d+)\.', lambda m: f'layers.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.', key
      )
      key = re.sub(
        r'^features\.(\d+)\.', lambda m: f'layers.{(int(m[1]) - 2) // 2}.downsample.', key
      )
    out[key.replace('.mlp.0.', '.mlp.fc1.').replace('.mlp.3.', '.mlp.fc2.')] = value
  return out


def _openmmlab_names(official: dict) -> dict:
  """Official names -> mmdetection's own Swin naming, merging in Unfold order (as
  mmdetection's swin2mmdet tool converts them)."""
  out = {}
  for key, value in official.items():
    if re.search(r'\.downsample\.(reduction\.weight|norm\.(weight|bias))$', key):
      lead = value.shape[:-1]
      value = value.reshape(*lead, 4, -1)[..., [0, 2, 1, 3], :]
      value = value.transpose(-1, -2).reshape(*lead, -1).contiguous()
    key = key.replace('patch_embed.proj.', 'patch_embed.projection.')
    key = re.sub(r'^layers\.', 'stages.', key).replace('.attn.', '.attn.w_msa.')
    key = key.replace('.mlp.fc1.', '.ffn.layers.0.0.').replace('.mlp.fc2.', '.ffn.layers.1.')
    out[key] = value
  return out


@pytest.fixture(scope='module')
def swin_t_reference():
  torch.manual_seed(0)
  return _randomise(swin_t(), seed=1)


@pytest.fixture(scope='module')
def swin_t_files(swin_t_reference, tmp_path_factory):
  folder = tmp_path_factory.mktemp('swin_t')
  state = _state(swin_t_reference)
  torch.save(state, folder / 'swin_t.pth')
  save_file(state, str(folder / 'swin_t.safetensors'))
  return folder / 'swin_t.pth', folder / 'swin_t.safetensors'


# A narrow Swin (fast to compile: 8 blocks of width 32 to 256) for the checks of shapes and
# windows, whose numbers do not depend on the width; Swin-T's are checked above at one size.
SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
SMALL_TORCH = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}


@pytest.fixture(scope='module')
def small_swin(tmp_path_factory):
  """(a random-initialised narrow torchvision Swin of 10 classes, the path of its .pth)."""
  torch.manual_seed(7)
  reference = _randomise(
    tv_swin.SwinTransformer(
      patch_size=[4, 4],
      window_size=[7, 7],
      num_classes=10,
      **SMALL_TORCH,
    ),
    seed=8,
  )
  path = tmp_path_factory.mktemp('small_swin') / 'small.pth'
  torch.save(_state(reference), path)
  return reference, str(path)


@pytest.fixture(scope='module')
def swin3d_t_reference():
  torch.manual_seed(2)
  return _randomise(swin3d_t(), seed=3)


# ---------------------------------------------------------------------------- parity


def test_swin_t_matches_torchvision(swin_t_reference, swin_t_files):
  pth, safetensors = swin_t_files
  model, variables = load_pytorch_weights(str(pth), 'swin_t')
  assert model.num_classes == 1000 and not model.feature_norms
  _, from_safetensors = load_pytorch_weights(str(safetensors), 'swin_t')
  jax.tree.map(np.testing.assert_array_equal, from_safetensors, variables)
  _assert_matches(model, variables, swin_t_reference, _input(IMAGE_SHAPE))


@pytest.mark.parametrize(
  'height,width',
  [
    (224, 224),  # the trained resolution: token grids 56 .. 7, the window's
    (112, 112),  # stage 3 (7x7) unshifted, stage 4 (4x4) padded up to the window
    (98, 138),  # the patch remainder padded: grids 25x35, 13x18, 7x9, 4x5 (odd merges)
  ],
)
def test_swin_matches_torchvision_at_other_sizes(small_swin, height, width):
  """Grids at or below the window, as torchvision: the window kept and the grid
  zero-padded up to it, no shift. An image that does not divide by the patch is padded
  here (torchvision's patch convolution would drop the remainder): it matches
  torchvision on the image zero-padded to a multiple of the patch. On the narrow Swin
  (at 224 the program of the inflation test below)."""
  reference, path = small_swin
  model, variables = load_pytorch_weights(path, 'swin_t', **SMALL)
  x = _input((1, height, width, 3))
  padded = np.pad(x, [(0, 0), (0, -height % 4), (0, -width % 4), (0, 0)])
  _assert_matches(model, variables, reference, x, reference_x=padded)


def test_swin3d_t_matches_torchvision(swin3d_t_reference, tmp_path):
  torch.save(_state(swin3d_t_reference), tmp_path / 'swin3d_t.pth')
  model, variables = load_pytorch_weights(str(tmp_path / 'swin3d_t.pth'), 'swin3d_t')
  assert model.num_classes == 400
  _assert_matches(model, variables, swin3d_t_reference, _input(CLIP_SHAPE))


def test_swin3d_matches_torchvision_at_8x112():
  """Token grids 4x28x28 .. 4x4x4, as torchvision's swin3d: the window clipped to the grid
  (time in every stage, space in stage 4) and no shift there nor in stage 3's 7x7. On a
  narrow Video Swin of swin3d_t's patch and window (Video Swin-T's numbers: above)."""
  torch.manual_seed(9)
  reference = _randomise(
    tv_video_swin.SwinTransformer3d(
      patch_size=[2, 4, 4], window_size=[8, 7, 7], num_classes=10, **SMALL_TORCH
    ),
    seed=10,
  )
  conversion = convert_state_dict(
    {k: v.numpy() for k, v in _state(reference).items()}, 'swin3d_t', **SMALL
  )
  _assert_matches(
    conversion.model,
    {'params': unflatten(conversion.params)},
    reference,
    _input((1, 8, 112, 112, 3)),
  )


def test_official_video_swin_names(swin3d_t_reference, tmp_path):
  """mmaction2 layout: 'state_dict' with backbone. and cls_head.fc_cls keys."""
  state = _official_names(_state(swin3d_t_reference), video=True)
  state = {
    ('cls_head.fc_cls.' + k[5:] if k.startswith('head.') else 'backbone.' + k): v
    for k, v in state.items()
  }
  torch.save(
    {'meta': {'epoch': 30, 'config': 'swin_tiny'}, 'state_dict': state}, tmp_path / 'video_swin.pth'
  )
  model, variables = load_pytorch_weights(str(tmp_path / 'video_swin.pth'), 'swin3d_t')
  assert model.num_classes == 400
  _assert_matches(
    model, variables, swin3d_t_reference, _input(CLIP_SHAPE), keys=('logits',)
  )  # (compiled once with the test above)


def _meta_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  """A state dict's names and shapes without its memory (a model built on torch's meta
  device): zero-strided numpy views, so that a full-size conversion costs nothing."""
  zero = lambda v: np.zeros((), np.float32 if v.is_floating_point() else np.int64)
  return {k: np.broadcast_to(zero(v), tuple(v.shape)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('arch', ['swin_l', 'swin3d_b'])
def test_full_size_official_release_names_and_shapes(arch):
  """The official releases' full-size layouts, by name and shape: Swin-L 22K
  ({'model': ...}, attn_mask buffers, a 21841-class head) and Video Swin-B (mmaction2's
  backbone. / cls_head.fc_cls.). The numbers are checked on Swin-T / Video Swin-T above."""
  with torch.device('meta'):
    if arch == 'swin_l':
      reference = tv_swin.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=[7, 7],
        num_classes=21841,
      )
    else:
      reference = swin3d_b()
  state = _official_names(_meta_state(reference), video=arch == 'swin3d_b')
  if arch == 'swin_l':
    for i, depth in enumerate([2, 2, 18]):  # stage 4 (7x7 tokens) has no shift, no mask
      for j in range(1, depth, 2):
        state[f'layers.{i}.blocks.{j}.attn_mask'] = np.zeros((64 // 4**i, 49, 49), np.float32)
    classes, block = 21841, 'layers.2.blocks.17.attn.qkv.weight'
  else:
    state = {
      ('cls_head.fc_cls.' + k[5:] if k.startswith('head.') else 'backbone.' + k): v
      for k, v in state.items()
    }
    classes, block = 400, 'backbone.layers.2.blocks.17.attn.qkv.weight'
  conversion = convert_state_dict(state, arch, source=f'{arch} (meta)')
  assert conversion.model.num_classes == classes
  assert conversion.sources['layers_2/blocks_17/attn/qkv/kernel'] == block
  expected = sum(v.numel() for k, v in reference.state_dict().items() if 'index' not in k)
  assert sum(p.size for p in conversion.params.values()) == expected


def test_mmdetection_backbone_is_headless_with_stage_norms(swin_t_reference):
  """Swin-Transformer-Object-Detection layout: backbone. + norm0..3, detector parts; and
  mmdetection's own naming of the same backbone."""
  generator = torch.Generator().manual_seed(6)
  official = _official_names(_state(swin_t_reference), video=False)
  norms = {}
  for i, dim in enumerate((96, 192, 384)):
    norms[f'norm{i}.weight'] = 1 + 0.2 * torch.randn(dim, generator=generator)
    norms[f'norm{i}.bias'] = 0.2 * torch.randn(dim, generator=generator)
  norms['norm3.weight'], norms['norm3.bias'] = (
    official.pop('norm.weight'),
    official.pop('norm.bias'),
  )
  del official['head.weight'], official['head.bias']
  backbone = {**official, **norms}
  detector = {
    'neck.lateral_convs.0.conv.weight': np.zeros((256, 96, 1, 1), np.float32),
    'rpn_head.rpn_conv.weight': np.zeros((256, 256, 3, 3), np.float32),
    'roi_head.bbox_head.0.fc_cls.weight': np.zeros((11, 1024), np.float32),
  }
  conversion = convert_state_dict(
    {**{'backbone.' + k: v.numpy() for k, v in backbone.items()}, **detector}, 'swin_t'
  )
  assert conversion.model.num_classes == 0 and conversion.model.feature_norms
  assert conversion.flavour.startswith('mmdetection backbone')
  assert set(detector) <= set(conversion.skipped)
  # The backbone is the torchvision model's (whose parity is tested above) ...
  reference = convert_state_dict(
    {k: v.numpy() for k, v in _state(swin_t_reference).items()}, 'swin_t'
  ).params
  for path, value in reference.items():
    if not path.startswith('head/'):
      np.testing.assert_array_equal(conversion.params[path], value, err_msg=path)
  # ... plus the per-stage norms (what they compute: tests/test_swin.py).
  for i in range(3):
    np.testing.assert_array_equal(
      conversion.params[f'feature_norm_{i + 1}/scale'], norms[f'norm{i}.weight'].numpy()
    )
    np.testing.assert_array_equal(
      conversion.params[f'feature_norm_{i + 1}/bias'], norms[f'norm{i}.bias'].numpy()
    )
  # mmdetection's own naming (stages / w_msa / ffn, Unfold-ordered merging): same params.
  renamed = {
    **{'backbone.' + k: v.numpy() for k, v in _openmmlab_names(backbone).items()},
    **detector,
  }
  openmmlab = convert_state_dict(renamed, 'swin_t')
  assert 'OpenMMLab' in openmmlab.flavour
  assert set(openmmlab.params) == set(conversion.params)
  for path, value in conversion.params.items():
    np.testing.assert_array_equal(openmmlab.params[path], value, err_msg=path)


# ------------------------------------------------------------------ inflation, resizing


def test_inflated_swin_sees_a_static_clip_as_its_frames(small_swin):
  """Video Swin initialised from a 2D checkpoint: a clip of one repeated image gives, per
  frame, the 2D model's features of that image (and its logits). A narrow Swin (fast to
  compile) at 224, where no window is clipped in space."""
  reference, path = small_swin
  model_2d, variables_2d = load_pytorch_weights(path, 'swin_t', **SMALL)
  model_3d, variables_3d = load_pytorch_weights(path, 'swin3d_t', **SMALL)
  assert model_3d.num_classes == 10
  table = variables_3d['params']['layers_0']['blocks_0']['attn']['relative_position_bias_table']
  assert table.shape == (15 * 13 * 13, 1)
  image = _input((1, 224, 224, 3))
  clip = np.repeat(image[:, None], 4, axis=1)
  features_2d = _features(model_2d, variables_2d, image)
  _assert_scaled_close(features_2d['logits'], _torch_features(reference, image)['logits'])
  features_3d = _features(model_3d, variables_3d, clip)
  for key in ('stage_1', 'stage_2', 'stage_3', 'stage_4'):
    assert features_3d[key].shape[1] == 2
    for t in range(2):
      _assert_scaled_close(features_3d[key][:, t], features_2d[key], rel=1e-5, what=key)
  _assert_scaled_close(features_3d['logits'], features_2d['logits'], rel=1e-5)


def test_bias_table_resize_matches_torch_bicubic():
  table = np.random.default_rng(0).normal(size=(13 * 13, 4)).astype(np.float32)
  resized = swin_convert.adapt_bias_table(table, (7, 7), (12, 12))
  expected = (
    F.interpolate(torch.from_numpy(table).T.reshape(1, 4, 13, 13), size=(23, 23), mode='bicubic')
    .reshape(4, -1)
    .T.numpy()
  )
  assert resized.shape == (23 * 23, 4)
  np.testing.assert_allclose(resized, expected, atol=1e-5)
  np.testing.assert_array_equal(swin_convert.adapt_bias_table(table, (7, 7), (7, 7)), table)
  # 2D -> 3D: the same 2D table at every temporal offset.
  inflated = swin_convert.adapt_bias_table(table, (7, 7), (8, 7, 7)).reshape(15, 169, 4)
  np.testing.assert_array_equal(inflated, np.broadcast_to(table, (15, 169, 4)))
  assert swin_convert.table_window(15 * 13 * 13, 3) == (8, 7, 7)
  assert swin_convert.table_window(31 * 13 * 13, 3) == (16, 7, 7)


def test_window_override_resizes_every_table(swin_t_files):
  pth, _ = swin_t_files
  model, variables = load_pytorch_weights(str(pth), 'swin_t', window_size=(12, 12))
  assert model.window_size == (12, 12)
  tables = [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    if path[-1].key == 'relative_position_bias_table'
  ]
  assert len(tables) == 12 and all(t.shape[0] == 23 * 23 for t in tables)


# ---------------------------------------------------------------------------- errors


@pytest.fixture(scope='module')
def swin_t_state(swin_t_reference):
  return {k: v.numpy() for k, v in _state(swin_t_reference).items()}


def test_unknown_arch_lists_the_supported_ones(swin_t_files):
  with pytest.raises(
    ConversionError,
    match=r"unknown arch 'swin_x'; supported: .*swin3d_b"
    r'.*swin_l_384.*swin_t',
  ):
    load_pytorch_weights(str(swin_t_files[0]), 'swin_x')


def test_missing_unexpected_and_mis_shaped_keys_are_all_listed(swin_t_state):
  state = dict(swin_t_state)
  del state['features.1.0.attn.qkv.weight']
  state['features.1.0.attn.extra.weight'] = np.zeros((3, 3), np.float32)
  state['features.3.1.mlp.0.weight'] = np.zeros((10, 192), np.float32)
  with pytest.raises(ConversionError) as error:
    convert_state_dict(state, 'swin_t', source='x.pth')
  message = str(error.value)
  assert '\n' not in message and message.startswith('x.pth: ')
  assert (
    'missing keys (model parameters the checkpoint lacks): '
    'layers_0/blocks_0/attn/qkv/kernel' in message
  )
  assert 'unexpected keys (not in the model): features.1.0.attn.extra.weight' in message
  assert (
    'features.3.1.mlp.0.weight (192, 10) vs model layers_1/blocks_1/mlp/fc1/kernel (192, 768)'
  ) in message


def test_checkpoint_of_another_arch_names_its_geometry(swin_t_state):
  with pytest.raises(
    ConversionError,
    match=r'embed_dim 96, depths \(2, 2, 6, 2\)\) does not '
    r'fit arch swin_s: missing keys .*layers_2/blocks_6',
  ):
    convert_state_dict(swin_t_state, 'swin_s')


def test_checkpoint_of_a_smaller_arch_is_named_in_one_short_line(swin_t_state):
  """swin_t weights loaded as swin_l: every tensor differs; the first few are named."""
  with pytest.raises(ConversionError) as error:
    convert_state_dict(swin_t_state, 'swin_l', source='swin_t.pth')
  message = str(error.value)
  assert '\n' not in message and len(message) < 1500  # was 20,000 characters
  assert re.search(
    r'missing keys \(model parameters the checkpoint lacks\): '
    r'layers_2/blocks_6/\S+, (\S+, ){3}\S+ and \d+ more \| ',
    message,
  )
  assert re.search(r'shape mismatches \(flax layout\): ([^;]+; ){4}[^;]+ and \d+ more$', message)


def test_video_checkpoint_into_image_arch_and_foreign_checkpoints_are_refused(swin3d_t_reference):
  state = {k: v.numpy() for k, v in _state(swin3d_t_reference).items()}
  with pytest.raises(ConversionError, match='video .3D. Swin checkpoint cannot initialise a 2D'):
    convert_state_dict(state, 'swin_t')
  with pytest.raises(
    ConversionError, match='not a Swin checkpoint of a known flavour.*first keys: conv1.weight'
  ):
    convert_state_dict({'conv1.weight': np.zeros((64, 3, 7, 7), np.float32)}, 'swin_t')


class _Hook:
  """An arbitrary object a training framework might pickle beside the weights."""


def test_pickled_objects_are_refused(tmp_path):
  torch.save({'state_dict': {'w': torch.zeros(2)}, 'hook': _Hook()}, tmp_path / 'bad.pth')
  with pytest.raises(
    ConversionError,
    match=r'bad.pth: not a plain tensor file: its pickle '
    r'imports .*_Hook, which a weights-only',
  ):
    load_pytorch_weights(str(tmp_path / 'bad.pth'), 'swin_t')
  with pytest.raises(ConversionError, match='no such file'):
    load_pytorch_weights(str(tmp_path / 'none.pth'), 'swin_t')


# ------------------------------------------------------------------------ command line


def test_command_line_writes_a_checkpoint_that_load_params_reads(swin_t_files, tmp_path):
  pth, _ = swin_t_files
  output = tmp_path / 'swin_t_converted'
  proc = run_module(
    'tps_jax.convert', '--arch', 'swin_t', '--input', pth, '--out', output, subprocess_=True
  )
  lines = proc.stdout.splitlines()
  assert (
    '  loaded  features.1.0.attn.qkv.weight -> layers_0/blocks_0/attn/qkv/kernel (96, 288)' in lines
  )
  assert (
    '  skipped features.1.0.attn.relative_position_index: buffer, recomputed from the window size'
  ) in lines
  assert lines[-2] == 'loaded 173 tensors, skipped 12'
  assert sorted(os.listdir(output)) == ['model.json', 'variables']
  assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]
  with open(output / 'model.json') as f:
    meta = json.load(f)
  assert meta['arch'] == 'swin_t' and meta['model_kwargs']['num_classes'] == 1000
  _, variables = load_pytorch_weights(str(pth), 'swin_t')
  expected = {
    '/'.join(p.key for p in path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params'])
  }
  restored = load_params(str(output))
  assert restored.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)
  assert 'backbone/layers_0/blocks_0/attn/qkv/kernel' in load_params(str(output), 'backbone/')


def _conversion_error(arch, pth, out, **kwargs) -> str:
  with pytest.raises(ConversionError) as error:
    convert_checkpoint(arch, str(pth), str(out), **kwargs)
  return str(error.value)


def test_conversion_errors_write_nothing(swin_t_files, tmp_path):
  pth, _ = swin_t_files
  out = tmp_path / 'out'
  assert _conversion_error('swin_x', pth, out).startswith("unknown arch 'swin_x'; supported: ")
  torch.save({'model': {'w': torch.zeros(2)}, 'hook': _Hook()}, tmp_path / 'bad.pth')
  assert 'its pickle imports' in _conversion_error('swin_t', tmp_path / 'bad.pth', out)
  assert 'does not fit arch swin_b' in _conversion_error('swin_b', pth, out)
  assert 'has not the 2 axes' in _conversion_error('swin_t', pth, out, window=(8, 7, 7))
  assert os.listdir(tmp_path) == ['bad.pth']
  out.mkdir()
  assert 'already exists (pass --overwrite' in _conversion_error('swin_t', pth, out)


def test_command_line_errors_are_one_line(swin_t_files, tmp_path):
  pth, _ = swin_t_files
  for args, message in [
    (
      ('--arch', 'swin_x', '--input', pth, '--out', tmp_path / 'out'),
      "error: unknown arch 'swin_x'; supported: ",
    ),
    (
      ('--arch', 'swin_t', '--input', pth, '--out', tmp_path / 'out', '--window', '8,x'),
      "error: flag --window=['8', 'x']: must be integers, e.g. 12,12 or 16,7,7",
    ),
    (('--arch', 'swin_t', '--input', pth), 'error: flag --out=None: '),
  ]:
    proc = run_module('tps_jax.convert', *args, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not os.path.exists(tmp_path / 'out')
  assert '--window' in run_module('tps_jax.convert', '--help', check=False).stdout
