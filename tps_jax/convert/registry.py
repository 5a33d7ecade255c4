"""Converter registry: architecture name -> function that turns a state dict into params.

`load_pytorch_weights(path, arch, **model_overrides)` reads the checkpoint
(tps_jax/convert/io.py), looks the converter of `arch` up here, checks the params it
returns against the model's own parameter shapes and returns `(model, variables)`.
Nothing partial ever comes back: missing, unexpected and mis-shaped tensors are all
listed in one ConversionError.

Adding a converter (e.g. for a detector) takes one new file, `tps_jax/convert/<name>.py`:

    from tps_jax.convert.registry import Conversion, register

    def convert_my_net(state, arch, **overrides) -> Conversion:
      # state: {checkpoint key: np.ndarray}. Build the model (fields such as num_classes
      # may come from the checkpoint, `overrides` win), rename keys to flax paths
      # ('a/b/kernel'), transpose to flax layouts (io.linear_to_flax / conv_to_flax),
      # and say what was left out and why.
      return Conversion(model=..., params={path: array}, sources={path: key},
                        skipped={key: reason}, flavour='mmdetection Cascade R-CNN',
                        init_inputs=(jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),),
                        model_kwargs=...)

    register(('cascade_rcnn_swin_l', ...), convert_my_net)

and append 'tps_jax.convert.<name>' to `CONVERTER_MODULES` below: those modules are
imported on the first lookup (so importing tps_jax.convert stays light). A Swin
backbone inside a detector reuses `tps_jax.convert.swin.canonical_swin` and
`swin_params` (the detector's own keys are left in `Canonical.skipped`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from tps_jax.convert.io import ConversionError, listing, natural_key, read_state_dict, unflatten


@dataclasses.dataclass
class Conversion:
  """A converter's result: a model and its flat params, with where each came from."""

  model: nn.Module
  params: dict[str, np.ndarray]  # flat flax paths 'a/b/kernel' -> array
  sources: dict[str, str]  # flax path -> the checkpoint key it came from
  skipped: dict[str, str]  # checkpoint key -> why it was not used
  flavour: str  # the checkpoint's origin, in words
  init_inputs: tuple  # arrays / ShapeDtypeStructs that `init` the model
  model_kwargs: dict[str, Any]  # build arguments beside the arch (JSON-able)
  init_kwargs: dict[str, Any] = dataclasses.field(default_factory=lambda: {'train': False})
  notes: list[str] = dataclasses.field(default_factory=list)  # e.g. inflation, resizing
  # Non-parameter collections, flat 'collection/a/b/leaf' -> array (BatchNorm statistics).
  model_state: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # Skip reasons reported in one line with a count, not key by key (a mask branch).
  grouped_reasons: tuple[str, ...] = ()

  def variables(self) -> dict[str, Any]:
    """{'params': ..., 'batch_stats': ...}: what `model.apply` takes."""
    return {'params': unflatten(self.params), **unflatten(self.model_state)}


Converter = Callable[..., Conversion]
_CONVERTERS: dict[str, Converter] = {}
# Modules whose import registers converters.
CONVERTER_MODULES = (
  'tps_jax.convert.swin',
  'tps_jax.convert.resnet',
  'tps_jax.convert.detection',
  'tps_jax.convert.one_stage',
)


def register(archs, converter: Converter) -> None:
  """Makes `converter(state, arch, **overrides)` serve each of `archs`."""
  for arch in archs:
    if arch in _CONVERTERS and _CONVERTERS[arch] is not converter:
      raise ValueError(f'arch {arch!r} already has a converter')
    _CONVERTERS[arch] = converter


@functools.cache
def _import_converters() -> None:
  for module in CONVERTER_MODULES:
    importlib.import_module(module)


def supported_archs() -> list[str]:
  _import_converters()
  return sorted(_CONVERTERS)


def get_converter(arch: str) -> Converter:
  _import_converters()
  if arch not in _CONVERTERS:
    raise ConversionError(f'unknown arch {arch!r}; supported: {", ".join(supported_archs())}')
  return _CONVERTERS[arch]


def variable_shapes(conversion: Conversion) -> dict[str, tuple[int, ...]]:
  """{'collection/flax/path': shape} of all the model's variables (traced only)."""
  init = functools.partial(conversion.model.init, **conversion.init_kwargs)
  variables = jax.eval_shape(init, jax.random.key(0), *conversion.init_inputs)
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {'/'.join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def check_params(conversion: Conversion, arch: str, source: str) -> None:
  """Raises one ConversionError naming the first few missing, unexpected and mis-shaped
  tensors, then 'and N more' (parameters and model state such as BatchNorm statistics)."""
  expected = {
    (path[len('params/') :] if path.startswith('params/') else path): shape
    for path, shape in variable_shapes(conversion).items()
  }
  params = {**conversion.params, **conversion.model_state}
  sources = conversion.sources
  named = lambda path: sources.get(path, path)
  problems = []
  missing = sorted(set(expected) - set(params), key=natural_key)
  if missing:
    problems.append(f'missing keys (model parameters the checkpoint lacks): {listing(missing)}')
  unexpected = sorted((named(p) for p in set(params) - set(expected)), key=natural_key)
  if unexpected:
    problems.append(f'unexpected keys (not in the model): {listing(unexpected)}')
  mismatched = [
    f'{named(p)} {tuple(params[p].shape)} vs model {p} {expected[p]}'
    for p in sorted(set(params) & set(expected), key=natural_key)
    if tuple(params[p].shape) != expected[p]
  ]
  if mismatched:
    problems.append(f'shape mismatches (flax layout): {listing(mismatched, sep="; ")}')
  if problems:
    raise ConversionError(
      f'{source}: the checkpoint ({conversion.flavour}) does not fit '
      f'arch {arch}: ' + ' | '.join(problems)
    )


def convert_state_dict(
  state: dict[str, np.ndarray], arch: str, *, source: str = 'state dict', **model_overrides
) -> Conversion:
  """The checked conversion of an in-memory state dict (`source` names it in errors)."""
  converter = get_converter(arch)
  conversion = converter(state, arch, **model_overrides)
  check_params(conversion, arch, source)
  return conversion


def load_pytorch_weights(path: str, arch: str, **model_overrides) -> tuple[nn.Module, dict]:
  """(model, variables) from a PyTorch checkpoint (.pth / .safetensors): {'params': ...}
  and, for BatchNorm models, 'batch_stats'.

  `model.apply(variables, x, train=False)` gives the logits of the checkpoint's head
  (or pooled features for a headless checkpoint). `model_overrides` are model fields,
  e.g. `window_size=(12, 12)` (bias tables are resized) or `dtype=jnp.bfloat16`.
  """
  get_converter(arch)  # an unknown arch fails before the file is read
  conversion = convert_state_dict(read_state_dict(path), arch, source=path, **model_overrides)
  return conversion.model, conversion.variables()
