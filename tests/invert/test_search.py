"""The batched beam search against the official reference outputs and a numpy oracle."""
import json

import jax
import numpy as np
import pytest

from repsim_jax.invert import benjamini_hochberg, explain, parse
from repsim_jax.invert.reference import beam_chains as _chains, beam_search_loop


def test_compat_reproduces_official_reference(shared_dir):
    d = np.load(shared_dir / "reference" / "invert_public.npz", allow_pickle=True)
    ref = json.loads((shared_dir / "reference" / "invert_public.json").read_text())
    lab, acts = d["labels"], d["activations"]
    names = [str(x) for x in d["concept_names"]]
    prm = ref["params"]
    res = explain(acts, lab, names, L=prm["L"], B=prm["B"], min_fraction=prm["min_fraction"],
                  max_fraction=prm["max_fraction"], mode=prm["mode"], compat=True)
    n_entries = 0
    for nd in ref["neurons"]:
        u = nd["neuron"]
        for step, official in nd["beams"].items():
            ours = res.beam(u, int(step))
            assert len(ours) == len(official), (u, step)
            for o, r in zip(ours, official):
                assert np.array_equal(parse(o.formula, lab, names), parse(r["formula"], lab, names)), \
                    (u, step, o.formula, r["formula"])
                assert o.auc == pytest.approx(r["auc"], abs=1e-5)
                assert o.concept_fraction == pytest.approx(r["concept_fraction"], abs=1e-7)
                n_entries += 1
        p_ref = nd["best_p_value_two_sided"]
        if p_ref > 0:
            assert np.log(res[u].p_value) == pytest.approx(np.log(p_ref), rel=1e-5)
    assert n_entries == 24 * 3 * 5
    # duplicates are kept, as in the official code (neuron 0: 'leaf021' & its no-op forms)
    dup = [parse(e.formula, lab, names) for e in res.beam(0, 2)]
    assert all(np.array_equal(s, lab[:, names.index("leaf021")]) for s in dup)
    assert [e.formula for e in res.beam(0, 2)][:3] == ["leaf021", "leaf021 & leaf021",
                                                        "leaf021 | leaf021"]


@pytest.mark.parametrize("kw", [dict(), dict(mode="negative", limit_search=40, min_fraction=0.02)])
@pytest.mark.parametrize("compat", [True, False])
def test_equals_numpy_loop_oracle(world, kw, compat):
    acts, lab, names = world
    res = explain(acts, lab, names, L=3, B=4, compat=compat, **kw)
    for u in range(acts.shape[1]):
        ref = beam_search_loop(acts[:, u], lab, L=3, B=4, dedup=not compat, **kw)
        for step in (1, 2, 3):
            ours = _chains(res, u, step)
            theirs = [(lits, ops, float(a)) for lits, ops, a, _ in ref[step]]
            assert [o[:2] for o in ours] == [t[:2] for t in theirs], (u, step)
            np.testing.assert_array_equal([o[2] for o in ours], [t[2] for t in theirs])


def test_default_mode_beams_have_distinct_supports(world):
    acts, lab, names = world
    res = explain(acts, lab, names, L=3, B=4)
    for u in range(acts.shape[1]):
        beam = res[u]
        sup = [parse(e.formula, lab, names) for e in beam]
        assert len({s.tobytes() for s in sup}) == len(sup) == 4
        aucs = [e.auc for e in beam]
        assert aucs == sorted(aucs, reverse=True)
        for e, s in zip(beam, sup):
            assert np.array_equal(e.structure.evaluate(lab), s)
            assert e.concept_fraction == s.mean() and 0 < s.mean() <= 0.5
            y = s
            from sklearn.metrics import roc_auc_score
            assert e.auc == pytest.approx(roc_auc_score(y, acts[:, u]), abs=1e-12)


@pytest.mark.slow
def test_sharded_equals_single_device(world):
    acts, lab, names = world
    assert len(jax.devices()) == 8
    a = np.concatenate([acts, acts[:, :6] * 2 + 1], axis=1)  # 13 neurons: padding
    one = explain(a, lab, names, L=2, B=3, devices=jax.devices()[:1])
    eight = explain(a, lab, names, L=2, B=3, devices=jax.devices())
    for k in ("literals", "ops", "auc", "valid", "p_value"):
        np.testing.assert_array_equal(getattr(one, k), getattr(eight, k))
    # monotone transforms of a neuron give the same beam (scale invariance)
    np.testing.assert_array_equal(one.literals[:6], one.literals[7:])
    dev = explain(a, lab, names, L=2, B=3, devices=jax.devices()[:1], rank_on="device")
    np.testing.assert_array_equal(one.literals, dev.literals)
    np.testing.assert_array_equal(one.auc, dev.auc)


def test_layers_dict_conv_reduction_and_bh(world, tmp_path):
    acts, lab, names = world
    rng = np.random.default_rng(5)
    conv = acts[:, None, None, :4] + 0.3 * rng.normal(size=(acts.shape[0], 2, 3, 4))
    res = explain({"conv": conv, "fc": acts[:, 4:]}, lab, names, L=2, B=3, reduction="max")
    ref = explain(np.concatenate([conv.max(axis=(1, 2)), conv.mean(axis=(1, 2))], axis=1),
                  lab, names, L=2, B=3)
    np.testing.assert_array_equal(res["conv"].literals, ref.literals[:4])
    assert not np.array_equal(ref.literals[:4], ref.literals[4:])  # mean != max here
    best_p = np.concatenate([res["conv"].best_p_value, res["fc"].best_p_value])
    q, _ = benjamini_hochberg(best_p)
    np.testing.assert_allclose(np.concatenate([res["conv"].q_value, res["fc"].q_value]), q,
                               rtol=1e-10)
    # the plot shows the best AUC of each neuron, best first
    ax = res["fc"].plot(path=tmp_path / "invert.png")
    widths = [p.get_width() for p in ax.patches]
    assert widths == sorted(res["fc"].auc[:, -1, 0], reverse=True)
    assert (tmp_path / "invert.png").stat().st_size > 1000
    # a single neuron gives its beam directly; strings evaluate with Python's eval
    one = explain(acts[:, 1], lab, names, L=2, B=3)
    env = {n: lab[:, i] for i, n in enumerate(names)}
    for e in one:
        assert np.array_equal(eval(e.formula, {}, env), e.structure.evaluate(lab))  # noqa: S307
    assert one.p_value == one.best.p_value and one.log_p_value < -50
