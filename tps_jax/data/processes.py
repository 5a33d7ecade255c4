"""Worker process pools that are safe to start beside JAX.

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
from multiprocessing import pool as pool_lib
from typing import Any, Callable, Sequence


def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: Sequence[Any] = ()) -> pool_lib.Pool:
  """A `multiprocessing.Pool` of `workers` spawned processes (use it as a context)."""
  return multiprocessing.get_context('spawn').Pool(workers, initializer=initializer,
                                                   initargs=tuple(initargs))
