"""Planted formulas are recovered; degenerate inputs give errors or documented results."""
import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax.invert import explain, parse


def test_planted_formulas_recovered_at_strong_signal(world):
    _, lab, names = world
    formulas = ["leaf03", "leaf05 | leaf20", "mid0 & ~leaf00", "leaf07 | leaf08 | leaf30",
                "mid4 | leaf02", "top1 & ~mid4"]
    rng = np.random.default_rng(7)
    truth = [parse(f, lab, names) for f in formulas]
    acts = np.stack([6.0 * t + rng.normal(size=lab.shape[0]) for t in truth], 1)
    res = explain(acts, lab, names, L=3, B=4)
    for u, (f, t) in enumerate(zip(formulas, truth)):
        best = res[u].best
        assert np.array_equal(best.structure.evaluate(lab), t), (f, best.formula)
        assert best.auc > 0.99 and res[u].q_value < 1e-15


def test_constant_neuron_documented_result(world):
    acts, lab, names = world
    a = np.concatenate([acts[:, :3], np.full((acts.shape[0], 1), 0.7)], axis=1)
    with pytest.warns(UserWarning, match="constant neuron"):
        res = explain(a, lab, names, L=2, B=3)
    assert res.constant.tolist() == [False, False, False, True]
    assert len(res[3]) == 0 and res[3].best is None and res[3].p_value == 1.0
    ref = explain(acts[:, :3], lab, names, L=2, B=3)
    np.testing.assert_array_equal(res.literals[:3], ref.literals)


def test_empty_and_all_true_concepts(world):
    acts, lab, names = world
    lab2 = np.concatenate([np.zeros((lab.shape[0], 1), bool), lab,
                           np.ones((lab.shape[0], 1), bool)], axis=1)
    names2 = ["empty"] + names + ["everything"]
    res = explain(acts[:, :3], lab2, names2, L=2, B=3)
    ref = explain(acts[:, :3], lab, names, L=2, B=3)
    assert [b.best.formula for b in res] == [b.best.formula for b in ref]
    assert all("empty" not in e.formula and "everything" not in e.formula
               for b in res for e in b)
    comp = explain(acts[:, :3], lab2, names2, L=2, B=3, compat=True)  # official scoring
    assert np.isfinite(comp.auc[comp.valid]).all()


def test_bad_inputs_raise_clear_errors(world):
    acts, lab, names = world
    bad = acts[:, :2].copy()
    bad[5, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        explain(bad, lab, names)
    with pytest.raises(InputError, match="inputs"):
        explain(acts[:-1], lab, names)
    with pytest.raises(InputError, match="concept_names"):
        explain(acts, lab, names[:-1])
    with pytest.raises(InputError, match="duplicate"):
        explain(acts, lab, names[:-1] + [names[0]])
    with pytest.raises(InputError, match="boolean"):
        explain(acts, lab * 0.5, names)
    with pytest.raises(InputError, match="no concept"):
        explain(acts, np.ones_like(lab), names)
    with pytest.raises(InputError, match="mode"):
        explain(acts, lab, names, mode="up")
    with pytest.raises(InputError, match="reduction"):
        explain(acts, lab, names, reduction="median")
    with pytest.raises(InputError, match="min_fraction"):
        explain(acts, lab, names, min_fraction=0.6, max_fraction=0.5)
    with pytest.raises(InputError, match="inputs"):
        explain({"a": acts, "b": acts[:-2]}, lab, names)
