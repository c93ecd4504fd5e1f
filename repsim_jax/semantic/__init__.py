"""repsim_jax.semantic"""
