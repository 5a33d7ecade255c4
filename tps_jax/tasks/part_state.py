"""The `part_state` training stage: PartStateNet on human crops with part boxes.

Batches (docs/interfaces.md, `make_pipeline('part_states', ...)`): `image` (B, S, S, 3)
float32, `part_boxes` (B, 10, 4) crop pixels (row i = PARTS[i]), `part_valid` (B, 10)
bool, `part_state` (B, 10) int32 (-1 absent), `action` (B,) int32.

Loss: softmax cross-entropy (optional label smoothing) averaged over the parts that
are present; absent parts count nowhere. Metrics: part-state top-1 over all present
parts (`top1`) and per part (`top1_<part>`), plus the loss. The state and action
vocabularies are read from the dataset (`Vocab.from_root(config.data.root)`).

Config fields read here: data.root, data.image_size, data.eval_split, model.* (the
`PartStateNet` fields; `model.backbone_overrides` a dict of Swin field overrides),
label_smoothing. `data.*` is also read by the input pipeline.
"""

from __future__ import annotations

import functools
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from tps_jax.data import augment, tfds_layout
from tps_jax.data.kinetics_tps import PARTS, Vocab
from tps_jax.input.pipelines import data_fields, dataset_metadata, dataset_path
from tps_jax.models import hashable
from tps_jax.models.part_state import PartStateNet
from tps_jax.models.swin import SWIN_ARCHS
from tps_jax.tasks import base


def present_parts(part_valid, part_state):
  """(…, P) bool: the parts that have a box and a state label."""
  return part_valid.astype(bool) & (part_state >= 0)


def part_state_losses(logits, part_state, label_smoothing: float = 0.0):
  """(…, P) cross-entropy of each part (absent labels read as state 0: mask them)."""
  labels = jax.nn.one_hot(jnp.maximum(part_state, 0), logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)


def masked_mean(values, mask):
  """Mean of `values` where `mask`; 0 when nothing is masked in (no NaN)."""
  mask = mask.astype(jnp.float32)
  return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def part_state_loss(logits, part_state, part_valid, label_smoothing: float = 0.0):
  """(mean cross-entropy over present parts, train metrics) of a (B, P) batch."""
  present = present_parts(part_valid, part_state)
  losses = part_state_losses(logits, part_state, label_smoothing)
  metrics = {
    'top1': masked_mean(logits.argmax(-1) == part_state, present),
    'parts_per_human': present.sum(-1).mean().astype(jnp.float32),
  }
  return masked_mean(losses, present), metrics


def part_state_metric_sums(logits, part_state, part_valid, example_mask):
  """{name: (sum, count)} over the present parts of the real (unpadded) examples:
  `top1`, `loss`, and `top1_<part>` for each of PARTS."""
  present = present_parts(part_valid, part_state) & example_mask[:, None]
  correct = (logits.argmax(-1) == part_state) & present
  losses = jnp.where(present, part_state_losses(logits, part_state), 0.0)
  metrics = {'top1': (correct.sum(), present.sum()), 'loss': (losses.sum(), present.sum())}
  for i, part in enumerate(PARTS):
    metrics[f'top1_{part}'] = (correct[:, i].sum(), present[:, i].sum())
  return metrics


@base.register_task('part_state')
class PartStateTask(base.DatasetTask):
  """Part-state classification (report section 2.3); see the module docstring."""

  @functools.cached_property
  def vocab(self) -> Vocab:
    if self.metadata:
      vocab = self.metadata['vocab']
      return Vocab(
        parts=tuple(vocab['parts']), states=tuple(vocab['states']), actions=tuple(vocab['actions'])
      )
    root = self.config.data.root
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f'{root or "(empty)"}: no such dataset (config.data.root)')
    return Vocab.from_root(root)

  def backbone_depths(self) -> tuple[int, ...]:
    overrides = self.config.model.get('backbone_overrides') or {}
    return tuple(overrides.get('depths', SWIN_ARCHS[self.config.model.backbone_arch]['depths']))

  def build_model(self) -> PartStateNet:
    fields = self.config.model.to_dict()
    # Hashable, so that the model can be a static argument of jit.
    fields['backbone_overrides'] = flax.core.FrozenDict(
      hashable(fields.get('backbone_overrides') or {})
    )
    return PartStateNet(
      num_states=len(self.vocab.states),
      num_actions=len(self.vocab.actions),
      num_parts=len(PARTS),
      dtype=self.compute_dtype,
      **fields,
    )

  def init_inputs(self):
    size = self.config.data.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return {
      'images': np.zeros((1, height, width, 3), np.float32),
      'part_boxes': np.tile(np.float32([0, 0, width, height]), (1, len(PARTS), 1)),
      'part_valid': np.ones((1, len(PARTS)), bool),
      'action': np.zeros((1,), np.int32),
    }

  def logits(self, params, batch, *, train: bool, rng=None):
    return self.model.apply(
      {'params': params},
      batch['image'],
      batch['part_boxes'],
      batch['part_valid'],
      batch['action'],
      train=train,
      rngs={'dropout': rng} if train else None,
    )

  # --- objective -----------------------------------------------------------

  def loss_fn(self, params, batch, rng, model_state, *, train):
    logits = self.logits(params, batch, train=train, rng=rng)
    loss, metrics = part_state_loss(
      logits, batch['part_state'], batch['part_valid'], self.config.label_smoothing
    )
    return loss, (metrics, model_state)

  def eval_metrics(self, params, model_state, batch):
    del model_state
    return part_state_metric_sums(
      self.logits(params, batch, train=False),
      batch['part_state'],
      batch['part_valid'],
      batch[base.EXAMPLE_MASK],
    )

  # --- inference -----------------------------------------------------------

  def export_metadata(self):
    """Vocabularies in label order; the crop rule and sizes of the eval pipeline; how
    often each part has each state in the training split (`state_counts` (10, S): the
    majority-state baseline of tps_jax/inference/ablation.py)."""
    settings = data_fields('part_states', self.config)
    built = dataset_metadata('part_states', self.config)['settings']
    table = tfds_layout.state_table(dataset_path('part_states', settings), 'train')
    counts = [
      np.bincount(column[column >= 0], minlength=len(self.vocab.states)).tolist()
      for column in table.T
    ]
    return {
      'kind': 'part_state',
      'state_counts': counts,
      'vocab': {
        'parts': list(self.vocab.parts),
        'states': list(self.vocab.states),
        'actions': list(self.vocab.actions),
      },
      'preprocessing': {
        'image_size': list(settings.image_size),
        'resize': settings.resize,
        'context': built['context'],
        'normalization': augment.normalization(),
      },
    }

  def predict_states(self, variables, images, part_boxes, part_valid, action):
    """States of every part box (jittable; the end-to-end pipeline calls this).

    images (B, S, S, 3) normalised human crops; part_boxes (B, [K,] 10, 4) crop pixels;
    part_valid (B, [K,] 10) bool; action (B,) int32, the action recogniser's class.
    Returns {'state': (B, [K,] 10) int32 index into vocab.states (-1 where not valid),
    'score': its probability, 'probs': (B, [K,] 10, num_states)}.
    """
    logits = self.model.apply(variables, images, part_boxes, part_valid, action, train=False)
    probs = jax.nn.softmax(logits)
    valid = part_valid.astype(bool)
    return {
      'state': jnp.where(valid, logits.argmax(-1), -1).astype(jnp.int32),
      'score': jnp.where(valid, probs.max(-1), 0.0),
      'probs': probs,
    }

  # --- optimiser hooks -------------------------------------------------------

  def num_layers(self) -> int:
    """One id per Swin block, 0 for the patch embedding, the head above the last block."""
    return sum(self.backbone_depths()) + 1

  def layer_id(self, path):
    """patch_embed 0; block j of `layers_i`: its global index + 1; a layer's patch
    merging and feature norm with its last block; everything outside the Swin: the head."""
    if path[0] != 'backbone':
      return self.num_layers()
    starts = np.cumsum([0, *self.backbone_depths()]).tolist()
    name = path[1]
    if name == 'patch_embed':
      return 0
    if name == 'norm':
      return starts[-1]
    if match := re.fullmatch(r'feature_norm_(\d+)', name):
      return starts[int(match.group(1))]
    if match := re.fullmatch(r'layers_(\d+)', name):
      layer = int(match.group(1))
      if path[2] == 'downsample':
        return starts[layer + 1]
      if block := re.fullmatch(r'blocks_(\d+)', path[2]):
        return starts[layer] + int(block.group(1)) + 1
    raise ValueError(f'layer_id: unexpected backbone parameter {"/".join(path)}')

  def param_partition_rules(self):
    """Megatron-style splits of the big kernels over `model` (config.mesh.model > 1):
    the Swin MLPs and qkv/proj, the encoder's attention (over head_dim) and MLP, and
    the wide token projection (over its input)."""
    return (
      (r'backbone/.*/(mlp/fc1|attn/qkv)/kernel', P(None, 'model')),
      (r'backbone/.*/(mlp/fc1|attn/qkv)/bias', P('model')),
      (r'backbone/.*/(mlp/fc2|attn/proj)/kernel', P('model', None)),
      (r'encoder_\d+/attention/(query|key|value)/kernel', P(None, None, 'model')),
      (r'encoder_\d+/attention/(query|key|value)/bias', P(None, 'model')),
      (r'encoder_\d+/attention/out/kernel', P(None, 'model', None)),
      (r'encoder_\d+/mlp_in/kernel', P(None, 'model')),
      (r'encoder_\d+/mlp_in/bias', P('model')),
      (r'encoder_\d+/mlp_out/kernel', P('model', None)),
      (r'token_projection/kernel', P('model', None)),
    )

  # --- data ----------------------------------------------------------------

  dataset = 'part_states'
