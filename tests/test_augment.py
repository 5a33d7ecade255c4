"""Augmentations: boxes follow the pixels, flips swap left/right parts, static shapes."""

import numpy as np
import pytest

from tests.data_configs import data_config
from tps_jax.data import augment
from tps_jax.data import kinetics_tps as tps
from tps_jax.data.video import encode_jpeg
from tps_jax.input import pipelines

BOX = np.array([[20, 10, 39, 24]], np.float32)  # inclusive pixels


def _drawn(height=60, width=80, box=BOX[0]):
  """A black image with the pixels of `box` (inclusive) white."""
  image = np.zeros((height, width, 3), np.uint8)
  x1, y1, x2, y2 = box.astype(int)
  image[y1 : y2 + 1, x1 : x2 + 1] = 255
  return image


def _bounds(image):
  """Inclusive bounding box of the bright pixels."""
  ys, xs = np.nonzero(image[..., 0] > 127)
  return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def test_hflip_maps_column_x_to_w_minus_1_minus_x():
  image, boxes = augment.hflip(_drawn(), BOX)
  np.testing.assert_array_equal(boxes[0], _bounds(image))
  np.testing.assert_array_equal(boxes[0], [80 - 1 - 39, 10, 80 - 1 - 20, 24])


def test_crop_clips_boxes_and_reports_visible_fraction():
  image, boxes, visible = augment.crop(_drawn(), BOX, (30, 0, 70, 20))
  assert image.shape == (20, 40, 3)
  np.testing.assert_array_equal(boxes[0], _bounds(image))
  np.testing.assert_allclose(visible, [(10 * 10) / (20 * 15)])
  _, _, visible = augment.crop(_drawn(), BOX, (50, 30, 80, 60))
  assert visible[0] == 0


@pytest.mark.parametrize(
  'region,size',
  [((5, 3, 65, 50), (94, 120)), ((0, 0, 80, 60), (30, 40)), ((12.5, 4.25, 50.5, 40.75), (64, 64))],
)
def test_resize_region_box_bounds_the_pixels(region, size):
  image, boxes, visible = augment.resize_region(_drawn(), BOX, region, size)
  assert image.shape == (*size, 3)
  np.testing.assert_allclose(boxes[0], _bounds(image), atol=1.0)
  assert visible[0] == 1


@pytest.mark.parametrize('shape', [(60, 80), (120, 50), (33, 200)])
def test_resize_pad_static_shape_scale_and_padding(shape):
  box = np.array([5, 6, 20, 30], np.float32)
  image, boxes, scale = augment.resize_pad(_drawn(*shape, box), box[None], (64, 96))
  assert image.shape == (64, 96, 3) and image.dtype == np.uint8
  content_h, content_w = round(shape[0] * scale), round(shape[1] * scale)
  assert content_h <= 64 and content_w <= 96 and (content_h == 64 or content_w == 96)
  np.testing.assert_allclose(boxes[0], _bounds(image), atol=1.0)
  if content_w < 96:
    assert (image[:, content_w:] == augment.MEAN_COLOR).all()
  if content_h < 64:
    assert (image[content_h:] == augment.MEAN_COLOR).all()
  np.testing.assert_allclose(
    augment.normalize(np.array(augment.MEAN_COLOR, np.uint8)), 0, atol=0.01
  )  # within half a grey level


@pytest.mark.parametrize('degrees', [90.0, 180.0, -90.0])
def test_rotate_right_angles_are_exact(degrees):
  image, boxes, visible = augment.rotate(_drawn(64, 64), BOX, degrees)
  np.testing.assert_array_equal(boxes[0], _bounds(image))
  assert visible[0] == 1


@pytest.mark.parametrize('degrees', [7.0, 20.0, -35.0])
def test_rotate_refitted_box_bounds_the_rotated_pixels(degrees):
  image, boxes, _ = augment.rotate(_drawn(), BOX, degrees)
  bounds = _bounds(image)
  # The box holds every rotated pixel and is no more than a pixel larger.
  assert (boxes[0, :2] <= bounds[:2] + 0.5).all() and (boxes[0, 2:] >= bounds[2:] - 0.5).all()
  np.testing.assert_allclose(boxes[0], bounds, atol=1.0)


def test_rotate_reports_boxes_leaving_the_image():
  corner = np.array([[0, 0, 15, 15]], np.float32)
  image, boxes, visible = augment.rotate(_drawn(box=corner[0]), corner, 45.0)
  assert 0 < visible[0] < 1
  assert (boxes[0, :2] >= 0).all() and boxes[0, 2] <= 79 and boxes[0, 3] <= 59


def test_random_regions_lie_inside_the_image():
  rng = np.random.default_rng(0)
  for _ in range(50):
    left, top, right, bottom = augment.random_crop_region(rng, 60, 80, 0.5)
    assert 0 <= left < right <= 80 and 0 <= top < bottom <= 60
    assert right - left >= 40 and bottom - top >= 30
    left, top, right, bottom = augment.random_resized_crop_region(rng, 60, 80, (0.3, 1.0))
    assert 0 <= left < right <= 80 + 1e-6 and 0 <= top < bottom <= 60 + 1e-6
    assert 0.3 * 4800 - 1e-6 <= (right - left) * (bottom - top) <= 4800 + 1e-6
  assert augment.center_region(60, 80, 40, 40) == (20, 10, 60, 50)


def test_jitter_boxes_moves_sides_by_at_most_the_amount():
  rng = np.random.default_rng(1)
  boxes = np.array([[10, 10, 29, 49], [0, 0, 9, 9]], np.float32)
  for _ in range(20):
    moved = augment.jitter_boxes(rng, boxes, 0.1, 64, 64)
    size = np.array([20, 40, 20, 40], np.float32)
    assert (np.abs(moved[0] - boxes[0]) <= 0.1 * size + 1e-4).all()
    assert (moved[:, 0] >= 0).all() and (moved[:, 2] <= 63).all()
    assert (moved[:, 2] >= moved[:, 0]).all() and (moved[:, 3] >= moved[:, 1]).all()


def test_color_jitter_keeps_shape_and_zero_strength_is_identity():
  image = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
  np.testing.assert_array_equal(augment.color_jitter(np.random.default_rng(0), image, 0.0), image)
  jittered = augment.color_jitter(np.random.default_rng(0), image, 0.4)
  assert jittered.shape == image.shape and jittered.dtype == np.uint8
  assert not np.array_equal(jittered, image)


def test_clip_indices_centred_random_and_looping():
  np.testing.assert_array_equal(augment.clip_indices(20, 4, 2), [6, 8, 10, 12])
  rng = np.random.default_rng(0)
  starts = {int(augment.clip_indices(20, 4, 2, rng)[0]) for _ in range(200)}
  assert starts == set(range(0, 14))
  np.testing.assert_array_equal(augment.clip_indices(3, 5, 1), [0, 1, 2, 0, 1])


def test_context_region_grows_the_box_and_clips_to_the_image():
  assert augment.context_region((10, 20, 29, 59), 100, 100, 0.1) == (8, 16, 32, 64)
  assert augment.context_region((0, 0, 99, 49), 100, 50, 0.25) == (0, 0, 100, 50)


# ----------------------------------------------------- stage transforms: flips swap sides


def _part_record(size=64):
  """A crop with two distinct parts on the left: left_arm (index 2), left_foot (9)."""
  boxes = np.zeros((10, 4), np.float32)
  valid = np.zeros(10, bool)
  states = np.full(10, -1, np.int32)
  image = np.zeros((size, size, 3), np.uint8)
  for part, box, state in (('left_arm', (4, 4, 19, 11), 2), ('left_foot', (6, 50, 13, 57), 5)):
    row = tps.PARTS.index(part)
    boxes[row], valid[row], states[row] = box, True, state
    image[box[1] : box[3] + 1, box[0] : box[2] + 1] = 255
  return {
    'image': encode_jpeg(image, 95),
    'part_boxes': boxes,
    'part_valid': valid,
    'part_state': states,
    'action': 3,
  }


def _flip_outcomes(run):
  """Runs `run(rng)` for several seeds; returns the outcomes split by flipped or not."""
  flipped, kept = [], []
  for seed in range(12):
    out, did_flip = run(np.random.default_rng(seed))
    (flipped if did_flip else kept).append(out)
  assert flipped and kept
  return flipped, kept


def test_part_state_flip_swaps_left_and_right_rows_with_their_states():
  settings = pipelines.data_fields(
    'part_states',
    data_config('part_states', image_size=64, resize=64, box_jitter=0.0, color_jitter=0.0),
  )
  record = _part_record()
  reference = pipelines.part_state_example(record, None, settings=settings)

  def run(rng):
    out = pipelines.part_state_example(record, rng, settings=settings)
    return out, out['part_valid'][tps.PARTS.index('right_arm')]

  flipped, kept = _flip_outcomes(run)
  for out in kept:
    np.testing.assert_array_equal(out['part_state'], reference['part_state'])
  for out in flipped:
    for part in ('left_arm', 'left_foot'):
      mirror = tps.PARTS.index(tps.mirrored_part(part))
      row = tps.PARTS.index(part)
      assert not out['part_valid'][row] and out['part_state'][row] == -1
      assert out['part_state'][mirror] == reference['part_state'][row]
      x1, y1, x2, y2 = reference['part_boxes'][row]
      np.testing.assert_allclose(out['part_boxes'][mirror], [63 - x2, y1, 63 - x1, y2], atol=1e-4)
      region = out['image'][int(y1) : int(y2) + 1, int(63 - x2) : int(63 - x1) + 1]
      assert region.mean() > 200  # the pixels moved with the box
  assert reference['image'].shape == (64, 64, 3)


def test_part_detector_flip_swaps_part_labels():
  settings = pipelines.data_fields('parts', data_config('parts', image_size=(64, 64), max_boxes=4))
  part = _part_record()
  record = {
    'image': part['image'],
    'boxes': part['part_boxes'][part['part_valid']],
    'labels': np.flatnonzero(part['part_valid']).astype(np.int32),
    'ignore': np.zeros(2, bool),
  }

  def run(rng):
    out = pipelines.detector_example(record, rng, settings=settings, swap_parts=True)
    return out, out['boxes'][0, 0] > 32

  flipped, kept = _flip_outcomes(run)
  left = [tps.PARTS.index('left_arm'), tps.PARTS.index('left_foot')]
  right = [tps.PARTS.index('right_arm'), tps.PARTS.index('right_foot')]
  assert all(list(out['labels'][:2]) == left for out in kept)
  assert all(list(out['labels'][:2]) == right for out in flipped)
  for out in flipped:
    assert out['valid'].tolist() == [True, True, False, False]
    x1, y1, x2, y2 = out['boxes'][0].astype(int)
    assert out['image'][y1 : y2 + 1, x1 : x2 + 1].mean() > 200


def test_detector_train_transform_marks_cut_boxes_ignore_and_keeps_static_shapes():
  settings = pipelines.data_fields(
    'humans',
    data_config(
      'humans',
      image_size=(48, 64),
      max_boxes=3,
      random_rotation=30.0,
      random_crop=True,
      crop_min_scale=0.3,
      min_visible=0.6,
    ),
  )
  boxes = np.array(
    [[0, 0, 29, 29], [40, 20, 79, 59], [10, 30, 20, 50], [60, 0, 70, 10]], np.float32
  )
  image = np.zeros((60, 80, 3), np.uint8)
  record = {
    'image': encode_jpeg(image),
    'boxes': boxes,
    'labels': np.zeros(4, np.int32),
    'ignore': np.zeros(4, bool),
  }
  saw_ignore = False
  for seed in range(20):
    out = pipelines.detector_example(
      record, np.random.default_rng(seed), settings=settings, swap_parts=False
    )
    assert out['image'].shape == (48, 64, 3) and out['boxes'].shape == (3, 4)
    assert out['valid'].shape == out['ignore'].shape == out['labels'].shape == (3,)
    assert not (out['ignore'] & ~out['valid']).any()
    content = out['image_size'] * out['scale']
    valid_boxes = out['boxes'][out['valid']]
    assert (valid_boxes[:, 2] <= content[1]).all() and (valid_boxes[:, 3] <= content[0]).all()
    saw_ignore |= bool(out['ignore'].any())
  assert saw_ignore
