"""Test-time views (flips, scales) and ensembles of the per-frame networks.

One program with every view on (human and part detectors resampled and mirrored,
the part-state network mirrored, two-member ensembles of all three) parses random
frames and their mirror images in one batch; the tests read its outputs. Random
networks suffice: what is checked is equivariance, the challenge's limits and the
scoring, not accuracy.
"""

import json
import os

import jax
import numpy as np
import pytest

from tests import pipeline_helpers, score_reference
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.inference import bundle as bundle_lib
from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.inference import views
from tps_jax.inference.export import ExportError, load_export
from tps_jax.inference.pipeline_options import PipelineOptions
from tps_jax.metrics import score as score_lib
from tps_jax.ops import box_merge

EVERY_VIEW = {
  # One resampled scale each (two would be two more detector traces to compile; the
  # views of scales merge exactly as those of flips and members do).
  'human_scales': (0.75,),
  'part_scales': (1.25,),
  'human_flip': True,
  'part_flip': True,
  'part_state_flip': True,
  'max_humans': 10,
  'proposals_per_part': 5,
  'human_score_threshold': 0.0,  # random networks: keep everything they find
  'part_score_threshold': 0.0,
  'frame_batch': 4,
  'action_clips': 1,
  'action_crops': 1,
}


@pytest.fixture(scope='module')
def exports(tmp_path_factory, synthetic_root):
  """Two random members of each per-frame stage and one recogniser."""
  folder = tmp_path_factory.mktemp('tta_exports')
  vocab = tps.Vocab.from_root(str(synthetic_root))
  write = lambda kind, seed: pipeline_helpers.write_random_export(
    os.path.join(folder, f'{kind}_{seed}'), kind, vocab, seed=seed
  )
  return {
    kind: [write(kind, seed) for seed in (0, 1)]
    for kind in ('human_detector', 'part_detector', 'part_state')
  } | {'action': [write('action', 0)]}


def _bundle(folder, exports, **settings):
  return bundle_lib.write_bundle(
    os.path.join(folder, 'bundle'),
    humans=exports['human_detector'],
    parts=exports['part_detector'],
    states=exports['part_state'],
    actions=exports['action'],
    options=PipelineOptions(**settings),
  )


@pytest.fixture(scope='module')
def parsed(tmp_path_factory, exports):
  """(pipeline, outputs) of two frames and their mirror images, every view on."""
  folder = tmp_path_factory.mktemp('tta_bundle')
  pipeline = bundle_lib.load_bundle(_bundle(folder, exports, **EVERY_VIEW))
  frames = pipeline_helpers.random_frames(2, pipeline.canvas)  # frame size = canvas
  frames = np.concatenate([frames, frames[:, :, ::-1]])
  sizes = np.tile(np.int32(pipeline.canvas), (4, 1))
  (outputs,) = pipeline.compile()(frames, sizes, np.zeros(4, np.int32))
  return pipeline, {k: np.asarray(v) for k, v in outputs.items()}


def _mirror(boxes, width):
  """Inclusive boxes (..., 4) of a frame `width` wide -> of its mirror image."""
  return np.stack(
    [width - 1 - boxes[..., 2], boxes[..., 1], width - 1 - boxes[..., 0], boxes[..., 3]], -1
  )


def test_every_view_is_mirror_equivariant(parsed):
  pipeline, out = parsed
  width = pipeline.canvas[1]
  swap = np.asarray(tps.FLIP_PARTS)
  same_states = []
  for frame in range(2):
    a, b = frame, frame + 2  # the frame and its mirror image
    assert out['human_valid'][a].sum() == out['human_valid'][b].sum() > 0
    for h in np.flatnonzero(out['human_valid'][a]):
      mirrored = _mirror(out['human_boxes'][a, h], width)
      distance = np.abs(out['human_boxes'][b] - mirrored).max(-1)
      g = int(np.argmin(np.where(out['human_valid'][b], distance, np.inf)))
      assert distance[g] < 1.0  # the same human, within a pixel
      np.testing.assert_allclose(out['human_scores'][b, g], out['human_scores'][a, h], atol=1e-4)
      # Part p of the frame is part swap[p] of the mirror image: same boxes and states.
      valid, other_valid = out['part_valid'][a, h], out['part_valid'][b, g][swap]
      np.testing.assert_array_equal(valid, other_valid)
      assert valid.any()
      boxes = _mirror(out['part_boxes'][a, h], width)
      np.testing.assert_allclose(out['part_boxes'][b, g][swap][valid], boxes[valid], atol=1.0)
      np.testing.assert_allclose(
        out['part_scores'][b, g][swap][valid], out['part_scores'][a, h][valid], atol=1e-3
      )
      same_states.append(out['part_states'][b, g][swap][valid] == out['part_states'][a, h][valid])
  # The boxes agree to ~1e-3 pixel, not exactly (float rounding in the views' geometry),
  # and a random network's logits can be that close: one state in a hundred may flip
  # here. The part-state flip itself is exactly equivariant (the next test).
  assert np.concatenate(same_states).mean() >= 0.97


def test_part_state_flip_is_exactly_mirror_equivariant(exports):
  states = [load_export(path) for path in exports['part_state']]
  pipeline = pipeline_lib.Pipeline(
    load_export(exports['human_detector'][0]),
    load_export(exports['part_detector'][0]),
    states,
    [load_export(exports['action'][0])],
    PipelineOptions(part_state_flip=True),
  )
  size = pipeline.nets.state_size[1]
  rng = np.random.default_rng(0)
  crops = rng.standard_normal((2, *pipeline.nets.state_size, 3)).astype(np.float32)
  corner = rng.uniform(0, size / 2, (2, 10, 2))
  boxes = np.concatenate([corner, corner + rng.uniform(4, size / 2 - 1, (2, 10, 2))], -1)
  valid = rng.random((2, 10)) < 0.8
  boxes = np.where(valid[..., None], boxes, 0.0).astype(np.float32)
  swap = np.asarray(tps.FLIP_PARTS)
  mirrored = np.where(valid[..., None], _mirror(boxes, size), 0.0)[:, swap]
  logits = jax.jit(
    lambda variables, c, b, v: views.state_logits(
      pipeline.nets.states,
      variables['states'],
      c,
      b,
      v,
      np.zeros(4, np.int32),
      flip=True,
      members=2,
    )
  )
  both = logits(
    pipeline.variables,
    np.concatenate([crops, crops[:, :, ::-1]]),
    np.concatenate([boxes, mirrored]),
    np.concatenate([valid, valid[:, swap]]),
  )
  np.testing.assert_allclose(both[2:][:, swap], both[:2], atol=1e-5)


def _submission(pipeline, out):
  """The parsed frames as a two-video submission and a ground truth made from it (the
  first proposals moved a little, one part left out, one state changed)."""
  pred_part = {
    f'v{i}': {
      tps.frame_name(1): pipeline_lib.frame_json(
        {k: v[2 * i] for k, v in out.items()}, pipeline.state_names
      ),
      tps.frame_name(6): pipeline_lib.frame_json(
        {k: v[2 * i + 1] for k, v in out.items()}, pipeline.state_names
      ),
    }
    for i in range(2)
  }
  gt_part = {}
  for video, frames in pred_part.items():
    gt_part[video] = {}
    for name, frame in frames.items():
      humans = []
      for human in frame['humans']:
        parts = {
          part: {**p, 'box': [v + 2.0 for v in p['box'][0]], 'verb': p['verb'][-1]}
          for part, p in list(human['parts'].items())[1:]
        }
        humans.append({**human, 'parts': parts})
      gt_part[video][name] = {'humans': humans}
  actions = list(pipeline.action_names)
  return (
    {'v0': actions[0], 'v1': actions[0]},
    gt_part,
    {'v0': actions[0], 'v1': actions[-1]},
    pred_part,
  )


def test_every_view_keeps_the_challenge_limits_and_scores_as_the_tool(parsed):
  pipeline, out = parsed
  assert out['human_valid'].sum(-1).max() <= submission.MAX_HUMANS
  assert out['part_valid'].shape[-1] == submission.MAX_PROPOSALS
  assert out['part_valid'].sum(-1).max() > 1  # several proposals per part, still <= 5
  gt_vid, gt_part, pred_vid, pred_part = _submission(pipeline, out)
  assert not submission.validate(pred_vid, pred_part, kind='pred')
  report = score_lib.challenge_score(gt_vid, gt_part, pred_vid, pred_part)
  expected, _ = score_reference.official_run(gt_vid, gt_part, pred_vid, pred_part)
  for (h, p), (_, area) in expected.items():
    cell = (report.human_thresholds.index(h), report.part_thresholds.index(p))
    assert report.areas[cell] == pytest.approx(area, abs=1e-12)
  assert 0 < expected[score_reference.OFFICIAL_CELL][1] < 1


@pytest.mark.parametrize(
  'settings, message',
  [
    ({'human_scales': (1.0, 0.0)}, 'must be positive factors'),
    ({'part_scales': (-1.0,)}, 'must be positive factors'),
    ({'box_merge': 'mean'}, "box_merge must be one of nms, wbf, got 'mean'"),
    ({'human_scales': 'a,b'}, 'human_scales must be numbers'),
  ],
)
def test_impossible_views_are_refused_in_one_line(settings, message):
  with pytest.raises(ValueError, match=message) as error:
    PipelineOptions.from_dict(settings)
  assert '\n' not in str(error.value)


def test_views_beyond_memory_and_mixed_ensembles_are_refused_before_compiling(
  tmp_path, exports, synthetic_root
):
  with pytest.raises(ValueError, match='the test-time views need about') as error:
    _bundle(tmp_path, exports, human_flip=True, frame_batch=64, view_memory_gb=0.01)
  assert 'frame_batch=64' in str(error.value) and '\n' not in str(error.value)
  assert not os.path.exists(tmp_path / 'bundle')  # refused before writing anything
  vocab = tps.Vocab.from_root(str(synthetic_root))
  other = tps.Vocab(vocab.parts, vocab.states[:-1], vocab.actions)
  odd = pipeline_helpers.write_random_export(tmp_path / 'odd', 'part_state', other)
  mixed = {**exports, 'part_state': [exports['part_state'][0], odd]}
  with pytest.raises(ExportError, match='not the same vocabularies as') as error:
    _bundle(tmp_path, mixed)
  assert 'states' in str(error.value) and '\n' not in str(error.value)


def test_settings_read_from_json_flags_and_set():
  settings = PipelineOptions.from_dict(
    {'human_scales': [0.8, 1, 1.2], 'part_scales': '0.5,1', 'human_flip': True}
  )
  assert settings.human_scales == (0.8, 1.0, 1.2) and settings.part_scales == (0.5, 1.0)
  assert PipelineOptions.from_dict(settings.to_dict()) == settings
  record = settings.to_dict()  # a rerun of predict compares it with the one it wrote
  assert json.loads(json.dumps(record)) == record


def test_merge_views_nms_and_weighted_box_fusion():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
  scores = np.array([0.9, 0.6, 0.8, 0.7], np.float32)
  labels = np.array([0, 0, 0, 1])  # the last is another class: never merged with the first
  valid = np.array([True, True, True, True])
  kwargs = dict(iou_threshold=0.5, max_outputs=4, num_views=2)
  nms = box_merge.merge_views(boxes, scores, labels, valid, method='nms', **kwargs)
  np.testing.assert_array_equal(nms[3], [True, True, True, False])
  np.testing.assert_array_equal(nms[0][:3], boxes[[0, 2, 3]])
  wbf = box_merge.merge_views(boxes, scores, labels, valid, method='wbf', **kwargs)
  np.testing.assert_allclose(wbf[0][0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5, rtol=1e-6)
  np.testing.assert_allclose(wbf[1][:3], [1.5 / 2, 0.8 / 2, 0.7 / 2], rtol=1e-6)
  np.testing.assert_array_equal(wbf[2][:3], [0, 0, 1])
