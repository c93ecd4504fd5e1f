"""repsim_jax.invert"""
