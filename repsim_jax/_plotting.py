"""Figures without pyplot: no backend switch and no global figure registry.

``matplotlib.use("Agg")`` inside a library call closes a notebook's open figures and stops
inline display. Figures built from :class:`matplotlib.figure.Figure` need no backend: they
save to PNG headless and display in Jupyter/Colab when returned. The functions mirror the
three pyplot calls the plotting code uses, so a module can ``from repsim_jax import
_plotting as plt``. matplotlib is an optional extra (``[plot]``), imported on call.
"""
from __future__ import annotations

_FIGURE_KWARGS = ("figsize", "dpi", "facecolor", "layout", "constrained_layout", "tight_layout")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(fig, axes)`` like ``pyplot.subplots``, on a stand-alone Figure."""
    from matplotlib.figure import Figure
    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_KWARGS if k in kwargs})
    return fig, fig.subplots(nrows, ncols, **kwargs)


def close(fig) -> None:
    """Nothing to release: a stand-alone Figure is garbage-collected like any object."""
    del fig


def imsave(path, image, **kwargs) -> None:
    """Writes an image array to ``path`` (PNG by extension)."""
    from matplotlib.image import imsave as _imsave
    _imsave(path, image, **kwargs)
