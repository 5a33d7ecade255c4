"""One-stage detector inference speed: jitted JAX RetinaNet (and GFL) against torchvision.

  python bench/bench_one_stage.py [--size 512] [--batch_size 1] [--repeats 5] [--warmup 2]

One run, same machine, same thread count (torch gets as many threads as XLA's CPU pool:
the CPUs this process may run on), same input: scikit-image's astronaut resized to
`--size` x `--size`, normalised. Detectors, all on a ResNet-50 FPN (P3-P7):
- torchvision's retinanet_resnet50_fpn (random-initialised, eval, no_grad), its
  transform set to keep the size (no resize, no padding beyond the multiple of 32);
- the same weights imported into tps_jax (`retinanet_resnet50_fpn`), jitted: the ratio;
- a tps_jax GFL R-50 (mmdetection's settings) with random weights, jitted, for scale
  (no torchvision counterpart).
A random-initialised head scores every (anchor, class) ~0.01, under the 0.05 threshold,
which would leave the post-processing idle; as in tests/test_retinanet_gfl.py the head
convs are re-drawn He-normal with a class bias that lets a few hundred candidates
through, so both sides do their top-k, decoding and NMS. Each figure is the median of
`--repeats` timed calls after `--warmup` calls (compilation excluded); JAX and torch
calls alternate so that both see the same load.
"""

import math

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from absl import flags

import tps_jax.convert.one_stage  # noqa: F401  (registers the one-stage converters)
from tps_jax import cli
from tps_jax.convert import convert_state_dict
from tps_jax.models.gfl import build_gfl

CLASS_BIAS = -6.2


def busy_head(model: torch.nn.Module) -> torch.nn.Module:
  """He-normal head convs and a class bias that passes a few hundred candidates."""
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for module in model.head.modules():
      if isinstance(module, torch.nn.Conv2d):
        module.weight.normal_(0.0, math.sqrt(2.0 / module.weight[0].numel()), generator=generator)
        module.bias.zero_()
    model.head.classification_head.cls_logits.bias.fill_(CLASS_BIAS)
  return model


def random_gfl(size: int):
  """A GFL R-50 (80 classes) with He-normal kernels and a class bias as `busy_head`'s."""
  model = build_gfl('resnet50', 80)
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  )
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    names = [k.key for k in path]
    if names[-1] == 'kernel':
      fan_in = math.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
    if names[-1] in ('scale', 'var') or names[-1].startswith('scale_'):
      return np.ones(leaf.shape, np.float32)
    if names[-2:] == ['cls_logits', 'bias']:
      return np.full(leaf.shape, CLASS_BIAS, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return model, jax.tree_util.tree_map_with_path(fill, abstract)


common.define_detector_flags()
flags.adopt_module_key_flags(common)  # --help lists them


def main(argv):
  del argv
  args = flags.FLAGS
  common.match_torch_threads()
  torch.manual_seed(0)
  reference = common.keep_size(
    busy_head(
      torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None
      ).eval()
    ),
    args.size,
  )
  conversion = convert_state_dict(
    {k: v.numpy() for k, v in reference.state_dict().items()}, 'retinanet_resnet50_fpn'
  )
  common.compare_detectors(
    [
      ('JAX RetinaNet R-50 FPN', conversion.model, conversion.variables()),
      ('JAX GFL R-50 FPN', *random_gfl(args.size)),
    ],
    reference,
    'torchvision retinanet_resnet50_fpn',
  )


if __name__ == '__main__':
  cli.run(main)
