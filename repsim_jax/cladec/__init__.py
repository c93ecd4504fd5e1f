"""repsim_jax.cladec"""
