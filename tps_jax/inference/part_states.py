"""The part-state network as the pipeline sees it: top-1 given the predicted action.

Table 3 of the report measures the part-state network with the ground-truth action of
the video; in the pipeline it gets the action recogniser's prediction instead.
`part_state_top1(export, ...)` scores the network on a split of the part-state
dataset (ground-truth human crops and part boxes, the eval preprocessing) with each
video's action taken from `actions` ({video: class name}, e.g. the recogniser's
`pred_vid_result.json`) or, when None, from the ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from tps_jax.data import augment, tfds_dirs
from tps_jax.inference import views
from tps_jax.inference.export import Export
from tps_jax.input import pipelines


def part_state_top1(
  export: Export | Sequence[Export],
  *,
  data_root: str,
  split: str = 'val',
  actions: Mapping[str, str] | None = None,
  batch_size: int = 64,
  flip: bool = False,
) -> dict[str, float]:
  """{'top1', 'count'} over the present parts of `split` (module docstring); with
  `flip`, the logits averaged with the mirrored crop's, and over the members of an
  ensemble given several exports (tps_jax/inference/views.py, as the pipeline's)."""
  members = [export] if isinstance(export, Export) else list(export)
  export = members[0]
  config = ml_collections.ConfigDict(export.config.to_dict())
  config.data.root = data_root
  config.data.tfds_dir = ''
  settings = pipelines.data_fields('part_states', config)
  source = tfds_dirs.builder_from_directory(
    pipelines.dataset_path('part_states', settings)
  ).as_data_source(split)
  action_ids = {name: i for i, name in enumerate(export.vocab['actions'])}
  model = export.model

  @jax.jit
  def predict(variables, images, boxes, valid, action):
    logits = views.state_logits(
      model, variables, images, boxes, valid, action, flip=flip, members=len(members)
    )
    return logits.argmax(-1)

  variables = jax.device_put(
    export.variables
    if len(members) == 1
    else jax.tree.map(lambda *xs: np.stack(xs), *[m.variables for m in members])
  )
  hits = count = 0
  for start in range(0, len(source), batch_size):
    records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
    examples = [pipelines.part_state_example(r, None, settings=settings) for r in records]
    if actions is not None:
      for record, example in zip(records, examples):
        video = (
          record['video'].decode() if isinstance(record['video'], bytes) else str(record['video'])
        )
        example['action'] = np.int32(action_ids[actions[video]])
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    rows = len(examples)
    padded = {
      k: np.concatenate([v, np.zeros((batch_size - rows, *v.shape[1:]), v.dtype)])
      for k, v in batch.items()
    }  # one compiled shape for every batch
    states = np.asarray(
      predict(
        variables,
        augment.normalize(padded['image']),
        padded['part_boxes'],
        padded['part_valid'],
        padded['action'],
      )
    )[:rows]
    present = batch['part_valid'] & (batch['part_state'] >= 0)
    hits += int((states == batch['part_state'])[present].sum())
    count += int(present.sum())
  return {'top1': hits / count if count else float('nan'), 'count': count}
