"""Semantic RSMs vs the official code's outputs, invariants, sharding, layers and errors."""
import importlib

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from repsim_jax._checks import InputError
from repsim_jax.semantic import matching, rsm

KERNELS = ("inner", "cosine", "rbf")


@pytest.fixture(scope="module")
def ref(shared_dir):
    return dict(np.load(shared_dir / "reference" / "srsm_public.npz"))


def _max_rel(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))


@pytest.mark.parametrize("case,name,matcher,opts", [
    ("a", "exact", "exact", {}), ("a", "identity", "identity", {}),
    ("b", "exact", "exact", {}), ("b", "identity", "identity", {}),
    ("c", "exact", "exact", {}), ("c", "identity", "identity", {}),
    ("c", "window128", "window", {"size": 128})])
def test_matches_official_reference(ref, case, name, matcher, opts):
    out = rsm(ref[f"reps_{case}"], kernel=KERNELS, matcher=matcher, **opts)
    for k in KERNELS:
        expected = ref[f"{case}_{name}_{k}"]
        assert out[k].shape == expected.shape
        assert _max_rel(out[k], expected) <= 1e-5, (case, name, k)   # measured <= 2.6e-7


def test_reference_with_ingraph_solver(ref):
    out = rsm(ref["reps_a"][:10], kernel=("inner", "rbf"), matcher="exact", solver="hungarian")
    host = rsm(ref["reps_a"][:10], kernel=("inner", "rbf"), matcher="exact", solver="host")
    for k in ("inner", "rbf"):
        np.testing.assert_allclose(out[k], host[k], rtol=1e-6)
    assert _max_rel(out["inner"], ref["a_exact_inner"][:10, :10]) <= 1e-5


def test_shifted_copies_have_cosine_one_under_exact(ref):
    k_exact = rsm(ref["reps_b"], matcher="exact")
    k_id = rsm(ref["reps_b"], matcher="identity")
    blocks = np.kron(np.eye(8), np.ones((4, 4))).astype(bool)
    np.testing.assert_allclose(k_exact[blocks], 1.0, atol=1e-6)
    assert k_id[blocks & ~np.eye(32, dtype=bool)].max() < 0.9


def test_inner_equals_brute_force_optimum_and_symmetry():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(6, 3, 3, 5)), 0).astype(np.float32)
    k = rsm(x, kernel="inner", matcher="exact")
    flat = x.reshape(6, 9, 5).astype(np.float64)
    for i in range(6):
        for j in range(6):
            c = flat[i] @ flat[j].T
            r, cc = linear_sum_assignment(c, maximize=True)
            np.testing.assert_allclose(k[i, j], c[r, cc].sum(), rtol=1e-5)
    np.testing.assert_array_equal(k, k.T)


def test_rbf_sigma_rules_and_explicit_sigma():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 4, 3)).astype(np.float32)
    inner = rsm(x, kernel="inner", matcher="exact").astype(np.float64)
    sq = np.diag(inner)
    d = sq[:, None] + sq[None, :] - 2 * inner
    off = d[np.tril_indices(7, -1)]
    for rule, med in [("lower_median", np.sort(off)[(off.size - 1) // 2]),
                      ("median", np.median(off)), ("mean", off.mean())]:
        sig = np.sqrt(med) + 1e-3
        np.testing.assert_allclose(rsm(x, kernel="rbf", sigma=rule),
                                   np.exp(-np.maximum(d, 0) / (2 * sig ** 2)), rtol=2e-4,
                                   atol=1e-6)
    np.testing.assert_allclose(rsm(x, kernel="rbf", sigma=2.0),
                               np.exp(-np.maximum(d, 0) / 8.0), rtol=2e-4, atol=1e-6)


def test_sharded_over_8_devices_equals_single_device(monkeypatch):
    assert len(jax.devices()) == 8
    rsm_mod = importlib.import_module("repsim_jax.semantic.schedule")
    seen = []
    for name in ("_plan_block", "_ingraph_block"):
        def spy(*a, _f=getattr(rsm_mod, name), **k):
            seen.append(len(a[1].sharding.device_set))      # tile-row offsets, (G,)
            return _f(*a, **k)
        monkeypatch.setattr(rsm_mod, name, spy)
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=(13, 16, 8)), 0).astype(np.float32)
    for matcher, opts in [("exact", {}), ("greedy", {}), ("auction", {"k": 4})]:
        single = rsm(x, kernel=KERNELS, matcher=matcher, devices=[jax.devices()[0]],
                     block_pairs=16, return_info=True, quality=True, **opts)   # the same
        # tiles: the same cost matrices bit for bit (the auction's argmax sees near-ties)
        sharded = rsm(x, kernel=KERNELS, matcher=matcher, devices="all", block_pairs=16,
                      return_info=True, quality=True, **opts)
        if matcher == "auction":   # certified (tol 1e-3) on two paths: host bidding with
            # candidate refresh vs in-graph lanes + exact fallback; both within tol of exact
            ex = rsm(x, kernel=KERNELS, matcher="exact", devices=None)
            for res in (single, sharded):
                assert np.abs(res.rsm["cosine"] - ex["cosine"]).max() <= 1e-3
                assert np.abs(res.rsm["rbf"] - ex["rbf"]).max() <= 1e-3
            continue
        for k in KERNELS:
            np.testing.assert_allclose(sharded.rsm[k], single.rsm[k], rtol=1e-6)
        np.testing.assert_allclose(sharded.quality, single.quality, rtol=1e-6)
    assert 8 in seen and 1 in seen          # both the sharded and the single-device path ran


def test_auction_lanes_path_equals_per_pair_auction(monkeypatch):
    """Without return_quality the auction runs on flat work items (layer, i, j) in blocks on
    host threads, lane-scheduled; its RSMs equal the per-pair auction's on every pair
    (matched scores from the inputs instead of the cost matrix: float32 rounding only), for
    two stacked layers, several blocks and chunks, and on 8 devices (shard_map)."""
    rsm_mod = importlib.import_module("repsim_jax.semantic.schedule")
    calls = []

    def spy(*a, _f=rsm_mod._auction_block, **k):
        calls.append((k["mesh"] is not None, a[2].shape[0]))
        return _f(*a, **k)
    monkeypatch.setattr(rsm_mod, "_auction_block", spy)
    rng = np.random.default_rng(12)
    x = np.maximum(rng.normal(size=(2, 11, 20, 8)), 0).astype(np.float32)
    ii, jj = np.tril_indices(11, -1)
    opts = dict(k=6, eps=1e-3, cost_dtype="float32", tol=None)      # uncertified bidding
    for devices, extra in [(None, dict(block_pairs=40, max_block_bytes=3 * 4 * 400,
                                       solver="hungarian")),       # in-graph: the lanes
                           ("all", dict(block_pairs=64))]:
        calls.clear()
        got = rsm(x, kernel=KERNELS, matcher="auction", stacked=True, devices=devices,
                  **opts, **extra)
        assert calls and all(mesh == (devices == "all") for mesh, _ in calls)
        assert len(calls) == (3 if devices is None else 2)          # 110 items per block
        for layer in range(2):
            xa, xb = x[layer][ii], x[layer][jj]
            cost = np.einsum("psc,ptc->pst", xa, xb)
            perm = np.asarray(jax.vmap(lambda c: matching.auction_matching(
                c, k=6, eps=1e-3))(cost))
            sim = np.take_along_axis(cost, perm[..., None], -1)[..., 0].sum(-1)
            np.testing.assert_allclose(got["inner"][layer][ii, jj], sim, rtol=1e-5)
            np.testing.assert_allclose(got["inner"][layer][jj, ii], sim, rtol=1e-5)
        tile = rsm(x, kernel=KERNELS, matcher="auction", stacked=True, return_info=True,
                   quality=True, devices=None, **opts).rsm   # the per-tile path (quality)
        for k in KERNELS:
            np.testing.assert_allclose(got[k], tile[k], rtol=1e-5, atol=1e-7)
    if matching.host_auction_available():     # bidding on the host (numba): same RSMs
        calls.clear()
        host = rsm(x, kernel=KERNELS, matcher="auction", stacked=True, devices=None,
                   block_pairs=40, **opts)
        assert not calls                       # the in-graph lanes did not run
        for k in KERNELS:
            np.testing.assert_allclose(host[k], got[k], rtol=1e-6, atol=1e-7)


def test_auction_bfloat16_costs_keep_quality_also_with_offsets():
    """cost_dtype="bfloat16": candidate costs from centred bfloat16 inputs (scores stay
    float32). Centring makes the rounding relative to what varies between positions: on
    features 50 + noise (bfloat16 step 0.25 at 50, noise 1) the gain over the identity is
    still captured; on ReLU features the scores stay within 1% of exact."""
    rng = np.random.default_rng(14)
    for x in (np.maximum(rng.normal(size=(8, 30, 64)), 0).astype(np.float32),
              (50 + rng.normal(size=(8, 30, 64))).astype(np.float32)):
        ex = rsm(x, kernel="inner", matcher="exact")
        ident = rsm(x, kernel="inner", matcher="identity")
        got = rsm(x, kernel="inner", matcher="auction", cost_dtype="bfloat16", tol=None)
        off = ~np.eye(8, dtype=bool)
        assert (got[off] <= ex[off] * (1 + 1e-6)).all()
        assert (got[off] >= 0.99 * ex[off]).all()
        gain = (got[off] - ident[off]) / (ex[off] - ident[off])
        assert gain.min() > 0.95
    with pytest.raises(InputError, match="cost_dtype"):
        rsm(x, matcher="auction", cost_dtype="int8")
    with pytest.raises(InputError, match="float32"):       # the certificate needs float32
        rsm(x, matcher="auction", cost_dtype="bfloat16")


def test_blocks_do_not_change_the_result():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(9, 10, 4)), 0).astype(np.float32)
    a = rsm(x, kernel="cosine", block_pairs=5, devices=None)
    b = rsm(x, kernel="cosine", max_block_bytes=1, devices=None)     # one pair per block
    c = rsm(x, kernel="cosine", devices=None)
    np.testing.assert_allclose(a, c, rtol=1e-6)
    np.testing.assert_allclose(b, c, rtol=1e-6)


def test_dict_and_stacked_layers_equal_per_layer_calls():
    rng = np.random.default_rng(4)
    la = np.maximum(rng.normal(size=(8, 3, 3, 6)), 0).astype(np.float32)
    lb = np.maximum(rng.normal(size=(8, 3, 3, 6)), 0).astype(np.float32)
    lc = np.maximum(rng.normal(size=(8, 5, 4)), 0).astype(np.float32)
    out = rsm({"a": la, "b": lb, "c": lc}, kernel="rbf", matcher="exact")
    assert list(out) == ["a", "b", "c"]
    for name, x in [("a", la), ("b", lb), ("c", lc)]:
        np.testing.assert_allclose(out[name], rsm(x, kernel="rbf"), rtol=1e-6)
    stacked = rsm(np.stack([la, lb]), kernel="rbf", stacked=True)
    np.testing.assert_allclose(stacked[0], out["a"], rtol=1e-6)
    np.testing.assert_allclose(stacked[1], out["b"], rtol=1e-6)


def test_return_quality_ratios():
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=(6, 25, 16)), 0).astype(np.float32)
    exact = rsm(x, kernel="inner", matcher="exact")
    off = ~np.eye(6, dtype=bool)
    for matcher, opts in [("greedy", {}), ("window", {"size": 16}), ("topk_greedy", {"k": 8}),
                          ("sinkhorn", {}), ("identity", {}), ("exact", {}),
                          ("auction", {})]:
        info = rsm(x, kernel="inner", matcher=matcher, return_info=True, quality=True, **opts)
        k, q = info.rsm, info.quality
        if matcher == "auction":      # certified: a lower bound on the ratio, no exact solve
            assert (q[off] <= k[off] / exact[off] + 1e-6).all()
        else:
            np.testing.assert_allclose(q[off], k[off] / exact[off], rtol=1e-5)
        assert (q <= 1 + 1e-6).all() and (np.diag(q) == 1).all()
        if matcher == "exact":
            np.testing.assert_allclose(q, 1.0, rtol=1e-6)
        if matcher in ("greedy", "sinkhorn"):
            assert q[off].min() > 0.93
        if matcher == "auction":
            assert q[off].min() > 0.99


def test_result_mirrors_input_and_extras_come_only_with_return_info(tmp_path):
    """The contract: array in -> (N, N) array; dict in -> dict with the same names in the
    same order (also when layers of different shapes are grouped); kernel sequence -> dict
    per kernel; everything else only via return_info=True -> SemanticRSM."""
    from repsim_jax._results import load_result
    from repsim_jax.semantic import SemanticRSM
    rng = np.random.default_rng(21)
    x = np.maximum(rng.normal(size=(6, 12, 5)), 0).astype(np.float32)
    big = np.maximum(rng.normal(size=(6, 3, 3, 4)), 0).astype(np.float32)
    layers = {"z": big, "a": x, "m": x[:, ::-1]}     # "a" and "m" share a shape group
    plain = rsm(x, matcher="greedy")
    assert isinstance(plain, np.ndarray) and plain.shape == (6, 6)
    multi = rsm(x, kernel=("inner", "rbf"), matcher="greedy")
    assert list(multi) == ["inner", "rbf"]
    per_layer = rsm(layers, kernel=("inner", "rbf"), matcher="greedy")
    assert list(per_layer) == ["z", "a", "m"] and list(per_layer["m"]) == ["inner", "rbf"]
    np.testing.assert_allclose(per_layer["a"]["inner"], multi["inner"], rtol=1e-6)
    info = rsm(layers, kernel="inner", matcher="greedy", return_info=True, quality=True)
    assert isinstance(info, SemanticRSM) and info.layers == ("z", "a", "m")
    assert info.kernels == ("inner",) and info.bound is None      # greedy: no certificate
    assert list(info.rsm) == list(info.quality) == ["z", "a", "m"]
    np.testing.assert_allclose(info.rsm["a"], multi["inner"], rtol=1e-6)
    # quality = matched / exact, from the exact matcher run separately
    ex = rsm(layers, kernel="inner", matcher="exact")
    off = ~np.eye(6, dtype=bool)
    for nm in layers:
        np.testing.assert_allclose(info.quality[nm][off], info.rsm[nm][off] / ex[nm][off],
                                   rtol=1e-5)
    # the deprecated return_quality: a warning naming the replacement, the same numbers
    with pytest.warns(DeprecationWarning, match="return_info=True, quality=True"):
        old_k, old_q = rsm(layers, kernel="inner", matcher="greedy", return_quality=True)
    assert list(old_q) == ["z", "a", "m"]
    for nm in layers:
        np.testing.assert_array_equal(old_q[nm], info.quality[nm])
        np.testing.assert_array_equal(old_k[nm], info.rsm[nm])
    with pytest.warns(DeprecationWarning, match="return_quality"):
        _, q1 = rsm(x, kernel="inner", matcher="greedy", return_quality=True)
    np.testing.assert_array_equal(q1, info.quality["a"])
    # certified matcher, array input: bound and quality of the same (N, N) structure
    cert = rsm(x, kernel="cosine", matcher="auction", return_info=True, quality=True,
               mesh=None)
    assert cert.layers is None and cert.bound.shape == cert.quality.shape == (6, 6)
    assert rsm(x, matcher="greedy", return_info=True).quality is None     # only when asked
    with pytest.raises(InputError, match="return_info=True"):
        rsm(x, matcher="greedy", quality=True)
    name, d = load_result(info.save(tmp_path / "srsm"))
    assert name == "SemanticRSM" and d["layers"] == ["z", "a", "m"]
    assert list(d["rsm"]) == ["z", "a", "m"]
    np.testing.assert_array_equal(d["quality"]["m"], info.quality["m"])


def test_drop_first_token():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(rsm(x, drop_first_token=True), rsm(x[:, 1:]), rtol=1e-6)


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((1, 4, 3), np.float32), "at least 2 inputs"),
    (np.zeros((5, 4), np.float32), "dimensions"),
    (np.zeros((5, 0, 3), np.float32), "empty"),
    (np.full((3, 4, 2), np.nan, np.float32), "NaN"),
    (np.array([[[np.inf, 1.0]]] * 3, np.float32), "NaN/Inf"),
    (np.zeros((3, 4, 2), bool), "numeric"),
])
def test_bad_input_errors(bad, msg):
    with pytest.raises(InputError, match=msg):
        rsm(bad)


def test_bad_names_and_layer_mismatch():
    x = np.ones((3, 4, 2), np.float32)
    with pytest.raises(KeyError, match="unknown kernel 'cosin'.*'cosine'"):
        rsm(x, kernel="cosin")
    with pytest.raises(KeyError, match="unknown matcher"):
        rsm(x, matcher="hungarian")
    with pytest.raises(InputError, match="number of inputs"):
        rsm({"a": x, "b": np.ones((4, 4, 2), np.float32)})
    with pytest.raises(InputError, match="empty"):
        rsm({})
    with pytest.raises(InputError, match="sigma"):
        rsm(x, kernel="rbf", sigma=-1.0)
    with pytest.raises(KeyError, match="solver"):
        rsm(x, solver="gpu")


def test_auction_takes_inputs_committed_to_one_device():
    """Regression: an array committed to one device (e.g. models.activations output) fed
    the auction's sharded path on a multi-device machine ('incompatible devices')."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(12, 4, 4, 8)), 0).astype(np.float32)
    assert len(jax.devices()) > 1
    committed = rsm(jax.device_put(x, jax.devices()[0]), matcher="auction")
    np.testing.assert_array_equal(np.asarray(committed),
                                  np.asarray(rsm(x, matcher="auction")))
    np.testing.assert_allclose(np.asarray(committed),
                               np.asarray(rsm(x, matcher="exact")), atol=1e-3)
