"""The one generic trainer: `train_and_evaluate(config, workdir)` for every stage.

A stage supplies a `tps_jax.tasks.base.Task` (model, loss, metrics, pipelines),
looked up by `config.task`; everything else lives here: the mesh, the jitted and
donated train step with gradient accumulation, the optimiser, checkpoints with the
data iterator, `init_from`, evaluation, logging, SIGTERM handling and export.

Config fields read here: task, seed, total_steps, batch_size (global),
grad_accum_steps, log_steps, checkpoint_steps, keep_checkpoints, eval_steps (0: no
eval), bf16, mesh.model, optim.* (see optim.py), init_from: a path or
{path, include, exclude, prefix} (path '' = off; see `_init_from`),
allow_config_change (see run_config.py); configs/common.py's `trainer()` writes them all.

Interruptions: SIGTERM saves a checkpoint at the step boundary and the process exits
with PREEMPTED_EXIT_CODE (75, EX_TEMPFAIL: rerun to resume), which a scheduler can
tell from an unhandled SIGTERM death (143). SIGKILL loses only the steps since the
last checkpoint; TensorBoard events are flushed at every checkpoint. A checkpoint that
cannot be written stops the run at once with one line (exit 1).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from tps_jax.tasks import base as tasks_lib
from tps_jax.train import checkpointing, run_config, sharding
from tps_jax.train.distributed import initialize_distributed, say
from tps_jax.train.metric_writer import MetricWriter, Progress
from tps_jax.train.optim import ema_update, make_optimizer
from tps_jax.train.state import TrainState

PyTree = Any
# Stopped by SIGTERM after saving a checkpoint: sysexits' "temporary failure, retry".
PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL


LOG_FILE = 'log.txt'  # WORKDIR/log.txt: what is too long for the console


def log_details(workdir: str, lines: list[str]) -> str:
  """Appends `lines` to WORKDIR/log.txt (process 0); returns its path."""
  path = os.path.join(workdir, LOG_FILE)
  if jax.process_index() == 0:
    with open(path, 'a') as f:
      f.write(''.join(f'{line}\n' for line in lines))
  return path


def format_eval(metrics: dict[str, float], limit: int = 6) -> str:
  """The headline eval metrics on one line: the first `limit` without a per-class /
  per-part suffix (e.g. top1 but not top1_left_arm), sorted by name."""
  headline = sorted(
    k for k in metrics if not any(k.startswith(f'{other}_') for other in metrics if other != k)
  )
  return '  '.join(f'{k} {metrics[k]:.4f}' for k in headline[:limit])


class TrainingError(RuntimeError):
  """A problem reported to the user as one line (no traceback)."""


def prepare_workdir(workdir: str) -> str:
  """The absolute workdir, created if needed, after checking it can be written."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise TrainingError(
      f"--workdir={workdir}: is a file, not a directory; give a new directory or an earlier run's"
    )
  try:
    os.makedirs(workdir, exist_ok=True)
    os.rmdir(tempfile.mkdtemp(prefix='.write-test-', dir=workdir))
  except OSError as e:
    raise TrainingError(
      f'--workdir={workdir}: cannot write there ({e.strerror}); give a directory you can write to'
    ) from None
  return workdir


def _config_get(config, dotted: str, default):
  node = config
  for key in dotted.split('.'):
    if node is None or key not in node:
      return default
    node = node[key]
  return node


def _check_batch_size(config, mesh) -> int:
  """The per-process batch size, after checking the global one divides evenly."""
  data_devices = mesh.shape[sharding.DATA_AXIS]
  accum = config.get('grad_accum_steps', 1)
  if config.batch_size % (data_devices * accum):
    raise TrainingError(
      f'config.batch_size={config.batch_size} is not divisible by {data_devices} data '
      f'devices x grad_accum_steps={accum}'
    )
  return config.batch_size // jax.process_count()


def _micro_batches(batch: PyTree, num: int) -> PyTree:
  """(B, ...) -> (num, B/num, ...) with micro-batch i = rows i::num.

  Strided rows keep every micro-batch spread evenly over the data devices.
  """

  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def make_train_step(
  task: tasks_lib.Task,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  *,
  grad_accum_steps: int,
  ema_decay: float,
):
  """The pure train step `(state, batch) -> (state, metrics, finite)`."""
  grad_fn = jax.value_and_grad(
    lambda p, b, r, s: task.loss_fn(p, b, r, s, train=True), has_aux=True
  )

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      (loss, (metrics, model_state)), grads = grad_fn(state.params, batch, rng, state.model_state)
    else:

      def accumulate(carry, xs):
        grads_sum, model_state = carry
        micro, index = xs
        (loss, (metrics, model_state)), grads = grad_fn(
          state.params, micro, jax.random.fold_in(rng, index), model_state
        )
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (grads_sum, model_state), (loss, metrics)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, model_state), (losses, metrics) = jax.lax.scan(
        accumulate,
        (zeros, state.model_state),
        (_micro_batches(batch, grad_accum_steps), jnp.arange(grad_accum_steps)),
      )
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      loss = losses.mean()
      metrics = jax.tree.map(lambda m: m.mean(0), metrics)

    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      ema_params = ema_update(ema_params, params, ema_decay)
    metrics = {
      **metrics,
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': schedule(state.step),
    }
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      model_state=model_state,
      ema_params=ema_params,
    )
    return new_state, metrics, finite

  return train_step


def _pad_eval_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads a short batch to `size` rows with zeros and adds the example mask."""
  rows = len(next(iter(batch.values())))
  if rows > size:
    raise TrainingError(f'eval batch of {rows} rows exceeds the per-process batch {size}')
  padded = {
    k: np.concatenate([v, np.zeros((size - rows, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }
  padded[tasks_lib.EXAMPLE_MASK] = np.arange(size) < rows
  return padded


def _gather_to_host(outputs: PyTree) -> PyTree:
  """Numpy copies of (possibly multi-process) global arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(outputs)
  return multihost_utils.process_allgather(outputs, tiled=True)


def evaluate(
  task: tasks_lib.Task, eval_step, predict_step, state: TrainState, mesh, local_batch_size: int
) -> dict[str, float]:
  """Runs the eval pipeline once; returns {name: summed value / summed count}, plus
  the metrics of the task's host-side evaluator when it has one."""
  try:
    iterator = task.eval_iterator(
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      batch_size=local_batch_size,
    )
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # data or config.data
    raise TrainingError(str(e)) from e
  evaluator = task.make_evaluator()
  totals = None
  for local in iterator:
    batch = sharding.global_batch(_pad_eval_batch(local, local_batch_size), mesh)
    sums = eval_step(state.eval_params(), state.model_state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if evaluator is not None:
      evaluator.add(_gather_to_host(predict_step(state.eval_params(), state.model_state, batch)))
  metrics = {}
  if totals is not None:
    totals = jax.device_get(totals)
    metrics = {
      name: float(value) / max(float(count), 1.0) for name, (value, count) in totals.items()
    }
  if evaluator is not None:
    metrics.update(evaluator.result())
  return metrics


def _mean_metrics(window: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


class _SigtermFlag:
  """Records SIGTERM so the loop can checkpoint at a step boundary and stop."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _init_from(
  config, task: tasks_lib.Task, state: TrainState, shardings: TrainState, workdir: str
) -> TrainState:
  """Overwrites part of the fresh params from `config.init_from` (if set).

  `path`: a trainer workdir (its latest checkpoint), an export dir, or an orbax tree
  with 'params' (e.g. from `python -m tps_jax.convert`). Leaves whose path matches
  `include` (re.search) and not `exclude` are taken when the source has them with
  the same shape, or one the task adapts (`Task.adapt_init_leaf`); source names get
  `prefix` prepended, and with `source_prefix` only the source leaves under it count,
  without it. All others keep their fresh initialisation. A line of counts is printed;
  the leaves restored / adapted / re-initialised, by name, go to WORKDIR/log.txt.
  """
  init_from = config.get('init_from')
  if not init_from:
    return state
  if isinstance(init_from, str):
    path, include, exclude, prefix, source_prefix = init_from, '.*', '', '', ''
  else:
    path = init_from.get('path', '')
    include, exclude = init_from.get('include', '.*'), init_from.get('exclude', '')
    prefix, source_prefix = init_from.get('prefix', ''), init_from.get('source_prefix', '')
  if not path:
    return state
  sources = checkpointing.load_collections(path, prefix or '', source_prefix or '')
  # Leaves not taken from the source stay the (possibly sharded) fresh arrays.
  merged, report = checkpointing.merge_params(
    state.params, sources['params'], include or '.*', exclude or '', adapt=task.adapt_init_leaf
  )
  log = log_details(workdir, checkpointing.init_report_lines(path, report))
  say(f'{checkpointing.init_report_summary(path, report)}; the leaves by name: {log}')
  if not report['restored']:
    raise TrainingError(f'init_from {path}: no parameter matched include={include!r}')
  # Model state (e.g. frozen BatchNorm statistics) follows the same include/exclude.
  model_state = dict(state.model_state)
  for name, fresh in state.model_state.items():
    if name in sources:
      model_state[name], state_report = checkpointing.merge_params(
        fresh, sources[name], include or '.*', exclude or ''
      )
      say(
        f'init_from {path}: restored {len(state_report["restored"])} {name} leaves'
        + (
          f'; re-initialised: {", ".join(state_report["missing"] + state_report["shape_mismatch"])}'
          if state_report['missing'] or state_report['shape_mismatch']
          else ''
        )
      )
  params = jax.device_put(merged, shardings.params)
  ema = None if state.ema_params is None else jax.device_put(merged, shardings.ema_params)
  return state.replace(
    params=params, ema_params=ema, model_state=jax.device_put(model_state, shardings.model_state)
  )


def _save(manager, step: int, state: TrainState, train_iter, writer: MetricWriter) -> None:
  """Starts the checkpoint save at `step` and flushes the TensorBoard events with it
  (a SIGKILL then loses no scalar of a checkpointed step)."""
  try:
    checkpointing.save(manager, step, state, train_iter)
  except checkpointing.CheckpointError as e:
    last = manager.latest_step()
    resume = (
      f'the last checkpoint is step {last}: a rerun resumes there'
      if last is not None
      else 'no checkpoint was saved: a rerun starts at step 0'
    )
    raise TrainingError(
      f'{e} ({resume} and logs again the steps metrics.jsonl holds after it)'
    ) from e
  writer.flush()


def plan_train_state(task: tasks_lib.Task, config, mesh, rng):
  """How the train state is made, without making it.

  Returns (init_state: rng -> TrainState, abstract_state, state_shardings, tx, schedule,
  ema_decay): the optimiser is built on the parameter shapes (decay mask, lr scales,
  frozen parameters) and the shardings from the task's partition rules.
  """
  variable_shapes = jax.eval_shape(task.init_variables, rng)
  tx, schedule = make_optimizer(
    config.optim,
    variable_shapes['params'],
    total_steps=config.total_steps,
    layer_id=task.layer_id,
    num_layers=task.num_layers(),
    decay_mask=task.decay_mask,
    trainable=task.is_trainable,
  )
  ema_decay = config.optim.get('ema_decay', 0.0)

  def init_state(rng) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    variables = dict(task.init_variables(init_rng))
    params = variables.pop('params')
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      model_state=variables,
      ema_params=params if ema_decay else None,
      rng=train_rng,
    )

  abstract_state = jax.eval_shape(init_state, rng)
  state_shardings = sharding.tree_shardings(mesh, abstract_state, task.param_partition_rules())
  return init_state, abstract_state, state_shardings, tx, schedule, ema_decay


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains `config.task` in `workdir` (resuming from its latest checkpoint).

  Returns a summary: {'step', 'preempted', 'eval': final eval metrics, 'export'}.
  """
  run_config.check_counts(config)
  workdir = prepare_workdir(workdir)
  # The settings first: a refused resume should not wait for the model or the data.
  if checkpointing.saved_steps(workdir):
    for line in run_config.check_resume(workdir, config):
      say(line)
  compute_dtype = jnp.bfloat16 if config.get('bf16', False) else jnp.float32
  try:
    task = tasks_lib.get_task(config.task, config, compute_dtype=compute_dtype)
  except ValueError as e:
    raise TrainingError(str(e)) from e
  mesh = sharding.make_mesh(_config_get(config, 'mesh.model', 1))
  local_batch_size = _check_batch_size(config, mesh)
  total_steps = config.total_steps
  try:
    train_iter = task.train_iterator(
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      batch_size=local_batch_size,
    )
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # data or config.data
    raise TrainingError(str(e)) from e

  rng = jax.random.PRNGKey(config.seed)
  init_state, abstract_state, state_shardings, tx, schedule, ema_decay = plan_train_state(
    task, config, mesh, rng
  )
  manager = checkpointing.make_manager(workdir, keep=config.get('keep_checkpoints', 3))
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
  )
  try:
    state, restored_step, report = checkpointing.restore_latest(manager, target, train_iter)
    for line in report:
      say(line)
    if state is not None:
      run_config.check_total_steps(config, restored_step, workdir)
      say(f'resumed {workdir} from step {restored_step}')
    else:
      state = jax.jit(init_state, out_shardings=state_shardings)(rng)
      state = _init_from(config, task, state, state_shardings, workdir)
  except BaseException:
    manager.close()  # joins orbax's start-up threads, which an exit would interrupt
    raise
  if jax.process_index() == 0:  # the settings this workdir now trains with
    run_config.store(workdir, config)

  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jax.jit(
    make_train_step(
      task, tx, schedule, grad_accum_steps=config.get('grad_accum_steps', 1), ema_decay=ema_decay
    ),
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, sharding.replicated(mesh), sharding.replicated(mesh)),
    donate_argnums=0,
  )
  eval_step = jax.jit(task.eval_metrics)
  predict_step = jax.jit(task.eval_predictions)

  step = start_step = int(jax.device_get(state.step))
  writer = MetricWriter(workdir, resume_step=step)
  if writer.dropped_steps:
    say(
      f'{writer.path}: dropped {len(writer.dropped_steps)} record(s) logged after step '
      f'{step}, the step this run starts from (it logs those steps again)'
    )
  progress = Progress(total_steps, config.batch_size)
  log_steps = config.log_steps
  checkpoint_steps = config.checkpoint_steps
  eval_steps = config.get('eval_steps', 0)
  window, pending_check = [], None
  eval_metrics, preempted = {}, False

  def check_finite(check):
    checked_step, finite = check
    if not bool(jax.device_get(finite)):
      checkpointing.wait(manager)
      raise TrainingError(
        f'non-finite loss or gradient at step {checked_step}; stopped without saving '
        f'it (last good checkpoint: step {manager.latest_step()} in {workdir})'
      )

  with _SigtermFlag() as sigterm:
    while step < total_steps:
      batch = sharding.global_batch(next(train_iter), mesh)
      state, metrics, finite = train_step(state, batch)
      step += 1
      if pending_check is not None:  # one step behind, so the device keeps busy
        check_finite(pending_check)
      pending_check = (step, finite)
      window.append(metrics)
      # Every process must agree to save (orbax saves are collective).
      stop = sigterm.received
      if jax.process_count() > 1:
        stop = bool(multihost_utils.process_allgather(np.int32(stop)).max())

      record = {}
      if step % log_steps == 0 or step == total_steps or stop:
        check_finite(pending_check)
        record.update(_mean_metrics(window), steps_averaged=len(window))
        window = []
        progress.update(step, record['loss'])
      if eval_steps and (step % eval_steps == 0 or step == total_steps):
        eval_metrics = evaluate(task, eval_step, predict_step, state, mesh, local_batch_size)
        record.update({f'eval_{k}': v for k, v in eval_metrics.items()})
        say(f'eval at step {step}: {format_eval(eval_metrics)}')
      if record:
        writer.write(step, record)
      if step % checkpoint_steps == 0 or step == total_steps or stop:
        check_finite(pending_check)
        _save(manager, step, state, train_iter, writer)
      if stop and step < total_steps:
        preempted = True
        checkpointing.wait(manager)
        say(
          f'SIGTERM: saved a checkpoint at step {step}; exiting with code '
          f'{PREEMPTED_EXIT_CODE} (rerun the same command to resume)'
        )
        break
    checkpointing.wait(manager)
  progress.close()
  writer.flush()

  finished_before = step == start_step  # rerun of a finished run: nothing trained now
  if finished_before and not eval_metrics:
    eval_metrics = writer.logged_at(step, 'eval_')  # the evaluation it logged then
    if eval_metrics:
      say(f'eval at step {step} (logged when the run finished): {format_eval(eval_metrics)}')
  summary = {'step': step, 'preempted': preempted, 'eval': eval_metrics, 'export': None}
  if not preempted:
    variables = {'params': state.eval_params(), **state.model_state}
    kept = checkpointing.existing_export(workdir, config) if finished_before else None
    # The same variables and config: keep the files (and what was built from them) and
    # report the final evaluation logged when they were written.
    summary['export'] = kept or checkpointing.export(
      workdir, variables, config, task.export_metadata()
    )
    extra = writer.logged_at(step, 'final_') if kept else {}
    if not extra:  # (also when a run was stopped between its export and this evaluation)
      extra = task.evaluate(variables, workdir)
      if extra:
        writer.write(step, {f'final_{k}': v for k, v in extra.items()})
    if extra:
      say(f'final evaluation at step {step}: {format_eval(extra)}')
      summary['eval'] = {**eval_metrics, **extra}
  writer.close()
  manager.close()
  return summary


def run_cli(config, workdir: str, **distributed) -> None:
  """The command-line entry: set up processes, train, turn known errors into one line.

  One stage (run_train.py sends a chain of stages to tps_jax/chain.py). Exit status: 0 done,
  1 an error (one line), PREEMPTED_EXIT_CODE stopped by SIGTERM after a checkpoint.
  """
  # Orbax logs every file it writes at INFO; the trainer's own news goes to `say`.
  logging.set_verbosity(logging.WARNING)
  initialize_distributed(**distributed)
  try:
    prepare_workdir(workdir)
    preempted = train_and_evaluate(config, workdir)['preempted']
  except (
    TrainingError,
    checkpointing.CheckpointError,
    run_config.RunConfigError,
    FileNotFoundError,
  ) as e:
    sys.exit(f'error: {e}')
  if preempted:
    sys.exit(PREEMPTED_EXIT_CODE)
