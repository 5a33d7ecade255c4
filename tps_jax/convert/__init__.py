"""PyTorch checkpoint import: `load_pytorch_weights(path, arch, **model_overrides)`.

Checkpoints are read without unpickling objects (io.py), converted by the converter
registered for the arch (registry.py explains how to add one; swin.py serves the Swin
and Video Swin arches) and checked against the model's parameter shapes.
`convert_checkpoint(arch, input_path, out)` writes the result as a folder that
`init_from` reads (checkpoint.py); command line:
`python -m tps_jax.convert --arch swin_l --input X.pth --out DIR`.
"""

from tps_jax.convert.checkpoint import convert_checkpoint, write_checkpoint
from tps_jax.convert.io import ConversionError, read_state_dict
from tps_jax.convert.registry import (
  Conversion,
  convert_state_dict,
  load_pytorch_weights,
  register,
  supported_archs,
)

__all__ = [
  'Conversion',
  'ConversionError',
  'convert_checkpoint',
  'convert_state_dict',
  'load_pytorch_weights',
  'read_state_dict',
  'register',
  'supported_archs',
  'write_checkpoint',
]
