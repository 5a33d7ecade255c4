r"""The part-state network's top-1 with the true action and with the recogniser's.

  python -m tps_jax.evaluate_part_state --export S/export[,S2/export] --data_root DATA \
      (--action A/export[,A2/export] | --pred PRED_DIR) [--split val] [--clips 2 --crops 3] \
      [--flip]

Table 3 of the report scores the part-state network given each video's ground-truth
action; in the pipeline it gets the action recogniser's prediction. Both are printed
side by side, on the split's ground-truth humans and parts (the part-state dataset,
eval preprocessing). The predicted actions come from `--pred` (a folder with
pred_vid_result.json, e.g. `python -m tps_jax.predict`'s) or from running the
recogniser exports of `--action` on the split (multi-view, ensembled as
`python -m tps_jax.evaluate_action`). `--flip` averages the network's logits with those
of the mirrored crop (left / right parts exchanged), as the pipeline's part_state_flip;
several exports are an ensemble (logits averaged), as in the pipeline.
Errors are one line on stderr, exit status 1.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from tps_jax import cli

_EXPORT = flags.DEFINE_list('export', None, 'Part-state network export(s): an ensemble.')
_DATA_ROOT = flags.DEFINE_string(
  'data_root', None, 'Kinetics-TPS root (with its TFDS part-state dataset).'
)
_SPLIT = flags.DEFINE_string('split', 'val', 'Split of the part-state dataset.')
_ACTION = flags.DEFINE_list('action', [], 'Action recogniser export(s).')
_PRED = flags.DEFINE_string('pred', '', 'Folder with pred_vid_result.json.')
_CLIPS = flags.DEFINE_integer('clips', 2, 'Recogniser views: clips.')
_CROPS = flags.DEFINE_integer('crops', 3, 'Recogniser views: crops.')
_FLIP = flags.DEFINE_bool('flip', False, 'Also the mirrored crop (test-time view).')
flags.mark_flags_as_required(['export', 'data_root'])


def main(argv) -> int:
  del argv
  from absl import logging

  from tps_jax.data import submission
  from tps_jax.inference import action as action_export
  from tps_jax.inference import part_states
  from tps_jax.inference.export import ExportError, load_export
  from tps_jax.inference.pipeline_checks import check_ensembles
  from tps_jax.tasks import action_views

  logging.set_verbosity(logging.WARNING)
  try:
    if bool(_ACTION.value) == bool(_PRED.value):
      raise ValueError(
        'give either --action (recogniser exports) or --pred (a folder with pred_vid_result.json)'
      )
    export = [load_export(path, kind='part_state') for path in _EXPORT.value]
    check_ensembles(export)
    if _PRED.value:
      predicted = submission.load_json(os.path.join(_PRED.value, submission.PRED_FILES[0]))
    else:
      members = [action_export.load_member(path) for path in _ACTION.value]
      predicted = action_views.evaluate_members(
        members,
        split=_SPLIT.value,
        data_root=_DATA_ROOT.value,
        clips=_CLIPS.value,
        crops=_CROPS.value,
      ).predictions()
    common = {'data_root': _DATA_ROOT.value, 'split': _SPLIT.value, 'flip': _FLIP.value}
    true = part_states.part_state_top1(export, **common)
    with_predicted = part_states.part_state_top1(export, actions=predicted, **common)
  except (ExportError, ValueError, KeyError, FileNotFoundError, submission.SubmissionError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(
    f'part-state top-1 on {true["count"]} {_SPLIT.value} parts: '
    f'{true["top1"]:.4f} with the true action, {with_predicted["top1"]:.4f} with the '
    'predicted action' + (' (logits averaged with the mirrored crop)' if _FLIP.value else '')
  )
  return 0


if __name__ == '__main__':
  cli.run(main)
