"""tps_jax: the first-place Kinetics-TPS system in JAX/Flax."""
