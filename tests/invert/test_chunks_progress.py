"""The neuron axis in host-level chunks: same results, one compilation, progress per chunk."""
import numpy as np
import pytest

from repsim_jax import _progress
from repsim_jax._checks import InputError
from repsim_jax.invert import explain
from repsim_jax.invert import search as search_mod

ARRAYS = ("literals", "ops", "valid", "auc", "count", "p_value", "q_value", "constant")


@pytest.fixture(scope="module")
def many(world):
    """40 neurons: the 7 planted ones, noisy copies of them and a constant one."""
    acts, lab, names = world
    rng = np.random.default_rng(5)
    reps = np.concatenate([acts] * 6, 1)[:, :39]
    reps = reps + 0.5 * rng.normal(size=reps.shape).astype(np.float32)
    return np.concatenate([reps, np.ones((acts.shape[0], 1), np.float32)], 1), lab, names


class Recorder:
    """Stands in for _progress.bar; keeps what the search reports."""
    made = []

    def __init__(self, total=None, *, progress=None, desc="", **kw):
        self.total, self.progress, self.desc, self.steps = total, progress, desc, []
        Recorder.made.append(self)

    def update(self, n=1):
        self.steps.append(n)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("mesh,block,chunk,n_chunks", [(None, 4, 8, 5), ("all", 2, 16, 3)])
def test_chunked_search_equals_one_chunk_and_reports_each_chunk(many, monkeypatch, mesh, block,
                                                                chunk, n_chunks):
    acts, lab, names = many
    kw = dict(L=3, B=3, mesh=mesh, block=block)
    with pytest.warns(UserWarning, match="constant"):
        whole = explain(acts, lab, names, chunk=10_000, progress=False, **kw)
    Recorder.made = []
    monkeypatch.setattr(search_mod._progress, "bar", Recorder)
    with pytest.warns(UserWarning, match="constant"):
        parts = explain({"fc": acts}, lab, names, chunk=chunk, progress=False, **kw)["fc"]
    for k in ARRAYS:
        np.testing.assert_array_equal(getattr(whole, k), getattr(parts, k), err_msg=k)
    assert whole.valid[:39].all() and not whole.valid[39].any()
    (rec,) = Recorder.made
    assert rec.total == 40 and rec.progress is False and rec.desc == "invert fc"
    assert len(rec.steps) == n_chunks and sum(rec.steps) == 40      # one step per chunk
    assert rec.steps[:-1] == [rec.steps[0]] * (n_chunks - 1) and rec.steps[0] % block == 0


def test_chunks_compile_once(many):
    acts, lab, names = many
    kw = dict(L=2, B=7, mesh=None, block=4, progress=False)   # a configuration of its own
    before = search_mod._search_jit._cache_size()
    with pytest.warns(UserWarning, match="constant"):
        explain(acts, lab, names, chunk=8, **kw)            # 5 chunks
    assert search_mod._search_jit._cache_size() == before + 1
    with pytest.raises(InputError, match="chunk"):
        explain(acts, lab, names, chunk=0, **kw)


def test_null_reports_permutation_chunks(world, monkeypatch):
    acts, lab, names = world
    Recorder.made = []
    monkeypatch.setattr(search_mod._progress, "bar", Recorder)
    explain(acts[:, :2], lab, names, L=2, B=2, permutations=5, permutation_chunk=2,
            progress=True)
    search_bar, null_bar = Recorder.made
    assert search_bar.total == 2 and search_bar.progress is True
    assert null_bar.total == 5 and null_bar.steps == [2, 2, 1] and null_bar.desc == "invert null"


def test_progress_lines_in_a_log_and_silence(world, monkeypatch, capsys):
    acts, lab, names = world
    clock = iter(range(0, 10_000, 40))           # every update looks 40 s later
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setenv("REPSIM_PROGRESS", "lines")
    explain(acts, lab, names, L=2, B=2, mesh=None, block=1, chunk=2)   # 4 chunks
    err = capsys.readouterr().err
    assert "invert: 2/7 neuron" in err and "invert: 7/7 neuron" in err
    explain(acts, lab, names, L=2, B=2, mesh=None, block=1, chunk=2, progress=False)
    with _progress.disabled():                    # repsim --no-progress
        explain(acts, lab, names, L=2, B=2, mesh=None, block=1, chunk=2)
    assert capsys.readouterr().err == ""
