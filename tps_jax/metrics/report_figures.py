"""The pictures of the error-analysis report (tps_jax/metrics/report_page.py), as PNGs.

Plots are matplotlib (Agg, no display); the worst videos' frames are drawn with
tps_jax/metrics/drawing.py, as `python -m tps_jax.visualize` draws them: the ground
truth on the left, the prediction (the ground truth dashed) on the right.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from PIL import Image

from tps_jax.data import video as video_lib
from tps_jax.metrics import drawing, error_analysis
from tps_jax.metrics import score as score_lib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DPI = 100
PANEL_WIDTH = 480  # display width of one drawn frame (small videos upscaled to it)
_FRAME_KEY = re.compile(r'^img_(\d+)\.json$')
IOU_BINS = np.linspace(0, 1, 21)


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return os.path.basename(path)


def grid(report: score_lib.ScoreReport, path: str) -> str:
  """The 25 areas as a heat map, the score's cell outlined."""
  fig, ax = plt.subplots(figsize=(5.2, 4.2))
  image = ax.imshow(report.areas, vmin=0, vmax=1, cmap='viridis')
  labels_h = [f'{h:g}' for h in report.human_thresholds]
  labels_p = [f'{p:g}' for p in report.part_thresholds]
  ax.set(
    xticks=range(len(labels_p)),
    xticklabels=labels_p,
    yticks=range(len(labels_h)),
    yticklabels=labels_h,
    xlabel='part IoU >= p',
    ylabel='human IoU > h',
  )
  for (i, j), value in np.ndenumerate(report.areas):
    ax.text(j, i, f'{value:.4f}', ha='center', va='center', color='w' if value < 0.6 else 'k')
  i, j = report.official_cell
  ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec='red', lw=2.5))
  fig.colorbar(image, ax=ax, fraction=0.046)
  return _save(fig, path)


def draw_accuracy_curve(ax, report: score_lib.ScoreReport, ylabel: str, title: str) -> None:
  """accuracy(t) of the score's cell on `ax`, its area shaded (the report's figure and
  `evaluate --plot`'s left panel)."""
  t, accuracy = report.accuracy_curve()
  ax.step(t, accuracy, where='post', color='tab:blue')
  ax.fill_between(t, accuracy, step='post', alpha=0.25, color='tab:blue')
  ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel='PSC threshold t', ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)


def accuracy_curve(report: score_lib.ScoreReport, path: str) -> str:
  """accuracy(t) of the score's cell; the score is the area under it."""
  fig, ax = plt.subplots(figsize=(5.2, 4.2))
  draw_accuracy_curve(ax, report, 'right class and PSC >= t', f'area = {report.score_rounded:.6f}')
  return _save(fig, path)


def bars(rows: Sequence[tuple[str, float]], path: str, title: str, highlight: str = '') -> str:
  """Horizontal bars, one per (label, value), top to bottom in the given order."""
  fig, ax = plt.subplots(figsize=(5.6, 0.45 * len(rows) + 1.2))
  labels, values = zip(*rows) if rows else ((), ())
  colours = ['tab:red' if label == highlight else 'tab:blue' for label in labels]
  ax.barh(range(len(rows)), values, color=colours)
  ax.set(yticks=range(len(rows)), yticklabels=labels, xlim=(0, 1.05), title=title)
  ax.invert_yaxis()
  for k, value in enumerate(values):
    ax.text(value + 0.01, k, f'{value:.4f}', va='center')
  ax.grid(axis='x', alpha=0.3)
  return _save(fig, path)


def histogram(values: np.ndarray, path: str, xlabel: str, title: str) -> str:
  fig, ax = plt.subplots(figsize=(5.2, 3.6))
  ax.hist(values, bins=IOU_BINS, color='tab:blue')
  ax.set(xlim=(0, 1), xlabel=xlabel, ylabel='count', title=title)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def psc_histogram(report: score_lib.ScoreReport, path: str) -> str:
  """Per-video PSC, the videos of the right class and of the wrong one stacked."""
  psc = report.psc_cells[report.official_cell]
  right = report.correct_videos
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  ax.hist(
    [psc[right], psc[~right]],
    bins=IOU_BINS,
    stacked=True,
    color=['tab:green', 'tab:red'],
    label=['right class', 'wrong class'],
  )
  ax.set(xlim=(0, 1), xlabel='video PSC', ylabel='videos', title='per-video PSC')
  ax.legend()
  return _save(fig, path)


def parts_summary(rows: Sequence[error_analysis.PartRow], path: str) -> str:
  """Per part: recall at IoU >= 0.3 and state accuracy on found parts (bars), and the
  distribution of the best proposal's IoU (box plot)."""
  names = [r.name for r in rows]
  x = np.arange(len(rows))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
  top.bar(x - 0.2, [r.recall for r in rows], 0.4, label='recall (IoU >= 0.3)')
  top.bar(x + 0.2, [r.state_accuracy for r in rows], 0.4, label='state accuracy (found)')
  top.set(ylim=(0, 1.05), title='parts of matched humans')
  top.legend(loc='lower right')
  top.grid(axis='y', alpha=0.3)
  bottom.boxplot([r.ious if r.ious.size else [np.nan] for r in rows], positions=x)
  bottom.axhline(error_analysis.FOUND_IOU, color='tab:red', lw=1, ls='--')
  bottom.set(ylim=(0, 1.02), ylabel='best proposal IoU')
  bottom.set_xticks(x, names, rotation=30, ha='right')
  return _save(fig, path)


def confusion(matrix: np.ndarray, labels: Sequence[str], path: str, title: str) -> str:
  """A confusion matrix (rows ground truth, columns predicted), rows normalised."""
  size = max(4.5, 0.32 * len(labels) + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  image = ax.imshow(rows, vmin=0, vmax=1, cmap='Blues')
  ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
  ax.set_yticks(range(len(labels)), labels, fontsize=7)
  ax.set(xlabel='predicted', ylabel='ground truth', title=title)
  fig.colorbar(image, ax=ax, fraction=0.046)
  return _save(fig, path)


def frame_index(key: str) -> int | None:
  match = _FRAME_KEY.match(key)
  return int(match.group(1)) if match else None


def worst_frames(
  video_path: str,
  frames: Sequence[tuple[str, float]],
  gt_frames: Mapping,
  pred_frames: Mapping,
  actions: tuple[str | None, str | None],
  path: str,
) -> str | None:
  """One video's chosen frames, a row each: ground truth | prediction; None when the
  video has none of them. gt_frames / pred_frames: {key: {'humans': [...]}} as dicts."""
  wanted = {frame_index(key): (key, value) for key, value in frames}
  wanted.pop(None, None)
  if not wanted:
    return None
  decoded = dict(video_lib.iter_video_frames(video_path, wanted=set(wanted), last=max(wanted)))
  if not decoded:
    return None
  height, width = next(iter(decoded.values())).shape[:2]
  scale = min(drawing.auto_scale(width), PANEL_WIDTH / width)
  font = drawing.font_size_for(round(height * scale), round(width * scale))
  pred_action, gt_action = actions
  pictures = []
  for index in sorted(decoded, key=lambda i: (wanted[i][1], i)):
    key, value = wanted[index]
    gt = gt_frames.get(key, {}).get('humans', [])
    pred = pred_frames.get(key, {}).get('humans', [])
    left = drawing.draw_frame(decoded[index], gt, scale=scale, font_size=font)
    right = drawing.draw_frame(decoded[index], pred, scale=scale, gt_humans=gt, font_size=font)
    title = [(f'ground truth, frame {index}', drawing.TEXT_COLOUR)]
    pictures.append(drawing.add_header(left, title, font_size=font))
    note = [(f'frame score {value:.3f}', drawing.TEXT_COLOUR)]
    action = drawing.action_segments(pred_action, gt_action)
    pictures.append(drawing.add_header(right, action, note, font_size=font))
  Image.fromarray(drawing.contact_sheet(pictures, 2)).save(path, format='PNG')
  return os.path.basename(path)
