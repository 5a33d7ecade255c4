"""What the pipeline refuses before it compiles, in one line each: exports that do not fit
together, ensemble members that differ, and test-time views beyond the memory allowed."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np

from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import geometry
from tps_jax.inference.export import Export, ExportError
from tps_jax.inference.pipeline_options import PipelineOptions


def check_vocabularies(
  humans: Export, parts: Export, states: Export, actions: Sequence[Export]
) -> None:
  """Refuses, in one line naming both sides, exports that do not fit together."""
  kinds = [(humans, 'human_detector'), (parts, 'part_detector'), (states, 'part_state')]
  kinds += [(a, 'action') for a in actions]
  for export, kind in kinds:
    if export.kind != kind:
      raise ExportError(f'{export.path}: a {export.kind} export where a {kind} is needed')
  if len(humans.vocab['classes']) != 1:
    raise ExportError(
      f'{humans.path}: a human detector has one class, this one has '
      f'{len(humans.vocab["classes"])} ({", ".join(humans.vocab["classes"])})'
    )
  if tuple(parts.vocab['classes']) != tps.PARTS:
    raise ExportError(
      f'{parts.path}: part detector classes {parts.vocab["classes"]} '
      f'are not the ten parts in order {list(tps.PARTS)} '
      f'({states.path} expects them)'
    )
  if tuple(states.vocab['parts']) != tps.PARTS:
    raise ExportError(f'{states.path}: parts {states.vocab["parts"]} are not {list(tps.PARTS)}')
  for action in actions:
    if tuple(action.vocab['actions']) != tuple(states.vocab['actions']):
      raise ExportError(
        f'{action.path}: action classes {action.vocab["actions"]} differ '
        f"from the part-state network's {states.vocab['actions']} "
        f'({states.path})'
      )


def check_ensembles(*ensembles: Sequence[Export]) -> None:
  """Refuses, in one line naming both, members of a stage's ensemble whose kind,
  vocabularies, preprocessing or model differ from the first member's (their outputs
  are merged or averaged as one network's; their variables are stacked)."""
  for members in ensembles:
    first = members[0]
    for other in members[1:]:
      for what, mine, theirs in (
        ('kind', other.kind, first.kind),
        ('vocabularies', other.vocab, first.vocab),
        ('preprocessing', other.preprocessing, first.preprocessing),
        ('model', other.config.model.to_dict(), first.config.model.to_dict()),
      ):
        if mine != theirs:
          raise ExportError(
            f'{other.path}: not the same {what} as {first.path} in the same ensemble '
            f'({_difference(mine, theirs)})'
          )


def _difference(mine, theirs) -> str:
  if isinstance(mine, dict) and isinstance(theirs, dict):
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return '; '.join(f'{k}: {mine.get(k)!r} vs {theirs.get(k)!r}' for k in keys)
  return f'{mine!r} vs {theirs!r}'


# A rough bound of what a detector keeps alive per input pixel at inference in float32
# (a ResNet-50 FPN or Swin stage-1 feature map is 12-16 floats per pixel, a few live
# at once): the views' inputs times this is what `check_view_memory` compares.
VIEW_BYTES_PER_PIXEL = 512


def view_memory_gb(nets, options: PipelineOptions) -> float:
  """Gigabytes the detectors' and the part-state network's views of one frame batch
  take by VIEW_BYTES_PER_PIXEL: every member x scale x flip, the part detector and
  the part-state network on all max_humans crops."""
  area = lambda size, scales: sum(np.prod(geometry.scaled_size(size, s)) for s in scales)
  flips = lambda flip: 2 if flip else 1
  humans = nets.human_members * flips(options.human_flip) * area(nets.canvas, options.human_scales)
  parts = nets.part_members * flips(options.part_flip) * area(nets.part_size, options.part_scales)
  states = nets.state_members * flips(options.part_state_flip) * np.prod(nets.state_size)
  crops = options.max_humans * (parts + options.proposals_per_part * states)
  return float(options.frame_batch * (humans + crops) * VIEW_BYTES_PER_PIXEL / 2**30)


def _device_memory_gb() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return stats['bytes_limit'] / 2**30
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30


def check_view_memory(nets, options: PipelineOptions) -> None:
  """Refuses, in one line before anything compiles, views (more than one network
  pass per stage) whose inputs at this frame batch need more than `view_memory_gb`
  (0: the device's memory) by `view_memory_gb`'s estimate. One view per stage is the
  program without test-time views and is not checked here."""
  one_view = (
    nets.human_members == nets.part_members == nets.state_members == 1
    and options.human_scales == options.part_scales == (1.0,)
    and not (options.human_flip or options.part_flip or options.part_state_flip)
  )
  if one_view:
    return
  limit = options.view_memory_gb or _device_memory_gb()
  need = view_memory_gb(nets, options)
  if need > limit:
    raise ValueError(
      f'pipeline settings: the test-time views need about {need:.1f} GB at '
      f'frame_batch={options.frame_batch} (human_scales {list(options.human_scales)}, '
      f'part_scales {list(options.part_scales)}, flips {options.human_flip}/'
      f'{options.part_flip}/{options.part_state_flip}, ensembles {nets.human_members}/'
      f'{nets.part_members}/{nets.state_members}), more than the {limit:.1f} GB allowed '
      '(view_memory_gb); lower frame_batch or the views'
    )
