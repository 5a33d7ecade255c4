"""The oracle ablation: which stage of the pipeline costs how much of the score.

Each row puts the ground truth in place of some stages (tps_jax/inference/pipeline.py,
ORACLES) and scores the submission it gives; one compiled program parses every row
at once (`VideoParser(variants=...)`), each network running once per distinct input.
The baseline row keeps the system's humans, parts and action and gives every part the
state it most often has in the part-state network's training data (its export's
`state_counts`): the part-state network must beat it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from tps_jax.data import kinetics_tps as tps
from tps_jax.metrics import score as score_lib

# (row name, oracle set): the system, then the ground truth stage by stage.
ROWS: tuple[tuple[str, frozenset[str]], ...] = (
  ('system', frozenset()),
  ('oracle action', frozenset({'action'})),
  ('oracle humans', frozenset({'humans'})),
  ('oracle humans+parts', frozenset({'humans', 'parts'})),
  ('oracle humans+parts+action', frozenset({'humans', 'parts', 'action'})),
  ('oracle all', frozenset({'humans', 'parts', 'states', 'action'})),
)
BASELINE = 'baseline: majority state'


def majority_states(state_counts, states: Sequence[str]) -> dict[str, str]:
  """{part: its most frequent state} from (10, S) counts (row i = PARTS[i])."""
  counts = np.asarray(state_counts)
  return {part: states[int(counts[i].argmax())] for i, part in enumerate(tps.PARTS)}


def with_states(frames: Mapping[str, dict], state_of: Mapping[str, str]) -> dict[str, dict]:
  """A video's frames with every proposal of a part given `state_of[part]`."""
  out = {}
  for name, frame in frames.items():
    humans = []
    for human in frame['humans']:
      parts = {
        part: {**p, 'verb': [state_of[part]] * len(p['verb'])} for part, p in human['parts'].items()
      }
      humans.append({**human, 'parts': parts})
    out[name] = {'humans': humans}
  return out


@dataclasses.dataclass
class Row:
  name: str
  score: float
  mean_psc: float
  action_top1: float

  def format(self, system: Row | None) -> str:
    delta = '' if system is None or system is self else f'{self.score - system.score:+9.4f}'
    return (
      f'  {self.name:<28}{self.score:>9.4f}{delta:>10}{self.mean_psc:>10.4f}'
      f'{self.action_top1:>10.4f}'
    )


def score_row(name: str, gt_vid, gt_part, pred_vid, pred_part) -> Row:
  report = score_lib.challenge_score(gt_vid, gt_part, pred_vid, pred_part)
  videos = list(gt_vid)
  return Row(
    name,
    report.score,
    float(np.mean([report.psc[v] for v in videos])) if videos else 0.0,
    float(np.mean([report.correct[v] for v in videos])) if videos else 0.0,
  )


def score_rows(truth, submissions, pipeline) -> list[Row]:
  """The table's rows: one per ROWS entry (`submissions` in ROWS order), then the
  majority-state baseline on the system's submission when the part-state export
  records its training states (`state_counts`)."""
  rows = [
    score_row(name, truth.vid, truth.part, *pred) for (name, _), pred in zip(ROWS, submissions)
  ]
  counts = pipeline.states[0].metadata.get('state_counts')
  if counts:
    majority = majority_states(counts, pipeline.state_names)
    pred_vid, pred_part = submissions[0]
    baseline = {v: with_states(frames, majority) for v, frames in pred_part.items()}
    rows.append(score_row(BASELINE, truth.vid, truth.part, pred_vid, baseline))
  return rows


def format_table(rows: Sequence[Row]) -> str:
  system = next((r for r in rows if r.name == 'system'), None)
  lines = [f'  {"row":<28}{"score":>9}{"vs system":>10}{"mean PSC":>10}{"action":>10}']
  lines += [row.format(system) for row in rows]
  lines.append(
    'score: the challenge score (area under accuracy(t)); mean PSC: part state '
    'correctness averaged over videos; action: action top-1'
  )
  return '\n'.join(lines)
