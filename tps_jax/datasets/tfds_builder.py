"""The TFDS builder that writes each dataset (`TpsBuilder`; `builder_class` gives the
class of a TFDS name), its examples made in worker processes (`worker_pool`) or in this
one. What the datasets hold: tps_jax/data/tfds_layout.py.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
from tqdm import tqdm

from tps_jax.data.tfds_layout import DATASETS, SPLITS, VERSION, dataset_features
from tps_jax.datasets import processes
from tps_jax.datasets.examples import ExampleMaker
from tps_jax.datasets.sources import VideoEntry

_WORKER_MAKER: ExampleMaker | None = None


def _set_worker_maker(maker: ExampleMaker) -> None:
  global _WORKER_MAKER
  _WORKER_MAKER = maker


def _worker_examples(job: tuple[str, VideoEntry]):
  return _WORKER_MAKER.examples(*job)


@contextlib.contextmanager
def worker_pool(maker: ExampleMaker, jobs: int):
  """A pool of `jobs` processes (spawned, each holding `maker`), or None for jobs <= 1."""
  if jobs <= 1:
    yield None
    return
  with processes.process_pool(jobs, _set_worker_maker, (maker,)) as pool:
    yield pool


class TpsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The one builder of every dataset; `builder_class(name, dataset)` subclasses it per
  TFDS name (TFDS takes the name from the class)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'Kinetics-TPS datasets (tps_jax).'}
  dataset: str = ''

  def __init__(
    self,
    *,
    entries: Sequence[VideoEntry] = (),
    val_videos: Sequence[str] = (),
    maker: ExampleMaker | None = None,
    pool=None,
    problems: list[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    **kwargs,
  ):
    """entries / val_videos: the videos and which are val; maker: makes the examples, in
    `pool` (see worker_pool) when given; problems: receives what was skipped."""
    self._entries = list(entries)
    self._val_videos = set(val_videos)
    self._maker, self._pool = maker, pool
    self._problems = problems if problems is not None else []
    self._metadata = dict(metadata or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"tps_jax dataset '{self.dataset}' (see tps_jax/data/tfds_layout.py)",
      features=dataset_features(self.dataset),
      metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = {}
    for split in SPLITS:
      entries = [e for e in self._entries if (e.name in self._val_videos) == (split == 'val')]
      if entries:
        splits[split] = self._generate_examples(split, entries)
    return splits

  def _generate_examples(self, split: str, entries: Sequence[VideoEntry]):
    jobs = [(self.dataset, entry) for entry in entries]
    results = (
      self._pool.imap(_worker_examples, jobs)
      if self._pool is not None
      else (self._maker.examples(*job) for job in jobs)
    )
    for examples, problems in tqdm(
      results,
      total=len(jobs),
      desc=f'{self.name} {split}',
      unit='video',
      disable=not self._maker.options.progress,
    ):
      self._problems.extend(problems)
      yield from examples


def builder_class(name: str, dataset: str) -> type[TpsBuilder]:
  """The TFDS builder class writing `dataset`'s examples under the TFDS name `name`."""
  if dataset not in DATASETS:
    raise ValueError(f'dataset must be one of {", ".join(DATASETS)}, got {dataset!r}')
  return types.new_class(
    ''.join(w.title() for w in name.split('_')),
    (TpsBuilder,),
    {'skip_registration': True},
    lambda ns: ns.update(name=name, dataset=dataset),
  )
