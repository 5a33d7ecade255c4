"""Reading PyTorch checkpoints without unpickling arbitrary objects; layout helpers.

`.safetensors` are read with the safetensors library (numpy; bfloat16 through its flax
reader); anything else (`.pth`, `.pt`, `.bin`, `.ckpt`) with
`torch.load(weights_only=True)`, which refuses pickled objects other than tensors and
plain containers. torch is imported lazily: the library never needs it otherwise.
Tensors come back as numpy arrays keyed by their state-dict names; floating point ones
as float32 (parameters are float32 in tps_jax).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

# Containers that training frameworks put around the state dict, in order of preference.
_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_state', 'params')


class ConversionError(ValueError):
  """A checkpoint that cannot be read or does not fit the requested architecture."""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a .safetensors file or a weights-only torch checkpoint."""
  if not os.path.isfile(path):
    raise ConversionError(f'{path}: no such file')
  if path.endswith('.safetensors'):
    state = _read_safetensors(path)
  else:
    state = _read_torch(path)
  if not state:
    raise ConversionError(f'{path}: the checkpoint holds no tensors')
  return state


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(path, framework='numpy') as f:
      names = list(f.keys())
      dtypes = {name: f.get_slice(name).get_dtype() for name in names}
      state = {name: f.get_tensor(name) for name in names if dtypes[name] != 'BF16'}
    bf16 = [name for name in names if dtypes[name] == 'BF16']
    if bf16:  # numpy has no bfloat16: read those through jax (ml_dtypes) arrays.
      with safe_open(path, framework='flax') as f:
        state.update({name: np.asarray(f.get_tensor(name), np.float32) for name in bf16})
  except (SafetensorError, OSError, ValueError) as e:
    raise ConversionError(f'{path}: not a readable safetensors file ({_first_line(e)})'
                          ) from None
  return {name: _as_float32(state[name]) for name in names}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ConversionError(f'{path}: reading a torch checkpoint needs torch (pip install '
                          'torch), or convert it to .safetensors') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for pickled objects / corrupt files.
    message = str(e)
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', message)
    reason = (f'it pickles {refused[1]}, which a weights-only load refuses' if refused
              else _first_line(e))
    raise ConversionError(f'{path}: cannot be read as a weights-only checkpoint ({reason}); '
                          're-save its state dict alone') from None
  state = _unwrap(obj, path)
  out = {}
  for name, value in state.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      out[name] = value.float().numpy() if value.is_floating_point() else value.numpy()
  return out


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside the containers training frameworks save."""
  while isinstance(obj, Mapping) and not any(hasattr(v, 'shape') for v in obj.values()):
    inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      raise ConversionError(f'{path}: no state dict found (top-level keys: '
                            f'{", ".join(map(str, list(obj)[:8]))})')
    obj = inner
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  return obj


def _as_float32(value: np.ndarray) -> np.ndarray:
  return value.astype(np.float32) if value.dtype.kind == 'f' else value


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0] if text else ""}'.rstrip(': ')


# ----------------------------------------------------------------------- renaming / layout

Rule = tuple[str, 'str | Callable[[re.Match], str]']


def rename(state: Mapping[str, np.ndarray], rules: Iterable[Rule]) -> dict[str, str]:
  """{new name: old name}: regex rules applied in order to every key."""
  compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
  names = {}
  for key in state:
    new = key
    for pattern, repl in compiled:
      new = pattern.sub(repl, new)
    if new in names:
      raise ConversionError(f'keys {names[new]} and {key} both map to {new}')
    names[new] = key
  return names


def linear_to_flax(weight: np.ndarray) -> np.ndarray:
  """torch Linear (out, in) -> flax Dense kernel (in, out)."""
  return np.ascontiguousarray(weight.T)


def conv_to_flax(weight: np.ndarray) -> np.ndarray:
  """torch Conv (out, in, *kernel) -> flax Conv kernel (*kernel, in, out)."""
  return np.ascontiguousarray(np.moveaxis(weight, (0, 1), (-1, -2)))


def torch_to_flax_leaf(path: str, value: np.ndarray) -> np.ndarray:
  """A torch parameter in the flax layout of leaf `path`: kernels are transposed."""
  if not path.endswith('kernel'):
    return value
  return linear_to_flax(value) if value.ndim == 2 else conv_to_flax(value)


def check_tree(expected: Mapping[str, tuple], got: Mapping[str, np.ndarray], source: str,
               allow_missing: Iterable[str] = ()) -> None:
  """Raises one ConversionError listing the missing / unexpected keys and shape mismatches
  of flat {path: array} `got` against flat {path: shape} `expected`."""
  missing = sorted(set(expected) - set(got) - set(allow_missing))
  unexpected = sorted(set(got) - set(expected))
  mismatched = [f'{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k])}'
                for k in sorted(set(expected) & set(got))
                if tuple(got[k].shape) != tuple(expected[k])]
  problems = []
  if missing:
    problems.append(f'missing keys: {", ".join(missing)}')
  if unexpected:
    problems.append(f'unexpected keys: {", ".join(unexpected)}')
  if mismatched:
    problems.append(f'shape mismatches: {"; ".join(mismatched)}')
  if problems:
    raise ConversionError(f'{source}: ' + ' | '.join(problems))


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b/kernel': x} -> {'a': {'b': {'kernel': x}}}."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree
