"""Two processes on localhost (CPU) train, checkpoint per-process data state, resume."""

import json
import os
import subprocess
import sys

import portpicker
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_two_processes(workdir, *flags):
  port = portpicker.pick_unused_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        'run_train.py',
        '--config=tests/toy_task.py:tiny',
        f'--workdir={workdir}',
        f'--coordinator_address=localhost:{port}',
        '--num_processes=2',
        f'--process_id={i}',
        *flags,
      ],
      cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  errors = []
  for proc in procs:
    try:
      _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, err
    errors.append(err)
  return errors


@pytest.mark.slow
def test_two_processes_train_and_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  errors = _run_two_processes(
    workdir,
    '--config.total_steps=6',
    '--config.checkpoint_steps=3',
    '--config.eval_steps=3',
    '--config.log_steps=1',
  )
  assert 'process 0 of 2: 1 local / 2 global devices' in errors[0]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]  # only process 0 writes
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]
  assert records[-1]['loss'] < records[0]['loss']
  assert 0.0 <= records[-1]['eval_accuracy'] <= 1.0
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', '6', 'data'))) == [
    'commit_success.txt',
    'process_0-of-2.json',
    'process_1-of-2.json',
  ]
  assert os.path.isdir(os.path.join(workdir, 'export', 'variables'))
  errors = _run_two_processes(
    workdir,
    '--config.total_steps=8',
    '--config.checkpoint_steps=3',
    '--config.eval_steps=0',
    '--config.log_steps=1',
  )
  assert f'resumed {workdir} from step 6' in errors[0]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == list(range(1, 9))
