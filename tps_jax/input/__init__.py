"""grain input pipelines, one per dataset (`pipelines.py`), and the state-balancing
resampler of the part-state stage (`resample.py`): what the tasks train and evaluate on.
"""
