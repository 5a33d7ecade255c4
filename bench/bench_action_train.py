"""Action recogniser training step, Video Swin-T: the trainer's JAX step against
torchvision's swin3d_t, same threads, one run.

  python bench/bench_action_train.py [--clips 8x112x112,16x224x224] [--batch_size 1]
                                     [--repeats 3] [--warmup 1]

JAX: the step the trainer runs for `configs/action.py` (tps_jax.train.trainer's
`make_train_step` over `ActionTask.loss_fn`: forward, cross-entropy, backward, global
norm clipping, AdamW; jitted, state donated) with the arch set to swin3d_t, torchvision's
window (8, 7, 7) and stochastic depth 0.1, no head dropout, no label smoothing.
torch: swin3d_t in train mode, cross-entropy, backward, `clip_grad_norm_`, AdamW. Same
random-initialised weights on both sides (torchvision's, converted). torch uses as many
threads as XLA's CPU pool (the CPUs this process may run on). Compilation and warm-up
are excluded; each figure is the median of `--repeats` steps.
"""

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import flags
from torchvision.models.video import swin3d_t

from configs import action as action_config
from tps_jax import cli
from tps_jax.convert import convert_state_dict
from tps_jax.convert.io import unflatten
from tps_jax.tasks.action import ActionTask
from tps_jax.train import trainer
from tps_jax.train.optim import make_optimizer
from tps_jax.train.state import TrainState

LR, WEIGHT_DECAY, CLIP_NORM = 1e-4, 0.05, 1.0


def jax_step_seconds(reference, clip, labels, args) -> float:
  config = action_config.get_config()
  config.bf16 = False
  config.model.update(
    arch='swin3d_t', window_size=(8, 7, 7), drop_path_rate=0.1, head_drop_rate=0.0
  )
  config.loss.label_smoothing = 0.0
  config.optim.update(
    learning_rate=LR,
    warmup_steps=0,
    weight_decay=WEIGHT_DECAY,
    grad_clip_norm=CLIP_NORM,
    layer_decay=1.0,
  )
  if clip.shape[2] != clip.shape[3]:
    raise ValueError(f'square frames only (the config has one side), got {clip.shape[2:4]}')
  config.data.num_frames, config.data.image_size = clip.shape[1], clip.shape[2]
  num_classes = reference.head.out_features
  task = ActionTask(config, class_names=tuple(f'class_{i}' for i in range(num_classes)))
  conversion = convert_state_dict(
    {k: v.detach().numpy() for k, v in reference.state_dict().items()}, 'swin3d_t'
  )
  params = jax.tree.map(jnp.asarray, unflatten(conversion.params))
  tx, schedule = make_optimizer(config.optim, params, total_steps=1000, decay_mask=task.decay_mask)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    model_state={},
    ema_params=None,
    rng=jax.random.key(0),
  )
  step = jax.jit(
    trainer.make_train_step(task, tx, schedule, grad_accum_steps=1, ema_decay=0.0), donate_argnums=0
  )
  batch = {'clip': jnp.asarray(clip), 'label': jnp.asarray(labels)}
  holder = [state]

  def run():
    holder[0], metrics, _ = step(holder[0], batch)
    metrics['loss'].block_until_ready()

  return common.interleaved_medians([run], args.repeats, args.warmup)[0]


def torch_step_seconds(reference, clip, labels, args) -> float:
  reference.train()
  optimizer = torch.optim.AdamW(reference.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(clip, -1, 1)))  # (B, C, T, H, W)
  y = torch.from_numpy(labels).long()

  def run():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(reference(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP_NORM)
    optimizer.step()

  return common.interleaved_medians([run], args.repeats, args.warmup)[0]


flags.DEFINE_list('clips', ['8x112x112', '16x224x224'], 'Comma-separated TxHxW clip shapes.')
flags.DEFINE_integer('batch_size', 1, 'Clips per step.')
flags.DEFINE_integer('repeats', 3, 'Timed steps.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps first.')


def main(argv):
  del argv
  args = flags.FLAGS
  common.match_torch_threads()
  print(f'batch {args.batch_size}')
  rows = []
  for text in args.clips:
    shape = tuple(int(v) for v in text.split('x'))
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(args.batch_size, *shape, 3)).astype(np.float32)
    labels = rng.integers(0, 400, args.batch_size).astype(np.int32)
    torch.manual_seed(0)
    reference = swin3d_t()
    jax_s = jax_step_seconds(reference, clip, labels, args)
    torch_s = torch_step_seconds(reference, clip, labels, args)
    rows.append((text, jax_s, torch_s))
    print(f'{text} done', flush=True)
  print(f'\n{"clip":12} {"JAX s/step":>10} {"torch s/step":>12} {"torch/JAX":>9}')
  for text, jax_s, torch_s in rows:
    print(f'{text:12} {jax_s:10.3f} {torch_s:12.3f} {torch_s / jax_s:8.2f}x')


if __name__ == '__main__':
  cli.run(main)
