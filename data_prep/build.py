r"""Builds the TFDS (ArrayRecord) datasets of the four training stages.

  python -m data_prep.build --root ROOT [--out DIR] \
      [--stages humans,parts,part_states,action_clips] [--val_fraction 0.1] [--seed 0] \
      [--frames_dir DIR] [--context 0.1] [--clip_short_side 256] [--jpeg_quality 90] \
      [--pseudo_labels FILE [--pseudo_positive 0.4] [--pseudo_low 0.1]] \
      [--jobs 1] [--keep_going] [--overwrite] [--quiet]
  python -m data_prep.build --video_folder DIR --name my_videos [--out DIR] ...

From a Kinetics-TPS root (shared/kinetics_tps.md) it writes `tps_humans`, `tps_parts`,
`tps_part_states` and `tps_action_clips` under OUT (default ROOT/tfds), each as
OUT/<name>/1.0.0/ with splits `train` and `val`: the root's train videos split by video,
deterministic from --seed, the same for every dataset (the val videos are listed in
each dataset's metadata). tps_jax/data/builders.py documents the features.

Frames are decoded from the videos with PyAV, or read from extracted frame folders
(`img_00001.jpg` ..., from `python -m data_prep.extract_frames`) under --frames_dir,
as FRAMES_DIR/<action>/<video>/ or FRAMES_DIR/<video>/; a video without a folder there
is decoded.

`--video_folder DIR --name NAME` builds one dataset with tps_action_clips' features from
class sub-folders of videos (DIR/<class>/<video>.mp4; classes in sorted order), for
pre-training the action recogniser; OUT defaults to DIR/tfds.

Bad input (a malformed annotation, an undecodable video) stops the build with one line
naming the file, or with --keep_going is skipped and listed, with a count, at the end.
A finished dataset is kept (not rebuilt) unless --overwrite; a finished dataset built
with other settings (split, crop margin, ...) is an error until --overwrite.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
from typing import Any, Sequence

import tensorflow_datasets as tfds

from tps_jax.data import builders
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import video as video_lib


class BuildError(ValueError):
  """A build that cannot go on; the message is one line."""


def _stages(text: str) -> list[str]:
  stages = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in stages if s not in builders.STAGES]
  if unknown or not stages:
    raise argparse.ArgumentTypeError(
        f"--stages: unknown stage(s) {', '.join(unknown) or '(none)'}; "
        f"choose from {','.join(builders.STAGES)}")
  return stages


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m data_prep.build",
      description="Build the TFDS (ArrayRecord) datasets of the four training stages "
                  "from a Kinetics-TPS root, or an action-clip dataset from a folder of "
                  "class sub-folders of videos.")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--root", help="Kinetics-TPS root (train_videos/, "
                      "train_annotations/, list/)")
  source.add_argument("--video_folder", help="folder of class sub-folders of videos")
  parser.add_argument("--name", help="dataset name for --video_folder (e.g. my_videos)")
  parser.add_argument("--out", help="output folder (default ROOT/tfds or VIDEO_FOLDER/tfds)")
  parser.add_argument("--stages", type=_stages, default=list(builders.STAGES),
                      help=f"comma-separated, from {','.join(builders.STAGES)} (default all)")
  parser.add_argument("--val_fraction", type=float, default=0.1,
                      help="fraction of the train videos held out as the val split")
  parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
  parser.add_argument("--frames_dir", help="extracted frame folders to read instead of "
                      "decoding the videos")
  parser.add_argument("--context", type=float, default=0.1,
                      help="human crops: margin around the box, fraction of its size")
  parser.add_argument("--clip_short_side", type=int, default=256,
                      help="action clips: frames downscaled so the short side is at most "
                           "this (0: keep)")
  parser.add_argument("--jpeg_quality", type=int, default=90, help="JPEG quality 1..100")
  parser.add_argument("--pseudo_labels", help="pseudo-label JSON merged into tps_parts "
                      "(format: tps_jax/data/builders.py)")
  parser.add_argument("--pseudo_positive", type=float, default=0.4,
                      help="pseudo-labels scoring above this are positives")
  parser.add_argument("--pseudo_low", type=float, default=0.1,
                      help="pseudo-labels scoring in [low, positive] are ignore regions")
  parser.add_argument("--jobs", type=int, default=1,
                      help="worker processes decoding and encoding videos")
  parser.add_argument("--keep_going", action="store_true",
                      help="skip bad annotations / videos, list them at the end")
  parser.add_argument("--overwrite", action="store_true", help="rebuild finished datasets")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args(argv)
  if args.video_folder and not args.name:
    parser.error("--video_folder needs --name")
  if args.video_folder and (args.frames_dir or args.pseudo_labels):
    parser.error("--frames_dir and --pseudo_labels are for a Kinetics-TPS --root")
  if args.name and not args.video_folder:
    parser.error("--name is only for --video_folder (Kinetics-TPS datasets are named "
                 "tps_<stage>)")
  if not 0.0 <= args.val_fraction < 1.0:
    parser.error("--val_fraction must be in [0, 1)")
  if args.jobs < 1:
    parser.error("--jobs must be at least 1")
  if not 1 <= args.jpeg_quality <= 100:
    parser.error("--jpeg_quality must be in 1..100")
  if not 0.0 <= args.pseudo_low <= args.pseudo_positive:
    parser.error("need 0 <= --pseudo_low <= --pseudo_positive")
  return args


def _settings(args: argparse.Namespace, stage: str, val_videos: list[str]) -> dict:
  """The build settings a finished dataset must match to be reused."""
  settings: dict[str, Any] = {"stage": stage, "val_videos": val_videos,
                              "val_fraction": args.val_fraction, "seed": args.seed,
                              "jpeg_quality": args.jpeg_quality}
  if stage in ("parts", "part_states"):
    settings["context"] = args.context
  if stage == "parts" and args.pseudo_labels:
    settings.update(pseudo_labels=os.path.abspath(args.pseudo_labels),
                    pseudo_positive=args.pseudo_positive, pseudo_low=args.pseudo_low)
  if stage == "action_clips":
    settings["clip_short_side"] = args.clip_short_side
  return settings


def _reuse(out: str, name: str, settings: dict, overwrite: bool) -> bool:
  """True when `name` is built with `settings` and kept; removes it for --overwrite."""
  directory = builders.dataset_dir(out, name)
  if not builders.is_built(out, name):
    return False
  if overwrite:
    shutil.rmtree(directory)
    return False
  built = dict(tfds.builder_from_directory(directory).info.metadata.get("settings", {}))
  differs = sorted(k for k in set(built) | set(settings) if built.get(k) != settings.get(k))
  if differs:
    raise BuildError(f"{directory}: built with other settings ({', '.join(differs)}); "
                     "pass --overwrite to rebuild it")
  return True


def build(args: argparse.Namespace) -> list[str]:
  """Builds the requested datasets; returns the problems skipped (--keep_going)."""
  problems: list[str] | None = [] if args.keep_going else None
  options = builders.BuildOptions(context=args.context, clip_short_side=args.clip_short_side,
                                  jpeg_quality=args.jpeg_quality, progress=not args.quiet)
  if args.video_folder:
    out = args.out or os.path.join(args.video_folder, "tfds")
    actions, entries = builders.scan_video_folder(args.video_folder, exclude=out)
    datasets = [(args.name, "action_clips")]
    vocab = None
    source = os.path.abspath(args.video_folder)
  else:
    out = args.out or os.path.join(args.root, "tfds")
    vocab = tps.Vocab.from_root(args.root)
    entries = builders.list_kinetics_tps(args.root, vocab, frames_root=args.frames_dir,
                                         problems=problems)
    actions = vocab.actions
    datasets = [(builders.DATASET_NAMES[stage], stage) for stage in args.stages]
    source = os.path.abspath(args.root)
  val_videos = builders.split_videos([(e.name, e.action) for e in entries],
                                     args.val_fraction, args.seed)
  todo = []
  for name, stage in datasets:
    settings = _settings(args, stage, val_videos)
    if _reuse(out, name, settings, args.overwrite):
      print(f"{builders.dataset_dir(out, name)}: already built, kept (--overwrite to "
            "rebuild)")
    else:
      todo.append((name, stage, settings))
  if not todo:
    return problems or []
  pseudo = None
  if args.pseudo_labels and any(stage == "parts" for _, stage, _ in todo):
    pseudo = _pseudo_labels(args.pseudo_labels, entries, set(val_videos))
  maker = builders.ExampleMaker(options, vocab=vocab, keep_going=args.keep_going,
                                pseudo_labels=pseudo, positive=args.pseudo_positive,
                                low=args.pseudo_low)
  found: list[str] = []
  tfds.disable_progress_bar()
  with builders.worker_pool(maker, args.jobs) as pool:
    for name, stage, settings in todo:
      metadata = {"settings": settings, "source": source, "actions": list(actions),
                  "states": list(vocab.states if vocab else ()), "parts": list(tps.PARTS),
                  "version": builders.VERSION}
      builder = builders.builder_class(name, stage)(
          entries=entries, val_videos=val_videos, maker=maker, pool=pool, problems=found,
          metadata=metadata, data_dir=out, file_format="array_record")
      with tempfile.TemporaryDirectory(prefix="tps_build_") as download_dir, \
          contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
        builder.download_and_prepare(download_dir=download_dir)
      directory = builders.dataset_dir(out, name)
      if stage == "part_states":
        builders.write_state_tables(directory)
      counts = ", ".join(f"{split} {info.num_examples}"
                         for split, info in sorted(builder.info.splits.items()))
      print(f"{directory}: {counts} examples")
  return list(dict.fromkeys((problems or []) + found))


def _pseudo_labels(path: str, entries: Sequence[builders.VideoEntry],
                   val_videos: set[str]) -> builders.PseudoLabels:
  """The pseudo-labels of the train videos' annotated frames (val keeps its ground
  truth only); prints how many entries are used and why the others are not."""
  labels = builders.load_pseudo_labels(path)
  frames = {(e.name, index) for e in entries if e.name not in val_videos
            for index in e.annotated}
  used = {key: value for key, value in labels.items() if key[:2] in frames}
  in_val = sum(1 for key in labels if key[0] in val_videos)
  unmatched = len(labels) - len(used) - in_val
  print(f"pseudo-labels: {len(used)} humans of annotated train frames"
        + (f"; {in_val} of val videos not used" if in_val else "")
        + (f"; {unmatched} match no annotated frame" if unmatched else ""))
  return used


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    problems = build(args)
  except (BuildError, tps.AnnotationError, video_lib.VideoError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if problems:
    print(tps.format_problems(problems), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
