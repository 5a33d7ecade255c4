"""The action recogniser: loss, mixing, metrics, optimiser hooks, TTA and ensembling,
the configs' init_from chain, the tiny config end to end and one full Video Swin-B step."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import action as action_config
from configs import action_pretrain as pretrain_config
from tests.conftest import run_module
from tests.data_configs import data_config
from tps_jax.data import augment
from tps_jax.datasets import build
from tps_jax.inference.export import read_variables
from tps_jax.input import pipelines
from tps_jax.models.swin import build_video_classifier
from tps_jax.tasks import action, action_views
from tps_jax.tasks import base as tasks
from tps_jax.train import checkpointing, sharding, trainer
from tps_jax.train.optim import make_optimizer, param_name

CLASSES = ('a', 'b', 'c', 'd', 'e', 'f', 'g')
CLIP = (4, 32, 32)  # (T, H, W) of the hand-made batches


def tiny_task(**data) -> action.ActionTask:
  config = action_config.get_config('tiny')
  config.data.num_frames, config.data.image_size = CLIP[0], CLIP[1]
  config.data.update(data)
  return action.ActionTask(config, class_names=CLASSES)


@pytest.fixture(scope='module')
def task():
  return tiny_task()


@pytest.fixture(scope='module')
def variables(task):
  return jax.jit(task.init_variables)(jax.random.key(0))


@pytest.fixture(scope='module')
def apply(task):
  """The jitted eval forward of the tiny task's network."""
  return jax.jit(lambda variables, clips: task.model.apply(variables, clips, train=False))


def hand_batch(batch=4, seed=0):
  rng = np.random.default_rng(seed)
  return {
    'clip': rng.normal(size=(batch, *CLIP, 3)).astype(np.float32),
    'label': rng.integers(0, len(CLASSES), batch).astype(np.int32),
  }


# ------------------------------------------------------------------- loss and metrics


def test_loss_is_label_smoothed_cross_entropy(task, variables, apply):
  batch = hand_batch()
  loss, (metrics, state) = jax.jit(functools.partial(task.loss_fn, train=False))(
    variables['params'], batch, jax.random.key(1), {}
  )
  logits = np.asarray(apply(variables, batch['clip']), np.float64)
  eps, k = task.config.loss.label_smoothing, len(CLASSES)
  targets = np.full((4, k), eps / k)
  targets[np.arange(4), batch['label']] += 1 - eps
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(float(loss), -(targets * log_probs).sum(-1).mean(), rtol=1e-5)
  assert float(metrics['accuracy']) == np.mean(logits.argmax(-1) == batch['label'])
  assert state == {}


def test_train_loss_uses_dropout_and_mixing(variables):
  task = tiny_task()
  task.config.loss.mixup_alpha = 0.8
  batch = hand_batch()
  loss = lambda params, rng: task.loss_fn(params, batch, rng, {}, train=True)[0]
  losses, grads = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))(
    variables['params'], jax.random.split(jax.random.key(1), 2)
  )
  assert losses[0] != losses[1]  # random mixing weight, dropout, drop-path
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_mixup_mixes_clips_and_targets_with_one_weight():
  rng = np.random.default_rng(0)
  clips = jnp.asarray(rng.normal(size=(4, 2, 8, 8, 3)), jnp.float32)
  targets = action.smoothed_targets(jnp.array([0, 1, 2, 3]), 5, 0.0)
  mixed, mixed_targets = action.mix_batch(
    jax.random.key(3), clips, targets, mixup_alpha=0.4, cutmix_alpha=0.0
  )
  keep = float(mixed_targets[0, 0])
  assert 0 < keep < 1
  np.testing.assert_allclose(mixed, keep * clips + (1 - keep) * clips[::-1], atol=1e-6)
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mixed_targets[1, 2], 1 - keep, rtol=1e-6)  # partner: row 2
  same = action.mix_batch(jax.random.key(3), clips, targets, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert same[0] is clips and same[1] is targets


def test_cutmix_pastes_one_box_in_every_frame_and_weights_targets_by_area():
  clips = jnp.zeros((2, 3, 16, 20, 1)).at[1].set(1.0)
  targets = action.smoothed_targets(jnp.array([0, 1]), 2, 0.0)
  for seed in range(5):
    mixed, mixed_targets = action.mix_batch(
      jax.random.key(seed), clips, targets, mixup_alpha=0.0, cutmix_alpha=1.0
    )
    pasted = np.asarray(mixed[0, ..., 0])  # 1 where clip 1 was pasted
    assert (pasted == pasted[0]).all()  # the same box in every frame
    rows, cols = np.nonzero(pasted[0])
    if rows.size:
      assert pasted[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    np.testing.assert_allclose(mixed_targets[0], [1 - pasted.mean(), pasted.mean()], atol=1e-6)


def test_both_mixes_switch_under_jit():
  clips = jnp.zeros((2, 3, 16, 16, 1)).at[1].set(1.0)
  targets = action.smoothed_targets(jnp.array([0, 1]), 2, 0.1)
  mix = jax.jit(
    lambda rng: action.mix_batch(rng, clips, targets, mixup_alpha=0.5, cutmix_alpha=1.0)
  )
  kinds = set()
  for seed in range(12):
    mixed, mixed_targets = mix(jax.random.key(seed))
    values = np.unique(np.round(np.asarray(mixed[0]), 6))
    kinds.add('cutmix' if set(values) <= {0.0, 1.0} else 'mixup')
    np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  assert kinds == {'cutmix', 'mixup'}


def test_eval_metrics_are_masked_top1_top5_sums(task, variables, apply):
  batch = hand_batch(batch=6, seed=2)
  logits = np.asarray(apply(variables, batch['clip']))
  order = np.argsort(-logits, -1)
  batch['label'] = order[:, [0, 1, 4, 5, 0, 6]][np.arange(6), np.arange(6)].astype(np.int32)
  # Ranks of the labels: 0, 1, 4, 5, 0, 6; the last two rows are padding.
  batch[tasks.EXAMPLE_MASK] = np.array([1, 1, 1, 1, 0, 0], bool)
  sums = jax.device_get(jax.jit(task.eval_metrics)(variables['params'], {}, batch))
  assert sums['top1'] == (1, 4) and sums['top5'] == (3, 4)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  np.testing.assert_allclose(sums['loss'][0], np.asarray(losses)[:4].sum(), rtol=1e-5)


# -------------------------------------------------------------------- optimiser hooks


def flat_params(params):
  return {param_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def full_task():
  config = action_config.get_config()
  return action.ActionTask(
    config, compute_dtype=jnp.bfloat16, class_names=tuple(f'class_{i}' for i in range(24))
  )


def test_full_config_layer_ids_and_partition_rules():
  task = full_task()
  params = jax.eval_shape(task.init_variables, jax.random.key(0))['params']
  leaves = flat_params(params)
  assert 87e6 < sum(leaf.size for leaf in leaves.values()) < 89e6  # Video Swin-B
  assert leaves['head/kernel'].shape == (1024, 24)
  assert leaves['layers_0/blocks_0/attn/relative_position_bias_table'].shape == (31 * 13 * 13, 4)
  assert task.num_layers() == 25
  ids = {name: task.layer_id(tuple(name.split('/'))) for name in leaves}
  assert ids['patch_embed/proj/kernel'] == 0
  assert ids['layers_0/blocks_0/attn/qkv/kernel'] == 1
  assert ids['layers_0/downsample/reduction/kernel'] == 2
  assert ids['layers_2/blocks_0/mlp/fc1/kernel'] == 5
  assert ids['layers_2/blocks_17/norm2/scale'] == 22
  assert ids['layers_3/blocks_1/attn/proj/bias'] == 24
  assert ids['norm/scale'] == ids['head/kernel'] == 25
  # Every leaf gets an lr multiplier in (0, 1]; the optimiser accepts them.
  make_optimizer(
    task.config.optim,
    params,
    total_steps=10,
    layer_id=task.layer_id,
    num_layers=task.num_layers(),
    decay_mask=task.decay_mask,
  )
  sharded = 0
  for name, leaf in leaves.items():
    spec = sharding.spec_for(name, leaf.ndim, task.param_partition_rules())
    for size, axis in zip(leaf.shape, spec):
      if axis == 'model':
        assert size % 8 == 0, (name, leaf.shape, spec)  # a model axis of up to 8
        sharded += leaf.size
  assert sharded > 0.9 * sum(leaf.size for leaf in leaves.values())


def test_configs():
  for module in (action_config, pretrain_config):
    full = module.get_config()
    assert full.model.arch == 'swin3d_b' and tuple(full.model.window_size) == (16, 7, 7)
    assert 0.2 <= full.model.drop_path_rate <= 0.3
    assert full.init_from.path and full.init_from.exclude == '^head/'
    tiny = module.get_config('tiny')
    assert tiny.data.image_size == 96 and tiny.data.num_frames == 4
    with pytest.raises(ValueError, match='unknown variant'):
      module.get_config('huge')
  # The tiny networks are the same, so the tiny pre-training initialises the fine-tuning.
  assert (
    action_config.get_config('tiny').model.to_dict()
    == pretrain_config.get_config('tiny').model.to_dict()
  )
  with pytest.raises(ValueError, match='not a video Swin'):
    build_video_classifier(ml_collections.ConfigDict({'arch': 'swin_b'}), 3)


# ----------------------------------------------------------------- TTA and ensembling


def _view_scores(model):
  """Jitted view_scores in every mode: {(average, views_per_forward): (B, K)}."""
  modes = [('logits', 0), ('logits', 2), ('probs', 0)]
  return jax.jit(
    lambda variables, views: {
      mode: action_views.view_scores(
        model, variables, views, average=mode[0], views_per_forward=mode[1]
      )
      for mode in modes
    }
  )


def test_identical_views_equal_one_view(task, variables, apply):
  clips = hand_batch(batch=3)['clip']
  single = np.asarray(apply(variables, clips))
  views = jnp.repeat(clips[:, None], 4, axis=1)  # (B, 4, T, H, W, 3)
  scores = _view_scores(task.model)(variables, views)
  np.testing.assert_allclose(scores['logits', 0], single, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scores['logits', 2], single, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scores['probs', 0], jax.nn.softmax(single), rtol=1e-4, atol=1e-6)


def test_views_are_averaged_in_the_chosen_space(task, variables, apply):
  views = jnp.stack([hand_batch(batch=3, seed=s)['clip'] for s in range(4)], axis=1)
  each = np.stack([apply(variables, views[:, i]) for i in range(4)])
  scores = _view_scores(task.model)(variables, views)
  np.testing.assert_allclose(scores['logits', 0], each.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scores['logits', 2], each.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scores['probs', 0], jax.nn.softmax(each).mean(0), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='does not divide'):
    action_views.view_scores(task.model, variables, views, views_per_forward=3)


def test_ensemble_of_two_copies_equals_one(task, variables):
  views = jnp.stack([hand_batch(batch=2, seed=s)['clip'] for s in range(2)], axis=1)
  member = action_views.Member('m', task.model, variables, task.config, CLASSES)
  scorer = member.scorer(average='logits', views_per_forward=0)
  one = np.asarray(scorer(views))
  np.testing.assert_allclose(action_views.ensemble_scores([one, one]), one, rtol=1e-6)
  other = one + 1.0
  np.testing.assert_allclose(
    action_views.ensemble_scores([one, other], weights=[3, 1]), one + 0.25, rtol=1e-6
  )


def test_clip_starts_and_crop_regions():
  np.testing.assert_array_equal(action_views.clip_starts(30, 8, 3, 1), [4])  # room 8: centred
  np.testing.assert_array_equal(action_views.clip_starts(30, 8, 3, 4), [1, 3, 5, 7])
  np.testing.assert_array_equal(action_views.clip_starts(10, 8, 3, 2), [0, 0])  # loops
  settings = ml_collections.ConfigDict({'image_size': (64, 64), 'resize': 64})
  regions = action_views.crop_regions(120, 160, settings, 3)
  assert [r[0] for r in regions] == [0.0, 20.0, 40.0]
  assert all(r[1] == 0.0 and r[2] - r[0] == 120.0 and r[3] == 120.0 for r in regions)
  tall = action_views.crop_regions(160, 120, settings, 3)
  assert [r[1] for r in tall] == [0.0, 20.0, 40.0]


@pytest.fixture(scope='module')
def clips_data(synthetic_root, tmp_path_factory):
  """The fixture's tps_action_clips dataset (in a temp folder: the root is read-only)."""
  tfds_dir = tmp_path_factory.mktemp('action') / 'tfds'
  build.build_datasets(
    str(synthetic_root), out=str(tfds_dir), datasets=['action_clips'], progress=False
  )
  return str(synthetic_root), str(tfds_dir)


def test_one_centred_view_is_the_eval_pipelines_clip(clips_data):
  root, tfds_dir = clips_data
  config = data_config(
    'action_clips',
    root=root,
    tfds_dir=tfds_dir,
    num_frames=4,
    frame_stride=3,
    image_size=48,
    resize=56,
  )
  settings = pipelines.data_fields('action_clips', config)
  classes, loaders = action_views.dataset_videos(settings, 'train')
  assert classes == tuple(pipelines.dataset_metadata('action_clips', config)['actions'])
  batch = next(
    pipelines.make_pipeline('action_clips', config, 'train', train=False, batch_size=len(loaders))
  )
  for i, load in enumerate(loaders):
    video = load()
    views = action_views.video_views(video.frames, settings, clips=1, crops=1)
    np.testing.assert_array_equal(augment.normalize(views[0]), batch['clip'][i])
    assert video.label == batch['label'][i]
    several = action_views.video_views(video.frames, settings, clips=2, crops=3)
    assert several.shape == (6, 4, 48, 48, 3) and several.dtype == np.uint8


# ------------------------------------------------------------------- init_from chain


def test_inflated_2d_swin_initialises_the_pretraining_backbone(tmp_path):
  """A 2D (ImageNet-style) Swin converted into the tiny Video Swin loads through the
  pre-training config's init_from: every backbone leaf restored, the head left fresh."""
  torch = pytest.importorskip('torch')
  from torchvision.models.swin_transformer import SwinTransformer

  from tps_jax.convert import convert_state_dict, write_checkpoint

  config = pretrain_config.get_config('tiny')
  overrides = dict(config.model.overrides)
  torch.manual_seed(0)
  image_swin = SwinTransformer(
    patch_size=[4, 4],
    embed_dim=overrides['embed_dim'],
    depths=list(overrides['depths']),
    num_heads=list(overrides['num_heads']),
    window_size=[4, 4],
    num_classes=10,
  )
  state = {k: v.numpy() for k, v in image_swin.state_dict().items()}
  conversion = convert_state_dict(
    state, 'swin3d_t', window_size=tuple(config.model.window_size), **overrides
  )
  write_checkpoint(conversion, 'swin3d_t', 'random.pth', str(tmp_path / 'inflated'))
  task = action.ActionTask(config, class_names=CLASSES)
  fresh = jax.jit(task.init_variables)(jax.random.key(0))['params']
  source = checkpointing.load_params(str(tmp_path / 'inflated'), config.init_from.prefix)
  merged, report = checkpointing.merge_params(
    fresh, source, config.init_from.include, config.init_from.exclude
  )
  assert sorted(report['not_included']) == ['head/bias', 'head/kernel']
  assert not report['missing'] and not report['shape_mismatch']
  assert report['unused'] == ['head/bias', 'head/kernel']  # the 10-class head
  kernel = merged['patch_embed']['proj']['kernel']  # (2, 4, 4, 3, C)
  np.testing.assert_allclose(kernel[0], kernel[1])
  np.testing.assert_allclose(
    kernel.sum(0), np.transpose(state['features.0.0.weight'], (2, 3, 1, 0)), rtol=1e-6
  )
  np.testing.assert_array_equal(merged['head']['kernel'], fresh['head']['kernel'])


def test_an_image_swin_leaf_is_adapted_to_the_video_swin(task):
  """`init_from` of a trained image Swin (the demo: the part-state backbone, with the
  video window's spatial size): patch embedding inflated over time, bias tables repeated
  over time offsets."""
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(4, 4, 3, 32)).astype(np.float32)
  inflated = task.adapt_init_leaf('patch_embed/proj/kernel', kernel, (2, 4, 4, 3, 32))
  np.testing.assert_allclose(inflated[0], kernel / 2)
  np.testing.assert_allclose(inflated.sum(0), kernel, rtol=1e-6)
  offsets = [2 * side - 1 for side in task.model.window_size]  # (T, H, W) offsets
  table = rng.normal(size=(offsets[1] * offsets[2], 2)).astype(np.float32)
  adapted = task.adapt_init_leaf(
    'layers_1/blocks_0/attn/relative_position_bias_table', table, (np.prod(offsets), 2)
  )
  for offset in range(offsets[0]):
    np.testing.assert_allclose(adapted.reshape(offsets[0], -1, 2)[offset], table, rtol=1e-6)
  assert task.adapt_init_leaf('head/kernel', np.zeros((32, 3)), (32, 7)) is None


def _tiny_run_config(module, root, tfds_dir, **data):
  config = module.get_config('tiny')
  config.data.update(root=root, tfds_dir=tfds_dir, num_frames=4, image_size=32, **data)
  config.update(total_steps=2, batch_size=2, log_steps=1, eval_steps=2, checkpoint_steps=2)
  config.tta.update(clips=1, crops=2, batch_size=2)
  return config


@pytest.mark.slow
def test_pretraining_export_initialises_the_finetuning(clips_data, tmp_path, capsys):
  root, tfds_dir = clips_data
  folder_tfds = str(tmp_path / 'folder_tfds')
  build.build_datasets(
    video_folder=os.path.join(root, 'train_videos'),
    name='syn_clips',
    out=folder_tfds,
    progress=False,
  )
  pre = _tiny_run_config(pretrain_config, '', folder_tfds)
  summary = trainer.train_and_evaluate(pre, str(tmp_path / 'pre'))
  assert 0 <= summary['eval']['top1'] <= 1 and 'tta_top1' in summary['eval']
  pre_vars = read_variables(summary['export'])

  tune = _tiny_run_config(action_config, root, tfds_dir)
  tune.init_from.path = str(tmp_path / 'pre' / 'export')
  tune.total_steps = 1
  tune.seed = 1  # another fresh head than the pre-training's
  tune.optim.learning_rate = 0.0  # the exported params are the initial ones
  capsys.readouterr()
  summary = trainer.train_and_evaluate(tune, str(tmp_path / 'tune'))
  printed = capsys.readouterr().err
  assert re.search(r'restored 80/82 parameter leaves \(.*2 not included', printed)  # counts
  with open(tmp_path / 'tune' / 'log.txt') as f:  # the names, in the workdir's log
    assert 're-initialised (not_included): head/bias, head/kernel' in f.read()
  tuned = read_variables(summary['export'])
  flat = lambda tree: {
    param_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree['params'])[0]
  }
  before, after = flat(pre_vars), flat(tuned)
  assert set(before) == set(after)
  for name in before:
    if name.startswith('head/'):
      assert not np.array_equal(before[name], after[name]), name
    else:
      np.testing.assert_array_equal(before[name], after[name], err_msg=name)


# ------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_config_trains_exports_and_evaluates(smoke_demo, tmp_path):
  """The demo's tiny action recogniser (trained once per session, conftest's smoke_demo):
  its log, then the evaluation command on the export: an ensemble of two copies scores
  as one member, as the run's final multi-view evaluation; the test split's
  pred_vid_result.json names a class for every test video."""
  workdir, root = smoke_demo.workdir / 'action', str(smoke_demo.root)
  config = json.load(open(workdir / 'config.json'))
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  steps = config['total_steps']
  assert [r['step'] for r in records if 'loss' in r] == list(
    range(config['log_steps'], steps + 1, config['log_steps'])
  )
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  final = {k: v for r in records if r['step'] == steps for k, v in r.items()}
  assert {'eval_top1', 'eval_top5', 'final_tta_top1', 'final_tta_top5'} <= set(final)
  export = str(workdir / 'export')
  out = run_module(
    'tps_jax.evaluate_action',
    '--export',
    f'{export},{export}',
    '--data_root',
    root,
    '--clips',
    config['tta']['clips'],
    '--crops',
    config['tta']['crops'],
    '--split',
    'val',
    subprocess_=True,
  ).stdout.splitlines()
  member, copy, ensemble = (line.split(': ', 1)[1] for line in out[1:4])
  assert member == copy == ensemble, out
  assert f'top1 {final["final_tta_top1"]:.4f}' in member
  submission_dir = tmp_path / 'submission'
  run_module(
    'tps_jax.evaluate_action',
    '--export',
    export,
    '--data_root',
    root,
    '--split',
    'test',
    '--clips',
    1,
    '--crops',
    3,
    '--out',
    submission_dir,
  )
  predictions = json.load(open(submission_dir / 'pred_vid_result.json'))
  test_videos = json.load(open(os.path.join(root, 'test_gt', 'gt_vid_result.json')))
  assert set(predictions) == set(test_videos)
  classes = sorted(os.listdir(os.path.join(root, 'train_videos')))
  assert set(predictions.values()) <= set(classes)


def test_evaluate_action_errors_are_one_line(tmp_path):
  proc = run_module('tps_jax.evaluate_action', '--export', tmp_path / 'missing', check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
    f'error: {tmp_path / "missing"}: no such export directory'
  )
