"""Test-time views and ensembles of a detector or the part-state network, jittable.

A detector's views of a batch of padded inputs (content at the top-left): each scale
factor resamples the content onto an input of that many times the size (its own
static shape), each flip mirrors the content (in the same batch as the unmirrored
inputs) and mirrors the boxes back, exchanging left / right part labels; each member
of an ensemble (the same model, variables stacked on a leading axis) runs vmapped.
`detector_views` returns every view's detections in the inputs' pixels and
`merge_detections` merges them (tps_jax/ops/box_merge.py). The part-state network's
views (`state_logits`) are its members and the mirrored crop, their logits averaged.
The end-to-end pipeline (tps_jax/inference/pipeline.py) and the stage evaluators
(`evaluate_detector --scales --flip`, `evaluate_part_state --flip`) share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.data import kinetics_tps as tps
from tps_jax.inference import geometry
from tps_jax.ops import box_merge
from tps_jax.ops.boxes import to_edges

PART_MIRROR = np.asarray(tps.FLIP_PARTS, np.int32)  # a part's mirror image's index
_INCLUSIVE = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def _split(tree, parts: int) -> list:
  """A tree of arrays cut into `parts` equal pieces along the leading axis."""
  size = jax.tree.leaves(tree)[0].shape[0] // parts
  return [jax.tree.map(lambda x, i=i: x[i * size : (i + 1) * size], tree) for i in range(parts)]


def apply_members(apply, variables, members: int) -> list:
  """`apply(variables)` of each member of an ensemble (vmapped over the variables
  stacked on a leading axis: one trace however many members)."""
  if members == 1:
    return [apply(variables)]
  out = jax.vmap(apply)(variables)
  return [jax.tree.map(lambda x, m=m: x[m], out) for m in range(members)]


def _detect(model, variables, members: int, images, content, flip: bool, mirror_labels):
  """One input size's views: per member, the images and (flip) their mirror images;
  boxes in the input's pixels."""
  if flip:
    images = jnp.concatenate([images, geometry.mirror_columns(images, content[:, 1])])
    content = jnp.concatenate([content, content])
  apply = lambda v: model.apply(v, images, content, train=False)
  views = []
  for det in apply_members(apply, variables, members):
    if not flip:
      views.append(det)
      continue
    det, mirrored = _split(det, 2)
    width = content[: len(content) // 2, 1, None]
    mirrored['boxes'] = geometry.mirror_edges(mirrored['boxes'], width)
    if mirror_labels is not None:
      mirrored['labels'] = jnp.asarray(mirror_labels)[mirrored['labels']]
    views += [det, mirrored]
  return views


def scaled_inputs(images, content, scale: float):
  """`images` (N, H, W, C) with content (N, 2) (h, w) at `scale` x their size, the
  content fitted as on a canvas: (images, content, their scale (N, 2) (y, x)); the
  inputs themselves and scale None at 1."""
  if scale == 1.0:
    return images, content, None
  size = geometry.scaled_size(images.shape[1:3], scale)
  regions = jnp.concatenate([jnp.zeros_like(content), content[:, ::-1]], axis=-1)[:, None]
  crops, fitted, to_input = geometry.fitted_crops(images, jnp.ones_like(content), regions, size)
  return crops[:, 0], fitted[:, 0], to_input[:, 0]


def detector_views(
  model,
  variables,
  inputs_at,
  *,
  scales: Sequence[float] = (1.0,),
  flip: bool = False,
  members: int = 1,
  mirror_labels=None,
) -> list[dict[str, jax.Array]]:
  """Every view's detections (boxes, scores, labels, valid): members x scales x
  (flip ? 2 : 1) of them. `inputs_at(scale)` -> (images (N, h, w, C), content (N, 2),
  scale (N, 2) (y, x) from the pixels the boxes are wanted in, or None: those pixels),
  e.g. `scaled_inputs`. `mirror_labels[label]`: a label's mirror image (the parts'
  left / right; None keeps the labels)."""
  views = []
  for scale in scales:
    images, content, to_input = inputs_at(scale)
    for det in _detect(model, variables, members, images, content, flip, mirror_labels):
      if to_input is not None:
        det = {**det, 'boxes': geometry.scale_boxes(det['boxes'], 1.0 / to_input[:, None])}
      views.append(det)
  return views


def merge_detections(
  views: Sequence[Mapping[str, jax.Array]], *, method: str, iou_threshold: float
) -> dict[str, jax.Array]:
  """One detector output from its views' (in the same pixels), as many slots as one
  view has; a single view is returned as it is."""
  if len(views) == 1:
    return dict(views[0])
  join = lambda key, axis: jnp.concatenate([v[key] for v in views], axis=axis)
  boxes, scores, labels, valid = box_merge.merge_views(
    join('boxes', -2),
    join('scores', -1),
    join('labels', -1),
    join('valid', -1),
    method=method,
    iou_threshold=iou_threshold,
    max_outputs=views[0]['scores'].shape[-1],
    num_views=len(views),
  )
  return {'boxes': boxes, 'scores': scores, 'labels': labels, 'valid': valid}


def state_logits(
  model, variables, crops, boxes, valid, action, *, flip: bool = False, members: int = 1
):
  """The part-state network's logits (N, [k,] 10, S) for crops (N, S, S, C), inclusive
  part boxes (N, [k,] 10, 4), valid, action (N,), averaged over the members and, with
  `flip`, over the mirrored crops too (their boxes mirrored, the left / right parts
  exchanged as training flips them, the logits put back in the parts' order)."""
  if flip:
    mirrored = geometry.mirror_edges(to_edges(boxes), crops.shape[-2]) - _INCLUSIVE
    mirrored = jnp.where(valid[..., None], mirrored, 0.0)[..., PART_MIRROR, :]
    crops = jnp.concatenate([crops, crops[..., ::-1, :]])
    boxes = jnp.concatenate([boxes, mirrored])
    valid = jnp.concatenate([valid, valid[..., PART_MIRROR]])
    action = jnp.concatenate([action, action])
  apply = lambda v: model.apply(v, crops, boxes, valid, action, train=False)
  logits = []
  for out in apply_members(apply, variables, members):
    if flip:
      out, mirrored_out = _split(out, 2)
      logits += [out, mirrored_out[..., PART_MIRROR, :]]
    else:
      logits.append(out)
  return sum(logits) / len(logits)
