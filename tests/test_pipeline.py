"""End-to-end parsing: geometry, exports, bundles, the jitted pipeline and `predict`.

The networks are randomly initialised tiny ones (tests/pipeline_helpers.py); what is
checked is the plumbing: the crops the networks see equal their training inputs, boxes
map between crops and frames, the oracles reach the maximum score, devices and the
serialized program agree with the live function, and the command line writes
scoreable, resumable submissions and names what it skips.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import portpicker
import pytest

from tests import pipeline_helpers as helpers
from tests.conftest import REPO_ROOT, run_module, run_on_devices
from tests.data_configs import data_config
from tps_jax.data import augment, submission
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import video as video_lib
from tps_jax.inference import bundle as bundle_lib
from tps_jax.inference import geometry
from tps_jax.inference import pipeline as pipeline_lib
from tps_jax.inference.export import ExportError, load_export
from tps_jax.input import pipelines

# ------------------------------------------------------------------------- geometry


def test_boxes_round_trip_between_crops_and_frames():
  rng = np.random.default_rng(0)
  regions = jnp.asarray(
    np.concatenate([rng.uniform(0, 50, (6, 2)), rng.uniform(60, 200, (6, 2))], 1), jnp.float32
  )
  scale = jnp.asarray(rng.uniform(0.3, 4.0, (6, 2)), jnp.float32)
  boxes = jnp.asarray(rng.uniform(0, 100, (6, 4)), jnp.float32)
  there = geometry.frame_to_crop(boxes, regions, scale)
  np.testing.assert_allclose(
    geometry.crop_to_frame(there, regions, scale), boxes, rtol=1e-5, atol=1e-4
  )
  np.testing.assert_allclose(geometry.frame_to_crop(regions, regions, scale)[:, :2], 0, atol=1e-4)


def test_canvas_geometry_is_resize_pad():
  for height, width in [(120, 160), (720, 1280), (241, 333), (1080, 1920), (17, 400)]:
    for canvas in [(128, 160), (800, 1344), (64, 64)]:
      image = np.zeros((height, width, 3), np.uint8)
      _, _, scale = augment.resize_pad(image, np.zeros((0, 4)), canvas)
      expected = (
        min(canvas[0], max(1, round(height * scale))),
        min(canvas[1], max(1, round(width * scale))),
      )
      content = geometry.fit_content(jnp.float32([height, width]), canvas)
      assert tuple(np.asarray(content).astype(int)) == expected


def _denormalize(x):
  return np.asarray(x) * augment.IMAGENET_STD + augment.IMAGENET_MEAN


@pytest.fixture(scope='module')
def annotated_frame(synthetic_root):
  """(RGB frame, a human's inclusive box, its part boxes (N, 4) and their PARTS rows)."""
  video = next(tps.iter_videos(str(synthetic_root), 'train'))
  index, frame = next(video_lib.iter_video_frames(video.video_path, wanted={6}))
  annotation = tps.load_frame(video.annotation_path(index))
  human = max(annotation.humans, key=lambda h: len(h.parts))
  names = sorted(human.parts, key=tps.PARTS.index)
  boxes = np.array([human.parts[n].box for n in names], np.float32)
  return frame, np.array(human.box, np.float32), boxes, [tps.PARTS.index(n) for n in names]


def _device_inputs(frame, human_box, context):
  """The frame on a canvas of its own size (scale 1) and the device's crop region."""
  height, width = frame.shape[:2]
  region = geometry.context_regions(
    jnp.asarray(human_box)[None, None], jnp.float32([[height, width]]), context
  )
  return augment.normalize(frame[None]), jnp.ones((1, 2), jnp.float32), region


# On-device resampling (bilinear RoIAlign, tps_jax/inference/geometry.py) against the
# training preprocessing (tps_jax/input/pipelines.py, PIL), given the same crop pixels
# (PNG here; the builders store JPEG crops, whose own loss is larger): mean |difference|
# within 0.5 grey level, 99% of the pixels within 2 (measured: 0.3 and 0.7 in the
# content, 0.36 in the padding, which PIL fills with the mean colour rounded to
# integers); boxes within 1e-3 pixel.
MEAN_TOLERANCE, P99_TOLERANCE = 0.5, 2.0


def _png(image):
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _compare_images(device, host):
  diff = np.abs(_denormalize(device) - np.asarray(host, np.float32))
  mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
  assert mean <= MEAN_TOLERANCE and p99 <= P99_TOLERANCE, (mean, p99)


def test_part_detector_crop_matches_training_preprocessing(annotated_frame):
  frame, human_box, part_boxes, _ = annotated_frame
  height, width = frame.shape[:2]
  size, context = (128, 96), 0.1
  region = augment.context_region(human_box, width, height, context)
  crop, crop_boxes, _ = augment.crop(frame, part_boxes, region)
  settings = pipelines.data_fields('parts', data_config('parts', image_size=size, max_boxes=16))
  host = pipelines.detector_example(
    {
      'image': _png(crop),
      'boxes': crop_boxes,
      'labels': np.zeros(len(crop_boxes), np.int32),
      'ignore': np.zeros(len(crop_boxes), bool),
    },
    None,
    settings=settings,
    swap_parts=True,
  )

  canvas, canvas_scale, regions = _device_inputs(frame, human_box, context)
  np.testing.assert_array_equal(np.asarray(regions)[0, 0], region)
  crops, content, crop_scale = geometry.fitted_crops(canvas, canvas_scale, regions, size)
  expected = np.minimum(size, np.maximum(1, np.round(host['image_size'] * host['scale'])))
  np.testing.assert_array_equal(np.asarray(content)[0, 0], expected)
  _compare_images(crops[0, 0], host['image'])
  boxes = geometry.frame_to_crop(
    jnp.asarray(part_boxes) + jnp.float32([0, 0, 1, 1]), regions[0], crop_scale[0]
  )
  np.testing.assert_allclose(
    np.asarray(boxes) - [0, 0, 1, 1], host['boxes'][: len(part_boxes)], atol=1e-3
  )


def test_part_state_crop_matches_training_preprocessing(annotated_frame):
  frame, human_box, part_boxes, rows = annotated_frame
  height, width = frame.shape[:2]
  size, resize, context = 64, 72, 0.1
  region = augment.context_region(human_box, width, height, context)
  crop, crop_boxes, _ = augment.crop(frame, part_boxes, region)
  table = np.zeros((len(tps.PARTS), 4), np.float32)  # crop pixels, for the host
  table[rows] = crop_boxes
  frame_table = np.zeros((len(tps.PARTS), 4), np.float32)
  frame_table[rows] = part_boxes
  valid = np.zeros(len(tps.PARTS), bool)
  valid[rows] = True
  settings = pipelines.data_fields(
    'part_states', data_config('part_states', image_size=size, resize=resize)
  )
  host = pipelines.part_state_example(
    {
      'image': _png(crop),
      'part_boxes': table,
      'part_valid': valid,
      'part_state': np.zeros(len(tps.PARTS), np.int32),
      'action': 0,
    },
    None,
    settings=settings,
  )

  canvas, canvas_scale, regions = _device_inputs(frame, human_box, context)
  crops, crop_scale, offset = geometry.squeezed_crops(
    canvas, canvas_scale, regions, resize, (size, size)
  )
  _compare_images(crops[0, 0], host['image'])
  edges = jnp.asarray(frame_table)[None, None] + jnp.float32([0, 0, 1, 1])
  boxes, visible = geometry.boxes_into_window(edges, regions, crop_scale, offset, (size, size))
  np.testing.assert_array_equal(np.asarray(visible)[0, 0] & valid, host['part_valid'])
  np.testing.assert_allclose(
    np.asarray(boxes)[0, 0][host['part_valid']], host['part_boxes'][host['part_valid']], atol=1e-3
  )


# --------------------------------------------------------------------------- exports


@pytest.fixture(scope='module')
def vocab(synthetic_root):
  return tps.Vocab.from_root(str(synthetic_root))


@pytest.fixture(scope='module')
def bundle(tmp_path_factory, synthetic_root):
  """A random bundle whose thresholds let every detection through (all code paths)."""
  tmp = tmp_path_factory.mktemp('bundle')
  return helpers.write_random_bundle(
    str(tmp),
    str(synthetic_root),
    human_score_threshold=0.0,
    part_score_threshold=0.0,
    proposals_per_part=2,
  )


def test_load_export_needs_no_config_file_nor_dataset(bundle):
  export = load_export(os.path.join(bundle, 'states'))
  assert export.kind == 'part_state'
  assert export.config.data.root == ''  # no dataset was ever read
  inputs = export.task.init_inputs()
  logits = export.model.apply(export.variables, *inputs.values(), train=False)
  assert logits.shape == (1, len(tps.PARTS), len(export.vocab['states']))


def test_export_errors_are_one_line(tmp_path, bundle):
  with pytest.raises(ExportError, match='no such export directory'):
    load_export(str(tmp_path / 'nothing'))
  broken = tmp_path / 'broken'
  shutil.copytree(os.path.join(bundle, 'humans'), broken)
  os.remove(broken / 'metadata.json')
  with pytest.raises(ExportError, match='metadata.json: no such file'):
    load_export(str(broken))
  with pytest.raises(ExportError, match='a human_detector export, expected a part_state'):
    load_export(os.path.join(bundle, 'humans'), kind='part_state')


def test_bundle_refuses_exports_that_disagree(tmp_path, bundle, vocab):
  other = tps.Vocab(vocab.parts, vocab.states, tuple(reversed(vocab.actions)))
  action = helpers.write_random_export(tmp_path / 'other_action', 'action', other)
  proc = run_module(
    'tps_jax.export_pipeline',
    '--humans',
    os.path.join(bundle, 'humans'),
    '--parts',
    os.path.join(bundle, 'parts'),
    '--states',
    os.path.join(bundle, 'states'),
    '--action',
    action,
    '--out',
    tmp_path / 'b',
    check=False,
    subprocess_=True,
  )
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert 'action classes' in line and action in line and os.path.join(bundle, 'states') in line
  assert not os.path.exists(tmp_path / 'b')


# ------------------------------------------------------------------------- the program


def _inputs(pipeline, batch=4, seed=0):
  frames = helpers.random_frames(batch, pipeline.canvas, seed)
  sizes = np.tile(np.int32([120, 160]), (batch, 1))
  return frames, sizes, np.arange(batch, dtype=np.int32) % len(pipeline.action_names)


def test_outputs_in_frame_pixels_and_within_limits(bundle):
  pipeline = bundle_lib.load_bundle(bundle)
  out = pipeline.compile()(*_inputs(pipeline))[0]
  out = jax.device_get(out)
  assert out['human_boxes'].shape == (4, 3, 4)
  assert out['part_boxes'].shape == (4, 3, 10, 2, 4)
  valid = out['part_valid']
  assert valid.any()
  boxes = out['part_boxes'][valid]
  assert (boxes[:, :2] >= -1e-3).all() and (boxes[:, 2] <= 160).all()
  assert ((out['part_states'] >= 0) == valid).all()
  frame = pipeline_lib.frame_json({k: v[0] for k, v in out.items()}, pipeline.state_names)
  assert not submission.validate({'v': 'x'}, {'v': {'img_00001.json': frame}}, kind='pred')


def test_one_and_four_devices_give_the_same_outputs(bundle):
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from jax.sharding import Mesh
      from tests import pipeline_helpers as helpers
      from tps_jax.inference import bundle as bundle_lib
      assert jax.device_count() == 4
      pipeline = bundle_lib.load_bundle({bundle!r})
      frames = helpers.random_frames(4, pipeline.canvas, 1)
      args = (frames, np.tile(np.int32([120, 160]), (4, 1)), np.int32([0, 1, 2, 3]))
      one = pipeline.compile(Mesh(np.array(jax.devices()[:1]), ('data',)))(*args)[0]
      four = pipeline.compile(Mesh(np.array(jax.devices()), ('data',)))(*args)[0]
      assert len(four['part_boxes'].sharding.device_set) == 4
      # Discrete outputs equal; boxes and scores up to float reassociation (XLA picks
      # other kernels for 1 and 4 frames per device).
      for key in one:
        exact = key.endswith(('valid', 'states'))
        np.testing.assert_allclose(np.asarray(one[key]), np.asarray(four[key]),
                                   atol=0 if exact else 1e-2, err_msg=key)
      print('same')
      """)
  proc = run_on_devices(script, 4, timeout=900)
  assert proc.returncode == 0 and 'same' in proc.stdout, proc.stderr[-3000:]


def test_serialized_program_runs_without_tps_jax_and_matches(bundle, tmp_path):
  copy = str(tmp_path / 'bundle')
  shutil.copytree(bundle, copy)
  bundle_lib.serialize_parse_frames(copy, frame_batch=2)
  pipeline = bundle_lib.load_bundle(copy)
  frames, sizes, actions = _inputs(pipeline, batch=2, seed=2)
  np.savez(tmp_path / 'inputs.npz', frames=frames, sizes=sizes, actions=actions)
  # Only jax, numpy and orbax: tps_jax is not importable in this process.
  script = textwrap.dedent(f"""
      import sys
      sys.modules['tps_jax'] = None
      import jax, numpy as np, orbax.checkpoint as ocp
      with open({copy!r} + '/serialized/parse_frames.bin', 'rb') as f:
        exported = jax.export.deserialize(bytearray(f.read()))
      variables = {{k: ocp.PyTreeCheckpointer().restore(f'{copy}/{{k}}/variables')
                   for k in ('humans', 'parts', 'states')}}
      x = np.load({str(tmp_path / 'inputs.npz')!r})
      out = exported.call(variables, x['frames'], x['sizes'], x['actions'])
      np.savez({str(tmp_path / 'outputs.npz')!r}, *[np.asarray(o) for o in out])
      """)
  env = dict(os.environ, PYTHONPATH='')
  proc = subprocess.run(
    [sys.executable, '-c', script],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  served = np.load(tmp_path / 'outputs.npz')
  live = jax.jit(pipeline.parse_frames)(pipeline.variables, frames, sizes, actions)
  signature = json.load(open(os.path.join(copy, 'serialized', 'signature.json')))
  assert signature['frame_batch'] == 2 and signature['outputs'] == list(bundle_lib.OUTPUT_KEYS)
  for i, key in enumerate(bundle_lib.OUTPUT_KEYS):
    np.testing.assert_allclose(served[f'arr_{i}'], np.asarray(live[key]), atol=1e-4, err_msg=key)


# ------------------------------------------------------------------------ the command


def _score_line(text):
  return next(line for line in text.splitlines() if line.startswith('score:'))


def test_all_oracles_score_the_maximum(bundle, synthetic_root, tmp_path):
  proc = run_module(
    'tps_jax.predict',
    '--bundle',
    bundle,
    '--data_root',
    synthetic_root,
    '--split',
    'train',
    '--out',
    tmp_path,
    '--oracle',
    'humans,parts,states,action',
    '--noprogress',
    '--report',
  )
  assert _score_line(proc.stdout) == 'score: 0.999900'
  page = tmp_path / 'report' / 'index.html'  # --report: the error analysis, its path printed
  assert proc.stdout.splitlines()[-1] == f'report: {page}'
  assert 'id="score">score: 0.999900<' in page.read_text()


def test_predict_writes_a_scoreable_submission_resumes_and_skips_bad_videos(
  bundle, synthetic_root, tmp_path
):
  root = tmp_path / 'data'
  shutil.copytree(synthetic_root, root)
  videos = sorted(tps.iter_videos(str(root), 'train'), key=lambda v: v.name)
  bad = videos[1]
  with open(bad.video_path, 'wb') as f:  # a corrupt video: not an mp4 at all
    f.write(b'\x00not a video' * 10)
  out = tmp_path / 'pred'
  proc = run_module(
    'tps_jax.predict',
    '--bundle',
    bundle,
    '--data_root',
    root,
    '--split',
    'train',
    '--out',
    out,
    '--noprogress',
    subprocess_=True,
  )
  assert f'skipped: {bad.video_path}' in proc.stderr
  assert 'skipped 1 video(s)' in proc.stderr
  pred_vid, pred_part = submission.load_pair(str(out), 'pred')
  assert sorted(pred_vid) == sorted(v.name for v in videos)
  assert pred_part[bad.name] == {}
  good = videos[0]
  assert sorted(pred_part[good.name]) == ['img_00001.json', 'img_00006.json', 'img_00011.json']
  gt = tmp_path / 'gt'
  tps.write_ground_truth(str(root), 'train', str(gt))
  scored = run_module('tps_jax.evaluate', '--gt', gt, '--pred', out)
  assert _score_line(scored.stdout) == _score_line(proc.stdout)

  # A rerun parses only what is missing: the bad video again, nothing else.
  os.remove(out / 'videos' / f'{good.name}.json')
  again = run_module(
    'tps_jax.predict',
    '--bundle',
    bundle,
    '--data_root',
    root,
    '--split',
    'train',
    '--out',
    out,
    '--noprogress',
  )
  assert f'{len(videos) - 2} kept from before' in again.stderr
  assert 'parsed 1 video(s)' in again.stderr
  assert json.load(open(out / 'pred_part_result.json'))[good.name] == pred_part[good.name]
  # Another bundle setting on the same results refuses, in one line.
  other = run_module(
    'tps_jax.predict',
    '--bundle',
    bundle,
    '--data_root',
    root,
    '--split',
    'train',
    '--out',
    out,
    '--set',
    'max_humans=2',
    '--noprogress',
    check=False,
  )
  assert other.returncode == 2 and '--fresh' in other.stderr.strip().splitlines()[-1]


def test_predict_on_a_folder_of_videos(bundle, synthetic_root, tmp_path):
  folder = tmp_path / 'videos' / 'some_class'
  folder.mkdir(parents=True)
  video = next(tps.iter_videos(str(synthetic_root), 'test'))
  shutil.copy(video.video_path, folder)
  proc = run_module(
    'tps_jax.predict',
    '--bundle',
    bundle,
    '--video_folder',
    tmp_path / 'videos',
    '--out',
    tmp_path / 'pred',
    '--noprogress',
  )
  assert 'score:' not in proc.stdout  # no ground truth, no score
  pred_vid, pred_part = submission.load_pair(str(tmp_path / 'pred'), 'pred')
  assert (
    list(pred_vid) == [video.name]
    and pred_vid[video.name] in tps.Vocab.from_root(str(synthetic_root)).actions
  )
  assert sorted(pred_part[video.name]) == ['img_00001.json', 'img_00006.json', 'img_00011.json']


@pytest.mark.slow
def test_two_processes_split_the_videos_and_process_0_merges(bundle, synthetic_root, tmp_path):
  port = portpicker.pick_unused_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'tps_jax.predict',
        '--bundle',
        bundle,
        '--data_root',
        str(synthetic_root),
        '--split',
        'train',
        '--out',
        str(tmp_path),
        '--noprogress',
      ],
      cwd=REPO_ROOT,
      env=dict(
        os.environ,
        JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(i),
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [proc.communicate(timeout=900) for proc in procs]
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  videos = sorted(v.name for v in tps.iter_videos(str(synthetic_root), 'train'))
  assert 'parsed 3 video(s)' in outputs[0][1]  # process 0: videos 0, 2, 4
  assert 'score:' in outputs[0][0] and 'score:' not in outputs[1][0]
  pred_vid, pred_part = submission.load_pair(str(tmp_path), 'pred')
  assert sorted(pred_vid) == videos and all(pred_part[v] for v in videos)


def test_oracle_without_ground_truth_is_one_line(bundle, synthetic_root, tmp_path):
  video = next(tps.iter_videos(str(synthetic_root), 'test')).video_path
  proc = run_module(
    'tps_jax.predict',
    '--bundle',
    bundle,
    '--video',
    video,
    '--out',
    tmp_path,
    '--oracle',
    'humans',
    check=False,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --oracle humans: ')
