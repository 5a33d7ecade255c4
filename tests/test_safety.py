"""Exports and submissions that cannot run code, lose a video or leave half a pair (issue 19).

Cheap: the micro random bundle of tests/pipeline_helpers.py, library calls in-process;
one test runs `python -m tps_jax.predict` for the command line's one-line errors. The
full-disk and read-only tests mount a small tmpfs (root in CI); where mounting is not
permitted they skip and say so.
"""

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tests import pipeline_helpers as helpers
from tests.conftest import run_module
from tps_jax.convert import detection as convert_detection
from tps_jax.convert.io import ConversionError
from tps_jax.data import kinetics_tps as tps
from tps_jax.data import submission, tfds_dirs
from tps_jax.inference import bundle as bundle_lib
from tps_jax.inference import pipeline_options, runner
from tps_jax.inference import videos as videos_lib
from tps_jax.inference.export import ExportError, load_export
from tps_jax.inference.pipeline_options import PipelineOptions
from tps_jax.tasks import base as tasks_base
from tps_jax.train import checkpointing


@pytest.fixture(scope='module')
def bundle(tmp_path_factory, synthetic_root):
  return helpers.write_random_bundle(str(tmp_path_factory.mktemp('safety')), str(synthetic_root))


def _one_line(error) -> str:
  text = str(error.value if hasattr(error, 'value') else error)
  assert '\n' not in text and len(text) < 1000, text
  return text


def _with_config(export_dir, target, **changes):
  """A copy of an export whose config.json has `changes`."""
  shutil.copytree(export_dir, target)
  path = os.path.join(target, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, 'w') as f:
    json.dump(config, f)
  return str(target)


# ------------------------------------------------------------ 1. exports run no code


@pytest.mark.parametrize('task', ['evilmod:human_detector', 'this:human_detector', 'evilmod'])
def test_an_export_naming_a_module_imports_nothing(bundle, tmp_path, monkeypatch, task):
  (tmp_path / 'evilmod.py').write_text(
    'import pathlib\npathlib.Path(__file__).with_name("ran").write_text("x")\n'
  )
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # importable: only the loader can refuse
  before = set(sys.modules)
  export = _with_config(os.path.join(bundle, 'humans'), tmp_path / 'export', task=task)
  with pytest.raises(ExportError) as error:
    load_export(export)
  line = _one_line(error)
  assert line.startswith(os.path.join(export, 'config.json') + ': field task: ')
  assert 'not a registered task' in line and 'register_task' in line
  assert not (tmp_path / 'ran').exists()
  assert not {'evilmod', 'this'} & (set(sys.modules) - before)


def test_a_bundle_with_such_an_export_refuses_in_one_line(bundle, tmp_path, monkeypatch):
  (tmp_path / 'evilmod.py').write_text('open("ran", "w").close()\n')
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  copy = tmp_path / 'bundle'
  shutil.copytree(bundle, copy)
  config = copy / 'parts' / 'config.json'
  config.write_text(json.dumps({**json.loads(config.read_text()), 'task': 'evilmod:detection'}))
  with pytest.raises(ExportError) as error:
    bundle_lib.load_bundle(str(copy))
  assert _one_line(error).startswith(f'{config}: field task: ')
  assert not (tmp_path / 'ran').exists()


def test_tasks_are_the_library_table_plus_what_user_code_registers(bundle, tmp_path):
  assert set(tasks_base.LIBRARY_TASKS) == {'detection', 'part_state', 'action'}
  with pytest.raises(ValueError, match=r"config.task: 'tests.toy_task:toy' is not a registered"):
    tasks_base.get_task('tests.toy_task:toy', None)
  detection = tasks_base.task_class('detection')
  tasks_base.register_task('my_detector', detection)  # the explicit call form
  try:
    export = _with_config(os.path.join(bundle, 'humans'), tmp_path / 'e', task='my_detector')
    assert isinstance(load_export(export).task, detection)
  finally:
    tasks_base._REGISTRY.pop('my_detector')


@pytest.mark.parametrize('name', ['/abs', '../humans', 'humans/../..', 'link'])
def test_bundle_networks_outside_the_bundle_are_refused(bundle, tmp_path, name):
  copy = tmp_path / 'bundle'
  shutil.copytree(bundle, copy)
  os.symlink(os.path.join(bundle, 'humans'), copy / 'link')  # a link that leads out
  name = os.path.join(bundle, 'humans') if name == '/abs' else name
  manifest = json.loads((copy / 'pipeline.json').read_text())
  manifest['networks']['humans'] = name
  (copy / 'pipeline.json').write_text(json.dumps(manifest))
  with pytest.raises(ExportError) as error:
    bundle_lib.load_bundle(str(copy))
  line = _one_line(error)
  assert line.startswith(f'{copy / "pipeline.json"}: networks.humans ')
  assert 'outside the bundle' in line


def test_a_dataset_folder_naming_a_feature_module_imports_nothing(tmp_path, monkeypatch):
  (tmp_path / 'evilfeat.py').write_text('open("ran", "w").close()\n')
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # tfds itself would import it
  own = 'tensorflow_datasets.core.features.tensor_feature.Tensor'
  features = {'featuresDict': {'features': {'a': {'pythonClassName': own}}}}
  (tmp_path / 'features.json').write_text(json.dumps(features))
  tfds_dirs.check_feature_classes(str(tmp_path))  # tfds's own classes pass
  info = {'features': {'list': [{'x': {'pythonClassName': 'evilfeat.Tensor'}}]}}
  (tmp_path / 'dataset_info.json').write_text(json.dumps(info))
  with pytest.raises(ValueError) as error:
    tfds_dirs.builder_from_directory(str(tmp_path))
  assert _one_line(error).startswith(
    f"{tmp_path / 'dataset_info.json'}: feature class 'evilfeat.Tensor' is not one of tfds's own"
  )
  assert not (tmp_path / 'ran').exists()


# ---------------------------------------------------------- 2. no video lost in silence


def test_two_video_files_with_one_name_are_refused(tmp_path):
  for folder in 'ab':
    (tmp_path / folder).mkdir()
    (tmp_path / folder / 'x.mp4').write_bytes(b'')
  files = [str(tmp_path / 'a' / 'x.mp4'), str(tmp_path / 'b' / 'x.mp4')]
  with pytest.raises(ValueError) as error:
    videos_lib.list_videos(video_files=files, problems=[])
  line = _one_line(error)
  assert "video name 'x'" in line and files[0] in line and files[1] in line
  items = videos_lib.list_videos(video_files=[files[0], str(tmp_path / 'b' / 'y.mp4')], problems=[])
  assert [v.name for v in items] == ['x', 'y']


# ---------------------------------------------------- 3. the pair changes together


def _pair(num_videos: int, humans: int = 1):
  human = {'box': [1, 2, 30, 40], 'parts': {'head': {'box': [[1, 2, 5, 6]], 'verb': ['s']}}}
  frames = {'img_00001.json': {'humans': [human] * humans}}
  names = [f'video_{i:03d}' for i in range(num_videos)]
  return {n: 'act' for n in names}, {n: frames for n in names}


def _files(directory) -> dict[str, bytes]:
  """{name: content} of the files in `directory` (temporary ones included)."""
  paths = {name: os.path.join(directory, name) for name in sorted(os.listdir(directory))}
  return {name: open(path, 'rb').read() for name, path in paths.items() if os.path.isfile(path)}


@contextlib.contextmanager
def _tmpfs(path, size: str, *, required: bool = True):
  """Mounts a tmpfs of `size` at `path` for the block (unmounted after). Where mounting
  is not permitted: skips the test, or, when not `required`, yields None."""
  os.makedirs(path)
  try:
    subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
      check=True,
      capture_output=True,
      text=True,
    )
  except (OSError, subprocess.CalledProcessError) as e:
    reason = f'mounting a tmpfs is not permitted here (root in CI does it): {e}'
    if required:
      pytest.skip(reason)
    yield None
    return
  try:
    yield path
  finally:
    subprocess.run(['umount', str(path)], check=False, capture_output=True)


def test_a_full_disk_leaves_the_earlier_pair_intact(tmp_path):
  with _tmpfs(tmp_path / 'disk', '256k') as disk:
    out = disk / 'pred'
    submission.write_submission(str(out), *_pair(1))
    before = _files(out)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / 'filler', 'wb') as f:  # leaves room for the small file only
      f.write(b'\0' * (free - 16 * 1024))
    vid, part = _pair(100, humans=10)
    assert len(json.dumps(vid)) < 8 * 1024 < 64 * 1024 < len(json.dumps(part))
    with pytest.raises(OSError) as error:
      submission.write_submission(str(out), vid, part)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(out / submission.PRED_FILES[1])  # not a temp name
    assert _files(out) == before  # the pair as it was, no temporary file left


def test_a_failed_second_rename_puts_the_first_file_back(tmp_path, monkeypatch):
  out = tmp_path / 'pred'
  submission.write_submission(str(out), *_pair(1))
  before = _files(out)
  replace, calls = os.replace, []

  def second_fails(src, dst):
    calls.append(dst)
    if len(calls) == 2:
      raise OSError(errno.EIO, 'Input/output error', dst)
    replace(src, dst)

  monkeypatch.setattr(os, 'replace', second_fails)
  with pytest.raises(OSError, match='Input/output error'):
    submission.write_submission(str(out), *_pair(3))
  assert _files(out) == before  # the first file renamed back, no backup left


def test_a_read_only_out_leaves_the_earlier_pair_intact(tmp_path):
  with _tmpfs(tmp_path / 'disk', '256k') as disk:
    out = disk / 'pred'
    submission.write_submission(str(out), *_pair(1))
    before = _files(out)
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    with pytest.raises(OSError) as error:  # root ignores modes; a read-only mount does not
      submission.write_submission(str(out), *_pair(2))
    assert error.value.errno == errno.EROFS
    assert error.value.filename == str(out / submission.PRED_FILES[0])
    assert _files(out) == before


# ------------------------------------------------ 4. a bundle is known by its content


def test_a_bundle_rebuilt_at_the_same_path_is_another_bundle(bundle, synthetic_root, tmp_path):
  copy = str(tmp_path / 'bundle')
  shutil.copytree(bundle, copy)
  sources = {k: os.path.join(bundle, k) for k in ('humans', 'parts', 'states', 'action_0')}
  settings = PipelineOptions(max_humans=3, frame_batch=4, action_clips=1, action_crops=1)

  def rebuild(action):
    bundle_lib.write_bundle(
      copy,
      humans=sources['humans'],
      parts=sources['parts'],
      states=sources['states'],
      actions=[action],
      options=settings,
      overwrite=True,
    )
    return bundle_lib.fingerprint(copy)

  first = rebuild(sources['action_0'])
  assert rebuild(sources['action_0']) == first  # the same networks again: the same bundle
  # One byte of a network changed, its file's size and time kept: another bundle.
  victim = max(
    (os.path.join(d, f) for d, _, files in os.walk(copy) for f in files if f != 'pipeline.json'),
    key=os.path.getsize,
  )
  stat, data = os.stat(victim), bytearray(open(victim, 'rb').read())
  data[len(data) // 2] ^= 1
  open(victim, 'wb').write(data)
  os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert bundle_lib.fingerprint(copy) != first
  vocab = tps.Vocab.from_root(str(synthetic_root))
  other = helpers.write_random_export(tmp_path / 'other', 'action', vocab, seed=7)
  second = rebuild(other)
  assert second != first

  pipeline = bundle_lib.load_bundle(copy)
  out = str(tmp_path / 'pred')
  runner.predict(pipeline, [], out, run_info={'bundle': first}, progress=False)
  with pytest.raises(runner.RunError) as error:
    runner.predict(pipeline, [], out, run_info={'bundle': second}, progress=False)
  assert 'other bundle' in _one_line(error) and '--fresh' in str(error.value)
  runner.predict(pipeline, [], out, run_info={'bundle': second}, fresh=True, progress=False)


# ---------------------------------------------------- 5. malformed inputs: one line


def _manifest(bundle) -> dict:
  return json.loads(open(os.path.join(bundle, 'pipeline.json')).read())


def _deep(depth: int = 100_000) -> str:
  return '[' * depth + ']' * depth


@pytest.mark.parametrize(
  'edit, message',
  [
    (lambda m: m['settings'].update(max_humans='10'), "max_humans must be an integer, got '10'"),
    (lambda m: m['settings'].update(max_humans=2.5), 'max_humans must be an integer, got 2.5'),
    (lambda m: m['settings'].update(frame_batch=1e9), 'frame_batch must be an integer'),
    (lambda m: m['settings'].update(action_average=1), 'action_average must be a string'),
    (lambda m: m['settings'].update(nothing=1), 'unknown field(s) nothing'),
    (lambda m: m.update(settings=[1, 2]), 'settings must be an object, got list'),
    (lambda m: m.pop('settings') and None, "no 'settings' entry"),
    (lambda m: m['networks'].update(action='action_0'), 'networks.action must be a non-empty'),
    (lambda m: m['networks'].pop('parts') and None, 'networks has no parts'),
    (lambda m: m['networks'].update(states=7), 'networks.states must be a folder name, got 7'),
    (lambda m: [1, 2], 'expected a JSON object, got list'),
    (lambda m: _deep(), 'nested too deeply'),
  ],
)
def test_malformed_pipeline_json_is_one_line(bundle, tmp_path, edit, message):
  manifest = _manifest(bundle)
  edited = edit(manifest)
  text = edited if isinstance(edited, str) else json.dumps(manifest if edited is None else edited)
  (tmp_path / 'pipeline.json').write_text(text)  # refused before any network is read
  with pytest.raises(ExportError) as error:
    bundle_lib.load_bundle(str(tmp_path))
  line = _one_line(error)
  assert line.startswith(str(tmp_path / 'pipeline.json') + ': ') and message in line


def test_setting_overrides_are_checked_as_the_file_is(bundle):
  with pytest.raises(ExportError) as error:
    bundle_lib.load_bundle(bundle, options={'max_humans': True})
  assert _one_line(error) == (
    "settings given instead of the bundle's (--set): "
    'pipeline settings: max_humans must be an integer, got True'
  )


def test_settings_are_checked_by_their_declared_types_alone():
  @dataclasses.dataclass(frozen=True)
  class Later:  # fields another stage might add, with no code of their own
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    merge: str = 'mean'
    pair: tuple[int, int] = (1, 2)
    limit: float | None = None

  hints = {f.name: f.type for f in dataclasses.fields(Later)}
  check = lambda name, value: pipeline_options.typed_value(value, hints[name], name)
  assert check('scales', [1, 0.5]) == (1.0, 0.5) and check('flip', True) is True
  assert check('merge', 'max') == 'max' and check('pair', [3, 4]) == (3, 4)
  assert check('limit', None) is None and check('limit', 2) == 2.0
  for name, value, message in [
    ('scales', 0.5, 'scales must be a list, each item a number, got 0.5'),
    ('scales', [1, 'x'], "scales[1] must be a number, got 'x'"),
    ('scales', [float('nan')], 'scales[0] must be a number, got nan'),
    ('flip', 1, 'flip must be true or false, got 1'),
    ('merge', ['mean'], "merge must be a string, got ['mean']"),
    ('pair', [1, 2, 3], 'pair must be a list, each item an integer, got [1, 2, 3]'),
    ('limit', 'big', "limit must be a number or null, got 'big'"),
  ]:
    with pytest.raises(ValueError) as error:
      check(name, value)
    assert _one_line(error) == f'pipeline settings: {message}'


def test_a_truncated_variables_file_is_one_line_and_nothing_more(bundle, tmp_path, monkeypatch):
  export = tmp_path / 'humans'
  shutil.copytree(os.path.join(bundle, 'humans'), export)
  data = [
    os.path.join(folder, name)
    for folder, _, names in os.walk(export / 'variables')
    for name in names
    if os.sep + 'd' + os.sep in os.path.join(folder, name)
  ]
  for path in data:  # every data file cut in half
    os.truncate(path, os.path.getsize(path) // 2)
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  with pytest.raises(ExportError) as error:
    load_export(str(export))
  line = _one_line(error)
  assert line.startswith(f'{export / "variables"}: unreadable (') and 'tensorstore_spec' not in line
  sys.unraisablehook(_Unraisable(RuntimeError('Event loop is closed')))
  sys.unraisablehook(_Unraisable(RuntimeError('something else')))
  assert [str(u.exc_value) for u in reported] == ['something else']


@dataclasses.dataclass
class _Unraisable:
  exc_value: BaseException


def test_the_closed_loop_filter_passes_other_reports_on():
  seen = []
  hook = checkpointing._closed_loop_filter(seen.append)
  hook(_Unraisable(RuntimeError('Event loop is closed')))
  hook(_Unraisable(ValueError('Event loop is closed')))
  assert [type(u.exc_value) for u in seen] == [ValueError]


def test_deeply_nested_submission_json_is_one_line(tmp_path):
  vid, part = _pair(1)
  submission.write_submission(str(tmp_path), vid, part)
  (tmp_path / submission.PRED_FILES[1]).write_text(_deep())
  for read in (submission.read_results, submission.load_pair):
    with pytest.raises(submission.SubmissionError) as error:
      read(str(tmp_path), 'pred')
    assert _one_line(error) == (
      f'{tmp_path / submission.PRED_FILES[1]}: not valid JSON '
      '(nested deeper than a JSON reader recurses)'
    )


def test_a_duplicate_video_key_is_read_last_wins_with_a_warning(tmp_path):
  vid, part = _pair(2)
  submission.write_submission(str(tmp_path), vid, part)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # a clean pair: no warning
    submission.read_results(str(tmp_path), 'pred')
  text = json.dumps(vid)
  (tmp_path / submission.PRED_FILES[0]).write_text(text[:-1] + ', "video_000": "other"}')
  for read in (submission.read_results, submission.load_pair):
    with pytest.warns(submission.DuplicateKeyWarning) as record:
      read_vid, _ = read(str(tmp_path), 'pred')
    assert read_vid['video_000'] == 'other' and len(record) == 1
    assert str(record[0].message).startswith(
      f'{tmp_path / submission.PRED_FILES[0]}: 1 video key(s) appear more than once (e.g. '
      "'video_000'); the last entry of each is read"
    )


@pytest.mark.parametrize(
  'text, duplicates',
  [
    (b'{"a": [1, 2], "b": "x,y", "a": {"c": 1}}', ['a']),
    (b'{"a,b": [1, 2], "b": "x,y"}', []),
    (b'{"a": NaN, "b": 1, "a": 2, "b": 3}', ['a', 'b']),  # read by Python's json only
    (b'{"a": {"a": 1, "a": 2}}', []),  # only the top level holds videos
    (b'[1, 2, 1]', []),
  ],
)
def test_duplicate_keys_are_found_by_what_decoding_loses(text, duplicates):
  assert submission.duplicate_keys(text) == duplicates


def test_converter_lists_a_few_unknown_head_keys_and_a_count():
  state = {f'roi_head.bbox_head.0.other_{i}.weight': np.zeros(1) for i in range(60)}
  with pytest.raises(ConversionError) as error:
    convert_detection.check_head_keys(state, set(), 'ckpt', 'mmdetection')
  line = _one_line(error)
  assert line.startswith('ckpt: 60 keys of an RPN / RoI head this arch does not have')
  assert line.endswith('other_4.weight and 55 more')


# -------------------------------------------------- 6. files readable per the umask


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
  previous = os.umask(umask)
  try:
    submission.write_submission(str(tmp_path), *_pair(1))
  finally:
    os.umask(previous)
  for name in submission.PRED_FILES:
    assert os.stat(tmp_path / name).st_mode & 0o777 == mode


# ------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_predict_command_line_errors_are_one_line(bundle, tmp_path):
  """The CLI's exits: a rebuilt bundle refused unless --fresh, two --video files with
  one name refused, and a read-only --out: one line each, the earlier pair kept."""
  copy = str(tmp_path / 'bundle')
  shutil.copytree(bundle, copy)
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  for folder in 'ab':  # unreadable videos: predict skips them, nothing is compiled
    (tmp_path / folder / 'x.mp4').write_text('not a video')
  out = tmp_path / 'disk' / 'pred'
  with _tmpfs(tmp_path / 'disk', '1m', required=False) as mounted:
    args = ['--bundle', copy, '--out', out, '--noprogress', '--video', tmp_path / 'a' / 'x.mp4']
    run_module('tps_jax.predict', *args)
    before = _files(out)
    assert sorted(before) == sorted([*submission.PRED_FILES, 'run.json'])
    metadata = os.path.join(copy, 'action_0', 'metadata.json')
    original = open(metadata).read()
    with open(metadata, 'a') as f:  # the bundle at the same path, changed
      f.write(' ')
    proc = run_module('tps_jax.predict', *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
      f'error: {out / "videos"}: results of an earlier run with other bundle; '
      'pass --fresh to start over, or another --out'
    ]
    proc = run_module('tps_jax.predict', *args, '--video', tmp_path / 'b' / 'x.mp4', check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
      f"error: --video {tmp_path / 'b' / 'x.mp4'}: video name 'x' also given by --video "
      f'{tmp_path / "a" / "x.mp4"}; the submission is keyed by name (rename one, or parse '
      'them in separate runs)'
    ]
    if not mounted:
      return  # the read-only --out needs a mount (test_a_read_only_out_... skips and says so)
    with open(metadata, 'w') as f:  # the bundle as it was: its results are reused
      f.write(original)
    subprocess.run(['mount', '-o', 'remount,ro', str(tmp_path / 'disk')], check=True)
    proc = run_module('tps_jax.predict', *args, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f'error: {out / "run.json"}: Read-only file system']
    assert _files(out) == before
