"""Pictures of a video's parsing: humans, part boxes coloured by part, state tags, action.

Pure functions on RGB uint8 arrays (PIL ImageDraw), used by `python -m tps_jax.visualize`:
- `draw_frame`: one frame's humans and parts at a display scale (the prediction solid,
  optionally the ground truth dashed);
- `add_header`: a dark band above a picture with coloured text (the action, green when
  right and red when wrong, the frame index);
- `contact_sheet`: equally sized pictures in a grid.

Frames are given in either schema of docs/dataset.md: a predicted part holds
lists of proposals (`box`, `verb`), a ground-truth part one box and one verb. Boxes are
inclusive pixels of the video's frame (x2 = the last column covered); at scale s a box
covers the display pixels [x1 * s, (x2 + 1) * s), and its outline is drawn inward from
that outer edge, so the outline's outer ring lies exactly on the box's scaled border.

Colours: one per part, a limb's left and right in related hues (left saturated, right
light); humans white. Text is PIL's built-in font (nothing is downloaded).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tps_jax.metrics import score, score_math

Colour = tuple[int, int, int]
Segment = tuple[str, Colour]  # a run of header text and its colour

PART_COLOURS: dict[str, Colour] = {
  'head': (0, 215, 230),  # cyan
  'torso': (215, 60, 225),  # magenta
  'left_arm': (225, 30, 45),  # reds
  'right_arm': (255, 145, 165),
  'left_hand': (255, 130, 0),  # oranges
  'right_hand': (255, 210, 110),
  'left_leg': (40, 80, 255),  # blues
  'right_leg': (140, 175, 255),
  'left_foot': (0, 160, 60),  # greens
  'right_foot': (130, 235, 120),
}
HUMAN_COLOUR: Colour = (255, 255, 255)
TEXT_COLOUR: Colour = (235, 235, 235)
RIGHT_COLOUR: Colour = (70, 225, 90)
WRONG_COLOUR: Colour = (255, 75, 75)
BAND_COLOUR: Colour = (24, 24, 24)
TAG_TEXT_COLOUR: Colour = (0, 0, 0)
MIN_DISPLAY_WIDTH = 480  # small videos are upscaled to at least this width
DASH = 4  # dash length of ground-truth outlines, display pixels

Box = tuple[float, float, float, float]


def auto_scale(width: int, min_width: int = MIN_DISPLAY_WIDTH) -> int:
  """The smallest integer upscaling that makes a frame at least `min_width` wide."""
  return max(1, math.ceil(min_width / max(1, width)))


def font_size_for(height: int, width: int) -> int:
  """Text height that stays readable on a picture of this size."""
  return int(np.clip(round(min(height, width) / 26), 10, 28))


@functools.cache
def load_font(size: int) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def resize(image: np.ndarray, scale: float) -> np.ndarray:
  """`image` scaled by `scale` (bilinear); the same array when scale is 1."""
  if scale == 1:
    return image
  height, width = image.shape[:2]
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def display_box(box: Sequence[float], scale: float) -> tuple[int, int, int, int]:
  """Inclusive frame-pixel box -> the inclusive display pixels of its outline's corners."""
  x1, y1, x2, y2 = box
  left, top = round(x1 * scale), round(y1 * scale)
  return (left, top, max(left, round((x2 + 1) * scale) - 1), max(top, round((y2 + 1) * scale) - 1))


def part_proposals(part: Mapping) -> list[tuple[Box, str]]:
  """(box, state) of each proposal of a part: a prediction's lists or a GT's single pair."""
  boxes, verbs = part['box'], part['verb']
  if boxes and not isinstance(boxes[0], (list, tuple)):
    return [(tuple(boxes), verbs)]
  return [(tuple(b), v) for b, v in zip(boxes, verbs)]


def matched_gt_states(
  humans: Sequence[Mapping], gt_humans: Sequence[Mapping]
) -> list[dict[str, str]]:
  """Per predicted human, {part: GT state} of the GT human matched to it, else {}.

  Matching is the score's (Hungarian on IoU, a match when IoU > 0.5).
  """
  states = [{} for _ in humans]
  if not humans or not gt_humans:
    return states
  matches, ious = score_math.match_humans(
    np.array([g['box'] for g in gt_humans], np.float64),
    np.array([h['box'] for h in humans], np.float64),
  )
  for gt_human, pred, iou in zip(gt_humans, matches, ious):
    if pred >= 0 and iou > score.HUMAN_IOU_THRESHOLD:
      states[pred] = {
        name: part_proposals(part)[0][1] for name, part in gt_human.get('parts', {}).items()
      }
  return states


def draw_frame(
  image: np.ndarray,
  humans: Sequence[Mapping],
  *,
  scale: float = 1.0,
  gt_humans: Sequence[Mapping] | None = None,
  font_size: int | None = None,
) -> np.ndarray:
  """The frame `image` at `scale` with one frame's parsing drawn on it.

  Args:
    image: (H, W, 3) uint8, the video's frame at its own size.
    humans: the frame's 'humans' list (submission or ground-truth schema). A human box
      is white with its number; a part's first proposal is a solid outline in the
      part's colour with a state tag ("+n" when n more proposals follow), further
      proposals are 1-pixel outlines.
    scale: display pixels per frame pixel.
    gt_humans: ground-truth humans, drawn dashed (None: not drawn). A tag whose human
      matches a GT human and whose state differs from that GT part's shows the GT state.
    font_size: text height in pixels (default: from the display size).

  Returns:
    (round(H * scale), round(W * scale), 3) uint8.
  """
  canvas = Image.fromarray(resize(image, scale))
  draw = ImageDraw.Draw(canvas)
  font = load_font(font_size or font_size_for(canvas.height, canvas.width))
  solid = max(2, round(scale))
  gt_states = matched_gt_states(humans, gt_humans) if gt_humans else [{} for _ in humans]
  tags = []  # (outline box, text, colour), placed last
  for h, human in enumerate(humans):
    outline = display_box(human['box'], scale)
    draw.rectangle(outline, outline=HUMAN_COLOUR, width=solid)
    number = human.get('number')
    tags.append((outline, str(h + 1 if number is None else number), HUMAN_COLOUR))
  parts = [
    (name, PART_COLOURS.get(name, HUMAN_COLOUR), part_proposals(part), states)
    for human, states in zip(humans, gt_states)
    for name, part in _in_part_order(human.get('parts', {}))
  ]
  for _, colour, proposals, _ in parts:  # further proposals first: under the solid ones
    for box, _ in proposals[1:]:
      draw.rectangle(display_box(box, scale), outline=colour, width=1)
  for name, colour, proposals, states in parts:
    if not proposals:
      continue
    box, state = proposals[0]
    outline = display_box(box, scale)
    draw.rectangle(outline, outline=colour, width=solid)
    text = state + (f' +{len(proposals) - 1}' if len(proposals) > 1 else '')
    if states.get(name, state) != state:
      text += f' (gt: {states[name]})'
    tags.append((outline, text, colour))
  for human in gt_humans or ():
    _dashed_rectangle(draw, display_box(human['box'], scale), HUMAN_COLOUR)
    for name, part in _in_part_order(human.get('parts', {})):
      for box, _ in part_proposals(part):
        _dashed_rectangle(draw, display_box(box, scale), PART_COLOURS.get(name, HUMAN_COLOUR))
  _draw_tags(draw, tags, font, canvas.size)
  return np.asarray(canvas)


def action_segments(pred_action: str | None, gt_action: str | None) -> list[Segment]:
  """'action: <pred>  (gt: <gt>)': green when right, red when wrong, plain without GT."""
  pred_text = f'action: {pred_action or "-"}'
  if gt_action is None:
    return [(pred_text, TEXT_COLOUR)]
  colour = RIGHT_COLOUR if pred_action == gt_action else WRONG_COLOUR
  return [(pred_text, colour), (f'  (gt: {gt_action})', TEXT_COLOUR)]


def header_height(font_size: int) -> int:
  return round(font_size * 1.7)


def add_header(
  image: np.ndarray,
  left: Sequence[Segment],
  right: Sequence[Segment] = (),
  *,
  font_size: int | None = None,
) -> np.ndarray:
  """`image` below a dark band holding `left` left-aligned and `right` right-aligned."""
  height, width = image.shape[:2]
  font_size = font_size or font_size_for(height, width)
  font = load_font(font_size)
  band = Image.new('RGB', (width, header_height(font_size)), BAND_COLOUR)
  draw = ImageDraw.Draw(band)
  margin = max(2, font_size // 2)
  right_width = sum(draw.textlength(text, font=font) for text, _ in right)
  for segments, x in ((left, margin), (right, width - margin - right_width)):
    for text, colour in segments:
      draw.text((x, band.height / 2), text, fill=colour, font=font, anchor='lm')
      x += draw.textlength(text, font=font)
  return np.concatenate([np.asarray(band), image], axis=0)


def contact_sheet(
  pictures: Sequence[np.ndarray], columns: int, *, gap: int = 4, background: Colour = BAND_COLOUR
) -> np.ndarray:
  """Equally sized pictures row by row in a grid, `gap` pixels between them."""
  height, width = pictures[0].shape[:2]
  rows = math.ceil(len(pictures) / columns)
  sheet = np.empty(
    (rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), np.uint8
  )
  sheet[...] = background
  for i, picture in enumerate(pictures):
    top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
    sheet[top : top + height, left : left + width] = picture
  return sheet


def _in_part_order(parts: Mapping) -> list[tuple[str, Mapping]]:
  """Parts in PART_COLOURS order (the dataset's), unknown names last: a fixed draw order."""
  order = {name: i for i, name in enumerate(PART_COLOURS)}
  return sorted(parts.items(), key=lambda item: order.get(item[0], len(order)))


def _dashed_rectangle(
  draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: Colour
) -> None:
  left, top, right, bottom = box
  for start in range(left, right + 1, 2 * DASH):
    end = min(start + DASH - 1, right)
    draw.line([(start, top), (end, top)], fill=colour)
    draw.line([(start, bottom), (end, bottom)], fill=colour)
  for start in range(top, bottom + 1, 2 * DASH):
    end = min(start + DASH - 1, bottom)
    draw.line([(left, start), (left, end)], fill=colour)
    draw.line([(right, start), (right, end)], fill=colour)


def _draw_tags(draw: ImageDraw.ImageDraw, tags, font, canvas_size) -> None:
  """Text on filled labels at their boxes, each at the first spot free of earlier labels
  among: above the top-left corner, inside it, below the bottom-left corner, inside it,
  then the same at the top-right corner (the first spot when none is free)."""
  canvas_width, canvas_height = canvas_size
  placed = []
  for (left, top, right, bottom), text, colour in tags:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    width, height = x1 - x0 + 2, y1 - y0 + 2
    spots = [
      (left, top - height),
      (left, top),
      (left, bottom + 1),
      (left, bottom - height + 1),
      (right - width + 1, top - height),
      (right - width + 1, top),
    ]
    spots = [
      (
        int(np.clip(x, 0, max(0, canvas_width - width))),
        int(np.clip(y, 0, max(0, canvas_height - height))),
      )
      for x, y in spots
    ]
    x, y = next(
      (s for s in spots if not any(_overlaps(s, (width, height), p) for p in placed)), spots[0]
    )
    placed.append(((x, y), (width, height)))
    draw.rectangle((x, y, x + width - 1, y + height - 1), fill=colour)
    draw.text((x + 1 - x0, y + 1 - y0), text, fill=TAG_TEXT_COLOUR, font=font)


def _overlaps(corner, size, other) -> bool:
  (x, y), (w, h) = corner, size
  (ox, oy), (ow, oh) = other
  return x < ox + ow and ox < x + w and y < oy + oh and oy < y + h
