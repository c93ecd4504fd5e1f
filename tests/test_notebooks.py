"""Executes every Colab notebook of ``colab/`` headlessly at small size and checks its outputs.

The notebooks' sources are the jupytext ``py:percent`` files ``colab/<name>.py``; the
``.ipynb`` are generated from them (``python colab/make_notebooks.py``) and checked here to
be in sync.

Each notebook runs in a fresh ``python3`` kernel of the current interpreter with
``REPSIM_NOTEBOOK_SMALL=1`` (tiny sizes) and ``MPLBACKEND=Agg``; a failing cell fails the
test with that cell's source and traceback. Beyond "it runs", every notebook's printed
results are checked against what its method guarantees (RSM diagonal 1, permutation
invariance, INVERT labels of class logits naming concepts of the class rule, recomputed AUC
equal to the reported one, ...), and each must show at least one picture.

The built-in trained models come from ``repsim_jax.models.zoo`` (trained once, cached), so
after the first use the notebooks cost seconds each.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the [test] extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="needs the [test] extra (nbclient)")
jupytext = pytest.importorskip("jupytext", reason="needs the [test] extra (jupytext)")
pytest.importorskip("ipykernel", reason="needs the [test] extra (ipykernel)")

COLAB = Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ["quickstart", "semantic_rsm", "invert", "concept_similarity", "cladec",
             "visual_summaries", "own_model"]   # each has its own test below
# every plain notebook source of colab/ (jupytext py:percent), e.g. also own_model.py
SOURCES = sorted(p.stem for p in COLAB.glob("*.py") if p.name != "make_notebooks.py")
# generous: a cold model cache trains the built-in model inside the first notebook's cell
CELL_TIMEOUT = int(os.environ.get("REPSIM_NOTEBOOK_CELL_TIMEOUT", "900"))
CONCEPTS = {"circle", "square", "triangle", "red", "green", "blue", "yellow", "solid",
            "stripes", "dots", "small", "large", "dark", "light"}


def execute(name: str, workdir: Path, preamble: str | None = None):
    """Runs ``colab/<name>.ipynb`` in a fresh kernel; returns the executed notebook.

    ``preamble`` (code) runs first in the kernel (used only by development helpers).
    """
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    if preamble:
        nb.cells.insert(0, nbformat.v4.new_code_cell(preamble))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"notebook {name}.ipynb: a cell failed\n{err}", pytrace=False)
    return nb


def text_of(nb) -> str:
    """Everything the notebook printed (streams and text/plain results), in order."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"] + "\n")
    return "".join(parts)


def n_pictures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               for out in cell.get("outputs", []))


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"pattern {pattern!r} not found in the notebook's output:\n{text[-3000:]}"
    return float(m.group(1))


def formula_concepts(formula: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]+", formula)) & CONCEPTS


def logit_labels(text: str) -> list[tuple[str, str, float, float]]:
    """``(class, formula, auc, iou with the class rule)`` from the notebooks' lines
    ``logit[c] INVERT: f  AUC a ... IoU with the class rule x  (rule: r)``."""
    rows = re.findall(r"logit\[(\w+)\] INVERT: (.+?)  AUC ([0-9.]+).*?"
                      r"IoU with the class rule ([0-9.]+)", text)
    return [(c, f, float(a), float(iou)) for c, f, a, iou in rows]


@pytest.fixture
def notebook_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REPSIM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    # the kernel must be this interpreter (the repository's environment)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep
                       + os.environ.get("PATH", ""))
    return tmp_path


def test_notebooks_are_generated_from_their_plain_sources(tmp_path):
    """Every colab/<name>.py (jupytext py:percent) has its committed <name>.ipynb equal to
    what colab/make_notebooks.py writes from it, without stored outputs; every notebook
    opens as the brief asks (install cell guarded by ``import repsim_jax``, the SMALL
    switch, one DATA line) and takes its helpers, figures, data and model from the library
    (``repsim_jax.notebook.setup``)."""
    sys.path.insert(0, str(COLAB))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(COLAB))
    written = make_notebooks.main(tmp_path)
    assert sorted(p.stem for p in written) == SOURCES
    assert sorted(p.stem for p in COLAB.glob("*.ipynb")) == SOURCES   # no orphan notebook
    for name in SOURCES:
        committed = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
        fresh = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        assert [(c.cell_type, c.source) for c in committed.cells] == \
            [(c.cell_type, c.source) for c in fresh.cells], (
            f"{name}.ipynb differs from {name}.py: run python colab/make_notebooks.py")
        # cell ids are stable (name, position): regenerating does not rewrite every cell
        assert [c.get("id") for c in committed.cells] == [c.get("id") for c in fresh.cells]
        assert committed.metadata.get("kernelspec", {}).get("name") == "python3"
        sources = [c.source for c in committed.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
        install = sources[0]
        assert re.search(r"^REPO_URL = ", install, re.M)
        assert "try:\n    import repsim_jax" in install and "%pip install" in install
        assert 'git+{REPO_URL}' in install
        config = sources[1]
        assert 'SMALL = os.environ.get("REPSIM_NOTEBOOK_SMALL", "0") == "1"' in config
        assert len(re.findall(r"^DATA = ", config, re.M)) == 1
        for src in sources:   # every code cell is valid Python once magics are set aside
            ast.parse("\n".join(l for l in src.splitlines() if not l.strip().startswith("%")))
        code = "\n".join(sources)
        # the helpers that used to be written into the notebooks come from the library
        for helper in ("show", "image_grid", "image_rows", "load_tfds", "imagenet_classifier",
                       "rule_iou"):
            assert not re.search(rf"^\s*def {helper}\(", code, re.M), (name, helper)
        # data and model come from one library call, not from a copy of its code
        assert "notebook.setup(DATA" in code, name
        for copied in ("zoo.load_trained(", "torchvision.models.get_model(", "rdata.load(",
                       "sources.load(", ".argmax(-1).astype"):
            assert copied not in code, (name, copied)
        if name in NOTEBOOKS:
            assert committed.cells[0].cell_type == "markdown"
            assert "arXiv" in committed.cells[0].source or name == "quickstart"
            # shows the report's own figures inline
            assert re.search(r"(figures\.\w+|image_rows)\(", code), name


def test_every_notebook_has_its_run_test():
    """Each colab source is executed by a dedicated ``test_<name>`` below that runs it
    (replaces a catch-all test parametrised over sources without one, which was always an
    empty parameter set and so silently skipped)."""
    import inspect
    assert sorted(NOTEBOOKS) == SOURCES
    module = sys.modules[__name__]
    for name in SOURCES:
        fn = getattr(module, f"test_{name}", None)
        assert fn is not None, f"colab/{name}.py has no test_{name} that executes it"
        assert f'execute("{name}"' in inspect.getsource(fn), name


@pytest.mark.slow
def test_quickstart(notebook_env):
    nb = execute("quickstart", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 3
    assert number(r"RSM diagonal: min ([0-9.]+)", text) == pytest.approx(1.0, abs=1e-4)
    assert number(r"RSM diagonal: min [0-9.]+ max ([0-9.]+)", text) == pytest.approx(1.0, abs=1e-4)
    rows = logit_labels(text)
    assert len(rows) == 7, text
    # the INVERT label of each class logit holds on much the same images as the class rule
    # (few images: formulas tied at AUC 1 may carry a superfluous third literal)
    ious = sorted(iou for *_, iou in rows)
    assert ious[3] > 0.4 and ious[1] > 0.2, rows
    assert sum(a > 0.9 for _, _, a, _ in rows) >= 6, rows
    diag = re.search(r"CKA diagonal: \[([^\]]+)\]", text).group(1).split()
    assert [float(x) for x in diag] == pytest.approx([1.0] * len(diag), abs=1e-3)
    assert "usage: repsim" in text


@pytest.mark.slow
def test_semantic_rsm(notebook_env):
    nb = execute("semantic_rsm", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 3
    assert number(r"diagonal of the semantic RSM: min ([0-9.]+)", text) == pytest.approx(1, abs=1e-4)
    assert number(r"max \|K - K.T\| = ([0-9.e+-]+)", text) < 1e-5
    assert "semantic >= spatio-semantic everywhere: True" in text
    # permutation invariance: shuffling positions leaves the semantic RSM unchanged only
    assert number(r"semantic RSM, max change after shuffling positions: ([0-9.e+-]+)", text) < 1e-4
    assert number(r"spatio-semantic RSM, max change: +([0-9.e+-]+)", text) > 1e-2
    # exact matching is optimal: quality 1; the identity matcher is never better
    assert number(r"exact: mean quality ([0-9.]+)", text) == pytest.approx(1.0, abs=1e-5)
    assert number(r"identity: mean quality ([0-9.]+)", text) <= 1.0 + 1e-6


@pytest.mark.slow
def test_invert(notebook_env):
    nb = execute("invert", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 2
    rows = logit_labels(text)
    assert len(rows) == 7, text
    ious = sorted(iou for *_, iou in rows)
    assert ious[3] > 0.6 and ious[1] > 0.3, rows
    # every label names concepts of the built-in data
    assert all(formula_concepts(f) for _, f, _, _ in rows)
    reported = number(r"reported AUC ([0-9.]+)", text)
    assert number(r"recomputed AUC ([0-9.]+)", text) == pytest.approx(reported, abs=1e-6)
    assert reported > 0.75


@pytest.mark.slow
def test_concept_similarity(notebook_env):
    nb = execute("concept_similarity", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 4
    diag = re.search(r"A vs A, diagonal: \[([^\]]+)\]", text).group(1).split()
    assert [float(x) for x in diag] == pytest.approx([1.0] * 3, abs=1e-4)
    best = {m[0]: float(m[1]) for m in re.findall(r"(\w+): best layer \S+ +IoU ([0-9.]+)", text)}
    assert set(best) == CONCEPTS
    # the background concepts cover most pixels and are trivially decodable
    assert best["dark"] > 0.5 and best["light"] > 0.5
    assert len(re.findall(r"-> most similar small_resnet layer", text)) == 3


@pytest.mark.slow
def test_cladec(notebook_env):
    nb = execute("cladec", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 2
    assert "reconstructions lie in [0, 1]: True" in text
    errs = [float(x) for x in re.findall(r"squared error per image +([0-9.]+)", text)]
    assert len(errs) == 3 and all(0 < e < 64 * 64 * 3 for e in errs)
    losses = re.findall(r"(ClaDec a=\S+|AE) +training loss ([0-9.]+) -> ([0-9.]+)", text)
    assert len(losses) == 3    # SMALL: 1 layer x 2 alphas ClaDec + 1 reference auto-encoder
    for who, start, end in losses:
        assert float(end) < float("inf")
        if who.startswith("ClaDec"):   # the decoders learn (measured: 0.10 -> 0.03)
            assert float(end) < 0.7 * float(start), losses


@pytest.mark.slow
def test_visual_summaries(notebook_env):
    nb = execute("visual_summaries", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 1
    clean = number(r"true-class probability: clean ([0-9.]+)", text)
    masked = number(r"sharp mask's pixels blurred ([0-9.]+)", text)
    assert masked < clean   # the masked pixels carry class evidence
    assert len(re.findall(r"^class \w+: status ", text, re.M)) == 2


@pytest.mark.slow
def test_own_model(notebook_env):
    nb = execute("own_model", notebook_env)
    text = text_of(nb)
    assert n_pictures(nb) >= 2
    assert "hf:Dinov2WithRegistersModel" in text
    assert number(r"prefix tokens \(CLS \+ registers\): (\d+)", text) == 3
    # every block: (N, 1 + 2 registers + 8 x 8 patches, D), 64 patch tokens kept
    rows = re.findall(r"^(\S+) +\((\d+), (\d+), (\d+)\) -> patch tokens (\d+)$", text, re.M)
    assert [r[0] for r in rows] == ["embeddings", "encoder.layer.0", "encoder.layer.1",
                                    "layernorm"], text
    assert all(int(r[2]) == 67 and int(r[4]) == 64 for r in rows), rows
    diag = re.findall(r"diagonal min ([0-9.]+)", text)
    assert len(diag) == 4 and all(float(d) == pytest.approx(1.0, abs=1e-4) for d in diag)
    assert text.count("semantic >= spatio-semantic: True") == 4
    cka = re.search(r"CKA diagonal: \[([^\]]+)\]", text).group(1).split()
    assert [float(v) for v in cka] == pytest.approx([1.0] * 4, abs=1e-3)
    report = re.search(r"report: (\S+)", text).group(1)
    assert Path(notebook_env, report).is_file() or Path(report).is_file()
