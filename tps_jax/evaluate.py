r"""Scores a Kinetics-TPS submission exactly as the challenge's evaluation tool does.

  python -m tps_jax.evaluate --gt DIR --pred DIR [--per_video FILE.json] [--verbose]
      [--strict] [--data_root ROOT] [--plot FILE.png]
  python -m tps_jax.evaluate --data_root ROOT --split val|train|test --pred DIR
  python -m tps_jax.evaluate --data_root ROOT --split val --write_gt DIR [--pred DIR]

--gt holds gt_vid_result.json and gt_part_result.json; --pred holds
pred_vid_result.json and pred_part_result.json. Instead of --gt, `--data_root ROOT
--split S` takes the ground truth from the split's annotations, for exactly the videos
`python -m tps_jax.predict --data_root ROOT --split S` parses (`val`: the train videos
`data_prep.build` held out); `--write_gt DIR` writes it as a --gt folder.

Prints the tool's 25 cells (human IoU > h x part IoU >= p, h and p in 0.001, 0.3, 0.5,
0.9, 0.99) as a 5 x 5 table of areas under accuracy(t) and, as the last line,
`score: 0.xxxxxx` (the cell h = 0.5, p = 0.3). `--verbose` first prints every cell's
accuracies at t = 0, 0.1, ..., 0.9 and its area in the tool's own format, so that the
two outputs can be compared line by line.

A submission is refused (exit 2, one line per problem) only where the tool refuses it:
more than 10 humans in a frame, more than 5 states for a part, a part with more boxes
than states, or something it cannot read where it reads it (and non-finite boxes).
Everything else it scores is scored the same way and warned about on stderr with
counts and examples: inverted boxes, missing videos and frames, videos and frames it
never reads, actions and states outside the vocabularies (those of the ground truth,
plus list/part_stat.txt and the action class folders of `--data_root`), a video key
that appears twice in a file (the last entry is read, as the tool's json.load reads it). `--strict`
refuses every problem `submission.validate` finds instead (inverted boxes, unknown
names, anything malformed anywhere).

`--per_video FILE` writes {video: {"psc", "correct"}} of the score's
cell; `--plot FILE.png` draws accuracy(t) of that cell (the score is the area under it)
and the histogram of per-video PSC.
"""

import gc
import os
import sys
import warnings

from absl import flags

from tps_jax import cli
from tps_jax.data import submission
from tps_jax.metrics import score as score_lib

_GT = flags.DEFINE_string('gt', None, 'Folder with gt_vid_result.json, gt_part_result.json.')
_PRED = flags.DEFINE_string(
  'pred', None, 'Folder with pred_vid_result.json, pred_part_result.json.'
)
_PER_VIDEO = flags.DEFINE_string(
  'per_video', None, "Write each video's PSC and correctness to this JSON file."
)
_VERBOSE = flags.DEFINE_bool(
  'verbose',
  False,
  "Also print every cell's accuracies at t = 0, "
  '0.1, ..., 0.9 and its area, as the official tool prints them.',
)
_STRICT = flags.DEFINE_bool(
  'strict',
  False,
  'Refuse every validation problem, also those '
  'the official tool scores as they are (inverted boxes, ...).',
)
_DATA_ROOT = flags.DEFINE_string(
  'data_root',
  None,
  'Dataset root whose list/part_stat.txt and action class folders extend the vocabularies.',
)
_PLOT = flags.DEFINE_string(
  'plot',
  None,
  'Draw accuracy(t) and the per-video PSC histogram into this image file (.png, .pdf, .svg).',
)
_MAX_PROBLEMS = flags.DEFINE_integer('max_problems', 20, 'Problems printed before a count.')
_SPLIT = flags.DEFINE_enum(
  'split',
  None,
  ['val', 'train', 'test'],
  'Instead of --gt: the ground truth of this split of --data_root (the videos `predict '
  '--data_root --split` parses).',
)
_WRITE_GT = flags.DEFINE_string(
  'write_gt',
  None,
  'Write the ground truth of --data_root --split into this folder (gt_vid_result.json, '
  'gt_part_result.json); --pred is then optional.',
)


def _flags_problem(values: dict) -> str:
  """What is wrong with the choice of ground truth and submission ('' if nothing)."""
  if (values['gt'] is None) == (values['split'] is None):
    return 'give --gt DIR or --data_root ROOT --split val|train|test (one of the two)'
  if values['split'] is not None and not values['data_root']:
    return '--split needs --data_root'
  if values['write_gt'] is not None and values['split'] is None:
    return '--write_gt needs --data_root and --split'
  if values['pred'] is None and values['write_gt'] is None:
    return '--pred is required'
  return ''


def _check_flags(values: dict) -> bool:
  problem = _flags_problem(values)
  if problem:
    raise flags.ValidationError(problem)
  return True


flags.register_multi_flags_validator(['gt', 'split', 'data_root', 'pred', 'write_gt'], _check_flags)


class GroundTruthError(ValueError):
  """--data_root --split has no ground truth to give (one line)."""


def _refuse(problems: list[str]) -> int:
  for line in problems[: _MAX_PROBLEMS.value]:
    print(line, file=sys.stderr)
  if len(problems) > _MAX_PROBLEMS.value:
    print(f'... and {len(problems) - _MAX_PROBLEMS.value} more', file=sys.stderr)
  print(f'error: {len(problems)} problem(s); the submission was not scored', file=sys.stderr)
  return 2


def _vocabulary(root: str | None):
  """(states, actions) of --data_root, or None."""
  if not root:
    return None
  from tps_jax.data import kinetics_tps as tps  # noqa: PLC0415  (only with --data_root)

  try:
    vocab = tps.Vocab.from_root(root)
  except tps.AnnotationError as e:
    raise submission.SubmissionError(f'--data_root: {e}') from None
  return set(vocab.states), set(vocab.actions)


def _split_ground_truth() -> tuple[dict, dict]:
  """(gt_vid_result, gt_part_result) of --data_root --split; written to --write_gt."""
  from tps_jax.data import kinetics_tps as tps  # noqa: PLC0415  (only with --split)
  from tps_jax.inference import videos  # noqa: PLC0415

  problems: list[str] = []
  try:
    gt_vid, gt_part = videos.split_ground_truth(_DATA_ROOT.value, _SPLIT.value, problems)
  except (tps.AnnotationError, FileNotFoundError) as e:
    raise GroundTruthError(f'--data_root {_DATA_ROOT.value} --split {_SPLIT.value}: {e}') from None
  for problem in problems:
    print(f'warning: {problem}', file=sys.stderr)
  if _WRITE_GT.value:
    invalid = submission.validate(gt_vid, gt_part, kind='gt')
    if invalid:
      raise GroundTruthError(f'{len(invalid)} problem(s) in the ground truth; first: {invalid[0]}')
    try:
      for name, result in zip(submission.GT_FILES, (gt_vid, gt_part)):
        submission.write_json_atomic(os.path.join(_WRITE_GT.value, name), result)
    except OSError as e:
      raise GroundTruthError(f'--write_gt {_WRITE_GT.value}: {e}') from None
    print(
      f'wrote {os.path.join(_WRITE_GT.value, submission.GT_FILES[0])} and '
      f'{submission.GT_FILES[1]} ({len(gt_vid)} {_SPLIT.value} videos)',
      file=sys.stderr,
    )
  return gt_vid, gt_part


def _read(vocabulary, split_truth: tuple[dict, dict] | None) -> tuple:
  """The four results in the scorer's typed form; --strict validates the dicts first.
  `split_truth`: the ground truth of --data_root --split (else --gt is read)."""
  if not _STRICT.value:
    if split_truth:
      gt = (split_truth[0], submission.as_typed(split_truth[1], 'gt'))
    else:
      gt = submission.read_results(_GT.value, 'gt')
    return (*gt, *submission.read_results(_PRED.value, 'pred'))
  gt_vid, gt_part = split_truth or submission.load_pair(_GT.value, 'gt')
  pred_vid, pred_part = submission.load_pair(_PRED.value, 'pred')
  states, actions = vocabulary or (None, None)
  problems = submission.validate(gt_vid, gt_part, kind='gt', actions=actions, states=states)
  problems += submission.validate(pred_vid, pred_part, kind='pred', actions=actions, states=states)
  if problems:
    raise submission.SubmissionError(problems[0], problems)
  return (
    gt_vid,
    submission.as_typed(gt_part, 'gt'),
    pred_vid,
    submission.as_typed(pred_part, 'pred'),
  )


def _plot(report: score_lib.ScoreReport, path: str) -> None:
  """accuracy(t) of the score's cell (the score is the area under it) and the PSC histogram."""
  import matplotlib  # noqa: PLC0415  (only with --plot)

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import matplotlib.ticker  # noqa: PLC0415

  from tps_jax.metrics import report_figures  # noqa: PLC0415  (matplotlib: only with --plot)

  psc = report.psc_cells[report.official_cell]
  h, p = score_lib.HUMAN_IOU_THRESHOLD, score_lib.PART_IOU_THRESHOLD
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  report_figures.draw_accuracy_curve(
    left,
    report,
    'accuracy(t): right class and PSC >= t',
    f'score = area = {report.score_rounded:.6f}  (human IoU > {h}, part IoU >= {p})',
  )
  right.hist(
    [psc[report.correct_videos], psc[~report.correct_videos]],
    bins=50,
    range=(0, 1),
    stacked=True,
    color=['tab:green', 'tab:red'],
    label=['right class', 'wrong class'],
  )
  right.set(
    xlim=(0, 1),
    xlabel='video PSC',
    ylabel='videos',
    title=f'per-video PSC ({len(report.videos)} videos)',
  )
  right.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # counts
  right.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


_KEEP = []  # the parsed files, kept alive until os._exit (tearing them down takes seconds)


def main(argv) -> int:
  del argv
  gc.disable()  # millions of small objects and no cycles: collecting only costs time
  try:
    split_truth = _split_ground_truth() if _SPLIT.value else None
  except GroundTruthError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if _PRED.value is None:  # --write_gt alone
    return 0
  try:
    vocabulary = _vocabulary(_DATA_ROOT.value)
    with warnings.catch_warnings(record=True) as read_warnings:
      warnings.simplefilter('always', submission.DuplicateKeyWarning)
      results = _read(vocabulary, split_truth)
    for warning in read_warnings:
      print(f'warning: {warning.message}', file=sys.stderr)
    _KEEP.append(results)
    report = score_lib.score_typed(*results, vocabulary=vocabulary)
  except submission.SubmissionError as e:
    return _refuse(e.problems)
  for warning in report.warnings:
    print(f'warning: {warning}', file=sys.stderr)
  print(report.format(verbose=_VERBOSE.value))
  try:
    if _PER_VIDEO.value:
      submission.write_json_atomic(
        _PER_VIDEO.value,
        {
          v: {'psc': psc, 'correct': correct}
          for (v, psc), correct in zip(report.psc.items(), report.correct_videos.tolist())
        },
      )
    if _PLOT.value:
      _plot(report, _PLOT.value)
  except (OSError, ValueError) as e:  # an unwritable path, an image type matplotlib lacks
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


def _run(argv) -> None:
  code = main(argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  cli.run(_run)
