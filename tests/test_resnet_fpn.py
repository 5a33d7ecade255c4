"""ResNet / ResNeXt / FPN against torchvision, checkpoint conversion, freezing and BN modes.

References are random-initialised torchvision models whose BatchNorm statistics and
affine parameters are randomised too, so frozen BatchNorm is really exercised.
"""

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from tests.conftest import run_module, run_on_devices
from tps_jax.convert import convert_state_dict
from tps_jax.convert.io import ConversionError
from tps_jax.convert.resnet import combine, convert_fpn, convert_resnet, detect_flavour, flatten
from tps_jax.models.fpn import FPN, nearest_indices, upsample_nearest
from tps_jax.models.resnet import build_resnet, trainable_mask

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Torchvision FPN output names -> ours.
TV_LEVELS = {'0': 'p2', '1': 'p3', '2': 'p4', '3': 'p5', 'pool': 'p6'}


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  generator = torch.Generator().manual_seed(seed)
  for module in model.modules():
    if isinstance(module, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
      n = module.running_mean.shape[0]
      with torch.no_grad():
        module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
        module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
        module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
        module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
  return model


def numpy_state(module: torch.nn.Module, prefix: str = '') -> dict[str, np.ndarray]:
  return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}


def nhwc(x: torch.Tensor) -> jnp.ndarray:
  return jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1))


def assert_close(got, want, name: str, rtol: float = 1e-4):
  """|got - want| <= rtol * max|want| (tolerance relative to the output's scale)."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert got.shape == want.shape, f'{name}: shape {got.shape} vs {want.shape}'
  scale = np.abs(want).max()
  error = np.abs(got - want).max()
  assert error <= rtol * scale, f'{name}: max error {error:.3g}, output scale {scale:.3g}'


def load(state, arch, **overrides):
  """(model, variables, conversion) through the converter registry."""
  conversion = convert_state_dict(state, arch, **overrides)
  return conversion.model, conversion.variables(), conversion


def torch_stage_features(model, x) -> dict[str, np.ndarray]:
  """stage_1..stage_4 of a torchvision classification ResNet (NHWC)."""
  x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
  features = {}
  for i in range(1, 5):
    x = getattr(model, f'layer{i}')(x)
    features[f'stage_{i}'] = x.detach().numpy().transpose(0, 2, 3, 1)
  return features


@pytest.fixture(scope='module')
def retinanet():
  torch.manual_seed(2)
  model = torchvision.models.detection.retinanet_resnet50_fpn(
    weights=None, weights_backbone=None, num_classes=3
  )
  return randomise_batchnorm(model.eval(), seed=2)


@pytest.fixture(scope='module')
def fpn_backbone():
  """torchvision's Faster R-CNN backbone: FrozenBatchNorm2d, trainable_layers=3."""
  torch.manual_seed(1)
  model = resnet_fpn_backbone(backbone_name='resnet50', weights=None, trainable_layers=3)
  return randomise_batchnorm(model.eval(), seed=1)


# ------------------------------------------------------------------- backbones


def test_resnet50_logits_match_torchvision():
  torch.manual_seed(0)
  reference = randomise_batchnorm(torchvision.models.resnet50(num_classes=10).eval())
  state = numpy_state(reference)
  model, variables, conversion = load(state, 'resnet50')
  assert model.num_classes == 10 and conversion.flavour == 'torchvision'
  assert len(conversion.sources) + len(conversion.skipped) == len(state)
  assert all(k.endswith('num_batches_tracked') for k in conversion.skipped)

  x = torch.randn(2, 3, 81, 67)
  with torch.no_grad():
    want = reference(x).numpy()
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, nhwc(x))
  assert_close(got, want, 'logits')


def test_resnext50_features_match_torchvision():
  torch.manual_seed(0)
  reference = randomise_batchnorm(torchvision.models.resnext50_32x4d().eval(), seed=3)
  model, variables, _ = load(numpy_state(reference), 'resnext50_32x4d', norm='frozen')
  assert model.num_classes == 1000
  x = torch.randn(1, 3, 70, 58)
  with torch.no_grad():
    want = torch_stage_features(reference, x)
  got = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, nhwc(x))
  for key in want:
    assert_close(got[key], want[key], key)


def test_batch_mode_trains_with_batch_statistics_like_torch():
  torch.manual_seed(0)
  reference = randomise_batchnorm(torchvision.models.resnet18().train())
  model, variables, conversion = load(
    numpy_state(reference), 'resnet18', norm='batch', num_classes=0
  )
  x = torch.randn(3, 3, 45, 38)
  want = torch_stage_features(reference, x)
  got, updates = jax.jit(
    functools.partial(model.apply, train=True, return_features=True, mutable=['batch_stats'])
  )(variables, nhwc(x))
  for key in want:
    assert_close(got[key], want[key], key)
  # Running statistics moved as torch's did (momentum 0.1, unbiased variance).
  updated, torch_state = flatten(updates), reference.state_dict()
  stats = [(p, k) for p, k in conversion.sources.items() if p.startswith('batch_stats/')]
  assert len(stats) == 2 * 20
  for path, key in stats:
    np.testing.assert_allclose(
      updated[path], torch_state[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=path
    )
  before = flatten(variables)
  assert not np.allclose(
    updated['batch_stats/layer4_1/bn2/var'], before['batch_stats/layer4_1/bn2/var']
  )


@pytest.fixture(scope='module')
def resnet18_state():
  torch.manual_seed(0)
  return numpy_state(randomise_batchnorm(torchvision.models.resnet18()))


def _gradients(model, variables, x):
  """The gradient of a loss on every stage's features (frozen ones too)."""

  def loss(params):
    features, _ = model.apply(
      {**variables, 'params': params}, x, train=True, return_features=True, mutable=['batch_stats']
    )
    return sum(jnp.sum(features[f'stage_{i}'] ** 2) for i in range(1, 5))

  return flatten(jax.jit(jax.grad(loss))(variables['params']))


def test_frozen_stages_get_no_gradient_and_keep_statistics(resnet18_state):
  model = build_resnet('resnet18', norm='batch', frozen_stages=2)
  variables, _ = convert_resnet(resnet18_state, model)
  x = jax.random.normal(jax.random.key(1), (2, 40, 40, 3))
  grads = _gradients(model, variables, x)
  mask = flatten(trainable_mask(model, variables['params']))
  for path, grad in grads.items():
    frozen = path.startswith(('conv1', 'bn1', 'layer1_', 'layer2_'))
    assert mask[path] == (not frozen), path
    assert (np.abs(grad).max() == 0) == frozen, path
  _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
    variables, x
  )
  before = flatten(variables['batch_stats'])
  for path, value in flatten(updates['batch_stats']).items():
    assert np.array_equal(value, before[path]) == path.startswith(('bn1', 'layer1_', 'layer2_')), (
      path
    )


def test_frozen_affine_gets_no_gradient(resnet18_state):
  model = build_resnet('resnet18', norm='frozen', norm_affine_trainable=False)
  variables, _ = convert_resnet(resnet18_state, model)
  grads = _gradients(model, variables, jax.random.normal(jax.random.key(1), (1, 32, 32, 3)))
  for path, grad in grads.items():
    is_norm = re.search(r'(bn\d|downsample_bn)/', path) is not None
    assert (np.abs(grad).max() == 0) == is_norm, path
    assert model.is_trainable(path.split('/')) == (not is_norm), path


def test_compute_dtype_keeps_float32_params():
  model = build_resnet('resnet18', dtype=jnp.bfloat16, num_classes=4)
  x = jnp.ones((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), variables)
  assert out['stage_4'].dtype == jnp.bfloat16 and out['logits'].dtype == jnp.float32


def test_batch_statistics_are_global_under_sharded_jit():
  """SyncBN: 8 devices, each holding a differently-shifted shard, see global statistics."""
  script = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tps_jax.models.resnet import BatchNorm
bn = BatchNorm(use_batch_statistics=True)
x = np.random.default_rng(0).normal(size=(8, 3, 3, 4)).astype(np.float32)
x += np.arange(8, dtype=np.float32)[:, None, None, None]  # shard-dependent mean
variables = bn.init(jax.random.key(0), x)
step = jax.jit(lambda v, x: bn.apply(v, x, mutable=['batch_stats']))
mesh = Mesh(np.array(jax.devices()), ('data',))
sharded = jax.device_put(x, NamedSharding(mesh, P('data')))
assert len(sharded.sharding.device_set) == 8
(y1, s1), (y8, s8) = step(variables, x), step(variables, sharded)
np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-5)
for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1)):
  np.testing.assert_allclose(a, b, rtol=1e-6)
np.testing.assert_allclose(s1['batch_stats']['mean'], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
"""
  proc = run_on_devices(script, 8, timeout=300)
  assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------- FPN


@pytest.mark.parametrize(
  'in_size,out_size', [(2, 3), (3, 5), (4, 7), (5, 9), (7, 13), (13, 25), (3, 6), (25, 50), (6, 4)]
)
def test_nearest_upsampling_matches_torch(in_size, out_size):
  x = torch.arange(in_size * 2, dtype=torch.float32).reshape(1, 1, in_size, 2)
  want = torch.nn.functional.interpolate(x, size=(out_size, 3), mode='nearest')
  got = upsample_nearest(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), (out_size, 3))
  np.testing.assert_array_equal(np.asarray(got)[0, :, :, 0], want[0, 0].numpy())
  assert nearest_indices(in_size, out_size).max() < in_size


@pytest.mark.parametrize('extra', ['maxpool', 'conv_on_input', 'conv_on_output'])
def test_fpn_extra_levels_match_torchvision(extra):
  """torchvision's FPN alone on random features: each way of making the extra levels."""
  from torchvision.ops import feature_pyramid_network as tv_fpn

  channels, out = [8, 16, 24], 12
  blocks = {
    'maxpool': tv_fpn.LastLevelMaxPool(),
    'conv_on_input': tv_fpn.LastLevelP6P7(channels[-1], out),
    'conv_on_output': tv_fpn.LastLevelP6P7(out, out),
  }
  torch.manual_seed(0)
  reference = tv_fpn.FeaturePyramidNetwork(channels, out, extra_blocks=blocks[extra]).eval()
  for parameter in reference.parameters():  # torchvision initialises biases to zero
    torch.nn.init.normal_(parameter, std=0.2)
  inputs = {
    '0': torch.randn(2, 8, 27, 19),
    '1': torch.randn(2, 16, 14, 10),
    '2': torch.randn(2, 24, 7, 5),
  }
  with torch.no_grad():
    want = list(reference(inputs).values())
  in_keys = ('stage_2', 'stage_3', 'stage_4')
  fpn = FPN(out, in_keys, extra, num_extra=1 if extra == 'maxpool' else 2, relu_between_extra=True)
  variables, _ = convert_fpn(
    numpy_state(reference, 'backbone.fpn.'), fpn, dict(zip(in_keys, channels))
  )
  got = fpn.apply(variables, {k: nhwc(v) for k, v in zip(in_keys, inputs.values())})
  assert list(got) == [f'p{level}' for level in range(3, 3 + len(want))]
  for (level, value), expected in zip(got.items(), want):
    assert_close(value, expected.numpy().transpose(0, 2, 3, 1), level)


def test_fasterrcnn_backbone_fpn_matches_torchvision(fpn_backbone):
  state = numpy_state(fpn_backbone, prefix='backbone.')  # detection checkpoint naming
  assert detect_flavour(state) == 'torchvision detection'
  backbone = build_resnet('resnet50', norm='frozen', norm_affine_trainable=False, frozen_stages=1)
  fpn = FPN(extra='maxpool', num_extra=1)
  backbone_vars, backbone_part = convert_resnet(state, backbone)
  fpn_vars, fpn_part = convert_fpn(state, fpn, backbone.stage_channels)
  assert combine([backbone_part.nested('backbone'), fpn_part.nested('neck')]).skipped == {}

  x = torch.randn(1, 3, 100, 76)  # not a multiple of 32
  with torch.no_grad():
    want = {TV_LEVELS[k]: v.numpy().transpose(0, 2, 3, 1) for k, v in fpn_backbone(x).items()}

  @jax.jit
  def forward(backbone_vars, fpn_vars, x):
    return fpn.apply(fpn_vars, backbone.apply(backbone_vars, x, return_features=True))

  got = forward(backbone_vars, fpn_vars, nhwc(x))
  assert sorted(got) == sorted(want) == ['p2', 'p3', 'p4', 'p5', 'p6']
  for level in want:
    assert_close(got[level], want[level], level)

  # Freezing agrees with torchvision's trainable_layers=3 parameter by parameter.
  trainable = {name: p.requires_grad for name, p in fpn_backbone.body.named_parameters()}
  for path, key in backbone_part.sources.items():
    if not path.startswith('batch_stats/'):
      name = key[len('backbone.body.') :]
      assert backbone.is_trainable(path.split('/')) == trainable.get(name, False), (path, name)


def test_retinanet_backbone_fpn_matches_torchvision(retinanet):
  state = numpy_state(retinanet)
  backbone = build_resnet('resnet50', norm='frozen')
  fpn = FPN(
    in_keys=('stage_2', 'stage_3', 'stage_4'),
    extra='conv_on_output',
    num_extra=2,
    relu_between_extra=True,
  )
  backbone_vars, backbone_part = convert_resnet(state, backbone)
  fpn_vars, fpn_part = convert_fpn(state, fpn, backbone.stage_channels)
  both = combine([backbone_part.nested('backbone'), fpn_part.nested('neck')])
  # Everything but the detection head and BN counters is loaded; the summary says so.
  heads = {k for k in state if k.startswith('head.')}
  counters = {k for k in state if k.endswith('num_batches_tracked')}
  assert set(both.skipped) == heads | counters
  assert both.params['neck/extra_p7/kernel'].shape == (3, 3, 256, 256)
  assert 'batch_stats/backbone/layer4_2/bn3/var' in both.model_state
  summary = both.summary()
  assert 'loaded 281 tensors, skipped 73' in summary
  assert re.search(r'skipped \(.*\): head\.classification_head', summary), summary

  x = torch.randn(1, 3, 90, 118)
  with torch.no_grad():
    want = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in retinanet.backbone(x).items()}
  features = jax.jit(lambda v, x: backbone.apply(v, x, return_features=True))(
    backbone_vars, nhwc(x)
  )
  got = jax.jit(fpn.apply)(fpn_vars, features)
  assert sorted(got) == ['p3', 'p4', 'p5', 'p6', 'p7']
  for name, level in zip(['0', '1', '2', 'p6', 'p7'], ['p3', 'p4', 'p5', 'p6', 'p7']):
    assert_close(got[level], want[name], level)


def to_mmdetection_names(state: dict, num_inputs: int) -> dict:
  """Torchvision detection keys renamed as mmdetection writes them (by hand, per key)."""
  renamed = {}
  for key, value in state.items():
    if key.startswith('backbone.body.'):
      key = 'backbone.' + key[len('backbone.body.') :]
    elif match := re.match(r'backbone\.fpn\.inner_blocks\.(\d+)\.0\.(.*)', key):
      key = f'neck.lateral_convs.{match[1]}.conv.{match[2]}'
    elif match := re.match(r'backbone\.fpn\.layer_blocks\.(\d+)\.0\.(.*)', key):
      key = f'neck.fpn_convs.{match[1]}.conv.{match[2]}'
    elif match := re.match(r'backbone\.fpn\.extra_blocks\.p(\d+)\.(.*)', key):
      key = f'neck.fpn_convs.{num_inputs + int(match[1]) - 6}.conv.{match[2]}'
    elif key.startswith('head.'):
      key = 'bbox_' + key
    renamed[key] = value
  return renamed


def test_mmdetection_names_convert_like_torchvision(retinanet, fpn_backbone):
  cases = [
    (
      numpy_state(retinanet),
      FPN(in_keys=('stage_2', 'stage_3', 'stage_4'), extra='conv_on_output', num_extra=2),
    ),
    (numpy_state(fpn_backbone, prefix='backbone.'), FPN()),
  ]
  backbone = build_resnet('resnet50', norm='frozen')
  for state, fpn in cases:
    mmdet = to_mmdetection_names(state, len(fpn.in_keys))
    assert detect_flavour(mmdet) == 'mmdetection'
    for convert in (
      lambda s: convert_resnet(s, backbone),
      lambda s: convert_fpn(s, fpn, backbone.stage_channels),
    ):
      (want, want_part), (got, got_part) = convert(state), convert(mmdet)
      assert got_part.flavour == 'mmdetection'
      assert want_part.sources.keys() == got_part.sources.keys()
      jax.tree.map(np.testing.assert_array_equal, got, want)
    both = combine(
      [convert_resnet(mmdet, backbone)[1], convert_fpn(mmdet, fpn, backbone.stage_channels)[1]]
    )
    assert all(
      k.startswith('bbox_head.') or k.endswith('num_batches_tracked') for k in both.skipped
    )


# ------------------------------------------------------------------ bad inputs


def test_wrong_architecture_and_shapes_are_named():
  torch.manual_seed(0)
  resnet18 = numpy_state(torchvision.models.resnet18())
  with pytest.raises(ConversionError, match=r'missing keys: .*params/layer1_0/conv3/kernel'):
    convert_resnet(resnet18, build_resnet('resnet50'))
  # The first few, in order, and a count of the rest (resnet34 has 80 more tensors).
  with pytest.raises(
    ConversionError,
    match=r'unexpected keys: params/layer1_2/bn1/bias, '
    r'[^|]* and 75 more$',
  ):
    convert_resnet(numpy_state(torchvision.models.resnet34()), build_resnet('resnet18'))
  bad = dict(resnet18, **{'layer1.0.conv2.weight': np.zeros((64, 2, 3, 3), np.float32)})
  with pytest.raises(
    ConversionError,
    match=re.escape(
      'params/layer1_0/conv2/kernel: checkpoint (3, 3, 2, 64) vs model (3, 3, 64, 64)'
    ),
  ):
    convert_resnet(bad, build_resnet('resnet18'))
  with pytest.raises(ConversionError, match=r'not part of a ResNet.*layer1\.0\.conv2\.offset'):
    convert_resnet(
      dict(resnet18, **{'layer1.0.conv2.offset.weight': np.zeros(1)}), build_resnet('resnet18')
    )
  with pytest.raises(ConversionError, match='not a ResNet / FPN checkpoint'):
    convert_resnet({'patch_embed.proj.weight': np.zeros(1)}, build_resnet('resnet18'))


def test_head_of_another_size_is_reinitialised():
  torch.manual_seed(0)
  state = numpy_state(torchvision.models.resnet18(num_classes=5))
  model = build_resnet('resnet18', num_classes=3)
  variables, part = convert_resnet(state, model)
  assert 'head' not in part.variables()['params']
  assert part.skipped['fc.weight'] == "classification head of 5 classes; the model's has 3"
  assert 'classification head (3 classes) initialised' in part.notes
  assert variables['params']['head']['kernel'].shape == (512, 3)
  np.testing.assert_array_equal(
    variables['params']['conv1']['kernel'], state['conv1.weight'].transpose(2, 3, 1, 0)
  )


def test_fpn_of_another_structure_is_named(retinanet):
  state = numpy_state(retinanet)
  with pytest.raises(ConversionError, match=r'unexpected keys: params/extra_p6/bias'):
    convert_fpn(
      state,
      FPN(in_keys=('stage_2', 'stage_3', 'stage_4')),
      {'stage_2': 512, 'stage_3': 1024, 'stage_4': 2048},
    )
  with pytest.raises(ConversionError, match=r'inner_blocks\.2.*has 2 inputs'):
    convert_fpn(
      state,
      FPN(in_keys=('stage_3', 'stage_4'), extra='conv_on_output', num_extra=2),
      {'stage_3': 1024, 'stage_4': 2048},
    )


def test_cli_and_load_pytorch_weights_carry_batchnorm_statistics(resnet18_state, tmp_path):
  """`python -m tps_jax.convert` saves batch_stats beside params, so `init_from` of a
  converted ResNet / detector starts with the checkpoint's frozen-BN statistics."""
  from tps_jax.convert import load_pytorch_weights
  from tps_jax.train import checkpointing

  path = str(tmp_path / 'resnet18.pth')
  torch.save({k: torch.from_numpy(v) for k, v in resnet18_state.items()}, path)
  model, variables = load_pytorch_weights(path, 'resnet18')
  mean = variables['batch_stats']['bn1']['mean']
  np.testing.assert_array_equal(mean, resnet18_state['bn1.running_mean'])
  # In this process: tests/test_convert_swin.py runs the command in a fresh one.
  proc = run_module(
    'tps_jax.convert', '--arch', 'resnet18', '--input', path, '--out', tmp_path / 'out'
  )
  assert proc.returncode == 0, proc.stderr
  assert 'bn1.running_mean -> batch_stats/bn1/mean' in proc.stdout
  collections = checkpointing.load_collections(str(tmp_path / 'out'), prefix='backbone/')
  np.testing.assert_array_equal(
    collections['batch_stats']['backbone/bn1/mean'], resnet18_state['bn1.running_mean']
  )
  assert 'backbone/conv1/kernel' in collections['params']
