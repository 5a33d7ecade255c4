"""A pipeline bundle: the four exports and the pipeline settings in one folder.

```
BUNDLE/
  pipeline.json        {"format": 1, "settings": PipelineOptions fields, "networks": {"humans":
                        "humans", "parts": "parts", "states": "states", "action":
                        ["action_0", ...]}, "sources": the export folders copied}
  humans/ parts/ states/ action_0/ [action_1/ ...]     copies of the stages' export/
  serialized/          (--serialize) parse_frames.bin + signature.json
```
An ensemble of human detectors, part detectors or part-state networks (exports of the
same model with the same vocabularies and preprocessing, e.g. two seeds) is listed as
"humans": ["humans_0", "humans_1"] (folders humans_0/, humans_1/), and so on; their
detections are merged and their logits averaged in the one program
(tps_jax/inference/pipeline.py).
`write_bundle` checks the exports fit together (`pipeline_checks.check_vocabularies`) before
writing anything, and writes atomically (a temporary sibling renamed into place).
`load_bundle(dir) -> Pipeline`. The command line is `python -m tps_jax.export_pipeline`.

`serialize_parse_frames` writes the per-frame program with `jax.export` for a stated
frame batch (on the human detector's canvas). Running it needs jax, numpy and orbax
only, no tps_jax code:
```python
exported = jax.export.deserialize(open(f'{B}/serialized/parse_frames.bin', 'rb').read())
variables = {k: ocp.PyTreeCheckpointer().restore(f'{B}/{k}/variables')
             for k in ('humans', 'parts', 'states')}
outputs = exported.call(variables, frames, image_shape, action)   # OUTPUT_KEYS order
```
(frames uint8 (B, H, W, 3) resized to the canvas as `augment.resize_pad` does,
image_shape int32 (B, 2) the frames' sizes, action int32 (B,);
serialized/signature.json states B, the canvas, the vocabularies and the outputs.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.inference.export import ExportError, load_export
from tps_jax.inference.pipeline_options import PipelineOptions

PIPELINE_FILE = 'pipeline.json'
SERIALIZED_DIR = 'serialized'
FORMAT = 1
# What `parse_frames` returns, in order (the serialized program's outputs).
OUTPUT_KEYS = (
  'human_boxes',
  'human_scores',
  'human_valid',
  'part_boxes',
  'part_scores',
  'part_states',
  'part_valid',
)


STAGES = ('humans', 'parts', 'states')


def _networks(counts: dict[str, int]) -> dict[str, Any]:
  """The folder of each network: one name per stage, a list for an ensemble."""
  names = {
    stage: stage if counts[stage] == 1 else [f'{stage}_{i}' for i in range(counts[stage])]
    for stage in STAGES
  }
  return {**names, 'action': [f'action_{i}' for i in range(counts['action'])]}


def _as_list(paths: str | Sequence[str]) -> list[str]:
  return [paths] if isinstance(paths, str) else list(paths)


def write_bundle(
  out: str,
  *,
  humans: str | Sequence[str],
  parts: str | Sequence[str],
  states: str | Sequence[str],
  actions: Sequence[str],
  options: PipelineOptions,
  overwrite: bool = False,
) -> str:
  """Copies the exports (an ensemble allowed for every stage) and the options to
  `out`, after building the pipeline they make (which refuses exports that do not fit
  together and views that do not fit in memory)."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ExportError(f'{out}: already exists (pass --overwrite to replace it)')
  exports = {
    stage: [load_export(p) for p in _as_list(paths)]
    for stage, paths in (('humans', humans), ('parts', parts), ('states', states))
  }
  exports['action'] = [load_export(a) for a in actions]
  for stage, flag in (('humans', 'humans'), ('parts', 'parts'), ('states', 'states')):
    if not exports[stage]:
      raise ExportError(f'no {stage} export given (--{flag})')
  if not exports['action']:
    raise ExportError('no action recogniser export given (--action)')
  pipeline_lib.Pipeline(
    exports['humans'], exports['parts'], exports['states'], exports['action'], options
  )
  names = _networks({stage: len(e) for stage, e in exports.items()})
  copies = {}
  for stage, members in exports.items():
    copies.update(zip(_as_list(names[stage]), members))
  tmp = out + '.tmp'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  for folder, export in copies.items():
    shutil.copytree(export.path, os.path.join(tmp, folder))
  sources = {folder: export.path for folder, export in copies.items()}
  with open(os.path.join(tmp, PIPELINE_FILE), 'w') as f:
    json.dump(
      {'format': FORMAT, 'settings': options.to_dict(), 'networks': names, 'sources': sources},
      f,
      indent=2,
    )
  if os.path.exists(out):
    shutil.rmtree(out)
  os.replace(tmp, out)
  return out


def fingerprint(bundle: str) -> str:
  """A digest of what the bundle computes with -- every file's name and content (the
  serialized programs aside: they are compiled from the rest) -- so that results made
  with one bundle are never mixed with another's, wherever either was copied or
  rebuilt (inference/runner.py). Reads the bundle once (seconds for full-size networks)."""
  bundle = os.path.abspath(bundle)
  digest = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(bundle)):
    dirs[:] = sorted(d for d in dirs if d != SERIALIZED_DIR)
    for name in sorted(files):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, bundle).encode() + b'\0')
      with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
          digest.update(chunk)
  return digest.hexdigest()[:16]


def _network_folders(networks: Any, bundle: str, path: str) -> dict[str, Any]:
  """pipeline.json's `networks`, each a folder name inside the bundle. A path that
  leaves it (absolute, `..`, a link out) is refused: a bundle is the networks it holds,
  so that its fingerprint covers what runs and a shared bundle reads nothing else."""
  if not isinstance(networks, dict):
    raise ExportError(f'{path}: networks must be an object, got {type(networks).__name__}')
  missing = [key for key in (*STAGES, 'action') if key not in networks]
  if missing:
    raise ExportError(f'{path}: networks has no {", ".join(missing)}')
  root = os.path.realpath(bundle)
  entries = []
  for key in (*STAGES, 'action'):  # a folder, or a non-empty list of them (an ensemble)
    value = networks[key]
    if key == 'action' and (not isinstance(value, list) or not value):
      raise ExportError(f'{path}: networks.action must be a non-empty list of folders')
    if isinstance(value, list) and value:  # an ensemble
      entries += [(f'{key}[{i}]', name) for i, name in enumerate(value)]
    else:
      entries.append((key, value))
  for key, name in entries:
    if not isinstance(name, str) or not name:
      raise ExportError(f'{path}: networks.{key} must be a folder name, got {name!r}')
    folder = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, folder]) != root or folder == root:
      raise ExportError(
        f'{path}: networks.{key} {name!r} is outside the bundle (a bundle holds its '
        'networks: make one with python -m tps_jax.export_pipeline)'
      )
  return networks


def read_manifest(bundle: str) -> dict[str, Any]:
  """BUNDLE/pipeline.json, its structure checked (ExportError: one line naming it)."""
  path = os.path.join(os.path.abspath(bundle), PIPELINE_FILE)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise ExportError(
      f'{path}: no such file (make a bundle with python -m tps_jax.export_pipeline)'
    ) from None
  except (OSError, ValueError) as e:  # ValueError: JSON or UTF-8
    raise ExportError(f'{path}: unreadable ({e})') from None
  except RecursionError:
    raise ExportError(f'{path}: unreadable (nested too deeply)') from None
  if not isinstance(manifest, dict):
    raise ExportError(f'{path}: expected a JSON object, got {type(manifest).__name__}')
  if manifest.get('format') != FORMAT:
    raise ExportError(f'{path}: format {manifest.get("format")!r}, this version reads {FORMAT}')
  for key in ('settings', 'networks'):
    if key not in manifest:
      raise ExportError(f'{path}: no {key!r} entry')
  _network_folders(manifest['networks'], bundle, path)
  return manifest


def load_bundle(
  bundle: str, *, dtype=jnp.float32, options: dict[str, Any] | None = None
) -> pipeline_lib.Pipeline:
  """The Pipeline of a bundle; `options` overrides fields of its pipeline.json (--set)."""
  bundle = os.path.abspath(bundle)
  manifest = read_manifest(bundle)
  names = manifest['networks']
  load = lambda names, kind: [
    load_export(os.path.join(bundle, n), dtype=dtype, kind=kind) for n in _as_list(names)
  ]
  saved = manifest['settings']
  try:
    if not isinstance(saved, dict):
      raise ValueError(f'settings must be an object, got {type(saved).__name__}')
    PipelineOptions.from_dict(saved)
  except ValueError as e:
    raise ExportError(f'{os.path.join(bundle, PIPELINE_FILE)}: {e}') from None
  try:
    merged = PipelineOptions.from_dict({**saved, **(options or {})})
  except ValueError as e:
    raise ExportError(f"settings given instead of the bundle's (--set): {e}") from None
  try:
    return pipeline_lib.Pipeline(
      load(names['humans'], 'human_detector'),
      load(names['parts'], 'part_detector'),
      load(names['states'], 'part_state'),
      load(names['action'], 'action'),
      merged,
    )
  except ValueError as e:
    if isinstance(e, ExportError):
      raise
    raise ExportError(f'{os.path.join(bundle, PIPELINE_FILE)}: {e}') from None


# ---------------------------------------------------------------------- jax.export


def _input_specs(pipeline: pipeline_lib.Pipeline, frame_batch: int):
  height, width = pipeline.canvas
  variables = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), pipeline.variables
  )
  return (
    variables,
    jax.ShapeDtypeStruct((frame_batch, height, width, 3), jnp.uint8),
    jax.ShapeDtypeStruct((frame_batch, 2), jnp.int32),
    jax.ShapeDtypeStruct((frame_batch,), jnp.int32),
  )


def serialize_parse_frames(
  bundle: str, *, frame_batch: int | None = None, platforms: Sequence[str] | None = None
) -> str:
  """Writes BUNDLE/serialized/: the compiled per-frame program (jax.export, no oracle)
  for `frame_batch` frames (default: the bundle's) and its signature. Returns the dir."""
  pipeline = load_bundle(bundle)
  frame_batch = frame_batch or pipeline.options.frame_batch

  def program(variables, frames, image_shape, action):
    outputs = pipeline.parse_frames(variables, frames, image_shape, action)
    return tuple(outputs[k] for k in OUTPUT_KEYS)

  specs = _input_specs(pipeline, frame_batch)
  platforms = tuple(platforms or (jax.default_backend(),))
  exported = jax.export.export(jax.jit(program), platforms=platforms)(*specs)
  out = os.path.join(os.path.abspath(bundle), SERIALIZED_DIR)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'parse_frames.bin.tmp'), 'wb') as f:
    f.write(exported.serialize())
  os.replace(os.path.join(out, 'parse_frames.bin.tmp'), os.path.join(out, 'parse_frames.bin'))
  signature = {
    'frame_batch': frame_batch,
    'canvas': list(pipeline.canvas),
    'platforms': list(platforms),
    'outputs': list(OUTPUT_KEYS),
    # An ensemble's variables: its members' trees stacked leaf by leaf (numpy.stack).
    'variables': {
      k: f'{names}/variables' if isinstance(names, str) else [f'{n}/variables' for n in names]
      for k, names in read_manifest(bundle)['networks'].items()
      if k in STAGES
    },
    'states': list(pipeline.state_names),
    'actions': list(pipeline.action_names),
    'inputs': {
      'frames': 'uint8 (B, H, W, 3) on the canvas (resize_pad)',
      'image_shape': 'int32 (B, 2) frame (height, width)',
      'action': 'int32 (B,) index in actions',
    },
  }
  with open(os.path.join(out, 'signature.json'), 'w') as f:
    json.dump(signature, f, indent=2)
  return out
