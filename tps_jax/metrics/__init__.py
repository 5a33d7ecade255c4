"""Metrics: the challenge's score (`score.py`, the official tool's numbers), COCO mAP of
the detectors (`coco.py`), and pictures of a scored parsing (`drawing.py`).

The submission format itself (reading, validating, writing) is `tps_jax.data.submission`,
beside the dataset reader; the command lines are `python -m tps_jax.evaluate*`.
"""
