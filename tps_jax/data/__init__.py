"""The formats every layer reads: the Kinetics-TPS reader (`kinetics_tps.py`), the
submission files (`submission.py`), video frames (`video.py`), the host-side image and
box geometry (`augment.py`) and built TFDS dataset folders (`tfds_dirs.py`).
"""
