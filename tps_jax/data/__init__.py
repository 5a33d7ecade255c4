"""The formats every layer reads: the Kinetics-TPS reader (`kinetics_tps.py`), the
submission files (`submission.py`), video frames (`video.py`), the host-side image and
box geometry (`augment.py`), and the built TFDS datasets: their names, features and
state tables (`tfds_layout.py`), their folders opened safely (`tfds_dirs.py`).
"""
