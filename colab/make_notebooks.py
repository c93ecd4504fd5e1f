"""Writes every ``colab/<name>.ipynb`` from its plain source ``colab/<name>.py``.

The notebooks are kept as jupytext ``py:percent`` files (``# %%`` code cells,
``# %% [markdown]`` text cells): plain Python that reads, diffs and lints like any module,
with everything the notebooks need imported from the library (the report's figures from
:mod:`repsim_jax.sweep.figures`, data, model and layers from one call of
:func:`repsim_jax.notebook.setup`, the methods from their subpackages). The ``.ipynb`` files (what Colab opens) are generated from them
by this one command::

    python colab/make_notebooks.py          # all notebooks
    python colab/make_notebooks.py invert   # one

Outputs are never stored; ``tests/test_notebooks.py`` checks that the committed notebooks
equal what this writes and executes each one headless with ``REPSIM_NOTEBOOK_SMALL=1``.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# notebook metadata written into every .ipynb (Colab opens it with a GPU runtime)
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": [], "toc_visible": True},
    "accelerator": "GPU",
}


def sources(directory: Path = HERE) -> list[Path]:
    """The notebook sources: every ``*.py`` of ``colab/`` except this script."""
    return sorted(p for p in Path(directory).glob("*.py") if p.name != Path(__file__).name)


def notebook(source: Path):
    """The notebook of one py:percent source, without outputs, with Colab metadata."""
    import jupytext
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = dict(METADATA)
    for i, cell in enumerate(nb.cells):
        cell.metadata = {}
        # stable cell ids (name and position), so regenerating changes only edited cells
        cell.id = hashlib.sha1(f"{Path(source).stem}:{i}".encode()).hexdigest()[:8]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def main(out: Path | None = None, names: list[str] | None = None) -> list[Path]:
    """Writes ``<out>/<name>.ipynb`` (default: next to the sources); returns the paths."""
    import nbformat
    out = Path(out) if out is not None else HERE
    written = []
    for src in sources():
        if names and src.stem not in names:
            continue
        path = out / f"{src.stem}.ipynb"
        nbformat.write(notebook(src), path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main(names=sys.argv[1:] or None):
        print("wrote", p)
