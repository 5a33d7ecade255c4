"""Training stages: one `base.Task` per stage, registered by name (`base.get_task`).

`base.py` holds the protocol the trainer runs and the registry; `detection.py`,
`part_state.py` and `action.py` the four networks' tasks (both detectors share one);
`action_views.py` the action recogniser's multi-view evaluation and checkpoint ensembles.
"""
