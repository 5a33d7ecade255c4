"""Several stages in one command: the demo (`configs/demo.py`) and any chain like it.

A multi-stage config has `stages`, a list of `name=configs/<stage>.py[:variant]`
strings, `data` (root, synthetic dataset size and seed, dataset stages to build),
`stage_overrides` (dotted config fields set in every stage, e.g. a short
`total_steps` for a smoke run) and `stage_init` ({stage: {'from': earlier stage,
'source_prefix': ...}}: the stage's `init_from` is the earlier stage's export, e.g.
the action network's Swin starting from the part-state network's, inflated to 3D as
a Video Swin starts from an image Swin). `run_stages` then

1. writes the synthetic Kinetics-TPS dataset into `data.root` unless it is there
   (`python -m data_prep.make_synthetic`; an empty root means `<workdir>/Kinetics-TPS`),
2. builds the TFDS datasets the stages read (`python -m data_prep.build`, idempotent),
3. trains each stage with the one trainer in `<workdir>/<name>` (each resumes on a
   rerun like any single-stage run), its `data.root` pointed at the dataset,
4. prints every stage's validation accuracy beside two baselines: uniform chance
   (1 / number of classes) and the majority class of the training split (for part
   states: each part's most frequent training state).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tps_jax.data import builders, pipelines
from tps_jax.train import trainer

# Stage name -> (pipeline stage, the eval metric reported).
STAGE_KINDS = {'part_state': ('part_state', 'top1'), 'action': ('action', 'top1')}


class StageError(trainer.TrainingError):
  """A multi-stage config that cannot run (one line)."""


def load_stage_config(spec: str):
  """'configs/part_state.py:tiny' -> that module's get_config('tiny')."""
  path, _, variant = spec.partition(':')
  module = path[:-len('.py')] if path.endswith('.py') else path
  module = module.replace(os.sep, '.').replace('/', '.')
  try:
    config_module = importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise StageError(f'stage config {spec!r}: no module {module} ({e})') from None
  return config_module.get_config(variant or None)


def _set_dotted(config, field: str, value) -> None:
  *parents, leaf = field.split('.')
  node = config
  for key in parents:
    node = node[key]
  if leaf not in node:
    raise StageError(f'config.stage_overrides: no such stage config field {field!r}')
  node[leaf] = value


def _init_from_stage(stage_config, init, workdir: str, name: str,
                     results: dict[str, Any]) -> None:
  """Points `stage_config.init_from` at the export of the earlier stage `init.from`."""
  source = init['from']
  if source not in results:
    raise StageError(f'config.stage_init.{name}: {source!r} is not an earlier stage')
  stage_config.init_from.path = os.path.join(workdir, source, 'export')
  stage_config.init_from.source_prefix = init.get('source_prefix', '')


def parse_stage(entry: str) -> tuple[str, str]:
  """'action=configs/action.py:tiny' -> ('action', 'configs/action.py:tiny')."""
  name, sep, spec = entry.partition('=')
  if not sep or name not in STAGE_KINDS:
    raise StageError(f'config.stages: {entry!r} is not name=configs/<stage>.py[:variant] '
                     f'with name in {", ".join(STAGE_KINDS)}')
  return name, spec


def ensure_dataset(data, workdir: str) -> str:
  """The dataset root, after writing the synthetic dataset and the TFDS builds it lacks."""
  from data_prep import build, make_synthetic  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(data.root or os.path.join(workdir, 'Kinetics-TPS'))
  jobs = data.get('jobs', 0) or len(os.sched_getaffinity(0))
  finished = os.path.isfile(os.path.join(root, 'list', 'video_test_flist.csv'))
  if not finished:
    if data.root and os.path.isdir(root) and not os.path.isfile(
        os.path.join(root, 'synthetic.json')):
      raise StageError(f'{root}: not a finished Kinetics-TPS dataset (no '
                       'list/video_test_flist.csv), and not a synthetic one to complete')
    trainer.say(f'writing the synthetic dataset to {root}')
    make_synthetic.main(['--out', root, '--videos', str(data.videos),
                         '--seed', str(data.seed), '--jobs', str(jobs), '--quiet'])
  code = build.main(['--root', root, '--stages', ','.join(data.build_stages),
                     '--seed', str(data.seed), '--jobs', str(jobs), '--quiet'])
  if code:
    raise StageError(f'{root}: building the TFDS datasets failed (see above)')
  return root


def _labels(stage: str, config, split: str) -> np.ndarray:
  """Labels of a split: (N,) actions, or (N, 10) part states with -1 for absent parts."""
  settings = pipelines.data_settings(stage, config)
  directory = pipelines.dataset_path(stage, settings)
  if stage == 'part_state':
    return builders.state_table(directory, split)
  source = tfds.builder_from_directory(directory).as_data_source(split)
  return np.array([source[i]['label'] for i in range(len(source))], np.int64)


def baselines(stage: str, config) -> dict[str, float]:
  """{'chance': 1 / classes, 'majority': training-majority accuracy on val}."""
  metadata = pipelines.dataset_metadata(stage, config)
  train, val = _labels(stage, config, 'train'), _labels(stage, config, 'val')
  if stage == 'part_state':
    chance = 1.0 / len(metadata['states'])
    hits = count = 0
    for part in range(train.shape[1]):
      seen = train[:, part][train[:, part] >= 0]
      truth = val[:, part][val[:, part] >= 0]
      if seen.size:
        hits += int((truth == np.bincount(seen).argmax()).sum())
      count += truth.size
    return {'chance': chance, 'majority': hits / max(count, 1)}
  chance = 1.0 / len(metadata['actions'])
  majority = np.bincount(train).argmax() if train.size else -1
  return {'chance': chance, 'majority': float(np.mean(val == majority)) if val.size else 0.0}


def run_stages(config, workdir: str) -> dict[str, dict[str, Any]]:
  """Runs the stages of a multi-stage config; returns {name: results}."""
  workdir = os.path.abspath(workdir)
  stages = [parse_stage(entry) for entry in config.stages]
  root = ensure_dataset(config.data, workdir)
  results = {}
  for name, spec in stages:
    stage_config = load_stage_config(spec)
    stage_config.data.root = root
    for field, value in config.get('stage_overrides', {}).items():
      _set_dotted(stage_config, field, value)
    if name in config.get('stage_init', {}):
      _init_from_stage(stage_config, config.stage_init[name], workdir, name, results)
    kind, metric = STAGE_KINDS[name]
    trainer.say(f'== stage {name}: {spec} -> {os.path.join(workdir, name)}')
    summary = trainer.train_and_evaluate(stage_config, os.path.join(workdir, name))
    if summary['preempted']:
      return results | {name: {'preempted': True}}
    results[name] = {'metric': metric, 'value': summary['eval'].get(metric, float('nan')),
                     'views': summary['eval'].get(f'tta_{metric}'),
                     **baselines(kind, stage_config)}
  print(format_results(results), flush=True)
  return results


def format_results(results: dict[str, dict[str, Any]]) -> str:
  lines = ['validation accuracy (synthetic Kinetics-TPS val split):',
           f'  {"stage":<12}{"metric":<8}{"value":>8}{"chance":>10}{"majority":>10}']
  for name, r in results.items():
    lines.append(f'  {name:<12}{r["metric"]:<8}{r["value"]:>8.3f}{r["chance"]:>10.3f}'
                 f'{r["majority"]:>10.3f}')
    if r.get('views') is not None:   # the multi-view (TTA) evaluation of the stage
      lines.append(f'  {"":<12}{"+views":<8}{r["views"]:>8.3f}')
  lines.append('chance: 1 / number of classes; majority: always predicting the training '
               "split's most frequent class (per part for part states); +views: "
               'averaged over clips x crops')
  return '\n'.join(lines)

