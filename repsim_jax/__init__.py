"""repsim_jax: what neural networks represent and how similar their representations are.

Subpackages (imported lazily): ``models``, ``data``, ``semantic``, ``invert``, ``concepts``,
``cladec``, ``summaries``, ``sweep``; ``notebook`` (data and model of the Colab notebooks in
one call: :func:`repsim_jax.notebook.setup`).
"""
import importlib

__version__ = "0.1.0"
_SUBPACKAGES = ("models", "data", "semantic", "invert", "concepts", "cladec", "summaries", "sweep",
                "notebook")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"repsim_jax.{name}")
    raise AttributeError(f"module 'repsim_jax' has no attribute {name!r}")


__all__ = list(_SUBPACKAGES)
