"""The scorer against the loop-by-loop restatement of the rules (tests/score_reference.py).

Random submissions, with the awkward cases drawn on purpose: missing videos and frames,
GT frames with humans but no parts, humans without parts beside humans with parts,
inverted and zero-width boxes, human IoU exactly 0.5 (strict) and exactly 30/100 (which
float32 and float64 compare differently with 0.3), part IoU exactly 0.3 (inclusive),
duplicate boxes (ties in the Hungarian assignment), more predicted than GT humans and the
reverse, five proposals of which one is right, parts with fewer boxes than states,
states outside the vocabulary, empty videos (PSC 1). Every per-video PSC of all 25
cells, every area and the score must be identical (the tolerance 1e-9 is never used up).
"""

import json

import numpy as np
import pytest

from tests import score_reference as reference
from tps_jax.data import submission
from tps_jax.metrics import score

NUM_CASES = 240
# Boxes on a 10-pixel grid: against [0, 0, 9, 9] (area 100), [0, 0, 9, 4] has IoU 0.5,
# [0, 0, 9, 2] IoU 30/100 and [0, 0, 9, 8] IoU 0.9; inverted and one-pixel-wide ones too.
BOX_POOL = (
  [0, 0, 9, 9],
  [0, 0, 9, 4],
  [0, 0, 9, 2],
  [0, 0, 9, 8],
  [0, 0, 9, 5],
  [5, 0, 14, 9],
  [0, 0, 0, 9],
  [9, 9, 0, 0],
  [3, 3, 6, 6],
  [10, 10, 19, 19],
  [0, 0, 19, 19],
  [2.5, 0, 11.5, 9],
  [100, 100, 109, 109],
  [0, 0, 9, 9.5],
)
PARTNERS = ([0, 0, 9, 4], [0, 0, 9, 2], [0, 0, 9, 8])  # of [0, 0, 9, 9]: IoU .5, .3, .9
# Three GT and three predicted humans whose float32 cost matrix is assigned differently
# from the same matrix in float64 (found by search): the tool's dtype decides the pairs.
TIE_GT = ([0, 3, 7, 3], [4, 0, 11, 3], [1, 3, 4, 3])
TIE_PRED = ([1, 1, 2, 5], [6, 4, 10, 8], [3, 2, 3, 6])
STATES = ('bend', 'none', 'turn')
ACTIONS = ('run', 'jump')


def _box(rng):
  if rng.random() < 0.8:
    return list(BOX_POOL[rng.integers(len(BOX_POOL))])
  x, y = rng.uniform(-2, 15, 2).round(2)
  return [float(x), float(y), float(x + rng.uniform(-3, 12)), float(y + rng.uniform(-3, 12))]


def _gt_frame(rng):
  humans = []
  tie = rng.random() < 0.08
  for h in range(3 if tie else rng.choice([0, 1, 1, 2, 2, 3, 4])):
    names = rng.permutation(submission.PARTS)[: rng.choice([0, 0, 1, 2, 3])]
    box = list(TIE_GT[h]) if tie else [0, 0, 9, 9] if rng.random() < 0.4 else _box(rng)
    humans.append(
      {
        'number': h + 1,
        'box': box,
        'parts': {
          str(n): {
            'number': k + 1,
            'box': _box(rng),
            'verb': str(rng.choice(STATES)),
            'name': str(n),
          }
          for k, n in enumerate(names)
        },
      }
    )
  return {'humans': humans}


def _pred_frame(rng, gt_frame):
  gt_humans = gt_frame['humans']
  humans = []
  tie = [h['box'] for h in gt_humans] == list(map(list, TIE_GT))
  for h in range(3 if tie else rng.choice([0, 1, 2, 3, 4, 5])):
    source = gt_humans[rng.integers(len(gt_humans))] if gt_humans else None
    box = list(source['box']) if source is not None and rng.random() < 0.5 else _box(rng)
    if source is not None and source['box'] == [0, 0, 9, 9] and rng.random() < 0.5:
      box = list(PARTNERS[rng.integers(len(PARTNERS))])
    if tie:
      source, box = gt_humans[(h + rng.integers(2)) % 3], list(TIE_PRED[h])
    names = list(source['parts']) if source is not None else []
    names += [str(n) for n in rng.permutation(submission.PARTS)[: rng.integers(0, 2)]]
    parts = {}
    for n in dict.fromkeys(names):
      if rng.random() < 0.15:
        continue
      num_states = int(rng.choice([0, 1, 1, 2, 3, 5]))
      states = [str(rng.choice(STATES + ('jump_state',))) for _ in range(num_states)]
      boxes = [_box(rng) for _ in range(num_states)]
      if source is not None and n in source['parts'] and num_states and rng.random() < 0.5:
        j = int(rng.integers(num_states))  # one right proposal among them
        boxes[j], states[j] = list(source['parts'][n]['box']), source['parts'][n]['verb']
      if num_states and rng.random() < 0.1:
        boxes = boxes[:-1]  # fewer boxes than states
      parts[n] = {'number': len(parts) + 1, 'box': boxes, 'verb': states, 'name': n}
    humans.append({'number': h + 1, 'box': box, 'parts': parts})
  return {'humans': humans}


def random_case(rng):
  """(gt_vid, gt_part, pred_vid, pred_part) as json would load them."""
  gt_vid, gt_part, pred_vid, pred_part = {}, {}, {}, {}
  for v in range(rng.integers(1, 5)):
    video = f'video{v}'
    gt_vid[video] = str(rng.choice(ACTIONS))
    if rng.random() > 0.1:
      pred_vid[video] = gt_vid[video] if rng.random() < 0.7 else str(rng.choice(ACTIONS))
    frames = {f'img_{5 * f + 1:05d}.json': _gt_frame(rng) for f in range(rng.integers(0, 5))}
    gt_part[video] = frames
    if rng.random() < 0.1:
      continue  # the whole video missing
    pred_part[video] = {
      name: _pred_frame(rng, frame) for name, frame in frames.items() if rng.random() > 0.2
    }
    if rng.random() < 0.1:
      pred_part[video]['img_09999.json'] = {'humans': []}  # a frame the GT does not have
  if rng.random() < 0.1:
    pred_vid['extra'], pred_part['extra'] = 'run', {}
  return gt_vid, gt_part, pred_vid, pred_part


@pytest.fixture(scope='module')
def cases():
  rng = np.random.default_rng(20260901)
  out = []
  for _ in range(NUM_CASES):
    case = random_case(rng)
    psc, correct = reference.score_cells(*case)
    out.append((case, psc, correct, score.challenge_score(*case)))
  return out


def test_every_video_psc_of_every_cell_is_the_reference(cases):
  for case, psc, correct, report in cases:
    assert report.correct_videos.tolist() == correct.tolist()
    np.testing.assert_allclose(
      report.psc_cells.reshape(25, -1), psc, rtol=0, atol=1e-9, err_msg=json.dumps(case)
    )
    assert (report.psc_cells.reshape(25, -1) == psc).all(), json.dumps(case)


def test_every_area_and_the_score_are_the_reference(cases):
  # One row per (case, cell): PSC padded to the widest case, padding never correct. The
  # reference sums each distinct row once (many cells share their PSC).
  num_videos = np.array([len(case[0]) for case, *_ in cases])
  width = num_videos.max()
  rows = np.zeros((len(cases), 25, 2 * width + 1))
  for i, (_, cell_psc, case_correct, _) in enumerate(cases):
    rows[i, :, : num_videos[i]] = cell_psc
    rows[i, :, width : width + num_videos[i]] = case_correct
    rows[i, :, -1] = num_videos[i]
  distinct, inverse = np.unique(rows.reshape(-1, rows.shape[-1]), axis=0, return_inverse=True)
  areas = reference.area(distinct[:, :width], distinct[:, width:-1] > 0, distinct[:, -1])
  areas = areas[inverse.ravel()].reshape(len(cases), 25)
  official = reference.CELLS.index(reference.OFFICIAL_CELL)
  for i, (case, _, _, report) in enumerate(cases):
    np.testing.assert_allclose(report.areas.reshape(25), areas[i], rtol=0, atol=1e-9)
    assert (report.areas.reshape(25) == areas[i]).all(), json.dumps(case)
    assert report.score == areas[i, official]


def test_the_draws_cover_the_awkward_cases(cases):
  """The generator really produces what the module docstring promises."""
  seen = set()
  for (gt_vid, gt_part, _pred_vid, pred_part), psc, _, report in cases:
    seen.add('missing video') if set(gt_vid) - set(pred_part) else None
    seen.add('empty video (PSC 1)') if any(not f for f in gt_part.values()) else None
    for video, frames in gt_part.items():
      for name, frame in frames.items():
        humans = frame['humans']
        parts = [len(h['parts']) for h in humans]
        pred = pred_part.get(video, {}).get(name)
        if humans and not sum(parts) and pred is None:
          seen.add('missing frame whose GT humans have no parts')
        if 0 in parts and sum(parts):
          seen.add('humans without parts beside humans with parts')
        if pred is not None and humans:
          seen.add(
            'more predicted humans'
            if len(pred['humans']) > len(humans)
            else 'fewer predicted humans'
            if len(pred['humans']) < len(humans)
            else 'as many'
          )
          for human in pred['humans']:
            for part in human['parts'].values():
              if len(part['verb']) == 5:
                seen.add('five proposals')
    if (psc == 1).any():
      seen.add('a PSC of 1')
    if report.warnings:
      seen.add('warnings')
  assert seen >= {
    'missing video',
    'empty video (PSC 1)',
    'missing frame whose GT humans have no parts',
    'humans without parts beside humans with parts',
    'more predicted humans',
    'fewer predicted humans',
    'five proposals',
    'a PSC of 1',
    'warnings',
  }, seen


def test_the_files_read_as_the_dicts_do(cases, tmp_path):
  """read_results (msgspec, or its generic fallback) gives the scores of the dicts."""
  for i, ((gt_vid, gt_part, pred_vid, pred_part), _, _, report) in enumerate(cases[:20]):
    gt, pred = tmp_path / f'gt{i}', tmp_path / f'pred{i}'
    for folder, names, objs in (
      (gt, submission.GT_FILES, (gt_vid, gt_part)),
      (pred, submission.PRED_FILES, (pred_vid, pred_part)),
    ):
      for name, obj in zip(names, objs):
        submission.write_json_atomic(str(folder / name), obj)
    if i % 2:  # a NaN in a frame the GT does not have: Python's json reads it, msgspec not
      text = (pred / submission.PRED_FILES[1]).read_text()
      (pred / submission.PRED_FILES[1]).write_text(
        text[:-1] + (', ' if len(text) > 2 else '') + '"zz": {"f": {"humans": [{"box": '
        '[NaN, 0, 1, 1], "parts": {}}]}}}'
      )
    typed = (*submission.read_results(str(gt), 'gt'), *submission.read_results(str(pred), 'pred'))
    assert typed[3].clean == (i % 2 == 0)
    again = score.score_typed(*typed)
    assert (again.psc_cells == report.psc_cells).all() and (again.areas == report.areas).all()
