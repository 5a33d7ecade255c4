"""Metric writers: metrics.jsonl, TensorBoard events and the console's progress (tqdm).

Only process 0 writes; on other processes the writer does nothing. Records are
written as they are logged, so after a crash metrics.jsonl may hold steps past the
last checkpoint; a resume drops those records (the resumed run logs the steps again)
and `dropped_steps` says which, and TensorBoard is told to discard them too (a purge
step). Train records carry `steps_averaged`, the number of steps they average (fewer
than log_steps for a record cut short by SIGTERM); it is not plotted.
"""

from __future__ import annotations

import io
import json
import os
import sys

import jax
from tqdm import tqdm

# Bookkeeping written to metrics.jsonl but not plotted.
UNPLOTTED = frozenset({'steps_averaged'})


class MetricWriter:
  """Writes `{'step': s, name: value, ...}` lines and TensorBoard scalars."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.dropped_steps: list[int] = []  # records after resume_step, removed
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self.dropped_steps = self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    # TensorBoard discards the earlier events from resume_step + 1 on: redone steps.
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1)

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

  def logged_at(self, step: int, prefix: str) -> dict[str, float]:
    """The metrics logged at `step` whose names start with `prefix` (prefix removed):
    what a run that already reached its last step reports again."""
    found = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          record = json.loads(line)
          if record.get('step') == step:
            found.update((k[len(prefix) :], v) for k, v in record.items() if k.startswith(prefix))
    return found

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    record = {
      'step': int(step),
      **{k: v if isinstance(v, int) else float(v) for k, v in metrics.items()},
    }
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


class _Discard(io.TextIOBase):
  """A stream that drops what tqdm draws: off a terminal the lines are printed instead."""

  def write(self, text: str) -> int:
    return len(text)


class Progress:
  """The console's training progress, with tqdm: a live bar on a terminal; elsewhere (a
  log file, a pipe) one line per log step. The rate (examples/s) and the ETA are tqdm's,
  measured from the first logged step on, so the compilation before it is left out."""

  LINE = 'step {n_fmt}/{total_fmt}{postfix}  ETA {remaining}'
  BAR = 'step {n_fmt}/{total_fmt} {bar}{postfix}  ETA {remaining}'

  def __init__(self, total_steps: int, global_batch_size: int):
    self.total_steps = total_steps
    self.batch_size = global_batch_size
    self.active = jax.process_index() == 0
    self._lines = not sys.stderr.isatty()
    self._bar = None

  def update(self, step: int, loss: float) -> str | None:
    """Moves to `step`; returns the progress line (None on other processes)."""
    if not self.active:
      return None
    if self._bar is None:
      self._bar = tqdm(
        total=self.total_steps,
        initial=step,
        unit='step',
        mininterval=0,
        dynamic_ncols=True,
        bar_format=self.LINE if self._lines else self.BAR,
        file=_Discard() if self._lines else sys.stderr,
      )
    else:
      self._bar.update(step - self._bar.n)
    rate = self._bar.format_dict['rate']
    speed = f', {rate * self.batch_size:.1f} examples/s' if rate else ''
    self._bar.set_postfix_str(f'loss {loss:.4f}{speed}')
    line = str(self._bar)
    if self._lines:
      print(line, file=sys.stderr, flush=True)
    return line

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
