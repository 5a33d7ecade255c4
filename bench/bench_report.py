r"""Time `python -m tps_jax.report` on a test-set-sized submission, whole process.

  python bench/bench_report.py [--videos 932] [--frames 60] [--humans 3] [--out DIR]

Writes the ground truth and noisy submission of bench/bench_score.py (its flags: 932
videos x 60 sampled frames x 3 humans x 10 parts, 1-5 proposals per part, noisy boxes
and states, humans missed and added, a tenth of the actions wrong) as JSON, then times
two whole processes, JSON reading included: `python -m tps_jax.evaluate` and `python -m
tps_jax.report` (the same scoring pass with its details, then the page). Prints both
times (wall clock, and the CPU time that a quiet machine's wall clock would be), the
report process's peak RSS, the page's size on disk, and checks that both print the same
score. No videos: the worst videos are listed, not drawn.
"""

import os
import resource
import sys
import tempfile
import time

import bench_score  # the same folder: its submission maker and flags
from absl import flags

from tps_jax import cli
from tps_jax.data import submission
from tps_jax.metrics import report_page

PAGE_LIMIT = 20 * 2**20


def _children_cpu() -> float:
  """User + system CPU seconds of the finished child processes: the time a quiet
  machine would take, whatever else shares the cores."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def main(argv):
  del argv
  args = flags.FLAGS
  folder = args.out or tempfile.mkdtemp(prefix='bench_report_')
  start = time.perf_counter()
  gt_dir, pred_dir = bench_score.write(
    folder, bench_score.make(args.videos, args.frames, args.humans)
  )
  megabytes = sum(
    os.path.getsize(os.path.join(d, f)) / 2**20
    for d, names in ((gt_dir, submission.GT_FILES), (pred_dir, submission.PRED_FILES))
    for f in names
  )
  print(
    f'submission: {args.videos} videos x {args.frames} frames x {args.humans} humans, '
    f'files {megabytes:.0f} MiB (made in {time.perf_counter() - start:.0f} s, {folder})',
    flush=True,
  )
  out = os.path.join(folder, 'report')
  cpu = _children_cpu()
  seconds, printed = bench_score.timed(
    ['-m', 'tps_jax.report', '--gt', gt_dir, '--pred', pred_dir, '--out', out]
  )
  cpu, report_cpu = _children_cpu(), _children_cpu() - cpu
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
  size = report_page.page_bytes(out)
  print(
    f'python -m tps_jax.report: {seconds:.1f} s ({report_cpu:.1f} s of CPU), peak RSS '
    f'{peak:.1f} GiB, page {size / 2**20:.2f} MiB ({os.path.join(out, report_page.INDEX)})',
    flush=True,
  )
  evaluate_seconds, evaluated = bench_score.timed(
    ['-m', 'tps_jax.evaluate', '--gt', gt_dir, '--pred', pred_dir]
  )
  print(
    f'python -m tps_jax.evaluate: {evaluate_seconds:.1f} s ({_children_cpu() - cpu:.1f} s of CPU)'
  )
  if bench_score.official_area(printed) != bench_score.official_area(evaluated):
    sys.exit('the report and evaluate print different scores')
  print(f'the same score: {bench_score.official_area(printed):.6f}')
  if size >= PAGE_LIMIT:
    sys.exit(f'the page is {size / 2**20:.1f} MiB, over 20 MiB')


if __name__ == '__main__':
  cli.run(main)
