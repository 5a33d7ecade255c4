"""Worker process pools that are safe to start beside JAX, and a parallel map over them.

JAX starts threads as soon as it is used, and `fork` copies a multithreaded process
with whatever locks its other threads held at that moment: the child can deadlock
(Python warns: "os.fork() was called ... JAX is multithreaded"). The demo writes and
builds its dataset in the process that then trains, so every pool of the project is
started with `spawn`: each worker is a fresh interpreter that imports the module of
the function it runs, plus the parent's main script (which is why run_train.py
imports JAX only in `main`). Worker functions must therefore be picklable: module
level, with picklable arguments.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing import pool as pool_lib
from typing import Any, TypeVar

from tqdm import tqdm

_Item = TypeVar('_Item')
_Result = TypeVar('_Result')


def process_pool(
  workers: int, initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = ()
) -> pool_lib.Pool:
  """A `multiprocessing.Pool` of `workers` spawned processes (use it as a context)."""
  return multiprocessing.get_context('spawn').Pool(
    workers, initializer=initializer, initargs=tuple(initargs)
  )


def parallel_map(
  fn: Callable[[_Item], _Result],
  items: Sequence[_Item],
  *,
  jobs: int,
  desc: str,
  progress: bool,
  unit: str = 'video',
  on_result: Callable[[_Result], str | None] | None = None,
) -> list[_Result]:
  """[fn(item) for item in items] over `jobs` worker processes (inline when jobs <= 1
  or there is one item), with a progress bar; on_result(result) may return a postfix
  for the bar."""
  results: list = [None] * len(items)
  with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:

    def done(index, result):
      results[index] = result
      postfix = on_result(result) if on_result else None
      if postfix:
        bar.set_postfix_str(postfix, refresh=False)
      bar.update()

    if jobs > 1 and len(items) > 1:
      with process_pool(min(jobs, len(items))) as pool:
        for index, result in pool.imap_unordered(_Indexed(fn), enumerate(items)):
          done(index, result)
    else:
      for index, item in enumerate(items):
        done(index, fn(item))
  return results


class _Indexed:
  """fn applied to (index, item), keeping the index (picklable for a pool)."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, indexed_item):
    index, item = indexed_item
    return index, self.fn(item)
