"""repsim_jax.summaries"""
