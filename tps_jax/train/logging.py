"""Metric writers: metrics.jsonl, TensorBoard events and a console progress line.

Only process 0 writes; on other processes the writer does nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import jax


class MetricWriter:
  """Writes `{'step': s, name: value, ...}` lines and TensorBoard scalars."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def _truncate_after(self, step: int) -> None:
    """Drops lines logged after the checkpoint we resume from (they will be redone)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)['step'] <= step]
    if len(kept) != len(lines):
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(kept)
      os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in metrics.items():
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
