"""Converts a PyTorch checkpoint into an orbax checkpoint that training can start from.

  python -m tps_jax.convert --arch swin_l --output /ckpt/swin_l_22k
      --input swin_large_patch4_window7_224_22k.pth [--window 12 12] [--overwrite]

Writes DIR/variables (orbax, {'params': ...} plus 'batch_stats' for BatchNorm models)
and DIR/model.json (arch and the model fields the checkpoint set, e.g. num_classes),
all at once: into a temporary sibling first, renamed to DIR when complete.
`tps_jax.train.checkpointing.load_collections(DIR, prefix)` reads it (the trainer's
`init_from`). Every tensor loaded or skipped is
printed; errors are one line on stderr, exit status 1, and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from tps_jax.convert.io import ConversionError, read_state_dict
from tps_jax.convert.registry import (Conversion, convert_state_dict, get_converter,
                                      supported_archs)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m tps_jax.convert', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--arch', required=True,
                      help=f'target architecture, one of: {", ".join(supported_archs())}')
  parser.add_argument('--input', required=True,
                      help='.pth / .pt / .bin (weights-only torch.load) or .safetensors')
  parser.add_argument('--output', required=True, help='directory to create')
  parser.add_argument('--window', type=int, nargs='+', metavar='W',
                      help='window size of the target model, e.g. 12 12 or 16 7 7 '
                           '(relative position bias tables are resized)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace --output if it exists')
  return parser


def report_lines(conversion: Conversion, source: str) -> list[str]:
  """What was loaded (checkpoint key -> flax path, shape), skipped (and why), adapted."""
  lines = [f'{source}: {conversion.flavour}']
  for path in sorted(conversion.params):
    lines.append(f'  loaded  {conversion.sources[path]} -> {path} '
                 f'{tuple(conversion.params[path].shape)}')
  for path in sorted(conversion.model_state):
    lines.append(f'  loaded  {conversion.sources.get(path, path)} -> {path} '
                 f'{tuple(conversion.model_state[path].shape)}')
  for key in sorted(conversion.skipped):
    lines.append(f'  skipped {key}: {conversion.skipped[key]}')
  lines += [f'  note: {note}' for note in conversion.notes]
  lines.append(f'loaded {len(conversion.params) + len(conversion.model_state)} tensors, '
               f'skipped {len(conversion.skipped)}')
  return lines


def write_checkpoint(conversion: Conversion, arch: str, source: str, output: str,
                     overwrite: bool = False) -> None:
  """DIR/variables + DIR/model.json, written to a temporary sibling and renamed."""
  import orbax.checkpoint as ocp  # only needed here: keeps `--help` fast

  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise ConversionError(f'{output}: already exists (pass --overwrite to replace it)')
  parent = os.path.dirname(output)
  if not os.path.isdir(parent):
    raise ConversionError(f'{parent}: no such directory')
  tmp = f'{output}.tmp-{os.getpid()}'
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, 'variables'), conversion.variables())
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, 'model.json'), 'w') as f:
      json.dump({'arch': arch, 'model_kwargs': conversion.model_kwargs,
                 'flavour': conversion.flavour, 'source': os.path.abspath(source)},
                f, indent=2, default=str)
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


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    get_converter(args.arch)
    if os.path.exists(args.output) and not args.overwrite:
      raise ConversionError(f'{os.path.abspath(args.output)}: already exists (pass '
                            '--overwrite to replace it)')
    overrides = {'window_size': tuple(args.window)} if args.window else {}
    conversion = convert_state_dict(read_state_dict(args.input), args.arch,
                                    source=args.input, **overrides)
    print('\n'.join(report_lines(conversion, args.input)))
    write_checkpoint(conversion, args.arch, args.input, args.output, args.overwrite)
  except (ConversionError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {os.path.abspath(args.output)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
