"""Greedy non-maximum suppression with static shapes, torchvision's semantics.

torchvision.ops.nms sorts by score (stable, descending: equal scores keep their
input order), then walks that order keeping every box not yet suppressed and
suppressing the later boxes whose IoU with it is strictly greater than the
threshold. These functions return the same boxes in the same order, padded to
`max_outputs` with a validity mask (padded slots hold index 0, safe to gather).
Entries with `valid=False` or a NaN score are never kept.

Two exact algorithms (`method`):
- 'greedy': a `lax.while_loop` that keeps one box per step (the first live box in
  score order) and suppresses its overlaps: O(N) per step, at most `max_outputs`
  steps, stops early when no live box remains. The CPU default: its work grows
  with the number kept, so it wins whenever most boxes get suppressed.
- 'tiled': blocks of `tile` boxes in score order; each block is first suppressed
  by the boxes kept in earlier blocks (one (tile, N) IoU matrix), then resolved
  inside the block by iterating x = live & ~any(x_i & iou_ij > t, i < j) to its
  fixed point (the greedy result, reached in at most `tile` rounds, usually a
  few). O(N^2 / 2) IoUs but only ~N / tile sequential steps: the default on GPUs
  and TPUs, where each loop step costs kernel launches (on CPU it is faster than
  'greedy' only when most boxes survive; bench/bench_ops.py measures both).

Class-aware NMS (`batched_nms`) suppresses only between boxes of the same label
by masking the IoU test, exact at any coordinate range (torchvision's coordinate
offset trick loses float32 precision once offsets reach ~1e5 pixels). All
functions accept leading batch dimensions (one NMS per image) and work under
`jax.vmap`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tps_jax.ops.boxes import box_area


def _float32_threshold(iou_threshold):
  """A float32 t32 with (iou > t32) == (iou > t) for every float32 iou.

  torchvision compares the float32 IoU with the threshold as a double; rounding
  the threshold to the nearest float32 could round up (0.3 -> 0.30000001) and then
  keep a box whose IoU is exactly that float. Rounding down is exact.
  """
  if isinstance(iou_threshold, (int, float, np.floating)):
    t32 = np.float32(iou_threshold)
    if float(t32) > float(iou_threshold):
      t32 = np.nextafter(t32, np.float32(-np.inf))
    return t32
  return jnp.asarray(iou_threshold, jnp.float32)


def _pair_iou(box, areas_box, boxes, areas):
  """IoU of box (..., 4) against boxes (..., 4) in torchvision's nms op order."""
  xx1 = jnp.maximum(box[..., 0], boxes[..., 0])
  yy1 = jnp.maximum(box[..., 1], boxes[..., 1])
  xx2 = jnp.minimum(box[..., 2], boxes[..., 2])
  yy2 = jnp.minimum(box[..., 3], boxes[..., 3])
  inter = jnp.maximum(xx2 - xx1, 0.0) * jnp.maximum(yy2 - yy1, 0.0)
  return inter / (areas_box + areas - inter)  # 0 / 0 = NaN never suppresses


def _greedy(boxes, areas, labels, live, threshold, max_outputs):
  """Sorted inputs -> (positions (max_outputs,) in sorted order, valid)."""
  num = boxes.shape[0]
  positions = jnp.arange(num)

  def cond(state):
    step, live, _, _ = state
    return (step < max_outputs) & jnp.any(live)

  def body(state):
    step, live, kept, kept_valid = state
    first = jnp.argmax(live)
    iou = _pair_iou(boxes[first], areas[first], boxes, areas)
    suppress = (iou > threshold) & (labels == labels[first])
    live = live & ~suppress & (positions != first)
    return (step + 1, live, kept.at[step].set(first), kept_valid.at[step].set(True))

  init = (jnp.int32(0), live, jnp.zeros(max_outputs, jnp.int32), jnp.zeros(max_outputs, bool))
  _, _, kept, kept_valid = jax.lax.while_loop(cond, body, init)
  return kept, kept_valid


def _tiled(boxes, areas, labels, live, threshold, max_outputs, tile):
  """Sorted inputs -> (positions, valid), block-wise (see the module docstring)."""
  num = boxes.shape[0]
  tile = min(tile, num)
  padded = -(-num // tile) * tile
  pad = padded - num
  boxes = jnp.pad(boxes, ((0, pad), (0, 0)))
  areas = jnp.pad(areas, (0, pad))
  labels = jnp.pad(labels, (0, pad))
  live = jnp.pad(live, (0, pad))
  num_tiles = padded // tile
  earlier = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]  # (i, j): i < j

  def overlaps(block_start):
    block = jax.lax.dynamic_slice_in_dim(boxes, block_start, tile)
    block_areas = jax.lax.dynamic_slice_in_dim(areas, block_start, tile)
    block_labels = jax.lax.dynamic_slice_in_dim(labels, block_start, tile)
    iou = _pair_iou(block[:, None], block_areas[:, None], boxes[None], areas[None])
    return (iou > threshold) & (block_labels[:, None] == labels[None])  # (tile, padded)

  def cond(state):
    index, _, count = state
    return (index < num_tiles) & (count < max_outputs)

  def body(state):
    index, keep, count = state
    start = index * tile
    hits = overlaps(start)
    # Suppressed by a box kept in an earlier block (keep is False from `start` on).
    block_live = jax.lax.dynamic_slice_in_dim(live, start, tile) & ~jnp.any(
      hits & keep[None, :], axis=1
    )
    # inner[i, j]: block box i, if kept, suppresses the later block box j.
    inner = jax.lax.dynamic_slice_in_dim(hits, start, tile, axis=1) & earlier

    def resolve(state):
      block_keep, _ = state
      new = block_live & ~jnp.any(inner & block_keep[:, None], axis=0)
      return new, jnp.any(new != block_keep)

    block_keep, _ = jax.lax.while_loop(lambda s: s[1], resolve, (block_live, jnp.bool_(True)))
    keep = jax.lax.dynamic_update_slice_in_dim(keep, block_keep, start, axis=0)
    return index + 1, keep, count + jnp.sum(block_keep)

  _, keep, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros(padded, bool), jnp.int32(0)))
  kept = jnp.nonzero(keep, size=max_outputs, fill_value=0)[0].astype(jnp.int32)
  return kept, jnp.arange(max_outputs) < jnp.sum(keep)


def _nms_single(boxes, scores, labels, valid, threshold, *, max_outputs, method, tile):
  num = boxes.shape[0]
  if num == 0 or max_outputs == 0:
    return jnp.zeros(max_outputs, jnp.int32), jnp.zeros(max_outputs, bool)
  valid = valid & ~jnp.isnan(scores)
  order = jnp.argsort(scores, descending=True, stable=True)
  sorted_boxes = boxes[order]
  args = (sorted_boxes, box_area(sorted_boxes), labels[order], valid[order], threshold, max_outputs)
  if method == 'greedy':
    kept, kept_valid = _greedy(*args)
  else:
    kept, kept_valid = _tiled(*args, tile=tile)
  return jnp.where(kept_valid, order[kept], 0).astype(jnp.int32), kept_valid


@functools.partial(jax.jit, static_argnames=('max_outputs', 'method', 'tile'))
def _batched_nms_jit(boxes, scores, labels, valid, threshold, *, max_outputs, method, tile):
  fn = functools.partial(_nms_single, max_outputs=max_outputs, method=method, tile=tile)
  for _ in range(scores.ndim - 1):
    fn = jax.vmap(fn, in_axes=(0, 0, 0, 0, None))
  return fn(boxes, scores, labels, valid, threshold)


def _check(boxes, scores, method):
  if boxes.shape[-1] != 4 or boxes.shape[:-1] != scores.shape:
    raise ValueError(
      f'nms: boxes must be (..., N, 4) and scores (..., N), got {boxes.shape} and {scores.shape}'
    )
  if method is None:
    return 'greedy' if jax.default_backend() == 'cpu' else 'tiled'
  if method not in ('greedy', 'tiled'):
    raise ValueError(f"nms: method must be 'greedy' or 'tiled', got {method!r}")
  return method


def batched_nms(
  boxes,
  scores,
  labels,
  iou_threshold: float,
  max_outputs: int,
  valid=None,
  *,
  method: str | None = None,
  tile: int = 256,
):
  """Class-aware NMS: boxes suppress only boxes with the same label.

  Args:
    boxes: (..., N, 4) xyxy.
    scores: (..., N).
    labels: (..., N) int class of each box.
    iou_threshold: suppress IoU > threshold (Python float or traced scalar).
    max_outputs: static number of output slots.
    valid: optional (..., N) bool; False entries are never kept (e.g. padding,
      or `scores > score_threshold`).
    method: 'greedy', 'tiled' or None (by backend; module docstring); same results.

  Returns:
    indices (..., max_outputs) int32 into N, in decreasing score order, and
    valid (..., max_outputs) bool.
  """
  method = _check(boxes, scores, method)
  valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
  return _batched_nms_jit(
    jnp.asarray(boxes, jnp.float32),
    jnp.asarray(scores, jnp.float32),
    jnp.asarray(labels, jnp.int32),
    valid,
    _float32_threshold(iou_threshold),
    max_outputs=int(max_outputs),
    method=method,
    tile=int(tile),
  )


def nms(
  boxes,
  scores,
  iou_threshold: float,
  max_outputs: int,
  valid=None,
  *,
  method: str | None = None,
  tile: int = 256,
):
  """torchvision.ops.nms with static shapes; see `batched_nms` for the arguments."""
  return batched_nms(
    boxes,
    scores,
    jnp.zeros(scores.shape, jnp.int32),
    iou_threshold,
    max_outputs,
    valid,
    method=method,
    tile=tile,
  )


def multiclass_nms(
  boxes,
  scores,
  score_threshold: float,
  iou_threshold: float,
  max_outputs: int,
  max_candidates: int,
  valid=None,
  *,
  method: str | None = None,
):
  """Per-class NMS over (box, class) candidates (mmdetection's multiclass_nms).

  Args:
    boxes: (..., N, 4) class-agnostic boxes, or (..., N, C, 4) one per class.
    scores: (..., N, C) class scores without a background column.
    score_threshold: candidates need score > threshold.
    max_candidates: static number of highest-scoring (box, class) candidates kept
      before NMS (mmdetection's `nms_pre`); exact when no more than this many pass
      the score threshold.
    valid: optional (..., N) bool mask of the input boxes.

  Returns:
    boxes (..., max_outputs, 4), scores (..., max_outputs), labels
    (..., max_outputs) int32, valid (..., max_outputs), in decreasing score order.
  """
  num_classes = scores.shape[-1]
  if boxes.ndim == scores.ndim:  # class-agnostic: share the box across classes
    boxes = jnp.broadcast_to(boxes[..., None, :], scores.shape + (4,))
  lead = scores.shape[:-2]
  flat_scores = scores.reshape(lead + (-1,)).astype(jnp.float32)
  flat_boxes = boxes.reshape(lead + (-1, 4))
  ok = flat_scores > score_threshold
  if valid is not None:
    ok = ok & jnp.repeat(jnp.asarray(valid, bool), num_classes, axis=-1)
  max_candidates = min(max_candidates, flat_scores.shape[-1])
  _, candidates = jax.lax.top_k(jnp.where(ok, flat_scores, -jnp.inf), max_candidates)
  take = lambda x: jnp.take_along_axis(x, candidates, axis=-1)
  cand_scores, cand_ok = take(flat_scores), take(ok)
  cand_labels = (candidates % num_classes).astype(jnp.int32)
  cand_boxes = jnp.take_along_axis(flat_boxes, candidates[..., None], axis=-2)
  keep, keep_valid = batched_nms(
    cand_boxes, cand_scores, cand_labels, iou_threshold, max_outputs, cand_ok, method=method
  )
  out_boxes = jnp.take_along_axis(cand_boxes, keep[..., None], axis=-2)
  out_scores = jnp.take_along_axis(cand_scores, keep, axis=-1)
  out_labels = jnp.take_along_axis(cand_labels, keep, axis=-1)
  out_boxes = jnp.where(keep_valid[..., None], out_boxes, 0.0)
  out_scores = jnp.where(keep_valid, out_scores, 0.0)
  out_labels = jnp.where(keep_valid, out_labels, 0)
  return out_boxes, out_scores, out_labels, keep_valid
