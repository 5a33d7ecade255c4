r"""Bundles four trained networks into one pipeline folder for `python -m tps_jax.predict`.

  python -m tps_jax.export_pipeline --humans H/export[,H2/export] --parts P/export[,P2] \
      --states S/export[,S2] --action A/export[,A2/export] --out BUNDLE \
      [--max_humans 10] [--proposals_per_part 1] [--human_score_threshold 0.5] \
      [--part_score_threshold 0.3] [--frame_batch 8] [--action_clips 4 --action_crops 3] \
      [--human_scales 0.8,1,1.2 --human_flip --part_scales ... --part_flip \
       --part_state_flip --box_merge nms|wbf] [--serialize [--serialize_batch N]] [--overwrite]

Each export is a stage's `WORKDIR/export` (run_train.py writes it); several exports of
one stage (comma-separated) are an ensemble, merged in the one program. Exports whose
vocabularies disagree (the recogniser's classes vs the part-state network's actions,
the part detector's classes vs the ten parts, the members of an ensemble) are refused
in one line naming both, and so are test-time views that do not fit in memory.
`--serialize` also writes the compiled per-frame program (`jax.export`) for
`--serialize_batch` frames (default --frame_batch) on the human detector's canvas,
which runs without tps_jax's model code (tps_jax/inference/bundle.py).
Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import sys

from absl import flags

from tps_jax import cli

_HUMANS = flags.DEFINE_list('humans', None, 'Human detector export(s): an ensemble.')
_PARTS = flags.DEFINE_list('parts', None, 'Part detector export(s): an ensemble.')
_STATES = flags.DEFINE_list('states', None, 'Part-state network export(s): an ensemble.')
_ACTION = flags.DEFINE_list('action', None, 'Action recogniser export(s): an ensemble.')
_OUT = flags.DEFINE_string('out', None, 'The bundle folder to write.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing bundle.')
_SERIALIZE = flags.DEFINE_bool(
  'serialize', False, 'Also write the compiled per-frame program (jax.export).'
)
_SERIALIZE_BATCH = flags.DEFINE_integer(
  'serialize_batch', 0, 'Frames per call of the serialized program (0: --frame_batch).'
)
_PLATFORMS = flags.DEFINE_list(
  'platforms', [], "Platforms to serialize for (default: this machine's, e.g. cpu; also cuda, tpu)."
)
flags.mark_flags_as_required(['humans', 'parts', 'states', 'action', 'out'])


def _setting_flags():
  """One flag per pipeline option, with the PipelineOptions defaults."""
  import dataclasses

  from tps_jax.inference.pipeline_options import PipelineOptions

  defines = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
    tuple: flags.DEFINE_list,
  }
  defined = {}
  for field in dataclasses.fields(PipelineOptions):
    default = field.default
    define = defines[type(default)]
    if isinstance(default, tuple):  # a list flag: '0.8,1,1.2'
      default = [str(v) for v in default]
    defined[field.name] = define(field.name, default, f'Pipeline setting ({field.name}).')
  return defined


_SETTINGS = _setting_flags()


def main(argv) -> int:
  del argv
  from tps_jax.inference import bundle as bundle_lib
  from tps_jax.inference.export import ExportError
  from tps_jax.inference.pipeline_options import PipelineOptions

  try:
    options = PipelineOptions.from_dict({name: flag.value for name, flag in _SETTINGS.items()})
    out = bundle_lib.write_bundle(
      _OUT.value,
      humans=_HUMANS.value,
      parts=_PARTS.value,
      states=_STATES.value,
      actions=_ACTION.value,
      options=options,
      overwrite=_OVERWRITE.value,
    )
    print(f'wrote {out}')
    if _SERIALIZE.value:
      folder = bundle_lib.serialize_parse_frames(
        out, frame_batch=_SERIALIZE_BATCH.value or None, platforms=_PLATFORMS.value or None
      )
      print(f'wrote {folder}')
  except (ExportError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:  # a full disk, a read-only --out
    print(f'error: {cli.os_error_line(e)}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  cli.run(main)
