"""Training stages: one `tps_jax.train.tasks.Task` per stage (registered by name)."""
