"""Converts a PyTorch checkpoint into an orbax checkpoint that training can start from.

  conversion = convert_checkpoint('swin_l', 'swin_large_patch4_window7_224_22k.pth',
                                  '/ckpt/swin_l_22k', window=(12, 12), overwrite=False)

Command line: `python -m tps_jax.convert` (tps_jax/convert/__main__.py; its flags are
these arguments). Writes DIR/variables (orbax, {'params': ...} plus 'batch_stats' for
BatchNorm models) and DIR/model.json (arch and the model fields the checkpoint set,
e.g. num_classes), all at once: into a temporary sibling first, renamed to DIR when
complete. `tps_jax.train.checkpointing.load_collections(DIR, prefix)` reads it (the
trainer's `init_from`). Every tensor loaded or skipped is reported (`report_lines`,
through `say`); errors are a one-line ConversionError, and nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence

from tps_jax.convert.io import ConversionError, read_state_dict
from tps_jax.convert.registry import Conversion, convert_state_dict, get_converter


def report_lines(conversion: Conversion, source: str) -> list[str]:
  """What was loaded (checkpoint key -> flax path, shape), skipped (and why), adapted."""
  lines = [f'{source}: {conversion.flavour}']
  for path in sorted(conversion.params):
    lines.append(
      f'  loaded  {conversion.sources[path]} -> {path} {tuple(conversion.params[path].shape)}'
    )
  for path in sorted(conversion.model_state):
    lines.append(
      f'  loaded  {conversion.sources.get(path, path)} -> {path} '
      f'{tuple(conversion.model_state[path].shape)}'
    )
  grouped: dict[str, list[str]] = {reason: [] for reason in conversion.grouped_reasons}
  for key in sorted(conversion.skipped):
    reason = conversion.skipped[key]
    if reason in grouped:
      grouped[reason].append(key)
    else:
      lines.append(f'  skipped {key}: {reason}')
  for reason, keys in grouped.items():
    if keys:
      lines.append(f'  skipped {len(keys)} tensors ({reason}): {keys[0]}, ...')
  lines += [f'  note: {note}' for note in conversion.notes]
  lines.append(
    f'loaded {len(conversion.params) + len(conversion.model_state)} tensors, '
    f'skipped {len(conversion.skipped)}'
  )
  return lines


def write_checkpoint(
  conversion: Conversion, arch: str, source: str, output: str, overwrite: bool = False
) -> None:
  """DIR/variables + DIR/model.json, written to a temporary sibling and renamed (DIR's
  parent folders are made)."""
  import orbax.checkpoint as ocp  # only needed here: keeps `--help` fast

  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise ConversionError(f'{output}: already exists (pass --overwrite to replace it)')
  parent = os.path.dirname(output)
  try:  # `--out weights/swin_t` in a fresh clone: make `weights/`
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise ConversionError(f'{parent}: cannot make the folder ({e.strerror})') from None
  tmp = f'{output}.tmp-{os.getpid()}'
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, 'variables'), conversion.variables())
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, 'model.json'), 'w') as f:
      json.dump(
        {
          'arch': arch,
          'model_kwargs': conversion.model_kwargs,
          'flavour': conversion.flavour,
          'source': os.path.abspath(source),
        },
        f,
        indent=2,
        default=str,
      )
      f.write('\n')
    old = f'{output}.old-{os.getpid()}'
    if os.path.exists(output):
      os.replace(output, old)
    os.replace(tmp, output)
    if os.path.exists(old):
      shutil.rmtree(old)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def convert_checkpoint(
  arch: str,
  input_path: str,
  out: str,
  *,
  window: Sequence[int] | None = None,
  overwrite: bool = False,
  say: Callable[[str], None] = print,
) -> Conversion:
  """Converts `input_path` (.pth / .pt / .bin read weights-only, or .safetensors) for
  `arch` and writes it to `out`; `window` resizes the relative position bias tables
  (e.g. (12, 12) or (16, 7, 7)). Says what was loaded and skipped, then where it wrote."""
  get_converter(arch)
  if os.path.exists(out) and not overwrite:
    raise ConversionError(
      f'{os.path.abspath(out)}: already exists (pass --overwrite to replace it)'
    )
  overrides = {'window_size': tuple(window)} if window else {}
  conversion = convert_state_dict(read_state_dict(input_path), arch, source=input_path, **overrides)
  say('\n'.join(report_lines(conversion, input_path)))
  write_checkpoint(conversion, arch, input_path, out, overwrite)
  say(f'wrote {os.path.abspath(out)}')
  return conversion
