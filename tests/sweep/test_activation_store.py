"""The on-disk activation store: chunked reads equal in-memory ones, memory bounded by the
chunk size (measured), interrupted writes never trusted."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from repsim_jax.sweep.store import ActivationStore


def _batches(x, bs):
    for s in range(0, len(x), bs):
        yield s, {"conv": x[s:s + bs], "fc": x[s:s + bs].mean((1, 2))}


@pytest.mark.parametrize("backend", ["zarr", "memmap"])
def test_chunked_reads_equal_the_in_memory_arrays(tmp_path, monkeypatch, backend):
    if backend == "memmap":        # the Python 3.10 fallback (zarr 3 needs 3.11)
        monkeypatch.setitem(__import__("sys").modules, "zarr", None)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((203, 5, 4, 16)).astype(np.float32)   # 203: a ragged last chunk
    st = ActivationStore(tmp_path, chunk_images=32, process=0)
    assert not st.is_done("m", ["conv", "fc"])
    got = st.write("m", ["conv", "fc"], {"conv": (5, 4, 16), "fc": (16,)}, len(x),
                   _batches(x, 24))                 # batches not aligned with the chunks
    assert st.is_done("m", ["conv", "fc"])
    conv = got["conv"]
    assert conv.shape == x.shape
    assert backend == "memmap" or conv.array.chunks == (32, 5, 4, 16)
    np.testing.assert_array_equal(np.asarray(conv), x)
    # chunk-wise spatial reduction == INVERT's in-memory reduction (float64), bit for bit
    from repsim_jax.invert.explainer import reduce_activations
    np.testing.assert_array_equal(conv.reduce("mean"), reduce_activations(x, "mean"))
    np.testing.assert_array_equal(conv.reduce("max"), reduce_activations(x, "max"))
    idx = np.array([0, 5, 31, 32, 100, 202])
    np.testing.assert_array_equal(conv.take(idx), x[idx])
    np.testing.assert_array_equal(conv.take(np.arange(40, 90)), x[40:90])
    starts = [s for s, _ in conv.chunks()]
    assert starts == list(range(0, 203, 32))
    np.testing.assert_allclose(got["fc"].reduce(), x.mean((1, 2)).astype(np.float64),
                               rtol=1e-6)
    # an interrupted write (wrong count) is not marked done
    with pytest.raises(Exception, match="wrote 24 of 203"):
        st.write("m2", ["conv", "fc"], {"conv": (5, 4, 16), "fc": (16,)}, len(x),
                 _batches(x[:24], 24))
    assert not st.is_done("m2", ["conv", "fc"])


def test_chunked_reduction_memory_is_bounded_by_the_chunk_not_n(tmp_path):
    n, shape, chunk = 1500, (8, 8, 64), 50           # 4096 floats = 16 KiB per input
    st = ActivationStore(tmp_path, chunk_images=chunk, process=0)
    rng = np.random.default_rng(1)

    def batches():                                  # generated batch by batch, as a sweep
        for s in range(0, n, chunk):
            yield s, {"l": rng.standard_normal((min(chunk, n - s), *shape)).astype(np.float32)}
    tracemalloc.start()
    acts = st.write("m", ["l"], {"l": shape}, n, batches())["l"]
    _, peak_write = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    red = acts.reduce("mean")
    _, peak_reduce = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    full = np.asarray(acts)
    _, peak_full = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = n * int(np.prod(shape)) * 4               # 24.6 MB if held at once
    block = chunk * int(np.prod(shape)) * 4           # 0.8 MB per chunk
    assert peak_write < 6 * block < total / 4
    # the (N, C) float64 result + a few chunk buffers, far below the whole array
    assert peak_reduce < red.nbytes + 6 * block < total / 4
    assert peak_full >= total                         # the measure does see a full read
    np.testing.assert_allclose(red, full.astype(np.float64).mean((1, 2)), rtol=1e-12)
