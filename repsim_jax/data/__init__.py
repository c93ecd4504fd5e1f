"""repsim_jax.data"""
