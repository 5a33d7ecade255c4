"""Converts a PyTorch checkpoint into an orbax checkpoint that training can start from.

  python -m tps_jax.convert --arch swin_l --out /ckpt/swin_l_22k
      --input swin_large_patch4_window7_224_22k.pth [--window 12,12] [--overwrite]

Writes OUT/variables (orbax) and OUT/model.json, all at once; prints every tensor
loaded or skipped. Errors are one line on stderr, exit status 1, and nothing is
written. How: tps_jax/convert/checkpoint.py (`convert_checkpoint`).
"""

from __future__ import annotations

import sys

from absl import flags

from tps_jax import cli
from tps_jax.convert.checkpoint import convert_checkpoint
from tps_jax.convert.io import ConversionError
from tps_jax.convert.registry import supported_archs

_ARCH = flags.DEFINE_string(
  'arch', None, f'Target architecture, one of: {", ".join(supported_archs())}.'
)
_INPUT = flags.DEFINE_string(
  'input', None, '.pth / .pt / .bin (weights-only torch.load) or .safetensors.'
)
_OUT = flags.DEFINE_string('out', None, 'Directory to create.')
_WINDOW = flags.DEFINE_list(
  'window',
  None,
  'Window size of the target model, e.g. 12,12 '
  'or 16,7,7 (relative position bias tables are resized).',
)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
flags.mark_flags_as_required(['arch', 'input', 'out'])
flags.register_validator(
  'window',
  lambda w: w is None or all(v.isdigit() for v in w),
  'must be integers, e.g. 12,12 or 16,7,7',
)


def main(argv) -> int:
  del argv
  window = [int(v) for v in _WINDOW.value] if _WINDOW.value else None
  try:
    convert_checkpoint(
      _ARCH.value, _INPUT.value, _OUT.value, window=window, overwrite=_OVERWRITE.value
    )
  except (ConversionError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  cli.run(main)
