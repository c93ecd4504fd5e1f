"""repsim_jax.concepts"""
