"""Evaluation functions: reconstruction error, retraining, saliency and the deletion test."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.cladec import (deletion_curve, difference_map, gradient_saliency,
                               plot_deletion_curves, plot_rows, reconstruction_error,
                               saliency_comparison)
from repsim_jax.cladec.evaluate import _deletion_masks
from repsim_jax.models.capture import tap


class Linear(nnx.Module):
    """logits = flatten(x) @ W: gradient saliency is exactly sum_c |W[:, y]|."""

    def __init__(self, w):
        self.input_shape = (8, 8, 1)
        self.w = nnx.Param(jnp.asarray(w, jnp.float32))

    def __call__(self, x, taps=None):
        return tap(taps, "fc", x.reshape(x.shape[0], -1) @ self.w[...])


def test_reconstruction_error_units():
    rng = np.random.default_rng(0)
    a = rng.random((5, 4, 4, 3), dtype=np.float32)
    b = rng.random((5, 4, 4, 3), dtype=np.float32)
    assert np.isclose(reconstruction_error(a, b), ((a - b) ** 2).sum((1, 2, 3)).mean(), rtol=1e-5)
    assert np.isclose(reconstruction_error(a, b, reduction="mean"), ((a - b) ** 2).mean(),
                      rtol=1e-5)
    with pytest.raises(InputError, match="differs"):
        reconstruction_error(a, b[:, :3])
    with pytest.raises(InputError, match="reduction"):
        reconstruction_error(a, b, reduction="max")


def test_difference_map_and_deletion_masks():
    a = np.zeros((2, 3, 3, 2), np.float32)
    b = a.copy()
    b[0, 1, 2] = [0.25, 0.5]
    d = difference_map(a, b)
    assert d.shape == (2, 3, 3) and d[0, 1, 2] == 0.75 and d.sum() == 0.75
    rel = jnp.asarray(np.random.default_rng(0).random((4, 5, 5)), jnp.float32)
    m = np.asarray(_deletion_masks(rel, jnp.asarray([0.0, 0.2, 1.0])))
    np.testing.assert_array_equal(m.sum((2, 3)), [[0] * 4, [5] * 4, [25] * 4])
    # the deleted pixels are the most relevant ones
    r = np.asarray(rel)
    for n in range(4):
        assert r[n][m[1, n]].min() >= r[n][~m[1, n]].max()


def test_gradient_saliency_and_planted_deletion(digits):
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    clf = LogisticRegression(max_iter=300, C=0.1).fit(x.reshape(len(x), -1), y)
    w = clf.coef_.T                                      # (64, 10)
    model = Linear(w)
    xs, ys = x[:300], y[:300]
    sal = gradient_saliency(model, xs, ys)
    np.testing.assert_allclose(sal, np.abs(w[:, ys].T).reshape(-1, 8, 8), rtol=1e-5, atol=1e-6)
    # planted relevance: the pixels that carry the true class's evidence w_y * (x - mean)
    evidence = ((xs - xs.mean(0)).reshape(len(xs), -1) * w[:, ys].T).reshape(-1, 8, 8)
    fr = (0.0, 0.1, 0.2, 0.4)
    planted = deletion_curve(model, xs, ys, evidence, fr)
    rand = deletion_curve(model, xs, ys, np.random.default_rng(0).random((300, 8, 8)), fr)
    p = jax.nn.softmax(model(jnp.asarray(xs)), -1)[jnp.arange(300), ys].mean()
    assert np.isclose(planted[0], p, rtol=1e-5) and np.isclose(rand[0], p, rtol=1e-5)
    assert np.all(np.diff(planted) < 0)                  # deleting evidence hurts, steadily
    assert planted.mean() < rand.mean() - 0.1
    # comparison: the three maps, evaluated on the same footing
    comp = saliency_comparison(model, xs, ys, xs, np.clip(xs + 0.0, 0, 1), fractions=fr)
    assert set(comp["area"]) == {"gradient", "cladec_minus_ae", "random"}
    np.testing.assert_allclose(comp["curves"]["gradient"],
                               deletion_curve(model, xs, ys, sal, fr), rtol=1e-6)
    with pytest.raises(InputError, match="relevance"):
        deletion_curve(model, xs, ys, evidence[:, :4], fr)
    with pytest.raises(InputError, match="fractions"):
        deletion_curve(model, xs, ys, evidence, (0.1, 1.5))


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg
    imgs = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
    path = plot_rows({"input": imgs, "ClaDec": imgs[::-1], "AE": imgs * 0.5}, tmp_path / "g.png",
                     n=4)
    a = mpimg.imread(path)
    assert a.ndim == 3 and a.shape[0] > 100 and a.shape[1] > a.shape[0]  # 3 rows x 4 columns
    comp = {"fractions": np.array([0.1, 0.2]), "curves": {"gradient": np.array([0.5, 0.3])},
            "area": {"gradient": 0.4}}
    assert mpimg.imread(plot_deletion_curves(comp, tmp_path / "d.png")).shape[0] > 100
    with pytest.raises(InputError, match="rows"):
        plot_rows({}, tmp_path / "x.png")


def test_retrain_accuracy_result_on_planted_sets(tmp_path):
    """A set whose class is written in one pixel is learnt (accuracy 1); a set of pure noise
    images stays at chance. The result keeps the set names in order and says its sizes."""
    from repsim_jax._results import load_result
    from repsim_jax.cladec import RetrainAccuracy, retrain_accuracy
    rng = np.random.default_rng(0)
    n_tr, n_te, c = 200, 100, 4

    def planted(n, y):
        x = 0.1 * rng.random((n, 8, 8, 1), dtype=np.float32)
        x[np.arange(n), 0, y, 0] = 1.0
        return x

    ytr, yte = rng.integers(0, c, n_tr), rng.integers(0, c, n_te)
    train = {"planted": planted(n_tr, ytr), "noise": rng.random((n_tr, 8, 8, 1), np.float32)}
    test = {"planted": planted(n_te, yte), "noise": rng.random((n_te, 8, 8, 1), np.float32)}
    model = Linear(np.zeros((64, c), np.float32))
    acc = retrain_accuracy(model, train, ytr, test, yte, steps=150, batch_size=32, lr=0.05,
                           progress=False)
    assert isinstance(acc, RetrainAccuracy)
    assert list(acc.accuracy) == ["planted", "noise"]
    assert (acc.steps, acc.n_train, acc.n_test) == (150, n_tr, n_te)
    assert acc["planted"] == 1.0
    assert list(acc) == list(acc.keys()) == ["planted", "noise"] and len(acc) == 2
    assert "noise" in acc and "ae" not in acc and dict(acc.items()) == acc.accuracy
    assert list(acc.values()) == [acc["planted"], acc["noise"]]
    assert abs(acc["noise"] - 1 / c) < 0.15           # chance, 100 test images
    with pytest.raises(KeyError, match="image set"):
        acc["ae"]
    kind, d = load_result(acc.save(tmp_path / "acc"))
    assert kind == "RetrainAccuracy" and d["accuracy"] == acc.accuracy and d["n_test"] == n_te
