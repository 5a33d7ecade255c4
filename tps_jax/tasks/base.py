"""The Task protocol: what a training stage supplies to the one generic trainer.

A stage (part-state network, action recogniser, detectors; a test's toy classifier) is
a subclass of `Task`, registered under a name with `@register_task('name')` (or
`register_task('name', cls)`); the trainer looks it up by `config.task`. The library's
tasks (`LIBRARY_TASKS`, a closed table of this package's modules) are imported on first
lookup, so a config only names its task. A task defined elsewhere is registered by the
user's own code before the lookup (a Python config file that defines it, or an import
in the user's script): a name is never imported, because exports are shared files and
their `config.json` names the task -- loading one must not run code it chooses.

The trainer owns everything generic: mesh and sharding, the jitted step with
gradient accumulation, the optimiser (AdamW, schedule, clipping, layer-wise lr
decay, weight-decay mask, EMA), checkpoints (train state and data iterator),
`init_from`, logging, export. A task owns only its model, loss, metrics and data:

```python
@base.register_task('my_stage')
class MyStage(base.Task):

  def build_model(self):            # flax linen; use self.compute_dtype for compute
    return MyNet(num_classes=self.config.num_classes, dtype=self.compute_dtype)

  def init_inputs(self):            # one small example batch (leading dim 1 is fine)
    return {'image': np.zeros((1, 224, 224, 3), np.float32)}

  def loss_fn(self, params, batch, rng, model_state, *, train):
    variables = {'params': params, **model_state}
    logits, new_state = self.model.apply(variables, batch['image'], train=train,
                                         rngs={'dropout': rng}, mutable=list(model_state))
    loss = cross_entropy(logits, batch['label']).mean()
    return loss, ({'accuracy': ...}, new_state)

  def eval_metrics(self, params, model_state, batch):
    logits = self.model.apply({'params': params, **model_state}, batch['image'], train=False)
    mask = batch[base.EXAMPLE_MASK]
    correct = (logits.argmax(-1) == batch['label']) & mask
    return {'accuracy': (correct.sum(), mask.sum())}

  def train_iterator(self, *, seed, process_index, process_count, batch_size):
    return make_pipeline(..., shard=(process_index, process_count))  # grain DatasetIterator

  def eval_iterator(self, *, process_index, process_count, batch_size):
    return make_pipeline(..., train=False, ...)
```

Contract details:
- `config` is the whole ml_collections config; `compute_dtype` is `jnp.bfloat16`
  when `config.bf16` is set, else `jnp.float32` (params always stay float32).
- `model_state` holds every non-'params' variable collection (e.g. 'batch_stats'),
  possibly `{}`. `loss_fn` returns the new model state in the same structure
  (return the input unchanged when nothing is mutable or `train` is False).
- Train metrics returned by `loss_fn` are per-batch means (scalars); the trainer
  averages them over the logging window. The loss is logged as `loss`.
- `eval_metrics` returns `{name: (summed_value, count)}`; the trainer sums both
  over all batches and devices and reports `summed_value / count`. Every eval batch
  carries `batch[EXAMPLE_MASK]` (bool, (B,)): False rows are padding the trainer
  added to fill the last batch; they must not count.
- Input pipelines yield dicts of numpy arrays holding this process's share of the
  global batch (`batch_size` is the per-process size). `train_iterator` must be
  endless and checkpointable: a grain `DatasetIterator` (or any iterator with
  `get_state() -> dict` / `set_state(dict)`); its state is saved with every
  checkpoint so a resumed run sees the same batches. `eval_iterator` is finite
  and must yield the same number of batches on every process (the last may be
  short; the trainer pads it and sets the mask).
- A missing dataset must raise (e.g. `FileNotFoundError(f'{root}: no such dataset')`)
  from the iterator constructors, a config they cannot read a ValueError (e.g. the
  pipelines' `DataConfigError` naming a missing `config.data` field); the trainer
  prints that one line and exits.
- Optional hooks have working defaults: `init_variables` (model.init on
  `init_inputs`), `layer_id` (layer-wise lr decay: param path -> layer index in
  `[0, num_layers]`, larger = closer to the head), `decay_mask` (which params get
  weight decay), `is_trainable` (frozen parameters), `param_partition_rules` (regex -> PartitionSpec for the `model`
  mesh axis), `evaluate` (an extra evaluation, e.g. with TTA, on exported params).
- Metrics that are not sums over examples (COCO mAP) use the host-side pair
  `eval_predictions` (jitted: per-example outputs, e.g. padded detections and the
  ground truth they are scored against) and `make_evaluator` (an `Evaluator` that
  receives every eval batch's outputs gathered from all processes as numpy, rows
  with `EXAMPLE_MASK` included, and computes the metrics at the end).
"""

from __future__ import annotations

import abc
import functools
import importlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec

PyTree = Any
Batch = Mapping[str, np.ndarray]
# Key of the boolean (B,) validity mask the trainer adds to every eval batch.
EXAMPLE_MASK = 'example_mask'

# Parameter names that never get weight decay (besides every 0-/1-D leaf):
# Swin's relative position bias tables, absolute position embeddings, class tokens.
NO_DECAY_PATTERN = re.compile(
  r'(relative_position_bias_table|pos_embed|position_embedding|cls_token)'
)


class Task(abc.ABC):
  """One training stage: model, loss, metrics and input pipelines (see module doc)."""

  def __init__(
    self, config, *, compute_dtype=jnp.float32, metadata: Mapping[str, Any] | None = None
  ):
    self.config = config
    self.compute_dtype = compute_dtype
    # An export's `metadata.json` (`export_metadata`): when given, vocabularies and
    # preprocessing come from it, not from the dataset (inference without data).
    self.metadata = dict(metadata) if metadata else None

  # --- model ---------------------------------------------------------------

  @abc.abstractmethod
  def build_model(self) -> nn.Module:
    """Returns the flax linen model, built from `self.config`."""

  @functools.cached_property
  def model(self) -> nn.Module:
    return self.build_model()

  @abc.abstractmethod
  def init_inputs(self) -> dict[str, np.ndarray]:
    """An example input batch for `init_variables` (small leading dimension)."""

  def init_variables(self, rng: jax.Array) -> dict[str, PyTree]:
    """All variable collections of a freshly initialised model ('params', ...)."""
    params_rng, dropout_rng = jax.random.split(rng)
    variables = self.model.init(
      {'params': params_rng, 'dropout': dropout_rng}, **self.init_inputs(), train=False
    )
    return dict(variables)

  # --- objective -----------------------------------------------------------

  @abc.abstractmethod
  def loss_fn(
    self,
    params: PyTree,
    batch: Batch,
    rng: jax.Array,
    model_state: dict[str, PyTree],
    *,
    train: bool,
  ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, PyTree]]]:
    """Returns `(loss, (metrics, new_model_state))` for one (micro-)batch."""

  @abc.abstractmethod
  def eval_metrics(
    self, params: PyTree, model_state: dict[str, PyTree], batch: Batch
  ) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Returns `{name: (masked sum, masked count)}` for one eval batch."""

  # --- data ----------------------------------------------------------------

  @abc.abstractmethod
  def train_iterator(
    self, *, seed: int, process_index: int, process_count: int, batch_size: int
  ) -> Iterator[Batch]:
    """Endless, checkpointable iterator of this process's training batches."""

  @abc.abstractmethod
  def eval_iterator(
    self, *, process_index: int, process_count: int, batch_size: int
  ) -> Iterable[Batch]:
    """Finite iterable of this process's eval batches (same count on every process)."""

  # --- optional hooks --------------------------------------------------------

  def layer_id(self, path: tuple[str, ...]) -> int | None:
    """Layer index of a parameter for layer-wise lr decay; None disables it.

    With `config.optim.layer_decay = d` and `num_layers() = L`, a parameter with
    layer id i gets learning rate `lr * d ** (L - i)`.
    """
    del path
    return None

  def num_layers(self) -> int:
    """The largest `layer_id` (the head's); only used with layer-wise lr decay."""
    return 0

  def decay_mask(self, path: tuple[str, ...], leaf: jax.Array) -> bool:
    """Whether a parameter gets weight decay: not norms, biases or position tables."""
    return leaf.ndim > 1 and not NO_DECAY_PATTERN.search('/'.join(path))

  def is_trainable(self, path: tuple[str, ...]) -> bool:
    """False for frozen parameters (e.g. a detector's first backbone stages): they get
    no update at all, not even weight decay."""
    del path
    return True

  def adapt_init_leaf(
    self, name: str, value: np.ndarray, shape: tuple[int, ...]
  ) -> np.ndarray | None:
    """`init_from`: a source leaf `name` whose shape differs from the model's
    `shape`, turned into that shape (e.g. a 2D Swin inflated into a video Swin), or
    None (default): it is re-initialised."""
    del name, value, shape
    return None

  def param_partition_rules(self) -> Sequence[tuple[str, PartitionSpec]]:
    """`(regex on 'a/b/kernel' path, PartitionSpec)` pairs for the `model` axis.

    First match wins; unmatched parameters are replicated. Only used when the
    mesh has a `model` axis larger than 1.
    """
    return ()

  def eval_predictions(
    self, params: PyTree, model_state: dict[str, PyTree], batch: Batch
  ) -> dict[str, jax.Array]:
    """Per-example outputs (leading dim B) for `make_evaluator`'s evaluator.

    Runs jitted on the sharded eval batch. Include what the evaluator needs from the
    batch (ground truth, `EXAMPLE_MASK`): it receives only these outputs.
    """
    del params, model_state, batch
    return {}

  def make_evaluator(self) -> Evaluator | None:
    """A fresh host-side evaluator for one eval pass; None (default): none."""
    return None

  def export_metadata(self) -> dict[str, Any]:
    """What the export needs beside variables and config to be used alone (written to
    `export/metadata.json`, read back by `tps_jax.inference.export.load_export`): `kind`,
    `vocab` (vocabularies in label order) and `preprocessing` (input sizes,
    normalisation, crop rules) -- whatever the task read from its dataset. A task built
    with `metadata=` must rebuild the same model from it. {} by default."""
    return {}

  def evaluate(self, variables: dict[str, PyTree], workdir: str) -> dict[str, float]:
    """Extra evaluation at the end of training (TTA, full scoring); {} by default.

    `variables` are the exported variables ('params' = EMA params when enabled).
    """
    del variables, workdir
    return {}


class DatasetTask(Task):
  """A task whose batches are one of `tps_jax.input.pipelines`' datasets: the train and
  eval iterators read `dataset` (split `train_split`, and `config.data.eval_split`)."""

  train_split = 'train'

  @property
  @abc.abstractmethod
  def dataset(self) -> str:
    """The dataset `pipelines.make_pipeline` reads ('humans', 'part_states', ...)."""

  def _pipeline(
    self,
    split: str,
    *,
    train: bool,
    seed: int,
    process_index: int,
    process_count: int,
    batch_size: int,
  ):
    from tps_jax.input import pipelines  # the grain / TFDS stack, only when data is read

    return pipelines.make_pipeline(
      self.dataset,
      self.config,
      split,
      train=train,
      seed=seed,
      shard=(process_index, process_count),
      batch_size=batch_size,
    )

  def train_iterator(self, *, seed, process_index, process_count, batch_size):
    return self._pipeline(
      self.train_split,
      train=True,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      batch_size=batch_size,
    )

  def eval_iterator(self, *, process_index, process_count, batch_size):
    return self._pipeline(
      self.config.data.eval_split,
      train=False,
      seed=0,
      process_index=process_index,
      process_count=process_count,
      batch_size=batch_size,
    )


class Evaluator(abc.ABC):
  """Host-side metrics over a whole eval pass (see `Task.make_evaluator`)."""

  @abc.abstractmethod
  def add(self, outputs: Mapping[str, np.ndarray]) -> None:
    """One global eval batch of `Task.eval_predictions` outputs (with EXAMPLE_MASK)."""

  @abc.abstractmethod
  def result(self) -> dict[str, float]:
    """The metrics of everything added so far."""


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, cls: type[Task] | None = None):
  """Registers the Task `cls` under `name` (re-registering replaces); without `cls`, a
  class decorator that does so."""

  def wrap(cls):
    _REGISTRY[name] = cls
    return cls

  return wrap if cls is None else wrap(cls)


# The library's own tasks, imported on first lookup (a config names its task only).
LIBRARY_TASKS = {
  'detection': 'tps_jax.tasks.detection',
  'part_state': 'tps_jax.tasks.part_state',
  'action': 'tps_jax.tasks.action',
}


def task_class(name: str) -> Callable[..., Task]:
  """The task registered as `name`; a library task's module is imported on first use,
  nothing else is ever imported (module docstring). ValueError names what is known."""
  if not isinstance(name, str):
    raise ValueError(f'a task name is a string, got {name!r}')
  if name not in _REGISTRY and name in LIBRARY_TASKS:
    importlib.import_module(LIBRARY_TASKS[name])
  if name not in _REGISTRY:
    known = sorted(set(_REGISTRY) | set(LIBRARY_TASKS))
    raise ValueError(
      f'{name!r} is not a registered task (known: {", ".join(known)}; '
      'code of your own registers others with tasks.base.register_task(name, cls))'
    )
  return _REGISTRY[name]


def get_task(
  name: str, config, *, compute_dtype=jnp.float32, metadata: Mapping[str, Any] | None = None
) -> Task:
  """Instantiates the registered task `name` (`task_class`) for `config`.

  `metadata`: an export's metadata (`Task.export_metadata`), for a model without data.
  """
  try:
    cls = task_class(name)
  except ValueError as e:
    raise ValueError(f'config.task: {e}') from None
  return cls(config, compute_dtype=compute_dtype, metadata=metadata)


def registered_tasks() -> list[str]:
  return sorted(_REGISTRY)
