"""Detector inference speed: jitted JAX Faster R-CNN / Cascade R-CNN against torchvision.

  python bench/bench_detector.py [--size 512] [--batch_size 1] [--repeats 5] [--warmup 2]

One run, same machine, same thread count (torch gets as many threads as XLA's CPU
pool: the CPUs this process may run on), same input: scikit-image's astronaut resized
to `--size` x `--size`, normalised. Three detectors on a ResNet-50 FPN:
- torchvision's fasterrcnn_resnet50_fpn (random-initialised, eval, no_grad), its
  transform set to keep the size (no resize, no padding beyond the multiple of 32);
- the same weights imported into tps_jax (one cascade stage, class-specific), jitted;
- a three-stage Cascade R-CNN (class-agnostic) whose stages all start from those
  weights, jitted: the cost of the two extra stages.
Each figure is the median of `--repeats` timed calls after `--warmup` calls
(compilation excluded); JAX and torch calls alternate so that both see the same load.
"""

import common
import torch
import torchvision
from absl import flags

import tps_jax.convert.detection  # noqa: F401  (registers the detector converters)
from tps_jax import cli
from tps_jax.convert import convert_state_dict
from tps_jax.convert.io import unflatten
from tps_jax.models.cascade_rcnn import build_cascade_rcnn


def cascade_from(conversion) -> tuple:
  """A 3-stage class-agnostic cascade whose stages copy the 1-stage head (class 0's box)."""
  base = conversion.model
  model = build_cascade_rcnn('resnet50', base.num_classes, convention='mmdet')
  params = {k: v for k, v in conversion.params.items() if not k.startswith('box_heads_')}
  for stage in range(3):
    for path, value in conversion.params.items():
      if path.startswith('box_heads_0/'):
        if path.startswith('box_heads_0/bbox_pred/'):
          value = value[..., :4]
        params[path.replace('box_heads_0', f'box_heads_{stage}')] = value
  return model, {'params': unflatten(params), **unflatten(conversion.model_state)}


common.define_detector_flags()
flags.adopt_module_key_flags(common)  # --help lists them


def main(argv):
  del argv
  args = flags.FLAGS
  common.match_torch_threads()
  torch.manual_seed(0)
  reference = common.keep_size(
    torchvision.models.detection.fasterrcnn_resnet50_fpn(
      weights=None, weights_backbone=None
    ).eval(),
    args.size,
  )
  conversion = convert_state_dict(
    {k: v.numpy() for k, v in reference.state_dict().items()}, 'fasterrcnn_resnet50_fpn'
  )
  common.compare_detectors(
    [
      ('JAX Faster R-CNN R-50 FPN (1 stage)', conversion.model, conversion.variables()),
      ('JAX Cascade R-CNN R-50 FPN (3 stages)', *cascade_from(conversion)),
    ],
    reference,
    'torchvision fasterrcnn_resnet50_fpn',
  )


if __name__ == '__main__':
  cli.run(main)
