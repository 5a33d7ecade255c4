"""The error-analysis report: one static page, REPORT_DIR/index.html, its PNGs beside it.

`write_report` turns a ScoreReport scored with details (score.score_typed(details=True),
the same pass `python -m tps_jax.evaluate` prints) into the page: no server, no network,
no script or font from elsewhere; a few lines of plain JavaScript sort the videos table
and write, once the page has loaded, a status line (images loaded, script errors) that
tests read. Sections, each opened by a one-line reading of what it shows:

1. Headline: the score, the 25-cell grid, accuracy(t), what was scored, what counted 0.
2. Where it is lost: the oracle ablation's rows as bars when given, and the exact split
   of the perfect score 1 over its causes (tps_jax/metrics/error_analysis.py).
3. Humans: precision / recall of the matching at IoU > 0.5, the matched IoUs.
4. Parts: per part recall at IoU >= 0.3, the IoUs, state accuracy on found parts, the
   top state confusions (each part's full matrix on click).
5. Actions: top-1, the confusion matrix, per-class accuracy.
6. Videos: the PSC histogram, a table sortable by any column, and the worst videos'
   lowest-scoring frames drawn (ground truth | prediction) when their files are known.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence

import msgspec

from tps_jax.metrics import error_analysis as analysis
from tps_jax.metrics import report_figures as figures
from tps_jax.metrics import score as score_lib

INDEX = 'index.html'
WORST_VIDEOS = 8
WORST_FRAMES = 3  # frames drawn per worst video
TOP_CONFUSIONS = 3

_STYLE = """
body { font: 14px/1.45 sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ccc; margin-top: 36px; }
.reading { color: #145; background: #eef5fa; padding: 6px 10px; border-left: 4px solid #48c; }
.score { font-size: 30px; font-weight: bold; } .exact { color: #666; font-family: monospace; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th.sortable { cursor: pointer; background: #f2f2f2; }
tr.wrong td { color: #a22; } .warn { color: #a50; }
img { max-width: 100%; margin: 4px; vertical-align: top; }
.scroll { max-height: 480px; overflow-y: auto; display: inline-block; }
"""

# Records script errors from the start; writes the status once everything has loaded.
_HEAD_SCRIPT = """
window.reportErrors = [];
window.addEventListener('error', function (e) { window.reportErrors.push(String(e.message)); });
"""
_SCRIPT = """
function sortTable(th) {
  var table = th.closest('table'), body = table.tBodies[0];
  var column = Array.prototype.indexOf.call(th.parentNode.children, th);
  var up = th.getAttribute('data-order') !== 'up';
  th.setAttribute('data-order', up ? 'up' : 'down');
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[column].getAttribute('data-v'), y = b.cells[column].getAttribute('data-v');
    var nx = parseFloat(x), ny = parseFloat(y);
    var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
    return up ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll('th.sortable').forEach(function (th) {
  th.addEventListener('click', function () { sortTable(th); });
});
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var status = document.getElementById('status');
  status.setAttribute('data-images', String(images.length));
  status.setAttribute('data-broken', broken.map(function (i) { return i.src; }).join(' '));
  status.setAttribute('data-errors', window.reportErrors.join(' | '));
  status.textContent = 'report loaded: ' + (images.length - broken.length) + '/' +
    images.length + ' images, ' + window.reportErrors.length + ' script errors';
});
"""


def _e(text) -> str:
  return html.escape(str(text))


def _table(header: Sequence[str], rows: Sequence[Sequence], sortable: bool = False) -> str:
  """A table; each cell is a value or (shown text, sort value)."""
  th = ' class="sortable" title="click to sort"' if sortable else ''
  head = ''.join(f'<th{th}>{_e(h)}</th>' for h in header)
  body = []
  for row in rows:
    cells = []
    for cell in row:
      shown, value = cell if isinstance(cell, tuple) else (cell, cell)
      cells.append(f'<td data-v="{_e(value)}">{_e(shown)}</td>')
    body.append(f'<tr>{"".join(cells)}</tr>')
  return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _img(name: str | None, alt: str) -> str:
  return f'<img src="{_e(name)}" alt="{_e(alt)}">' if name else ''


def _section(number: int, title: str, reading: str, body: str) -> str:
  return (
    f'<section id="s{number}"><h2>{number}. {_e(title)}</h2>'
    f'<p class="reading">{_e(reading)}</p>{body}</section>'
  )


def _pct(value: float) -> str:
  return f'{100 * value:.1f}%'


def _headline(report: score_lib.ScoreReport, out: str) -> str:
  counts = analysis.headline(report)
  rows = [
    ('videos', counts['videos']),
    ('frames scored (present, with GT parts)', counts['frames']),
    ('frames counted (the PSC divides by)', counts['counted_frames']),
    ('GT humans in scored frames', counts['humans']),
    ('GT parts in scored frames', counts['parts']),
    ('videos missing (every frame 0, wrong class)', counts['missing_videos']),
    ('frames missing (counted as 0)', counts['missing_frames']),
    ('action top-1', f'{counts["action_top1"]:.4f}'),
    ('mean PSC (h 0.5, p 0.3)', f'{counts["mean_psc"]:.4f}'),
  ]
  warnings = ''.join(f'<li class="warn">{_e(w)}</li>' for w in report.warnings)
  body = (
    f'<p class="score" id="score">score: {report.score_rounded:.6f}</p>'
    f'<p class="exact">unrounded: <span id="score_exact">{report.score!r}</span></p>'
    + _table(('what', 'count'), rows)
    + _img(figures.grid(report, os.path.join(out, 'grid.png')), 'the 25 cells')
    + _img(figures.accuracy_curve(report, os.path.join(out, 'accuracy.png')), 'accuracy(t)')
    + (f'<p>Scorer warnings:</p><ul>{warnings}</ul>' if warnings else '')
  )
  reading = (
    f'{_pct(counts["action_top1"])} of the {counts["videos"]} videos get the right class and '
    f'their PSC averages {counts["mean_psc"]:.3f}; the score is the area under accuracy(t) '
    '(right), the outlined cell of the grid (left).'
  )
  return _section(1, 'Headline', reading, body)


def _losses(report: score_lib.ScoreReport, ablation: Sequence[tuple[str, float]], out: str) -> str:
  rows = analysis.loss_breakdown(report)
  causes = rows[:-1]
  worst = max(causes[:-1], key=lambda r: r[1])
  body = ''
  if ablation:
    system = dict(ablation).get('system')
    table = [
      (name, f'{value:.4f}', '' if system is None else f'{value - system:+.4f}')
      for name, value in ablation
    ]
    body += (
      '<p>Oracle ablation: each row puts the ground truth in place of some stages.</p>'
      + _img(figures.bars(ablation, os.path.join(out, 'ablation.png'), 'score', 'system'), 'rows')
      + _table(('row', 'score', 'vs system'), table)
    )
  psc_rows = analysis.psc_breakdown(report)
  body += (
    '<p>The perfect score 1, split over what this submission loses (left); the perfect '
    'mean PSC 1 split over every video, whatever its class (right):</p>'
    + _img(figures.bars(rows, os.path.join(out, 'losses.png'), 'score', 'score'), 'losses')
    + _img(
      figures.bars(psc_rows, os.path.join(out, 'psc_losses.png'), 'mean PSC', 'mean PSC'),
      'PSC losses',
    )
    + _table(('cause', 'score lost'), [(name, f'{value:.4f}') for name, value in rows])
    + _table(('cause', 'mean PSC lost'), [(name, f'{value:.4f}') for name, value in psc_rows])
  )
  lost = (
    f'Most of the score is lost to {worst[0]} ({worst[1]:.4f} of 1)'
    if worst[1] > 0
    else 'Nothing is lost but the t grid'
  )
  parsing = max(psc_rows[:-1], key=lambda r: r[1])
  reading = (
    f'{lost}; the bars add up to 1 (a wrong class loses the whole video, the rest is per '
    f'counted frame of right-class videos). Over all videos the PSC loses most to '
    f'{parsing[0]} ({parsing[1]:.4f}).'
  )
  return _section(2, 'Where it is lost', reading, body)


def _humans(report: score_lib.ScoreReport, out: str) -> str:
  h = analysis.humans(report)
  rows = [
    ('GT humans', h['gt']),
    ('predicted humans', h['predicted']),
    ('matched (IoU > 0.5)', h['matched']),
    ('precision', f'{h["precision"]:.4f}'),
    ('recall', f'{h["recall"]:.4f}'),
  ]
  name = figures.histogram(
    h['ious'], os.path.join(out, 'human_iou.png'), 'IoU', 'GT human vs its assigned prediction'
  )
  reading = (
    f'{_pct(h["recall"])} of the GT humans are matched at IoU > 0.5 and {_pct(h["precision"])} '
    'of the predicted humans match one; the histogram shows the IoU of every assigned pair.'
  )
  return _section(3, 'Humans', reading, _table(('humans', 'value'), rows) + _img(name, 'IoU'))


def _confusion_table(row: analysis.PartRow) -> str:
  header = ('GT \\ predicted', *row.states)
  body = [(gt, *row.confusion[i].tolist()) for i, gt in enumerate(row.states)]
  return (
    f'<details><summary>{_e(row.name)}: full state confusion ({len(row.states)} states)'
    f'</summary>{_table(header, body)}</details>'
  )


def _parts(report: score_lib.ScoreReport, out: str) -> str:
  rows = analysis.parts(report)
  table = [
    (
      r.name,
      r.count,
      f'{r.recall:.3f}',
      f'{r.state_accuracy:.3f}',
      f'{r.credit:.3f}',
      '; '.join(f'{g} -> {p} ({n})' for g, p, n in analysis.top_confusions(r, TOP_CONFUSIONS)),
    )
    for r in rows
  ]
  header = ('part', 'GT parts', 'recall', 'state acc.', 'credit', 'top confusions (GT -> pred)')
  body = (
    _img(figures.parts_summary(rows, os.path.join(out, 'parts.png')), 'parts')
    + _table(header, table)
    + ''.join(_confusion_table(r) for r in rows if r.count)
  )
  present = [r for r in rows if r.count]
  if present:
    weakest = min(present, key=lambda r: r.recall)
    wrongest = min(present, key=lambda r: r.state_accuracy)
    reading = (
      f'Among the parts of matched humans, {weakest.name} is found least often (recall '
      f'{weakest.recall:.3f} at IoU >= 0.3) and {wrongest.name} gets its state wrong most '
      f'(accuracy {wrongest.state_accuracy:.3f} on found parts).'
    )
  else:
    reading = 'No GT part belongs to a matched human: nothing to break down per part.'
  return _section(4, 'Parts', reading, body)


def _actions(report: score_lib.ScoreReport, out: str) -> str:
  a = analysis.actions(report)
  per_class = [(name, count, f'{accuracy:.3f}') for name, count, accuracy in a['per_class']]
  name = figures.confusion(
    a['confusion'], a['labels'], os.path.join(out, 'actions.png'), 'actions (rows normalised)'
  )
  full = _table(
    ('GT \\ predicted', *a['labels']),
    [(label, *a['confusion'][i].tolist()) for i, label in enumerate(a['labels'])],
  )
  worst = min(a['per_class'], key=lambda c: (c[2], c[0]))
  reading = (
    f'Top-1 {a["top1"]:.4f} over {len(a["labels"])} classes; the weakest class is {worst[0]} '
    f'({worst[2]:.3f}); a wrong class sets the whole video to 0.'
  )
  body = (
    _img(name, 'action confusion')
    + '<div class="scroll">'
    + _table(('class', 'videos', 'accuracy'), per_class, sortable=True)
    + '</div>'
    + f'<details><summary>full confusion matrix</summary>{full}</details>'
  )
  return _section(5, 'Actions', reading, body)


def _builtins(frames) -> dict:
  """One video's frames as plain dicts (the typed form converted), {} if unreadable."""
  try:
    return msgspec.to_builtins(frames or {})
  except (TypeError, msgspec.EncodeError):  # a Malformed marker the scorer never read
    return {}


def _videos(
  report: score_lib.ScoreReport,
  gt_part: Mapping,
  pred_part: Mapping,
  video_paths: Mapping[str, str],
  worst: int,
  out: str,
) -> str:
  rows = analysis.videos(report)
  table = [
    (
      r['video'],
      (f'{r["psc"]:.4f}', r['psc']),
      r['gt_action'],
      r['pred_action'],
      ('yes' if r['correct'] else 'no', int(r['correct'])),
      r['counted'],
      r['scored'],
      r['missing'],
    )
    for r in rows
  ]
  header = ('video', 'PSC', 'GT action', 'predicted', 'right', 'counted', 'scored', 'missing')
  body = _img(figures.psc_histogram(report, os.path.join(out, 'psc.png')), 'PSC histogram')
  body += f'<div class="scroll">{_table(header, table, sortable=True)}</div>'
  d = report.details
  for k, (video, frames) in enumerate(analysis.worst_videos(report, worst, WORST_FRAMES)):
    v = report.videos.index(video)
    psc = report.psc_cells[report.official_cell][v]
    listed = ', '.join(f'{key} ({value:.3f})' for key, value in frames) or 'no scored frame'
    body += f'<h3>{_e(video)}: PSC {psc:.4f}</h3><p>lowest frames: {_e(listed)}</p>'
    path = video_paths.get(video)
    if path and frames:
      actions = (d.pred_actions[v], d.gt_actions[v])
      name = figures.worst_frames(
        path,
        frames,
        _builtins(gt_part.get(video)),
        _builtins(pred_part.get(video)),
        actions,
        os.path.join(out, f'worst_{k}.png'),
      )
      body += _img(name, f'{video}: ground truth | prediction')
  if not video_paths:
    body += '<p>No video files at hand: give --data_root to draw the worst frames.</p>'
  below = sum(r['psc'] < 0.5 for r in rows)
  reading = (
    f'{below} of {len(rows)} videos have PSC < 0.5; click a column to sort; the '
    f'{min(worst, len(rows))} worst '
    'videos follow with their lowest-scoring frames (ground truth left, prediction right).'
  )
  return _section(6, 'Videos', reading, body)


def write_report(
  out_dir: str,
  report: score_lib.ScoreReport,
  gt_part: Mapping,
  pred_part: Mapping,
  *,
  ablation: Sequence[tuple[str, float]] = (),
  video_paths: Mapping[str, str] | None = None,
  worst: int = WORST_VIDEOS,
  title: str = '',
) -> str:
  """Writes OUT_DIR/index.html and its PNGs; returns the page's path.

  report: scored with details; gt_part / pred_part: the part results it scored (typed or
  dicts; only the worst videos' frames are read, to draw them); ablation: (row, score)
  of an oracle ablation, 'system' the submission's row; video_paths: {video: file} of
  the videos that can be drawn.
  """
  analysis.details_of(report)
  os.makedirs(out_dir, exist_ok=True)
  sections = [
    _headline(report, out_dir),
    _losses(report, ablation, out_dir),
    _humans(report, out_dir),
    _parts(report, out_dir),
    _actions(report, out_dir),
    _videos(report, gt_part, pred_part, video_paths or {}, worst, out_dir),
  ]
  heading = _e(title or 'Kinetics-TPS error analysis')
  page = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    f'<title>{heading}</title><style>{_STYLE}</style><script>{_HEAD_SCRIPT}</script>'
    f'</head><body><h1>{heading}</h1><p id="status">report loading</p>'
    + ''.join(sections)
    + f'<script>{_SCRIPT}</script></body></html>'
  )
  path = os.path.join(out_dir, INDEX)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(page)
  os.replace(tmp, path)
  return path


def page_bytes(out_dir: str) -> int:
  """The page's size on disk: index.html and the files beside it."""
  return sum(entry.stat().st_size for entry in os.scandir(out_dir) if entry.is_file())
