r"""A chain of stages in one command: the demo (configs/demo.py) and any chain like it.

  python run_train.py --config=configs/demo.py[:smoke] --workdir=DIR

`run_train.py` runs a config with `stages` here and any other with the trainer: a chain
is an application above the trainer, which knows nothing of it. A chain config has

- `stages`: `name=configs/<stage>.py[:variant]` strings, `name` one of STAGES;
- `data`: the dataset (`root`; empty: a synthetic one written into WORKDIR/Kinetics-TPS
  with `videos`, `seed`, `jobs`) and the TFDS datasets to build (`datasets`);
- `stage_overrides`: config fields set in every stage (e.g. a short `total_steps` for a
  smoke run), or under a stage's name in that stage only; `stage_init`: {stage: {'from': an earlier stage,
  'source_prefix'}}: the stage starts from that stage's export (the action network's
  Swin from the part-state network's, inflated to 3D as a Video Swin starts from an
  image Swin);
- `allow_config_change`: passed to every stage (a resume whose settings changed
  refuses otherwise, tps_jax/train/run_config.py);
- `pipeline` (optional): the end-to-end evaluation, once all four networks are
  trained: their bundle (WORKDIR/bundle, `settings`: the fields of
  tps_jax/inference/pipeline_options.py's PipelineOptions), the `split` it parses (WORKDIR/predictions, resumable), scored with the
  oracle ablation (tps_jax/inference/ablation.py) and the part-state network's top-1
  with the ground-truth and with the predicted action; the system's error-analysis page
  (tps_jax/metrics/report_page.py) goes to WORKDIR/predictions/report/index.html.

Every stage resumes like any single-stage run, so a rerun only does what is left.
The console gets a line when a stage starts and ends, the progress lines and the final
tables; long listings (init_from's parameter lists) go to WORKDIR/<stage>/log.txt.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any

import numpy as np

from tps_jax.train import run_config, trainer
from tps_jax.train.distributed import initialize_distributed, say

# Stage name -> (the dataset it trains on, the eval metric reported).
STAGES = {
  'human_detector': ('humans', 'AP50'),
  'part_detector': ('parts', 'AP50'),
  'part_state': ('part_states', 'top1'),
  'action': ('action_clips', 'top1'),
}
BUNDLE_DIR = 'bundle'
PREDICTIONS_DIR = 'predictions'
REPORT_DIR = 'report'  # WORKDIR/predictions/report/index.html: the system's error analysis


class ChainError(RuntimeError):
  """A chain config that cannot run (one line)."""


def load_stage_config(spec: str):
  """'configs/part_state.py:tiny' -> that module's get_config('tiny')."""
  path, _, variant = spec.partition(':')
  module = path[: -len('.py')] if path.endswith('.py') else path
  module = module.replace(os.sep, '.').replace('/', '.')
  try:
    config_module = importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise ChainError(f'stage config {spec!r}: no module {module} ({e})') from None
  return config_module.get_config(variant or None)


def apply_overrides(stage_config, name: str, overrides) -> None:
  """`stage_overrides` of a chain: {field: value} for every stage, {stage: {field:
  value}} for that stage only (fields nested as in the stage config). A field the stage
  config does not have is refused."""
  chosen = {}
  for field, value in run_config.flatten(overrides).items():
    stage, _, rest = field.partition('.')
    if stage in STAGES:
      if stage == name and rest:
        chosen[rest] = value
    elif value != {}:
      chosen[field] = value
  unknown = sorted(set(chosen) - set(run_config.flatten(stage_config)))
  if unknown:
    raise ChainError(f'config.stage_overrides: no such stage config field {unknown[0]!r}')
  stage_config.update_from_flattened_dict(chosen)


def _init_from_stage(stage_config, init, workdir: str, name: str, results: dict[str, Any]) -> None:
  """Points `stage_config.init_from` at the export of the earlier stage `init.from`."""
  source = init['from']
  if source not in results:
    raise ChainError(f'config.stage_init.{name}: {source!r} is not an earlier stage')
  stage_config.init_from.path = os.path.join(workdir, source, 'export')
  stage_config.init_from.source_prefix = init.get('source_prefix', '')


def parse_stage(entry: str) -> tuple[str, str]:
  """'action=configs/action.py:tiny' -> ('action', 'configs/action.py:tiny')."""
  name, sep, spec = entry.partition('=')
  if not sep or name not in STAGES:
    raise ChainError(
      f'config.stages: {entry!r} is not name=configs/<stage>.py[:variant] '
      f'with name in {", ".join(STAGES)}'
    )
  return name, spec


def ensure_dataset(data, workdir: str) -> str:
  """The dataset root, after writing the synthetic dataset and the TFDS builds it lacks."""
  from tps_jax.datasets import build, synthetic  # pylint: disable=g-import-not-at-top

  root = os.path.abspath(data.root or os.path.join(workdir, 'Kinetics-TPS'))
  jobs = data.get('jobs', 0) or len(os.sched_getaffinity(0))
  finished = os.path.isfile(os.path.join(root, 'list', 'video_test_flist.csv'))
  try:
    if not finished:
      if (
        data.root
        and os.path.isdir(root)
        and not os.path.isfile(os.path.join(root, 'synthetic.json'))
      ):
        raise ChainError(
          f'{root}: not a finished Kinetics-TPS dataset (no '
          'list/video_test_flist.csv), and not a synthetic one to complete'
        )
      say(f'writing the synthetic dataset to {root}')
      say(
        str(
          synthetic.write_synthetic(
            root, videos=data.videos, seed=data.seed, jobs=jobs, progress=False
          )
        )
      )
    build.build_datasets(
      root, datasets=list(data.datasets), seed=data.seed, jobs=jobs, progress=False, say=say
    )
  except (synthetic.SyntheticError, *build.ERRORS) as e:  # one line, naming the file
    raise ChainError(str(e)) from None
  return root


def _labels(dataset: str, config, split: str) -> np.ndarray:
  """Labels of a split: (N,) actions, or (N, 10) part states with -1 for absent parts."""
  from tps_jax.data import tfds_dirs, tfds_layout  # pylint: disable=g-import-not-at-top
  from tps_jax.input import pipelines  # pylint: disable=g-import-not-at-top

  settings = pipelines.data_fields(dataset, config)
  directory = pipelines.dataset_path(dataset, settings)
  if dataset == 'part_states':
    return tfds_layout.state_table(directory, split)
  source = tfds_dirs.builder_from_directory(directory).as_data_source(split)
  return np.array([source[i]['label'] for i in range(len(source))], np.int64)


def baselines(dataset: str, config) -> dict[str, float]:
  """{'chance': 1 / classes, 'majority': training-majority accuracy on val} of a
  classifier's dataset; {} for the detectors' (mAP has no such baseline)."""
  from tps_jax.input import pipelines  # pylint: disable=g-import-not-at-top

  if dataset not in ('part_states', 'action_clips'):
    return {}
  metadata = pipelines.dataset_metadata(dataset, config)
  train, val = _labels(dataset, config, 'train'), _labels(dataset, config, 'val')
  if dataset == 'part_states':
    hits = count = 0
    for part in range(train.shape[1]):
      seen = train[:, part][train[:, part] >= 0]
      truth = val[:, part][val[:, part] >= 0]
      if seen.size:
        hits += int((truth == np.bincount(seen).argmax()).sum())
      count += truth.size
    return {'chance': 1.0 / len(metadata['states']), 'majority': hits / max(count, 1)}
  majority = np.bincount(train).argmax() if train.size else -1
  return {
    'chance': 1.0 / len(metadata['actions']),
    'majority': float(np.mean(val == majority)) if val.size else 0.0,
  }


def _minutes(seconds: float) -> str:
  return f'{int(seconds // 60)} min {int(seconds % 60)} s'


def train_stage(
  name: str, spec: str, config, workdir: str, root: str, results: dict[str, Any]
) -> dict[str, Any]:
  """Trains (or resumes) one stage in WORKDIR/<name>; returns its results row."""
  stage_config = load_stage_config(spec)
  stage_config.data.root = root
  apply_overrides(stage_config, name, config.get('stage_overrides', {}))
  # A resume with changed settings refuses unless told, as a single stage does.
  stage_config.allow_config_change = config.get('allow_config_change', False)
  if name in config.get('stage_init', {}):
    _init_from_stage(stage_config, config.stage_init[name], workdir, name, results)
  stage_dir = os.path.join(workdir, name)
  say(f'== {name}: {spec} -> {stage_dir}')
  start = time.perf_counter()
  summary = trainer.train_and_evaluate(stage_config, stage_dir)
  if summary['preempted']:
    return {'preempted': True}
  dataset, metric = STAGES[name]
  value = summary['eval'].get(metric, float('nan'))
  say(f'== {name} done in {_minutes(time.perf_counter() - start)}: {metric} {value:.4f}')
  return {
    'metric': metric,
    'value': value,
    'views': summary['eval'].get(f'tta_{metric}'),
    'export': summary['export'],
    **baselines(dataset, stage_config),
  }


def evaluate_end_to_end(config, workdir: str, root: str, results: dict[str, Any]) -> dict[str, Any]:
  """Bundles the four networks, parses `config.pipeline.split` with every ablation row
  and scores them; also the part-state top-1 with the predicted action."""
  # pylint: disable=g-import-not-at-top
  from tps_jax.data import submission
  from tps_jax.inference import ablation, bundle, part_states, pipeline_options, runner, videos

  exports = {name: results[name]['export'] for name in STAGES}
  options = pipeline_options.PipelineOptions.from_dict(config.pipeline.settings.to_dict())
  bundle_dir = bundle.write_bundle(
    os.path.join(workdir, BUNDLE_DIR),
    humans=exports['human_detector'],
    parts=exports['part_detector'],
    states=exports['part_state'],
    actions=[exports['action']],
    options=options,
    overwrite=True,
  )
  parsed = bundle.load_bundle(bundle_dir)
  split = config.pipeline.split
  problems: list[str] = []
  items = videos.list_videos(data_root=root, split=split, problems=problems)
  truth = runner.ground_truth(items, data_root=root, split=split, required=True)
  say(
    f'== end to end: {len(items)} {split} videos through {bundle_dir}, '
    f'{len(ablation.ROWS)} ablation rows in one pass'
  )
  start = time.perf_counter()
  out = os.path.join(workdir, PREDICTIONS_DIR)
  prediction = runner.predict(
    parsed,
    items,
    out,
    variants=[v for _, v in ablation.ROWS],
    truth=truth,
    problems=problems,
    run_info={'bundle': bundle.fingerprint(bundle_dir)},
  )
  for (name, _), pred in zip(ablation.ROWS, prediction.submissions):
    submission.write_submission(os.path.join(out, name.replace(' ', '_')), *pred)
  rows = ablation.score_rows(truth, prediction.submissions, parsed)
  report = write_error_report(os.path.join(out, REPORT_DIR), truth, prediction, rows, items)
  predicted = prediction.submissions[0][0]
  states_top1 = part_states.part_state_top1(
    parsed.states, data_root=root, split=split, actions=predicted
  )['top1']
  say(
    f'== end to end done in {_minutes(time.perf_counter() - start)}: '
    + '; '.join(prediction.summary())
  )
  return {
    'rows': rows,
    'videos': len(items),
    'split': split,
    'part_state_predicted_action': states_top1,
    'report': report,
  }


def write_error_report(out_dir: str, truth, prediction, rows, items) -> str:
  """The error-analysis page of the system's submission (its first variant), the
  ablation's rows as bars; returns its path."""
  # pylint: disable=g-import-not-at-top
  from tps_jax.metrics import report_page
  from tps_jax.metrics import score as score_lib

  pred_vid, pred_part = prediction.submissions[0]
  report = score_lib.challenge_score(truth.vid, truth.part, pred_vid, pred_part, details=True)
  return report_page.write_report(
    out_dir,
    report,
    truth.part,
    pred_part,
    ablation=[(row.name, row.score) for row in rows],
    video_paths={item.name: item.path for item in items},
    title='Kinetics-TPS error analysis: the demo (system row)',
  )


def run_chain(config, workdir: str) -> dict[str, Any]:
  """Runs a chain config (module docstring); returns {stage: results row, ...}."""
  workdir = os.path.abspath(workdir)
  start = time.perf_counter()
  stages = [parse_stage(entry) for entry in config.stages]
  root = ensure_dataset(config.data, workdir)
  results: dict[str, Any] = {}
  for name, spec in stages:
    results[name] = train_stage(name, spec, config, workdir, root, results)
    if results[name].get('preempted'):
      return results
  end_to_end = None
  if config.get('pipeline') and all(name in results for name in STAGES):
    end_to_end = evaluate_end_to_end(config, workdir, root, results)
  print(format_results(results, end_to_end), flush=True)
  say(f'chain finished in {_minutes(time.perf_counter() - start)}')
  return results


def format_results(results: dict[str, dict[str, Any]], end_to_end=None) -> str:
  """The stages' validation results beside their baselines, then the end-to-end table."""
  lines = [
    'validation results (synthetic Kinetics-TPS val split):',
    f'  {"stage":<16}{"metric":<10}{"value":>8}{"chance":>10}{"majority":>10}',
  ]
  for name, r in results.items():
    chance = f'{r["chance"]:>10.3f}{r["majority"]:>10.3f}' if 'chance' in r else ''
    lines.append(f'  {name:<16}{r["metric"]:<10}{r["value"]:>8.3f}{chance}')
    if r.get('views') is not None:  # the multi-view (TTA) evaluation of the stage
      lines.append(f'  {"":<16}{"+views":<10}{r["views"]:>8.3f}')
    if name == 'part_state' and end_to_end:
      lines.append(f'  {"":<16}{"+pred act":<10}{end_to_end["part_state_predicted_action"]:>8.3f}')
  lines.append(
    "chance: 1 / number of classes; majority: always the training split's most "
    'frequent class (per part for part states); +views: averaged over clips x '
    "crops; +pred act: with the recogniser's action instead of the true one"
  )
  if end_to_end:
    from tps_jax.inference import ablation  # pylint: disable=g-import-not-at-top

    lines.append('')
    lines.append(
      f'end to end, challenge score on the {end_to_end["videos"]} {end_to_end["split"]} videos:'
    )
    lines.append(ablation.format_table(end_to_end['rows']))
    if end_to_end.get('report'):
      lines.append(f'error analysis (open in a browser): {end_to_end["report"]}')
  return '\n'.join(lines)


def run_cli(config, workdir: str, **distributed) -> None:
  """`run_train.py` with a chain config: one line for known errors, exit codes as the
  trainer's (tps_jax/train/trainer.py run_cli)."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  initialize_distributed(**distributed)
  try:
    trainer.prepare_workdir(workdir)
    results = run_chain(config, workdir)
  except (ChainError, trainer.TrainingError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  except Exception as e:  # the other library errors that are one line by contract
    from tps_jax.inference.export import ExportError  # pylint: disable=g-import-not-at-top
    from tps_jax.inference.runner import RunError  # pylint: disable=g-import-not-at-top
    from tps_jax.train import checkpointing  # pylint: disable=g-import-not-at-top

    if isinstance(
      e, (ExportError, RunError, checkpointing.CheckpointError, run_config.RunConfigError)
    ):
      sys.exit(f'error: {e}')
    raise
  if any(r.get('preempted') for r in results.values()):
    sys.exit(trainer.PREEMPTED_EXIT_CODE)
