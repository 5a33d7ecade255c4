"""Metric writers: metrics.jsonl, TensorBoard events and a console progress line.

Only process 0 writes; on other processes the writer does nothing. Records are
written as they are logged, so after a crash metrics.jsonl may hold steps past the
last checkpoint; a resume drops those records (the resumed run logs the steps again)
and `dropped_steps` says which, and TensorBoard is told to discard them too (a purge
step). Train records carry `steps_averaged`, the number of steps they average (fewer
than log_steps for a record cut short by SIGTERM); it is not plotted.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import jax

# Bookkeeping written to metrics.jsonl but not plotted.
UNPLOTTED = frozenset({'steps_averaged'})


class MetricWriter:
  """Writes `{'step': s, name: value, ...}` lines and TensorBoard scalars."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.dropped_steps: list[int] = []   # records after resume_step, removed
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self.dropped_steps = self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # TensorBoard discards the earlier events from resume_step + 1 on: redone steps.
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                             purge_step=resume_step + 1)

  def _truncate_after(self, step: int) -> list[int]:
    """Drops lines logged after the checkpoint we resume from (they will be redone),
    and a last line cut short by a kill; returns the dropped steps (-1: unreadable)."""
    if not os.path.exists(self.path):
      return []
    kept, dropped = [], []
    with open(self.path) as f:
      for line in f:
        if not line.strip():
          continue
        try:
          logged = json.loads(line)['step']
        except (ValueError, KeyError, TypeError):
          dropped.append(-1)
          continue
        if logged <= step:
          kept.append(line)
        else:
          dropped.append(logged)
    if dropped:
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(kept)
      os.replace(tmp, self.path)
    return dropped

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {'step': int(step), **{k: v if isinstance(v, int) else float(v)
                                    for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in metrics.items():
      if name not in UNPLOTTED:
        self._tb.add_scalar(name, float(value), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A console line: step, loss, examples/s and ETA, measured between log steps."""

  def __init__(self, total_steps: int, global_batch_size: int, start_step: int):
    self.total_steps = total_steps
    self.batch_size = global_batch_size
    self._last_step = start_step
    self._last_time = None

  def update(self, step: int, loss: float) -> str | None:
    now = time.perf_counter()
    line = None
    if self._last_time is not None and step > self._last_step:
      steps_per_s = (step - self._last_step) / (now - self._last_time)
      eta = datetime.timedelta(seconds=round((self.total_steps - step) / steps_per_s))
      line = (f'step {step}/{self.total_steps}  loss {loss:.4f}  '
              f'{steps_per_s * self.batch_size:.1f} examples/s  ETA {eta}')
    else:
      line = f'step {step}/{self.total_steps}  loss {loss:.4f}'
    self._last_step, self._last_time = step, now
    if jax.process_index() == 0:
      print(line, file=sys.stderr, flush=True)
    return line
