r"""Writes a synthetic Kinetics-TPS dataset in the official layout: `write_synthetic`.

  summary = write_synthetic(DIR, videos=240, frames=32, size=(160, 120), actions=6,
                            test_fraction=0.2, seed=0, jobs=1, progress=True)

The project's stand-in for the registration-only dataset: the demo, the tests and the
CPU variants of every stage run on it (command line: `python -m data_prep.make_synthetic`).
What it writes under DIR:
```
train_videos/<action>/<video>.mp4, test_videos/<action>/<video>.mp4   (H.264, 30 fps)
train_annotations/<action>/<video>/<video>/img_00001.json, img_00006.json, ...
test_annotations/<action>/<video>/<video>/...      (synthetic only: the real test
                                                    annotations are not public)
test_gt/gt_vid_result.json, gt_part_result.json     (the test split's ground truth in
                                                    the challenge's format, for
                                                    `python -m tps_jax.evaluate --gt`)
list/body_part.txt part_stat.txt object.txt video_train_flist.csv video_test_flist.csv
synthetic.json                                      (the arguments, checked on resume)
```
Annotated frames are the scored ones (1, 6, 11, ...). Every class folder exists in
both splits even when empty. The flist CSVs (header `video_name,num_frames`) are
written last: their presence marks a finished dataset.

The scene: a main actor performing the video's action (a cycle of keyframes of part
states, see ACTIONS), sometimes one or two bystanders (idle or doing the same action),
held objects, background clutter, sometimes a foreground occluder, a slow camera pan,
sensor noise and brightness flicker. Part states are read off the drawn pose
(tps_jax/datasets/synthetic_render.py), so a single frame's crop shows its part's state.
Boxes are the tight inclusive-pixel boxes of what is visible; a part less than 30%
visible (occluded or outside the image) is left out, as is a human with no visible part.

Deterministic: the same arguments give the same bytes (JSON and mp4). Each video
depends only on (seed, its index), so an interrupted run resumes by skipping finished
videos. Files are written to temporary names and renamed into place; the videos are
rendered by `jobs` worker processes (spawned, tps_jax/datasets/processes.py). Bad
arguments and an output folder holding something else raise `SyntheticError` (one line).
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import math
import os
import shutil
import string
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image, ImageDraw

from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission
from tps_jax.datasets import processes
from tps_jax.datasets import synthetic_render as render

VERSION = 1
FPS = 30
PAN_MARGIN = 6  # pixels of background beyond each side for the pan
_ID_CHARS = string.ascii_letters + string.digits + '-_'

# action -> (objects held, keyframes of part states). The actor cycles through the
# keyframes. Slots: head, torso, and arm/hand/leg/foot with suffix _a (the actor's active
# side, drawn at random) or _b (the other side). A value is a state or (state, {pose field
# suffix: offset}); 'mirror' flips the torso tilt. 'lift' raises the body (a jump), as a
# fraction of its height. Unnamed slots are 'none'. The first six use every state.
ACTIONS = {
  'waving_hand': (
    (),
    (
      {'arm_a': ('raise', {'e': -35.0}), 'hand_a': 'wave', 'head': 'turn'},
      {'arm_a': ('raise', {'e': 30.0}), 'hand_a': 'wave'},
    ),
  ),
  'high_kick': (
    (),
    (
      {'arm_a': 'stretch', 'arm_b': 'stretch'},
      {'arm_a': 'stretch', 'arm_b': 'stretch', 'leg_a': 'kick', 'foot_a': 'lift'},
    ),
  ),
  'squatting': (
    (),
    ({}, {'leg_a': 'bend', 'leg_b': 'bend', 'arm_a': 'stretch', 'arm_b': 'stretch', 'head': 'nod'}),
  ),
  'jumping_jacks': (
    (),
    (
      {},
      {
        'arm_a': 'raise',
        'arm_b': 'raise',
        'leg_a': 'step',
        'leg_b': 'step',
        'foot_a': 'tiptoe',
        'foot_b': 'tiptoe',
        'lift': 0.06,
      },
    ),
  ),
  'weightlifting': (
    ('barbell',),
    (
      {
        'arm_a': 'bend',
        'arm_b': 'bend',
        'hand_a': 'hold',
        'hand_b': 'hold',
        'leg_a': 'step',
        'leg_b': 'step',
      },
      {
        'arm_a': 'raise',
        'arm_b': 'raise',
        'hand_a': 'hold',
        'hand_b': 'hold',
        'leg_a': 'step',
        'leg_b': 'step',
      },
    ),
  ),
  'stretching_arms': (
    (),
    (
      {'arm_a': 'others', 'arm_b': 'raise', 'torso': 'bend'},
      {'arm_a': 'raise', 'arm_b': 'others', 'torso': ('bend', {'mirror': True})},
    ),
  ),
  'drinking': (('cup',), ({'hand_a': 'hold'}, {'arm_a': 'bend', 'hand_a': 'hold', 'head': 'nod'})),
  'bending_sideways': ((), ({}, {'torso': 'bend', 'head': 'nod'})),
}
# What bystanders do when idle: the second keyframe (the first is all 'none').
IDLE_MOVES = ({}, {'head': 'turn'}, {'head': 'nod'}, {'arm_a': 'bend'}, {'leg_a': 'step'})
IDLE_HOLDS = (('bag', 'none'), ('phone', 'bend'), ('book', 'bend'))  # object, arm state
# Half-width of the uniform jitter of a keyframe's pose, per part kind.
JITTER = {
  'head': (0.08, 0.08),
  'torso': (5.0,),
  'arm': (10.0, 10.0),
  'leg': (6.0, 8.0),
  'foot': (8.0,),
}
WOBBLE = {'head': 0.03, 'torso': 2.0, 'arm': 3.0, 'leg': 2.0, 'foot': 3.0}
HOLD = 0.7  # fraction of a keyframe's time spent at its pose before easing to the next


@dataclasses.dataclass(frozen=True)
class VideoPlan:
  index: int
  name: str
  action: str
  split: str
  num_frames: int


def plan_videos(
  num_videos: int, num_frames: int, actions: Sequence[str], seed: int, test_fraction: float
) -> list[VideoPlan]:
  """Names, classes (round-robin), splits (the last videos are test) and lengths."""
  rng = np.random.default_rng([seed, 2**31 - 1])
  num_test = 0 if num_videos < 2 else max(1, round(num_videos * test_fraction))
  plans, names = [], set()
  for i in range(num_videos):
    while True:
      start = int(rng.integers(0, 600))
      name = ''.join(rng.choice(list(_ID_CHARS), 11)) + f'_{start:06d}_{start + 10:06d}'
      if name not in names:
        break
    names.add(name)
    frames = num_frames - int(rng.integers(0, num_frames // 5 + 1))
    plans.append(
      VideoPlan(
        index=i,
        name=name,
        action=actions[i % len(actions)],
        split='test' if i >= num_videos - num_test else 'train',
        num_frames=frames,
      )
    )
  return plans


# ---------------------------------------------------------------------------- people


@dataclasses.dataclass
class Actor:
  """A person's appearance, place and motion: a cycle through keyframe poses."""

  look: render.Look
  height: float
  x: float
  ground: float
  drift: float  # pixels per frame
  keyframes: list[tuple[np.ndarray, dict]]  # (pose vector, hand states)
  held: tuple[str, ...]
  period: float  # frames per cycle
  phase: float
  wobble: np.ndarray  # per-field amplitude
  wobble_period: float
  wobble_phase: np.ndarray
  object_colour: tuple

  def pose(self, t: int) -> tuple[np.ndarray, dict]:
    """Pose vector and hand states at frame t: hold each keyframe, then ease to the next."""
    num = len(self.keyframes)
    position = ((t + self.phase) % self.period) / self.period * num
    k, u = int(position) % num, position - int(position)
    w = 0.0 if u < HOLD else 0.5 - 0.5 * math.cos(math.pi * (u - HOLD) / (1 - HOLD))
    (a, hands_a), (b, hands_b) = self.keyframes[k], self.keyframes[(k + 1) % num]
    vec = (1 - w) * a + w * b
    vec = vec + self.wobble * np.sin(2 * math.pi * t / self.wobble_period + self.wobble_phase)
    return vec, (hands_a if w < 0.5 else hands_b)


def compile_keyframes(keyframes, rng: np.random.Generator) -> list[tuple[np.ndarray, dict]]:
  """Pose vectors (prototypes + jitter) and hand states of keyframe specs."""
  side_a = 'left' if rng.random() < 0.5 else 'right'
  side_b = 'right' if side_a == 'left' else 'left'
  tilt_sign, yaw_sign = rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])
  out = []
  for spec in keyframes:
    vec = np.zeros(len(render.POSE_FIELDS))
    hands = {'left': 'none', 'right': 'none'}
    for part in tps.PARTS:
      if render.part_kind(part) != 'hand':
        _set_state(vec, part, 'none', {}, rng, 0.5, tilt_sign, yaw_sign)
    for slot, value in spec.items():
      if slot == 'lift':
        vec[render.FIELD['lift']] = value
        continue
      state, offsets = value if isinstance(value, tuple) else (value, {})
      kind, _, which = slot.partition('_')
      part = f'{side_a if which == "a" else side_b}_{kind}' if which else kind
      if kind == 'hand':
        hands[part.split('_')[0]] = state
      else:
        _set_state(vec, part, state, offsets, rng, 1.0, tilt_sign, yaw_sign)
    out.append((vec, hands))
  return out


def _set_state(vec, part, state, offsets, rng, jitter_scale, tilt_sign, yaw_sign):
  kind = render.part_kind(part)
  for (field, value), jitter in zip(render.prototype_values(part, state).items(), JITTER[kind]):
    value += offsets.get(field.rsplit('_', 1)[-1], 0.0)
    value += jitter_scale * rng.uniform(-jitter, jitter)
    if field == 'torso':
      value *= -tilt_sign if offsets.get('mirror') else tilt_sign
    elif field == 'head_yaw':
      value *= yaw_sign
    vec[render.FIELD[field]] = value


def make_actor(rng: np.random.Generator, program, *, height, x, ground, drift, period) -> Actor:
  held, keyframes = program
  wobble = np.zeros(len(render.POSE_FIELDS))
  for part in tps.PARTS:
    if render.part_kind(part) != 'hand':
      for field in render.kind_fields(part):
        wobble[render.FIELD[field]] = WOBBLE[render.part_kind(part)]
  return Actor(
    look=render.random_look(rng),
    height=height,
    x=x,
    ground=ground,
    drift=drift,
    keyframes=compile_keyframes(keyframes, rng),
    held=held,
    period=period,
    phase=rng.uniform(0, period),
    wobble=wobble,
    wobble_period=rng.uniform(18, 40),
    wobble_phase=rng.uniform(0, 2 * math.pi, len(render.POSE_FIELDS)),
    object_colour=render.random_colour(rng, 0.95),
  )


def idle_program(rng: np.random.Generator):
  """A bystander's (objects held, keyframes): at rest, then one small move; sometimes
  holding an object, the holding arm keeping its pose."""
  rest, move, held = {}, dict(IDLE_MOVES[rng.integers(len(IDLE_MOVES))]), ()
  if rng.random() < 0.35:
    obj, arm = IDLE_HOLDS[rng.integers(len(IDLE_HOLDS))]
    rest, held = {'hand_a': 'hold', 'arm_a': arm}, (obj,)
    move = {**move, **rest}
  return held, (rest, move)


def cast(
  rng: np.random.Generator, action: str, width: int, height: int, num_frames: int
) -> list[Actor]:
  """The main actor (doing `action`; human number 1) and 0-2 bystanders."""
  main_h = rng.uniform(0.72, 0.86) * height
  main_ground = rng.uniform(0.93, 0.99) * height
  x = rng.uniform(0.38, 0.62) * width
  drift = rng.uniform(-0.12, 0.12) * width / max(num_frames, 1)
  actors = [
    make_actor(
      rng,
      ACTIONS[action],
      height=main_h,
      x=x,
      ground=main_ground,
      drift=drift,
      period=rng.uniform(12, 24),
    )
  ]
  for _ in range(rng.choice(3, p=[0.55, 0.33, 0.12])):
    program = ACTIONS[action] if rng.random() < 0.3 else idle_program(rng)
    if rng.random() < 0.75:  # further back: smaller, higher, anywhere
      h = main_h * rng.uniform(0.55, 0.8)
      ground = main_ground - rng.uniform(0.05, 0.15) * height
      bx = rng.uniform(-0.05, 1.05) * width
    else:  # closer: larger, at a side, may be cut by the border
      h = main_h * rng.uniform(1.0, 1.12)
      ground = rng.uniform(1.0, 1.08) * height
      bx = (rng.uniform(0.0, 0.16) if rng.random() < 0.5 else rng.uniform(0.84, 1.0)) * width
    actors.append(
      make_actor(
        rng,
        program,
        height=h,
        x=bx,
        ground=ground,
        drift=rng.uniform(-0.5, 0.5),
        period=rng.uniform(14, 30),
      )
    )
  return actors


# ---------------------------------------------------------------------------- scene


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A room-ish backdrop, PAN_MARGIN wider on each side: wall, floor, clutter."""
  w = width + 2 * PAN_MARGIN
  wall, floor = render.random_colour(rng, 0.8), render.random_colour(rng, 0.6)
  horizon = int(rng.uniform(0.45, 0.7) * height)
  ramp = np.linspace(0.85, 1.1, height)[:, None, None]
  img = np.where(np.arange(height)[:, None, None] < horizon, np.array(wall), np.array(floor))
  img = np.clip(img * ramp, 0, 255).astype(np.uint8)
  img = np.broadcast_to(img, (height, w, 3)).copy()
  pil = Image.fromarray(img)
  draw = ImageDraw.Draw(pil)
  for _ in range(rng.integers(4, 12)):
    colour = render.random_colour(rng, 0.9)
    x0, y0 = rng.uniform(0, w), rng.uniform(0, height)
    bw, bh = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
    shape = rng.integers(3)
    if shape == 0:
      draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=colour, outline=render.darker(colour))
    elif shape == 1:
      draw.ellipse((x0, y0, x0 + bw, y0 + bh), fill=colour)
    else:
      draw.line(
        (x0, y0, x0 + bw, y0 + rng.uniform(-1, 1) * bh), fill=colour, width=int(rng.integers(1, 4))
      )
  return np.asarray(pil).copy()


def occluder(rng: np.random.Generator, width: int, height: int):
  """A foreground pole or crate (mask and colours over the panned canvas), or None."""
  if rng.random() >= 0.25:
    return None
  w = width + 2 * PAN_MARGIN
  mask = Image.new('L', (w, height))
  draw = ImageDraw.Draw(mask)
  if rng.random() < 0.5:
    x0 = rng.uniform(0.05, 0.95) * w
    draw.rectangle((x0, 0, x0 + rng.uniform(0.03, 0.07) * width, height), fill=1)
  else:
    x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(0.72, 0.88) * height
    draw.rectangle((x0, y0, x0 + rng.uniform(0.15, 0.3) * width, height), fill=1)
  colour = np.array(render.random_colour(rng, 0.7), np.float32)
  shade = np.linspace(0.8, 1.15, w, dtype=np.float32)[None, :, None]
  rgb = np.clip(colour * shade, 0, 255).astype(np.uint8)
  return np.asarray(mask).astype(bool), np.broadcast_to(rgb, (height, w, 3))


def render_video(
  plan: VideoPlan, seed: int, width: int, height: int
) -> tuple[list[np.ndarray], dict[int, tps.FrameAnnotation]]:
  """All frames of a video and the annotations of its scored frames."""
  rng = np.random.default_rng([seed, plan.index])
  actors = cast(rng, plan.action, width, height, plan.num_frames)
  order = sorted(range(len(actors)), key=lambda i: actors[i].ground)  # back to front
  backdrop = background(rng, width, height)
  occ = occluder(rng, width, height)
  pan_amplitude, pan_period = rng.uniform(0, PAN_MARGIN), rng.uniform(40, 120)
  noise_sigma, flicker = rng.uniform(2, 6), rng.uniform(0, 0.04)
  scored = set(tps.sampled_frames(plan.num_frames))
  frames, annotations = [], {}
  for t in range(plan.num_frames):
    pan = int(round(pan_amplitude * math.sin(2 * math.pi * t / pan_period)))
    view = slice(PAN_MARGIN - pan, PAN_MARGIN - pan + width)
    frame = backdrop[:, view].copy()
    poses = [actor.pose(t) for actor in actors]
    layers = [
      render.render_person(
        poses[i][0],
        poses[i][1],
        actors[i].held,
        actors[i].look,
        actors[i].x + actors[i].drift * t + pan,
        actors[i].ground,
        actors[i].height,
        actors[i].object_colour,
      )
      for i in order
    ]
    owner = render.composite(
      frame, layers, *((occ[0][:, view], occ[1][:, view]) if occ else (None, None))
    )
    gain = np.float32(1 + flicker * math.sin(2 * math.pi * t / 17.0))
    noise = rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(noise_sigma)
    frames.append(np.clip(frame * gain + noise, 0, 255).astype(np.uint8))
    if t + 1 in scored:
      visible = dict(zip(order, render.visible_boxes(owner, layers)))
      annotations[t + 1] = _annotation(actors, poses, visible)
  return frames, annotations


def _annotation(actors, poses, visible) -> tps.FrameAnnotation:
  humans, objects = [], []
  for i in range(len(actors)):
    seen = visible[i]
    if seen.box is None or not seen.parts:
      continue
    vec, hands = poses[i]
    parts = {
      name: tps.Part(box=seen.parts[name], verb=render.state_of(name, vec, hands))
      for name in tps.PARTS
      if name in seen.parts
    }
    humans.append(tps.Human(box=seen.box, parts=parts, number=i + 1))
    objects += [
      tps.ObjectBox(box=box, name=name, number=len(objects) + 1) for name, box in seen.objects
    ]
  return tps.FrameAnnotation(humans=tuple(humans), objects=tuple(objects))


# ---------------------------------------------------------------------------- files


def write_video(path: str, frames: Sequence[np.ndarray]) -> None:
  """H.264 mp4 (mpeg4 when libx264 is missing) with identical bytes for identical frames.

  x264's lookahead (B-frames, mb-tree) makes its output vary from run to run even with
  one thread; 'zerolatency' turns it off (I and P frames only), which is deterministic.
  """
  height, width = frames[0].shape[:2]
  tmp = os.path.join(os.path.dirname(path), f'.tmp-{os.path.basename(path)}')
  try:
    with av.open(tmp, 'w', format='mp4') as container:
      codec = 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'
      stream = container.add_stream(codec, rate=FPS)
      stream.time_base = fractions.Fraction(1, FPS)
      stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
      stream.thread_count = 1
      if codec == 'libx264':
        stream.options = {'crf': '20', 'preset': 'veryfast', 'tune': 'zerolatency', 'threads': '1'}
      else:
        stream.bit_rate = width * height * FPS // 2
      for t, frame in enumerate(frames):
        video_frame = av.VideoFrame.from_ndarray(frame, format='rgb24')
        video_frame.pts = t
        container.mux(stream.encode(video_frame))
      container.mux(stream.encode())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _paths(out: str, plan: VideoPlan) -> tuple[str, str]:
  video = os.path.join(out, f'{plan.split}_videos', plan.action, f'{plan.name}.mp4')
  annotations = os.path.join(out, f'{plan.split}_annotations', plan.action, plan.name)
  return video, annotations


def is_done(out: str, plan: VideoPlan) -> bool:
  video, annotations = _paths(out, plan)
  return os.path.isfile(video) and os.path.isdir(os.path.join(annotations, plan.name))


def make_one(job: tuple[str, VideoPlan, int, int, int]) -> str:
  """Renders and writes one video and its annotation folder (renamed into place)."""
  out, plan, seed, width, height = job
  video_path, annotation_dir = _paths(out, plan)
  frames, annotations = render_video(plan, seed, width, height)
  tmp = os.path.join(os.path.dirname(annotation_dir), f'.tmp-{plan.name}')
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, plan.name))
  for index, frame in annotations.items():
    with open(os.path.join(tmp, plan.name, tps.frame_name(index)), 'w') as f:
      json.dump(tps.frame_to_json(frame), f)
  shutil.rmtree(annotation_dir, ignore_errors=True)
  os.replace(tmp, annotation_dir)
  write_video(video_path, frames)
  return plan.name


def _write_text(path: str, text: str) -> None:
  tmp = os.path.join(os.path.dirname(path), f'.tmp-{os.path.basename(path)}')
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _remove_leftovers(out: str) -> None:
  """Deletes what an interrupted run left: entries named '.tmp-*' in the root and up to
  two folders deep (list/, test_gt/, the class folders)."""
  for folder, dirs, files in os.walk(out):
    depth = 0 if folder == out else os.path.relpath(folder, out).count(os.sep) + 1
    for name in [*dirs, *files]:
      if name.startswith('.tmp-'):
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    dirs[:] = [d for d in dirs if not d.startswith('.tmp-')] if depth < 2 else []


class SyntheticError(ValueError):
  """Arguments or an output folder the writer refuses; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Summary:
  """What write_synthetic wrote: its folder, the plan of its videos, the classes."""

  out: str
  plans: tuple[VideoPlan, ...]
  actions: tuple[str, ...]
  size: tuple[int, int]

  def __str__(self) -> str:
    num_test = sum(p.split == 'test' for p in self.plans)
    return (
      f'{self.out}: {len(self.plans) - num_test} train and {num_test} test videos, '
      f'{len(self.actions)} actions, {self.size[0]}x{self.size[1]}'
    )


def check_arguments(
  *, videos: int, frames: int, size: tuple[int, int], actions: int, test_fraction: float, jobs: int
) -> None:
  """Raises SyntheticError naming the first argument write_synthetic cannot use."""
  width, height = size
  problems = [
    (videos < 1, f'videos={videos}: must be positive'),
    (frames < 1, f'frames={frames}: must be positive'),
    (
      width < 64 or height < 48 or width % 2 or height % 2,
      f'size={width}x{height}: width >= 64 and height >= 48, both even (H.264 with 4:2:0 chroma)',
    ),
    (
      not 1 <= actions <= len(ACTIONS),
      f'actions={actions}: must be in 1..{len(ACTIONS)} ({", ".join(ACTIONS)})',
    ),
    (not 0.0 <= test_fraction < 1.0, f'test_fraction={test_fraction}: must be in [0, 1)'),
    (jobs < 1, f'jobs={jobs}: must be at least 1'),
  ]
  for bad, message in problems:
    if bad:
      raise SyntheticError(message)


def write_synthetic(
  out: str,
  *,
  videos: int = 240,
  frames: int = 32,
  size: tuple[int, int] = (160, 120),
  actions: int = 6,
  test_fraction: float = 0.2,
  seed: int = 0,
  jobs: int = 1,
  progress: bool = True,
) -> Summary:
  """Writes (or completes) the dataset under `out` (see the module docstring).

  Args:
    out: the dataset root, new, empty or an earlier run's with the same arguments.
    videos: number of videos of both splits.
    frames: frames per video at most (each video has 80-100% of it).
    size: frame (width, height).
    actions: number of action classes, the first of ACTIONS.
    test_fraction: fraction of the videos in the test split (the last ones).
    seed: random seed; each video depends on (seed, its index) only.
    jobs: worker processes rendering videos.
    progress: show a progress bar.
  """
  check_arguments(
    videos=videos, frames=frames, size=size, actions=actions, test_fraction=test_fraction, jobs=jobs
  )
  width, height = size
  names = list(ACTIONS)[:actions]
  config = {
    'version': VERSION,
    'videos': videos,
    'frames': frames,
    'seed': seed,
    'size': [width, height],
    'actions': names,
    'test_fraction': test_fraction,
  }
  os.makedirs(out, exist_ok=True)
  config_path = os.path.join(out, 'synthetic.json')
  if os.path.exists(config_path):
    with open(config_path) as f:
      previous = json.load(f)
    if previous != config:
      raise SyntheticError(
        f'{out} holds a synthetic dataset made with other arguments '
        f'({previous}); choose another output folder or delete it'
      )
  elif os.listdir(out):
    raise SyntheticError(
      f'{out} is not empty and holds no synthetic.json; choose an empty or new output folder'
    )
  submission.write_json_atomic(config_path, config)
  _remove_leftovers(out)
  list_dir = os.path.join(out, 'list')
  os.makedirs(list_dir, exist_ok=True)
  for file_name, items in (
    ('body_part.txt', tps.PARTS),
    ('part_stat.txt', render.STATES),
    ('object.txt', render.OBJECTS),
  ):
    _write_text(os.path.join(list_dir, file_name), ''.join(f'{n}\n' for n in items))
  for split in tps.SPLITS:
    for kind in ('videos', 'annotations'):
      for action in names:
        os.makedirs(os.path.join(out, f'{split}_{kind}', action), exist_ok=True)
  plans = plan_videos(videos, frames, names, seed, test_fraction)
  todo = [(out, p, seed, width, height) for p in plans if not is_done(out, p)]
  processes.parallel_map(make_one, todo, jobs=jobs, desc='synthetic videos', progress=progress)
  for split in tps.SPLITS:
    rows = ''.join(
      f'{p.name},{p.num_frames}\n' for p in sorted(plans, key=lambda p: p.name) if p.split == split
    )
    _write_text(
      os.path.join(list_dir, f'video_{split}_flist.csv'), 'video_name,num_frames\n' + rows
    )
  tps.write_ground_truth(out, 'test', os.path.join(out, 'test_gt'))
  return Summary(out=out, plans=tuple(plans), actions=tuple(names), size=(width, height))
