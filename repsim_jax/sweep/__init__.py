"""repsim_jax.sweep"""
