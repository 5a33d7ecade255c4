"""The synthetic people of tps_jax/datasets/synthetic.py: body model, part states, drawing.

A person faces the camera (their left side is on the image's right) and is drawn from
a pose vector of joint angles (POSE_FIELDS). Each body part's state is a function of
the drawn pose: the nearest of that part's state prototypes (PROTOTYPES), so that one
frame's crop of a part shows its state (an arm's angles, a leg's spread, the face's
position inside the head). Hand states are drawn shapes: an open hand with fingers
('wave'), a hand with an object ('hold') or a plain fist ('none').

Every primitive is drawn twice, in colour and as a part label, into a layer of its
own; composited frames keep a label map, from which parts get tight boxes of their
visible pixels and a visible fraction (for occlusion and the image border).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

from tps_jax.data.kinetics_tps import PARTS

SIDES = {'left': 1.0, 'right': -1.0}  # the person's left is the image's right (+x)

# The continuous pose, interpolated between keyframes. Angles in degrees: limbs from
# straight down, positive outwards; torso tilt positive towards the image's right.
POSE_FIELDS = (
  'torso',
  'head_yaw',
  'head_pitch',
  'left_arm_a',
  'left_arm_e',
  'right_arm_a',
  'right_arm_e',
  'left_leg_h',
  'left_leg_k',
  'right_leg_h',
  'right_leg_k',
  'left_foot',
  'right_foot',
  'lift',
)
FIELD = {name: i for i, name in enumerate(POSE_FIELDS)}

# kind -> state -> prototype of the kind's fields (head: |yaw|, pitch; torso: |tilt|;
# arm: shoulder a, elbow e (forearm at a + e); leg: hip h, knee k; foot: angle below
# the horizontal). A part's state is its nearest prototype in units of SCALE.
PROTOTYPES = {
  'head': {'none': (0.0, 0.0), 'turn': (0.8, 0.0), 'nod': (0.0, 0.8)},
  'torso': {'none': (0.0,), 'bend': (35.0,)},
  'arm': {
    'none': (8.0, 8.0),
    'bend': (25.0, 115.0),
    'raise': (165.0, 5.0),
    'stretch': (90.0, 5.0),
    'others': (-25.0, -80.0),
  },
  'leg': {'none': (4.0, 0.0), 'step': (28.0, 0.0), 'kick': (75.0, 5.0), 'bend': (40.0, -65.0)},
  'foot': {'none': (0.0,), 'lift': (45.0,), 'tiptoe': (85.0,)},
}
SCALE = {'head': 1.0, 'torso': 35.0, 'arm': 90.0, 'leg': 45.0, 'foot': 45.0}
STATES = (
  'none',
  'others',
  'bend',
  'raise',
  'stretch',
  'kick',
  'step',
  'lift',
  'tiptoe',
  'turn',
  'nod',
  'hold',
  'wave',
)  # list/part_stat.txt, in this order
OBJECTS = ('none', 'bag', 'barbell', 'book', 'cup', 'phone')  # list/object.txt

# Body proportions as fractions of the standing height.
HEAD_R, NECK, TORSO_LEN = 0.075, 0.02, 0.29
SHOULDER_HALF, TORSO_TOP_HALF, TORSO_BOTTOM_HALF, HIP_HALF = 0.125, 0.105, 0.085, 0.055
UPPER_ARM, FOREARM, HAND_R = 0.16, 0.14, 0.035
THIGH, SHIN, FOOT = 0.24, 0.22, 0.075
UPPER_ARM_W, FOREARM_W, THIGH_W, SHIN_W, FOOT_W = 0.055, 0.045, 0.075, 0.06, 0.035

_OBJECT_LABEL = len(PARTS) + 1  # layer labels: parts 1..10, held objects 11, 12, ...
_OWNER_STRIDE = 64  # owner map: _OWNER_STRIDE * (layer + 1) + layer label


def part_kind(part: str) -> str:
  return part.split('_')[-1]


def kind_fields(part: str) -> tuple[str, ...]:
  """The pose fields a part's state is read from."""
  kind = part_kind(part)
  if kind == 'head':
    return ('head_yaw', 'head_pitch')
  if kind == 'torso':
    return ('torso',)
  side = part.split('_')[0]
  return {
    'arm': (f'{side}_arm_a', f'{side}_arm_e'),
    'leg': (f'{side}_leg_h', f'{side}_leg_k'),
    'foot': (f'{side}_foot',),
  }[kind]


def state_of(part: str, pose: np.ndarray, hands: dict[str, str]) -> str:
  """The state label of a part in a pose: its nearest prototype (hands: as drawn)."""
  kind = part_kind(part)
  if kind == 'hand':
    return hands[part.split('_')[0]]
  values = np.array([pose[FIELD[f]] for f in kind_fields(part)])
  if kind in ('head', 'torso'):
    values[0] = abs(values[0])
  prototypes = PROTOTYPES[kind]
  distances = {
    s: np.linalg.norm((values - np.array(p)) / SCALE[kind]) for s, p in prototypes.items()
  }
  return min(distances, key=distances.get)


def prototype_values(part: str, state: str) -> dict[str, float]:
  """Pose fields of a part in a state's prototype (signs of head/torso left positive)."""
  return dict(zip(kind_fields(part), PROTOTYPES[part_kind(part)][state]))


@dataclasses.dataclass(frozen=True)
class Look:
  """A person's colours (RGB)."""

  skin: tuple
  hair: tuple
  shirt: tuple
  sleeves: tuple  # forearm colour: skin (short sleeves) or shirt
  pants: tuple
  shoes: tuple
  eyes: tuple = (25, 20, 20)


def random_look(rng: np.random.Generator) -> Look:
  skins = ((236, 198, 170), (222, 170, 130), (190, 140, 100), (141, 95, 60), (96, 64, 45))
  hairs = ((30, 25, 20), (80, 50, 30), (150, 110, 60), (200, 180, 140), (110, 110, 110))
  skin = skins[rng.integers(len(skins))]
  shirt = random_colour(rng)
  return Look(
    skin=skin,
    hair=hairs[rng.integers(len(hairs))],
    shirt=shirt,
    sleeves=skin if rng.random() < 0.5 else shirt,
    pants=random_colour(rng, 0.7),
    shoes=random_colour(rng, 0.45),
  )


def random_colour(rng: np.random.Generator, value: float = 0.85) -> tuple:
  hue, sat = rng.random(), rng.uniform(0.35, 0.9)
  val = rng.uniform(0.35, value) if value < 0.8 else rng.uniform(0.45, value)
  i, f = int(hue * 6) % 6, hue * 6 - int(hue * 6)
  p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
  rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
  return tuple(int(255 * c) for c in rgb)


def darker(colour: tuple, factor: float = 0.45) -> tuple:
  return tuple(int(c * factor) for c in colour)


# ---------------------------------------------------------------------------- geometry


def _limb(angle: float, side: float) -> np.ndarray:
  """Unit vector at `angle` degrees from straight down, outwards on `side`."""
  r = math.radians(angle)
  return np.array([side * math.sin(r), math.cos(r)])


def _rotate(v: np.ndarray, degrees: float) -> np.ndarray:
  r = math.radians(degrees)
  c, s = math.cos(r), math.sin(r)
  return np.array([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


@dataclasses.dataclass
class Skeleton:
  joints: dict[str, np.ndarray]  # name -> (x, y) image pixels
  up: np.ndarray  # unit torso axis, pelvis to neck
  perp: np.ndarray  # unit, across the torso towards the image's right
  fore: dict[str, np.ndarray]  # side -> unit forearm direction, elbow to wrist


def skeleton(pose: np.ndarray, x: float, ground: float, height: float) -> Skeleton:
  """Joints of a pose standing on `ground` with the pelvis at `x`.

  The pelvis height is set so that the lowest point of either foot touches the ground
  (then raised by the jump field 'lift').
  """
  p = {name: pose[i] for name, i in FIELD.items()}
  h, tilt = height, p['torso']
  up = np.array([math.sin(math.radians(tilt)), -math.cos(math.radians(tilt))])
  perp = np.array([math.cos(math.radians(tilt)), math.sin(math.radians(tilt))])
  j = {'pelvis': np.zeros(2), 'neck': up * TORSO_LEN * h}
  j['head'] = j['neck'] + up * (NECK + HEAD_R) * h
  fore = {}
  for side, s in SIDES.items():
    shoulder = j['neck'] + perp * s * SHOULDER_HALF * h - up * 0.02 * h
    upper = _rotate(_limb(p[f'{side}_arm_a'], s), tilt)
    fore[side] = _rotate(_limb(p[f'{side}_arm_a'] + p[f'{side}_arm_e'], s), tilt)
    elbow = shoulder + upper * UPPER_ARM * h
    wrist = elbow + fore[side] * FOREARM * h
    hip = perp * s * HIP_HALF * h
    knee = hip + _limb(p[f'{side}_leg_h'], s) * THIGH * h
    ankle = knee + _limb(p[f'{side}_leg_h'] + p[f'{side}_leg_k'], s) * SHIN * h
    f = math.radians(p[f'{side}_foot'])
    toe_dir = np.array([s * math.cos(f), math.sin(f)])
    j.update(
      {
        f'{side}_shoulder': shoulder,
        f'{side}_elbow': elbow,
        f'{side}_wrist': wrist,
        f'{side}_hand': wrist + fore[side] * HAND_R * h * 0.8,
        f'{side}_hip': hip,
        f'{side}_knee': knee,
        f'{side}_ankle': ankle,
        f'{side}_heel': ankle - toe_dir * 0.25 * FOOT * h,
        f'{side}_toe': ankle + toe_dir * FOOT * h,
      }
    )
  lowest = max(j[f'{side}_{end}'][1] for side in SIDES for end in ('heel', 'toe', 'ankle'))
  origin = np.array([x, ground - lowest - FOOT_W * h / 2 - p['lift'] * h])
  return Skeleton(joints={k: v + origin for k, v in j.items()}, up=up, perp=perp, fore=fore)


# ---------------------------------------------------------------------------- drawing


@dataclasses.dataclass
class Layer:
  """A person drawn alone: colours and labels (parts 1..10, objects 11..) at (x0, y0)."""

  rgb: np.ndarray  # (h, w, 3) uint8
  label: np.ndarray  # (h, w) uint8, 0 = empty
  x0: int
  y0: int
  objects: tuple[str, ...]  # name of label _OBJECT_LABEL + i


class _Canvas:
  """Draws primitives in colour and as a label, in local coordinates."""

  def __init__(self, x0: int, y0: int, w: int, h: int):
    self.x0, self.y0 = x0, y0
    self.rgb = Image.new('RGB', (w, h))
    self.label = Image.new('L', (w, h))
    self.draws = (ImageDraw.Draw(self.rgb), ImageDraw.Draw(self.label))

  def _xy(self, p) -> tuple[float, float]:
    return (float(p[0]) - self.x0, float(p[1]) - self.y0)

  def disc(self, label, colour, c, r, outline=None):
    for grow, col in ((1, outline), (0, colour)):
      if col is None:
        continue
      x, y = self._xy(c)
      rr = max(r + grow, 0.6)
      for draw, fill in zip(self.draws, (col, label)):
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=fill)

  def capsule(self, label, colour, p0, p1, width, outline=None):
    for grow, col in ((1, outline), (0, colour)):
      if col is None:
        continue
      w = max(width + 2 * grow, 1.0)
      a, b = self._xy(p0), self._xy(p1)
      for draw, fill in zip(self.draws, (col, label)):
        draw.line((a, b), fill=fill, width=int(round(w)))
        for x, y in (a, b):
          draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fill)

  def polygon(self, label, colour, points, outline=None):
    pts = [self._xy(p) for p in points]
    self.draws[0].polygon(pts, fill=colour, outline=outline)
    self.draws[1].polygon(pts, fill=label, outline=label)

  def chord(self, label, colour, c, r, start, end):
    x, y = self._xy(c)
    for draw, fill in zip(self.draws, (colour, label)):
      draw.chord((x - r, y - r, x + r, y + r), start, end, fill=fill)


def render_person(
  pose: np.ndarray,
  hands: dict[str, str],
  held: tuple[str, ...],
  look: Look,
  x: float,
  ground: float,
  height: float,
  object_colour: tuple = (230, 230, 235),
) -> Layer:
  """Draws one person (and the objects they hold) into a layer of its own.

  `hands`: side -> hand state; `held`: names of held objects ('barbell' spans both
  hands; another object sits in the first hand whose state is 'hold').
  """
  sk = skeleton(pose, x, ground, height)
  j, h = sk.joints, height
  points = np.array(list(j.values()))
  margin = 0.3 * h + 3  # limb widths, fingers, objects
  x0, y0 = np.floor(points.min(0) - margin).astype(int)
  x1, y1 = np.ceil(points.max(0) + margin).astype(int)
  canvas = _Canvas(x0, y0, x1 - x0, y1 - y0)
  label = {name: i + 1 for i, name in enumerate(PARTS)}
  for side in SIDES:  # legs and feet, behind the torso
    canvas.capsule(
      label[f'{side}_leg'],
      look.pants,
      j[f'{side}_hip'],
      j[f'{side}_knee'],
      THIGH_W * h,
      darker(look.pants),
    )
    canvas.capsule(
      label[f'{side}_leg'],
      look.pants,
      j[f'{side}_knee'],
      j[f'{side}_ankle'],
      SHIN_W * h,
      darker(look.pants),
    )
  for side in SIDES:
    canvas.capsule(
      label[f'{side}_foot'],
      look.shoes,
      j[f'{side}_heel'],
      j[f'{side}_toe'],
      FOOT_W * h,
      darker(look.shoes),
    )
  perp, up = sk.perp, sk.up
  torso = [
    j['neck'] - perp * TORSO_TOP_HALF * h,
    j['neck'] + perp * TORSO_TOP_HALF * h,
    j['pelvis'] + perp * TORSO_BOTTOM_HALF * h - up * 0.03 * h,
    j['pelvis'] - perp * TORSO_BOTTOM_HALF * h - up * 0.03 * h,
  ]
  canvas.polygon(label['torso'], look.shirt, torso, darker(look.shirt))
  _draw_head(canvas, label['head'], j['head'], pose, look, h)
  for side in SIDES:
    canvas.capsule(
      label[f'{side}_arm'],
      look.shirt,
      j[f'{side}_shoulder'],
      j[f'{side}_elbow'],
      UPPER_ARM_W * h,
      darker(look.shirt),
    )
    canvas.capsule(
      label[f'{side}_arm'],
      look.sleeves,
      j[f'{side}_elbow'],
      j[f'{side}_wrist'],
      FOREARM_W * h,
      darker(look.sleeves),
    )
  for side in SIDES:
    _draw_hand(
      canvas, label[f'{side}_hand'], j[f'{side}_hand'], sk.fore[side], hands[side], look, h
    )
  for k, name in enumerate(held):
    _draw_object(canvas, _OBJECT_LABEL + k, name, j, hands, object_colour, h)
  return Layer(
    rgb=np.asarray(canvas.rgb),
    label=np.asarray(canvas.label),
    x0=int(x0),
    y0=int(y0),
    objects=tuple(held),
  )


def _draw_head(canvas, label, c, pose, look, h):
  r = HEAD_R * h
  yaw, pitch = pose[FIELD['head_yaw']], max(pose[FIELD['head_pitch']], 0.0)
  canvas.disc(label, look.skin, c, r, darker(look.skin))
  # Hair: a chord centred on the top, shifted away from the face, larger when nodding.
  centre = 270 - 55 * yaw
  half = 95 + 45 * pitch + 20 * abs(yaw)
  canvas.chord(label, look.hair, c, r, centre - half, centre + half)
  eye_y = (-0.05 + 0.55 * pitch) * r
  spread = 0.34 * r * (1 - 0.35 * abs(yaw))
  eye_r = max(0.14 * r, 0.7)
  for s in (-1, 1):
    canvas.disc(label, look.eyes, c + np.array([yaw * 0.45 * r + s * spread, eye_y]), eye_r)
  mouth_y = (0.45 + 0.35 * pitch) * r
  if mouth_y < 0.8 * r:
    mx = c[0] + yaw * 0.45 * r
    canvas.capsule(
      label,
      (150, 60, 60),
      (mx - 0.2 * r, c[1] + mouth_y),
      (mx + 0.2 * r, c[1] + mouth_y),
      max(0.1 * r, 0.8),
    )


def _draw_hand(canvas, label, centre, fore, state, look, h):
  r = HAND_R * h
  if state == 'wave':
    for angle in (-50, -18, 14, 46):
      tip = centre + _rotate(fore, angle) * 2.3 * r
      canvas.capsule(label, look.skin, centre, tip, max(0.45 * r, 1.0), darker(look.skin))
    canvas.disc(label, look.skin, centre, 1.1 * r, darker(look.skin))
  else:
    canvas.disc(label, look.skin, centre, r, darker(look.skin))


def _draw_object(canvas, label, name, j, hands, colour, h):
  if name == 'barbell':
    a, b = j['right_hand'], j['left_hand']
    u = (b - a) / max(np.linalg.norm(b - a), 1e-6)
    n = np.array([-u[1], u[0]])
    ends = (a - u * 0.22 * h, b + u * 0.22 * h)
    canvas.capsule(label, (150, 150, 160), ends[0], ends[1], 0.028 * h, (60, 60, 70))
    for end, inward in zip(ends, (u, -u)):
      plate = end + inward * 0.03 * h
      canvas.capsule(
        label, (45, 45, 55), plate - n * 0.09 * h, plate + n * 0.09 * h, 0.06 * h, (20, 20, 25)
      )
    return
  side = next(s for s in SIDES if hands[s] == 'hold')
  c, s = j[f'{side}_hand'], SIDES[side]
  w, hh, offset = {
    'cup': (0.06, 0.085, (0.06, -0.02)),
    'phone': (0.04, 0.07, (0.0, -0.05)),
    'book': (0.11, 0.13, (0.08, -0.02)),
    'bag': (0.15, 0.12, (0.0, 0.11)),
  }[name]
  centre = c + np.array([s * offset[0] * h, offset[1] * h])
  if name == 'bag':
    canvas.capsule(label, darker(colour, 0.6), c, centre, 0.015 * h)
  half = np.array([w * h / 2, hh * h / 2])
  corners = [centre + half * np.array(k) for k in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
  fill = (40, 40, 48) if name == 'phone' else colour
  canvas.polygon(label, fill, corners, darker(fill, 0.5))


# ---------------------------------------------------------------------------- frames


@dataclasses.dataclass
class Visible:
  """What of a person survives compositing: tight boxes of visible pixels."""

  box: tuple[int, int, int, int] | None  # human: all visible body pixels
  parts: dict[str, tuple[int, int, int, int]]  # parts kept (visible enough)
  objects: list[tuple[str, tuple[int, int, int, int]]]


def composite(
  frame: np.ndarray,
  layers: list[Layer],
  occluder: np.ndarray | None = None,
  occluder_rgb: np.ndarray | None = None,
) -> np.ndarray:
  """Pastes layers back to front onto `frame` (in place), then an occluder mask.

  Returns the owner map: 64 * (layer index + 1) + layer label where a layer shows,
  0 elsewhere (background and occluder).
  """
  height, width = frame.shape[:2]
  owner = np.zeros((height, width), np.int32)
  for n, layer in enumerate(layers):
    window = _window(layer, width, height)
    if window is None:
      continue
    (fy, fx), local = window
    mask = layer.label[local] > 0
    frame[fy, fx][mask] = layer.rgb[local][mask]
    owner[fy, fx][mask] = _OWNER_STRIDE * (n + 1) + layer.label[local][mask]
  if occluder is not None:
    frame[occluder] = occluder_rgb[occluder]
    owner[occluder] = 0
  return owner


def visible_boxes(
  owner: np.ndarray, layers: list[Layer], min_visible: float = 0.3, min_pixels: int = 4
) -> list[Visible]:
  """Per layer, tight (inclusive-pixel) boxes of what the owner map shows of it.

  A part or object is kept when at least `min_visible` of its own pixels (and
  `min_pixels`) remain visible inside the image and its box spans 2 x 2 pixels or more;
  the human box covers all visible body pixels.
  """
  height, width = owner.shape
  visible = []
  for n, layer in enumerate(layers):
    window = _window(layer, width, height)
    if window is None:
      visible.append(Visible(box=None, parts={}, objects=[]))
      continue
    (fy, fx), _ = window
    region = owner[fy, fx] - _OWNER_STRIDE * (n + 1)
    offset = np.array([fx.start, fy.start, fx.start, fy.start])
    own = np.bincount(layer.label.ravel(), minlength=_OWNER_STRIDE)
    boxes = {}
    for value in np.nonzero(own)[0][1:]:
      box = _box(region == value, max(min_pixels, min_visible * own[value]))
      if box is not None:
        boxes[int(value)] = tuple(int(v) for v in box + offset)
    body = _box((region > 0) & (region <= len(PARTS)), 1)
    visible.append(
      Visible(
        box=None if body is None else tuple(int(v) for v in body + offset),
        parts={PARTS[v - 1]: b for v, b in sorted(boxes.items()) if v <= len(PARTS)},
        objects=[
          (layer.objects[v - _OBJECT_LABEL], b)
          for v, b in sorted(boxes.items())
          if v >= _OBJECT_LABEL
        ],
      )
    )
  return visible


def _box(mask: np.ndarray, min_pixels: float) -> np.ndarray | None:
  """Inclusive bounding box (x1, y1, x2, y2) of a mask with enough pixels, 2 x 2 or more."""
  if mask.sum() < max(min_pixels, 1):
    return None
  cols, rows = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
  box = np.array([cols[0], rows[0], cols[-1], rows[-1]])
  return box if box[2] > box[0] and box[3] > box[1] else None


def _window(layer: Layer, width: int, height: int):
  """(frame slices, layer slices) of the part of a layer inside the frame, or None."""
  lh, lw = layer.label.shape
  fx0, fy0 = max(layer.x0, 0), max(layer.y0, 0)
  fx1, fy1 = min(layer.x0 + lw, width), min(layer.y0 + lh, height)
  if fx0 >= fx1 or fy0 >= fy1:
    return None
  return (
    (slice(fy0, fy1), slice(fx0, fx1)),
    (slice(fy0 - layer.y0, fy1 - layer.y0), slice(fx0 - layer.x0, fx1 - layer.x0)),
  )
