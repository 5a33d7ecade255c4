"""tps_jax.datasets.frames (data_prep.extract_frames): names and counts, pixels, resume,
leftovers, broken videos."""

import os
import shutil

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_module
from tps_jax.data import kinetics_tps as tps
from tps_jax.datasets import frames as E


def _videos(root):
  return [(split, v) for split in tps.SPLITS for v in tps.iter_videos(str(root), split)]


def _jpgs(out, split, video):
  return sorted(os.listdir(E.frames_dir(str(out), split, video.action, video.name)))


def _names(indices):
  return [tps.frame_name(i, '.jpg') for i in indices]


def _leftovers(out):
  return [
    os.path.join(d, n)
    for d, dirs, files in os.walk(out)
    for n in dirs + files
    if n.startswith(E.TMP_PREFIX)
  ]


def test_help():
  out = run_module('data_prep.extract_frames', '--help', check=False).stdout
  for flag in (
    '--data_root',
    '--out',
    '--split',
    '--jobs',
    '--short_side',
    '--jpeg_quality',
    '--[no]only_annotated',
    '--[no]progress',
  ):
    assert flag in out


def test_output_size_scales_the_short_side():
  assert E.output_size(160, 120, None) == (160, 120)
  assert E.output_size(160, 120, 60) == (80, 60)
  assert E.output_size(120, 160, 90) == (90, 120)
  assert E.output_size(1280, 720, 256) == (455, 256)


@pytest.fixture(scope='module')
def extracted(synthetic_root, tmp_path_factory):
  """All frames of the synthetic set, by the command line: (out, first run)."""
  out = tmp_path_factory.mktemp('frames') / 'frames'
  proc = run_module(
    'data_prep.extract_frames',
    '--data_root',
    synthetic_root,
    '--out',
    out,
    '--jobs',
    2,
    '--noprogress',
  )
  return out, proc


def test_every_frame_is_written_numbered_from_1(synthetic_root, extracted):
  out, proc = extracted
  videos = _videos(synthetic_root)
  total = sum(v.num_frames for _, v in videos)
  assert proc.stdout.splitlines()[-1] == (
    f'{out}: {len(videos)} video(s) extracted ({total} frames), 0 already done, 0 '
    'unfinished folder(s) of an interrupted run removed; 0 warning(s), 0 error(s)'
  )
  for split, video in videos:
    assert _jpgs(out, split, video) == _names(range(1, video.num_frames + 1))
  assert not _leftovers(out)


def test_frame_k_holds_the_kth_decoded_frame(synthetic_root, extracted):
  out, _ = extracted
  split, video = _videos(synthetic_root)[0]
  with av.open(video.video_path) as container:
    decoded = [f.to_ndarray(format='rgb24').astype(np.float32) for f in container.decode(video=0)]
  folder = E.frames_dir(str(out), split, video.action, video.name)
  for k in (1, 2, video.num_frames):
    image = np.asarray(Image.open(os.path.join(folder, tps.frame_name(k, '.jpg'))), np.float32)
    assert image.shape == (120, 160, 3)
    errors = [np.abs(image - frame).mean() for frame in decoded]
    assert int(np.argmin(errors)) == k - 1 and errors[k - 1] < 4.0


def test_rerun_skips_finished_videos(synthetic_root, extracted):
  out, _ = extracted
  split, video = _videos(synthetic_root)[-1]
  first = os.path.join(E.frames_dir(str(out), split, video.action, video.name), 'img_00001.jpg')
  mtime = os.stat(first).st_mtime_ns
  report = E.extract(str(synthetic_root), str(out), jobs=1)
  assert (
    f': 0 video(s) extracted (0 frames), {len(_videos(synthetic_root))} already '
    'done' in report.summary()
  )
  assert os.stat(first).st_mtime_ns == mtime


def test_other_options_on_the_same_output_are_refused(synthetic_root, extracted):
  out, _ = extracted
  proc = run_module(
    'data_prep.extract_frames',
    '--data_root',
    synthetic_root,
    '--out',
    out,
    '--jpeg_quality',
    50,
    '--noprogress',
    check=False,
    subprocess_=True,
  )
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert proc.stderr.startswith(f'error: {out / E.SETTINGS_FILE}: frames there were extracted with')
  with pytest.raises(E.SettingsError, match='jpeg_quality=0: must be in 1..100'):
    E.extract(str(synthetic_root), str(out), jpeg_quality=0)


def test_a_leftover_temporary_folder_is_redone(synthetic_root, tmp_path):
  out = str(tmp_path / 'frames')
  assert E.extract(str(synthetic_root), out, ('train',)).extracted == 5
  split, video = _videos(synthetic_root)[0]
  final = E.frames_dir(out, split, video.action, video.name)
  tmp = os.path.join(os.path.dirname(final), E.TMP_PREFIX + video.name)
  os.rename(final, tmp)  # as a run killed mid-video leaves it
  os.remove(os.path.join(tmp, 'img_00003.jpg'))
  report = E.extract(str(synthetic_root), out, ('train',))
  assert (report.extracted, report.skipped, report.removed_leftovers) == (1, 4, 1)
  assert report.frames == video.num_frames and report.ok
  assert _jpgs(out, split, video) == _names(range(1, video.num_frames + 1))
  assert not _leftovers(out)


def test_a_broken_video_is_reported_and_the_others_go_on(synthetic_root, tmp_path):
  root = tmp_path / 'Kinetics-TPS'
  shutil.copytree(synthetic_root, root)
  videos = _videos(root)
  (_, garbage), (_, cut) = videos[:2]
  with open(garbage.video_path, 'wb') as f:
    f.write(b'garbage' * 100)
  data = open(cut.video_path, 'rb').read()
  with open(cut.video_path, 'wb') as f:
    f.write(data[:-200])
  out = tmp_path / 'frames'
  proc = run_module(
    'data_prep.extract_frames',
    '--data_root',
    root,
    '--out',
    out,
    '--jobs',
    2,
    '--noprogress',
    check=False,
  )
  assert proc.returncode == 1
  lines = proc.stdout.splitlines()
  assert f'{garbage.video_path}: cannot decode (Invalid data found when processing input)' in lines
  assert f'{cut.video_path}: no frame decodes (the file may be truncated)' in lines
  assert lines[-1].endswith('0 warning(s), 2 error(s)')
  for split, video in videos:
    folder = E.frames_dir(str(out), split, video.action, video.name)
    assert os.path.isdir(folder) == (video not in (garbage, cut))
  assert not _leftovers(out)


def test_only_annotated_and_short_side(synthetic_root, tmp_path):
  root = tmp_path / 'Kinetics-TPS'
  shutil.copytree(synthetic_root, root)
  shutil.rmtree(root / 'test_annotations')  # as the real test split: scored frames
  video = next(v for split, v in _videos(root) if split == 'train')
  os.remove(video.annotation_path(6))  # annotated frames, not scored ones
  out = str(tmp_path / 'frames')
  report = E.extract(str(root), out, only_annotated=True, short_side=60)
  assert report.ok and not report.warnings
  for split, v in _videos(root):
    expected = v.annotated_frames() if split == 'train' else tps.sampled_frames(v.num_frames)
    assert _jpgs(out, split, v) == _names(expected)
  split, v = _videos(root)[0]
  first = os.path.join(E.frames_dir(out, split, v.action, v.name), 'img_00001.jpg')
  assert Image.open(first).size == (80, 60)


def test_a_frame_count_differing_from_the_csv_is_a_warning(synthetic_root, tmp_path):
  root = tmp_path / 'Kinetics-TPS'
  shutil.copytree(synthetic_root, root)
  ((split, video),) = _videos(root)[-1:]
  flist = root / 'list' / f'video_{split}_flist.csv'
  flist.write_text(
    flist.read_text().replace(
      f'{video.name},{video.num_frames}', f'{video.name},{video.num_frames + 2}'
    )
  )
  out = tmp_path / 'frames'
  report = E.extract(str(root), str(out), (split,), jobs=1)
  assert report.warnings == [
    f'{video.video_path}: warning: {video.num_frames} frames '
    f'decoded, but {flist} lists {video.num_frames + 2}'
  ]
  assert _jpgs(out, split, video) == _names(range(1, video.num_frames + 1))
