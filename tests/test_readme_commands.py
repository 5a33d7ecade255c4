"""What the README's commands promise a user, beyond their flags (tests/test_readme.py):
`convert --out weights/x` in a fresh clone, `evaluate --data_root --split` and
`--write_gt`, `evaluate_detector` without `--config`, the rerun of a finished run."""

from __future__ import annotations

import gc
import os
import shutil

import numpy as np
import pytest
from absl import flags

from configs import part_detector
from tests import pipeline_helpers
from tests.test_readme import REPO_ROOT, load_command, own_flags
from tps_jax.convert.checkpoint import write_checkpoint
from tps_jax.convert.io import ConversionError
from tps_jax.convert.registry import Conversion
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.datasets import build
from tps_jax.inference import videos


@pytest.fixture(scope='module')
def built_root(synthetic_root, tmp_path_factory):
  """The synthetic fixture with its `humans` and `parts` datasets built (which defines
  the val split: 2 of its 5 train videos)."""
  root = tmp_path_factory.mktemp('readme_commands') / 'root'
  shutil.copytree(synthetic_root, root)
  problems = build.build_datasets(
    str(root), datasets=['parts'], val_fraction=0.4, progress=False, say=lambda _: None
  )
  assert problems == []
  return str(root)


def _command(path: str, *argv: str):
  """A command module loaded with its own flags, parsed from argv (inside own_flags)."""
  module, _ = load_command(os.path.join(REPO_ROOT, path))
  flags.FLAGS([path, *argv])
  return module


# --------------------------------------------------------------------------- convert


def test_convert_makes_the_folders_above_out(tmp_path):
  conversion = Conversion(
    model=None,
    params={'head/kernel': np.ones((2, 3), np.float32)},
    sources={'head/kernel': 'fc.weight'},
    skipped={},
    flavour='test',
    init_inputs=(),
    model_kwargs={},
  )
  out = tmp_path / 'weights' / 'swin_t'  # `weights/` does not exist, as in a fresh clone
  write_checkpoint(conversion, 'swin_t', 'x.pth', str(out))
  assert sorted(os.listdir(out)) == ['model.json', 'variables']
  (tmp_path / 'file').write_text('')
  with pytest.raises(ConversionError, match=r'/file: cannot make the folder \(.*\)$'):
    write_checkpoint(conversion, 'swin_t', 'x.pth', str(tmp_path / 'file' / 'swin_t'))


# -------------------------------------------------------------------------- evaluate


def _perfect_prediction(gt_vid: dict, gt_part: dict, out: str) -> None:
  """The ground truth as a submission: every part's box and state as its one proposal."""
  part = {
    video: {
      frame: {
        'humans': [
          {
            **human,
            'parts': {
              name: {**p, 'box': [p['box']], 'verb': [p['verb']]}
              for name, p in human['parts'].items()
            },
          }
          for human in content['humans']
        ]
      }
      for frame, content in frames.items()
    }
    for video, frames in gt_part.items()
  }
  submission.write_submission(out, gt_vid, part)


def _evaluate(capsys, *argv):
  try:
    with own_flags():
      code = _command('tps_jax/evaluate.py', *argv).main([])
  finally:
    gc.enable()  # evaluate's main turns the collector off for its process
  out, err = capsys.readouterr()
  return code, out, err


def test_evaluate_takes_a_splits_ground_truth_and_writes_it(built_root, tmp_path, capsys):
  val = sorted(videos.val_videos(built_root))
  train_vid, train_part = tps.ground_truth(built_root, 'train')
  assert 0 < len(val) < len(train_vid)
  problems: list[str] = []
  gt_vid, gt_part = videos.split_ground_truth(built_root, 'val', problems)
  assert sorted(gt_vid) == sorted(gt_part) == val and problems == []
  assert gt_part == {v: train_part[v] for v in val}
  assert videos.split_ground_truth(built_root, 'train', problems) == (train_vid, train_part)

  gt_dir = str(tmp_path / 'gt')
  code, out, err = _evaluate(
    capsys, '--data_root', built_root, '--split', 'val', '--write_gt', gt_dir
  )
  assert code == 0 and out == ''
  assert err == f'wrote {gt_dir}/gt_vid_result.json and gt_part_result.json (2 val videos)\n'
  assert submission.load_pair(gt_dir, 'gt') == (gt_vid, gt_part)

  # A perfect prediction of the val videos scores the maximum against the split, and the
  # same as against the folder written from it.
  pred = str(tmp_path / 'pred')
  _perfect_prediction(gt_vid, gt_part, pred)
  code, from_split, _ = _evaluate(
    capsys, '--data_root', built_root, '--split', 'val', '--pred', pred
  )
  assert code == 0 and from_split.splitlines()[-1] == 'score: 0.999900'
  code, from_folder, _ = _evaluate(capsys, '--gt', gt_dir, '--pred', pred)
  assert code == 0 and from_folder == from_split
  # Against the whole train split the other videos are missing: they score 0.
  code, train, err = _evaluate(
    capsys, '--data_root', built_root, '--split', 'train', '--pred', pred
  )
  assert code == 0 and float(train.splitlines()[-1].split()[1]) < 0.5
  assert 'missing' in err


def test_evaluate_ground_truth_errors_are_one_line(synthetic_root, tmp_path, capsys):
  # The fixture has no built dataset, hence no val split.
  code, _, err = _evaluate(
    capsys, '--data_root', str(synthetic_root), '--split', 'val', '--write_gt', str(tmp_path / 'gt')
  )
  assert code == 2 and err.count('\n') == 1 and 'no built dataset' in err
  for argv, message in [
    (['--pred', 'P'], 'give --gt DIR or --data_root ROOT --split val|train|test'),
    (['--gt', 'G', '--split', 'val', '--data_root', 'D', '--pred', 'P'], 'give --gt DIR or'),
    (['--split', 'val', '--pred', 'P'], '--split needs --data_root'),
    (['--gt', 'G', '--write_gt', 'W'], '--write_gt needs --data_root and --split'),
    (['--gt', 'G'], '--pred is required'),
  ]:
    with own_flags(), pytest.raises(flags.IllegalFlagValueError, match=message):
      _command('tps_jax/evaluate.py', *argv)


# ----------------------------------------------------------------- evaluate_detector


def test_evaluate_detector_defaults_to_the_exports_config(built_root, tmp_path):
  vocab = tps.Vocab.from_root(built_root)
  config = pipeline_helpers.CONFIGS['part_detector']()  # a :tiny made smaller still
  export = pipeline_helpers.write_random_export(
    tmp_path / 'run', 'part_detector', vocab, config=config
  )
  with own_flags():
    module = _command('tps_jax/evaluate_detector.py', '--export', export)
  task, params, _ = module.load_detector(None, export, 'val', data_root=built_root)
  assert task.config.data.root == built_root and task.config.data.eval_split == 'val'
  assert task.config.model.neck.out_channels == 16  # the export's, not configs/part_detector.py's
  assert params['backbone']['patch_embed']['proj']['kernel'].shape[-1] == 16
  # The stage's own config does not fit this export: one line naming it.
  with pytest.raises(ValueError, match=r'/export: the exported parameters do not fit the config'):
    module.load_detector(part_detector.get_config('tiny'), export, 'val', data_root=built_root)
