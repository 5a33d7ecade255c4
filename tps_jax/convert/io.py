"""Reading PyTorch checkpoints without unpickling arbitrary objects; layout helpers.

`.safetensors` are read with the safetensors library (numpy; bfloat16 through its flax
reader); anything else (`.pth`, `.pt`, `.bin`, `.ckpt`) with
`torch.load(weights_only=True)`, which refuses pickled objects other than tensors and
plain containers. When it refuses, the error names the first foreign global the pickle
would import, found by reading its opcodes (`pickle_globals`), never by unpickling;
it never suggests turning `weights_only` off. torch is imported lazily: the library
never needs it otherwise.
Tensors come back as numpy arrays keyed by their state-dict names; floating point ones
as float32 (parameters are float32 in tps_jax).
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

# Containers that training frameworks put around the state dict, in order of preference.
_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_state', 'params')
# Globals of a plain tensor file: torch's tensor / storage rebuilders and dtypes, and
# the containers of a state dict.
_PLAIN_GLOBAL = re.compile(r'^(torch\.|collections\.OrderedDict$|_codecs\.encode$)')
_STRING_OPCODES = frozenset(
  {
    'STRING',
    'BINSTRING',
    'SHORT_BINSTRING',
    'UNICODE',
    'BINUNICODE',
    'SHORT_BINUNICODE',
    'BINUNICODE8',
  }
)
_LISTED = 5  # names listed in an error before "and N more"


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
    raise ConversionError(f'{path}: not a readable safetensors file ({_first_line(e)})') from None
  return {name: _as_float32(state[name]) for name in names}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ConversionError(
      f'{path}: reading a torch checkpoint needs torch (pip install '
      '"tps_jax[convert]"), or convert it to .safetensors'
    ) from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for pickled objects / corrupt files.
    raise ConversionError(_load_failure(path, e)) from None
  state = _unwrap(obj, path)
  out = {}
  for name, value in state.items():
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      out[name] = value.float().numpy() if value.is_floating_point() else value.numpy()
  return out


def _load_failure(path: str, error: Exception) -> str:
  """Why torch.load(weights_only=True) failed, on one line, without torch's advice."""
  resave = 're-save the state dict alone (torch.save(model.state_dict(), path)) or as .safetensors'
  try:
    foreign = [n for n in pickle_globals(path) if not _PLAIN_GLOBAL.match(n)]
  except Exception:  # pylint: disable=broad-except  (a file too damaged to scan)
    foreign = []
  if foreign:
    return (
      f'{path}: not a plain tensor file: its pickle imports {listing(foreign)}, '
      f'which a weights-only load refuses to run; {resave}'
    )
  # torch wraps its reason in advice to load with weights_only=False: the unsafe route,
  # not ours to pass on. The reason is the paragraph that does not mention it.
  paragraphs = [p.strip() for p in re.split(r'\n\s*\n', str(error)) if p.strip()]
  reasons = [p.splitlines()[0] for p in paragraphs if 'weights_only' not in p]
  reason = f'{type(error).__name__}: {reasons[0]}' if reasons else type(error).__name__
  return f'{path}: cannot be read as a torch checkpoint ({reason})'


def pickle_globals(path: str) -> list[str]:
  """'module.name' of every global the pickle(s) of a torch file would import, in
  order, without duplicates; read from the opcodes, nothing is unpickled."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      streams = [archive.read(n) for n in archive.namelist() if n.endswith('data.pkl')]
  else:  # the legacy format: several pickles in a row, then raw storage bytes
    with open(path, 'rb') as f:
      streams = [f.read()]
  names = []
  for data in streams:
    names += _globals_in(io.BytesIO(data))
  return list(dict.fromkeys(names))


def _globals_in(stream: io.BytesIO) -> list[str]:
  """GLOBAL / INST / STACK_GLOBAL names of the pickles in `stream`, read until the end
  or bytes that are not a pickle. STACK_GLOBAL takes its names from the stack: the
  strings pushed (or fetched from the memo) just before it."""
  names, strings, memo = [], [], {}
  size = len(stream.getbuffer())
  while stream.tell() < size:
    try:
      top = None  # the string on top of the stack, if the last opcode pushed one
      for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ('GLOBAL', 'INST'):
          names.append(arg.replace(' ', '.'))
        elif name == 'STACK_GLOBAL' and len(strings) >= 2:
          names.append(f'{strings[-2]}.{strings[-1]}')
        if name in _STRING_OPCODES:
          top = arg if isinstance(arg, str) else arg.decode('latin-1')
          strings.append(top)
          continue
        if name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
          memo[arg] = top
        elif name == 'MEMOIZE':
          memo[len(memo)] = top
        elif name in ('GET', 'BINGET', 'LONG_BINGET') and isinstance(memo.get(arg), str):
          top = memo[arg]
          strings.append(top)
          continue
        if name not in ('PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'):
          top = None
    except ValueError:  # not (or no longer) a pickle
      break
  return names


def listing(items: list[str], limit: int = _LISTED, sep: str = ', ') -> str:
  """'a, b, c' or 'a, b, c, d, e and 12 more': a list kept to one readable line."""
  shown = sep.join(items[:limit])
  return shown if len(items) <= limit else f'{shown} and {len(items) - limit} more'


def natural_key(name: str) -> tuple:
  """Order of tensor names in errors: parameters before BatchNorm statistics (they say
  more), numbers compared as numbers (blocks_6 before blocks_10)."""
  return (
    name.startswith('batch_stats/'),
    [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)],
  )


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside the containers training frameworks save."""
  while isinstance(obj, Mapping) and not any(hasattr(v, 'shape') for v in obj.values()):
    inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      raise ConversionError(
        f'{path}: no state dict found (top-level keys: {", ".join(map(str, list(obj)[:8]))})'
      )
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


def check_tree(
  expected: Mapping[str, tuple],
  got: Mapping[str, np.ndarray],
  source: str,
  allow_missing: Iterable[str] = (),
) -> None:
  """Raises one ConversionError naming the first few missing / unexpected keys and shape
  mismatches ('and N more') of flat {path: array} `got` against flat
  {path: shape} `expected`."""
  missing = sorted(set(expected) - set(got) - set(allow_missing), key=natural_key)
  unexpected = sorted(set(got) - set(expected), key=natural_key)
  mismatched = [
    f'{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k])}'
    for k in sorted(set(expected) & set(got), key=natural_key)
    if tuple(got[k].shape) != tuple(expected[k])
  ]
  problems = []
  if missing:
    problems.append(f'missing keys: {listing(missing)}')
  if unexpected:
    problems.append(f'unexpected keys: {listing(unexpected)}')
  if mismatched:
    problems.append(f'shape mismatches: {listing(mismatched, sep="; ")}')
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
