r"""Scores a Kinetics-TPS submission with the challenge's rules.

  python -m tps_jax.evaluate --gt DIR --pred DIR [--per-video FILE.json]

DIR --gt holds gt_vid_result.json and gt_part_result.json; DIR --pred holds
pred_vid_result.json and pred_part_result.json. Prints the 5 x 5 grid of conditioned
accuracies and, as the last line, `score: 0.xxxxxx`. A submission that breaks the
challenge's limits is refused (exit 2); missing videos or frames score 0 (warned).
"""
import json
import sys

from absl import app, flags

from tps_jax.evaluation import score as score_lib
from tps_jax.evaluation import submission

_GT = flags.DEFINE_string("gt", None, "Folder with gt_vid_result.json, gt_part_result.json.")
_PRED = flags.DEFINE_string("pred", None,
                            "Folder with pred_vid_result.json, pred_part_result.json.")
_PER_VIDEO = flags.DEFINE_string("per_video", None,
                                 "Write each video's PSC and correctness to this JSON file.")
_MAX_PROBLEMS = flags.DEFINE_integer("max_problems", 20, "Problems printed before a count.")
flags.register_validator("gt", lambda v: v is not None, "--gt is required")
flags.register_validator("pred", lambda v: v is not None, "--pred is required")


def _refuse(problems: list[str]) -> int:
  for line in problems[:_MAX_PROBLEMS.value]:
    print(line, file=sys.stderr)
  if len(problems) > _MAX_PROBLEMS.value:
    print(f"... and {len(problems) - _MAX_PROBLEMS.value} more", file=sys.stderr)
  print(f"error: {len(problems)} problem(s); the submission was not scored", file=sys.stderr)
  return 2


def main(argv) -> int:
  del argv
  try:
    gt_vid, gt_part = submission.load_pair(_GT.value, "gt")
    pred_vid, pred_part = submission.load_pair(_PRED.value, "pred")
  except submission.SubmissionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  problems = submission.validate(gt_vid, gt_part, kind="gt")
  problems += submission.validate(pred_vid, pred_part, kind="pred")
  if problems:
    return _refuse(problems)
  report = score_lib.challenge_score(gt_vid, gt_part, pred_vid, pred_part)
  for warning in report.warnings:
    print(f"warning: {warning}", file=sys.stderr)
  if _PER_VIDEO.value:
    submission.write_json_atomic(_PER_VIDEO.value, {
        v: {"psc": report.psc[v], "correct": report.correct[v]} for v in report.psc})
  print(report.format())
  return 0


if __name__ == "__main__":
  # The challenge's spelling --per-video is accepted beside absl's --per_video.
  app.run(lambda argv: sys.exit(main(argv)),
          argv=[a.replace("--per-video", "--per_video", 1) if a.startswith("--per-video")
                else a for a in sys.argv])
