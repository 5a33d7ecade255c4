"""The offline dataset factory, run by the data_prep/ command lines and the demo's chain.

Synthetic data (`synthetic.py`, drawn by `synthetic_render.py`), a root's validation
(`validation.py`), frame extraction (`frames.py`) and the TFDS datasets (`build.py`:
the videos to build from, `sources.py`; their train / val split, `val_split.py`;
pseudo-labels, `pseudo_labels.py`; each dataset's examples, `examples.py`; the TFDS
builder, `tfds_builder.py`), in worker processes (`processes.py`). Training and
inference never import it: they read what it wrote through the formats of
`tps_jax.data`.
"""
