"""The action recogniser: Video Swin over a clip -> the video's action class.

`config.task = 'action'`. The model is `tps_jax.models.swin.SwinTransformer` built from
`config.model` (arch, window, stochastic depth, head dropout, overrides for the tiny
variants) with a classification head (`head`) over the dataset's classes, read from
the data (`action_classes`), never from the config. Parameter names are those of the
bare Swin, so a converted ImageNet Swin (`python -m tps_jax.convert --arch swin3d_b`)
and a pre-training export both load through `init_from` with no prefix, the head
excluded.

Loss: softmax cross-entropy against one-hot targets with optional label smoothing and
batch-level mixup / cutmix (`config.loss`; cutmix cuts the same box out of every
frame of a clip, so it stays one moving scene). Eval metrics: top-1, top-5 and the
unsmoothed cross-entropy as masked sums. At the end of training the `evaluate` hook
runs the multi-view (clips x crops) evaluation of tps_jax/tasks/action_views.py on the
exported parameters when `config.tta.clips * config.tta.crops > 1`.

Batches (docs/interfaces.md): clip (B, T, H, W, 3) float32 normalised, label (B,) int32.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from tps_jax.convert import swin as swin_convert
from tps_jax.models.swin import build_video_classifier
from tps_jax.tasks import base

PyTree = Any


# ----------------------------------------------------------------------- targets & loss


def smoothed_targets(labels, num_classes: int, smoothing: float):
  """One-hot (B, K) targets with `smoothing` of the mass spread evenly over all classes."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (1.0 - smoothing) + smoothing / num_classes


def cutmix_mask(rng, height: int, width: int, keep: jax.Array):
  """(H, W) bool box, True where the partner clip is pasted, of area ~ (1 - keep) H W.

  The box centre is uniform over the frame and the box is clipped to it, as CutMix;
  the exact kept fraction is `1 - mask.mean()`.
  """
  cy_rng, cx_rng = jax.random.split(rng)
  cut = jnp.sqrt(1.0 - keep)
  half_h, half_w = cut * height / 2, cut * width / 2
  cy = jax.random.uniform(cy_rng, (), maxval=height)
  cx = jax.random.uniform(cx_rng, (), maxval=width)
  rows = jnp.arange(height)[:, None] + 0.5
  cols = jnp.arange(width)[None, :] + 0.5
  return (jnp.abs(rows - cy) < half_h) & (jnp.abs(cols - cx) < half_w)


def mix_batch(
  rng, clips, targets, *, mixup_alpha: float, cutmix_alpha: float, switch_prob: float = 0.5
):
  """Batch-level mixup or cutmix of clips (B, T, H, W, C) and targets (B, K).

  Each clip is mixed with the batch reversed (its partner), with one weight drawn from
  Beta(alpha, alpha) for the batch. With both alphas set, cutmix is chosen with
  probability `switch_prob`. Returns the inputs unchanged when both alphas are 0.
  """
  if not (mixup_alpha or cutmix_alpha):
    return clips, targets
  choose_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)
  partner_clips, partner_targets = clips[::-1], targets[::-1]
  height, width = clips.shape[2:4]

  def mixup():
    keep = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha)
    return keep * clips + (1.0 - keep) * partner_clips, keep

  def cutmix():
    keep = jax.random.beta(cutmix_rng, cutmix_alpha, cutmix_alpha)
    mask = cutmix_mask(box_rng, height, width, keep)
    mixed = jnp.where(mask[None, None, :, :, None], partner_clips, clips)
    return mixed, 1.0 - mask.mean()

  if not cutmix_alpha:
    mixed, keep = mixup()
  elif not mixup_alpha:
    mixed, keep = cutmix()
  else:
    use_cutmix = jax.random.uniform(choose_rng) < switch_prob
    mixed, keep = jax.lax.cond(use_cutmix, cutmix, mixup)
  return mixed.astype(clips.dtype), keep * targets + (1.0 - keep) * partner_targets


def topk_correct(logits, labels, k: int):
  """(B,) bool: the label is among the k highest logits (k clipped to the classes)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return (top == labels[:, None]).any(axis=-1)


def classification_sums(logits, labels, mask) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{'top1', 'top5', 'loss'}: masked (sum, count) pairs, as `Task.eval_metrics`."""
  count = mask.sum()
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
    'top1': (jnp.where(mask, topk_correct(logits, labels, 1), 0).sum(), count),
    'top5': (jnp.where(mask, topk_correct(logits, labels, 5), 0).sum(), count),
    'loss': (jnp.where(mask, loss, 0.0).sum(), count),
  }


# ------------------------------------------------------------------------------ classes


def action_classes(config) -> tuple[str, ...]:
  """The class names of `config.data`'s clips dataset, in label order (its metadata)."""
  from tps_jax.input import pipelines  # the grain / TFDS stack, only when data is read

  return tuple(pipelines.dataset_metadata('action_clips', config)['actions'])


# --------------------------------------------------------------------------------- task

_BLOCK = re.compile(r'^layers_(\d+)$')
_SUBLAYER = re.compile(r'^blocks_(\d+)$')


@base.register_task('action')
class ActionTask(base.DatasetTask):
  """Video classification of `config.data`'s dataset with a Video Swin.

  `class_names` (optional) replaces the dataset's, e.g. to build the model without data.
  """

  def __init__(
    self,
    config,
    *,
    compute_dtype=jnp.float32,
    class_names: tuple[str, ...] | None = None,
    metadata=None,
  ):
    super().__init__(config, compute_dtype=compute_dtype, metadata=metadata)
    if not class_names and self.metadata:
      class_names = self.metadata['vocab']['actions']
    self._class_names = tuple(class_names) if class_names else None

  @functools.cached_property
  def class_names(self) -> tuple[str, ...]:
    names = self._class_names or action_classes(self.config)
    if not names:
      raise ValueError(
        f'config.data: the clips dataset under {self.config.data.root!r} has no action classes'
      )
    return names

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def build_model(self) -> nn.Module:
    return build_video_classifier(self.config.model, self.num_classes, self.compute_dtype)

  def export_metadata(self):
    """The classes in label order and the clip geometry of the eval pipeline."""
    from tps_jax.data import augment
    from tps_jax.input import pipelines

    settings = pipelines.data_fields('action_clips', self.config)
    built = pipelines.dataset_metadata('action_clips', self.config).get('settings', {})
    return {
      'kind': 'action',
      'vocab': {'actions': list(self.class_names)},
      'preprocessing': {
        'num_frames': settings.num_frames,
        'frame_stride': settings.frame_stride,
        'image_size': list(settings.image_size),
        'resize': settings.resize,
        'clip_short_side': built.get('clip_short_side', 256),
        'normalization': augment.normalization(),
      },
    }

  def clip_shape(self) -> tuple[int, int, int]:
    """(T, H, W) of one input clip (`data.image_size`: a side or a (H, W) pair)."""
    data = self.config.data
    size = data.image_size
    return (data.num_frames, *((size, size) if isinstance(size, int) else size))

  def init_inputs(self):
    return {'x': np.zeros((1, *self.clip_shape(), 3), np.float32)}

  # --- objective -----------------------------------------------------------------

  def loss_fn(self, params, batch, rng, model_state, *, train):
    loss_config = self.config.loss
    mix_rng, dropout_rng = jax.random.split(rng)
    clips, labels = batch['clip'], batch['label']
    targets = smoothed_targets(labels, self.num_classes, loss_config.label_smoothing)
    if train:
      clips, targets = mix_batch(
        mix_rng,
        clips,
        targets,
        mixup_alpha=loss_config.mixup_alpha,
        cutmix_alpha=loss_config.cutmix_alpha,
        switch_prob=loss_config.switch_prob,
      )
    logits = self.model.apply(
      {'params': params, **model_state}, clips, train=train, rngs={'dropout': dropout_rng}
    )
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = topk_correct(logits, labels, 1).mean()
    return loss, ({'accuracy': accuracy}, model_state)

  def logits(self, params, model_state, clips):
    return self.model.apply({'params': params, **model_state}, clips, train=False)

  def eval_metrics(self, params, model_state, batch):
    return classification_sums(
      self.logits(params, model_state, batch['clip']), batch['label'], batch[base.EXAMPLE_MASK]
    )

  # --- optimiser hooks -------------------------------------------------------------

  def _depths(self) -> tuple[int, ...]:
    return tuple(self.model.depths)

  def num_layers(self) -> int:
    """Every block is a layer; the patch embedding is 0, the final norm and head last."""
    return sum(self._depths()) + 1

  def layer_id(self, path) -> int:
    """patch_embed -> 0; block j of `layers_i` -> its global index + 1; a layer's patch
    merging -> the id of the layer's last block; final norm and head -> num_layers."""
    starts = np.cumsum([0, *self._depths()]).tolist()
    layer = _BLOCK.match(path[0])
    if path[0] == 'patch_embed':
      return 0
    if layer:
      i = int(layer[1])
      block = _SUBLAYER.match(path[1]) if len(path) > 1 else None
      if block:
        return starts[i] + int(block[1]) + 1
      return starts[i + 1]  # downsample: after the layer's last block
    return self.num_layers()

  def adapt_init_leaf(self, name, value, shape):
    """An image Swin (e.g. the part-state network's backbone) starts this video Swin
    as a 2D checkpoint does: patch embedding inflated, bias tables adapted."""
    return swin_convert.adapt_flax_leaf(name, value, shape, tuple(self.model.window_size))

  def param_partition_rules(self):
    """Megatron-style: the first matmul of attention and MLP split along its outputs,
    the second along its inputs, over the `model` axis."""
    return (
      (r'attn/qkv/kernel$', P(None, 'model')),
      (r'attn/qkv/bias$', P('model')),
      (r'attn/proj/kernel$', P('model', None)),
      (r'mlp/fc1/kernel$', P(None, 'model')),
      (r'mlp/fc1/bias$', P('model')),
      (r'mlp/fc2/kernel$', P('model', None)),
    )

  # --- data ------------------------------------------------------------------------

  dataset = 'action_clips'

  @property
  def train_split(self) -> str:
    return self.config.data.train_split  # a clips folder may name its own

  def evaluate(self, variables, workdir):
    """Multi-view top-1 / top-5 on the eval split ({} when `config.tta` asks one view)."""
    tta = self.config.tta
    if tta.clips * tta.crops <= 1:
      return {}
    from tps_jax.tasks import action_views  # the video decoding stack, only when used

    member = action_views.Member(
      name=workdir,
      model=self.model,
      variables=variables,
      config=self.config,
      class_names=self.class_names,
    )
    result = action_views.evaluate_members(
      [member],
      split=self.config.data.eval_split,
      clips=tta.clips,
      crops=tta.crops,
      average=tta.average,
      batch_size=tta.batch_size,
      views_per_forward=tta.views_per_forward,
    )
    metrics = result.metrics[member.name]
    if metrics.get('count'):
      logging.info(
        '%d clips x %d crops on %d %s videos: top1 %.4f top5 %.4f',
        tta.clips,
        tta.crops,
        metrics['count'],
        self.config.data.eval_split,
        metrics['top1'],
        metrics['top5'],
      )
    return {f'tta_{k}': v for k, v in metrics.items()}
