"""FPN anchors: torchvision's AnchorGenerator numerically, mmdetection's by hand."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from tps_jax.ops import AnchorGenerator

# A padded 128x160 batch with P2..P6: the P6 map is 2x3, so torchvision's stride
# image // feature is (64, 53) there, not 64.
IMAGE = (128, 160)
FEATURES = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]


def test_matches_torchvision_anchor_generator_on_five_fpn_levels():
  sizes = ((32,), (64,), (128,), (256,), (512,))
  ratios = ((0.5, 1.0, 2.0),) * 5
  reference = TorchAnchorGenerator(sizes, ratios)
  images = ImageList(torch.zeros(2, 3, *IMAGE), [(120, 150), (128, 160)])
  maps = [torch.zeros(2, 8, h, w) for h, w in FEATURES]
  expected = reference(images, maps)[0].numpy()

  generator = AnchorGenerator.torchvision(sizes, ratios)
  levels = generator.grid_anchors(FEATURES, image_shape=IMAGE)
  assert [len(a) for a in levels] == list(generator.num_anchors_per_level(FEATURES))
  np.testing.assert_array_equal(np.concatenate(levels), expected)
  assert generator.num_anchors_per_location == (3,) * 5


def test_mmdet_retinanet_cells_and_grid_by_hand():
  # RetinaNet: octave_base_scale 4, 3 scales per octave, ratios (0.5, 1, 2), stride 8.
  generator = AnchorGenerator.mmdet(
    strides=(8, 16), ratios=(0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3
  )
  cells = generator.cell_anchors(0)
  sizes = 32 * 2.0 ** (np.arange(3) / 3)
  w = np.concatenate([sizes / np.sqrt(r) for r in (0.5, 1.0, 2.0)])  # ratio-major
  h = np.concatenate([sizes * np.sqrt(r) for r in (0.5, 1.0, 2.0)])
  np.testing.assert_allclose(cells, np.stack([-w / 2, -h / 2, w / 2, h / 2], 1), rtol=1e-6)
  assert generator.num_anchors_per_location == (9, 9)
  # Row-major cells, anchors innermost: anchor (y=1, x=2, a=4) of a 3x4 map.
  level0 = generator.grid_anchors([(3, 4), (2, 2)])[0]
  assert level0.shape == (3 * 4 * 9, 4)
  np.testing.assert_allclose(level0[(1 * 4 + 2) * 9 + 4], cells[4] + [16, 8, 16, 8], rtol=1e-6)


def test_center_offset_and_cascade_rpn_sizes():
  # Cascade R-CNN RPN: scale 8 on strides 4..64 -> sides 32..512; GFL: ratio 1 only.
  rpn = AnchorGenerator.mmdet(strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8,))
  assert rpn.sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
  half = AnchorGenerator.mmdet(strides=(8,), ratios=(1.0,), scales=(8,))
  half = AnchorGenerator(half.sizes, half.aspect_ratios, half.strides, center_offset=0.5)
  np.testing.assert_allclose(
    half.grid_anchors([(1, 2)])[0], [[-28, -28, 36, 36], [-20, -28, 44, 36]]
  )
  np.testing.assert_allclose(half.grid_points([(1, 2)])[0], [[4, 4], [12, 4]])


def test_valid_mask_marks_cells_outside_each_unpadded_image():
  generator = AnchorGenerator.mmdet(strides=(8, 16), ratios=(1.0, 2.0), scales=(4,))
  shapes = [(4, 4), (2, 2)]
  mask = np.asarray(generator.valid_mask(shapes, np.array([[32, 32], [17, 9]])))
  assert mask.shape == (2, 4 * 4 * 2 + 2 * 2 * 2)
  assert mask[0].all()
  # 17x9 image: stride 8 -> rows y*8 < 17 (0..2), cols x*8 < 9 (0..1); stride 16 ->
  # rows 0..1, column 0 (mmdetection's ceil(17 / 16) = 2, ceil(9 / 16) = 1).
  level0 = mask[1, :32].reshape(4, 4, 2)
  np.testing.assert_array_equal(level0[..., 0], np.outer([1, 1, 1, 0], [1, 1, 0, 0]))
  np.testing.assert_array_equal(mask[1, 32:].reshape(2, 2, 2)[..., 1], [[1, 0], [1, 0]])


def test_bad_configuration_is_refused():
  with pytest.raises(ValueError, match='strides'):
    AnchorGenerator(((32,),), ((1.0,),), strides=(4, 8))
  with pytest.raises(ValueError, match='image_shape'):
    AnchorGenerator.torchvision().grid_anchors(FEATURES)
  with pytest.raises(ValueError, match='feature maps'):
    AnchorGenerator.torchvision().grid_anchors(FEATURES[:2], IMAGE)
