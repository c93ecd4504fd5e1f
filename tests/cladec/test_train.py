"""ClaDec / reference-AE training: frozen classifier, parallel sweep, resume, bad input."""
import jax
import numpy as np
import pytest
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.cladec import fit_cladec, fit_reference_ae, reconstruct, reconstruct_ae

N, STEPS = 256, 20


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def small(digits, digits_classifier):
    xtr, ytr, _, _ = digits
    return digits_classifier, xtr[:N], ytr[:N]


def test_classifier_frozen_but_gradients_pass_through(small):
    model, x, y = small
    before = _leaves(nnx.state(model))
    fit = fit_cladec(model, x, y, "fc1", [0.0, 1.0], steps=STEPS, progress=False)
    # the classifier took no update (params and BN statistics alike)
    for a, b in zip(before, _leaves(nnx.state(model))):
        np.testing.assert_array_equal(a, b)
    kept = nnx.merge(fit.classifier[0], *fit.classifier[1])
    for a, b in zip(before, _leaves(nnx.state(kept))):
        np.testing.assert_array_equal(a, b)
    # both members start from the same decoder; alpha=1 is trained by the CE term alone, which
    # only reaches the decoder through the classifier: its parameters moved, differently
    (group,) = fit.groups
    p0, p1 = (jax.tree.map(lambda a, i=i: np.asarray(a[i]), group.decoder_params) for i in (0, 1))
    diffs = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1))]
    assert max(diffs) > 1e-3
    # and the CE-only decoder yields images the classifier labels better than its MSE twin
    acc = [np.mean(np.argmax(np.asarray(model(reconstruct(fit, x, "fc1", a))), 1) == y)
           for a in (0.0, 1.0)]
    assert acc[1] > acc[0]


def test_alpha_sweep_in_parallel_equals_separate_runs(small):
    model, x, y = small
    sweep = fit_cladec(model, x, y, "fc1", [0.0, 0.3, 0.9], steps=STEPS, progress=False)
    single = fit_cladec(model, x, y, "fc1", 0.3, steps=STEPS, progress=False)
    g, i = sweep.find("fc1", 0.3)
    for a, b in zip(jax.tree.leaves(g.decoder_params),
                    jax.tree.leaves(single.groups[0].decoder_params)):
        np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b[0]), rtol=1e-4, atol=1e-5)
    assert sweep.members == [("fc1", 0.0), ("fc1", 0.3), ("fc1", 0.9)]
    # a named result: pytree, to_dict / save of the decoder weights by member
    from repsim_jax._results import load_result
    import tempfile
    kind, back = load_result(sweep.save(tempfile.mkdtemp()))
    assert kind == "CladecFit" and back["members"] == [["fc1", 0.0], ["fc1", 0.3], ["fc1", 0.9]]
    saved = back["groups"][0]["decoder_params"]
    assert len(saved) == len(jax.tree.leaves(g.decoder_params))
    for a in jax.tree.leaves(g.decoder_params):
        assert any(np.array_equal(np.asarray(a), b) for b in saved.values())


def test_layers_with_equal_shapes_share_one_vmapped_group(small):
    model, x, y = small
    fit = fit_cladec(model, x, y, ["features.1", "fc1", "features.0"], [0.0, 0.5],
                     steps=2, log_every=1, progress=False)
    by_shape = {g.code_shape: g.layers for g in fit.groups}
    assert by_shape[(8, 8, 16)] == ("features.1", "features.1")
    assert by_shape[(16,)] == ("fc1", "fc1")
    assert by_shape[(16, 16, 8)] == ("features.0", "features.0")
    assert reconstruct(fit, x[:3], "features.0", 0.5).shape == (3, 16, 16, 1)


def test_interrupted_run_resumes_to_same_parameters(small, tmp_path):
    model, x, y = small
    kw = dict(steps=STEPS, log_every=5, checkpoint_every=5, progress=False)
    ref = fit_cladec(model, x, y, "fc1", [0.0, 0.5], **kw)

    class Stop(Exception):
        pass

    def interrupt(step, losses):
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        fit_cladec(model, x, y, "fc1", [0.0, 0.5], checkpoint_dir=str(tmp_path),
                   callback=interrupt, **kw)
    seen = []
    resumed = fit_cladec(model, x, y, "fc1", [0.0, 0.5], checkpoint_dir=str(tmp_path),
                         callback=lambda s, l: seen.append(s), **kw)
    assert seen == [15, 20]                      # restarted after step 10, not from scratch
    for a, b in zip(jax.tree.leaves(ref.groups[0].decoder_params),
                    jax.tree.leaves(resumed.groups[0].decoder_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ref.groups[0].history, resumed.groups[0].history, rtol=1e-6)
    # a different run in the same directory is refused rather than silently mixed
    with pytest.raises(InputError, match="different run"):
        from repsim_jax.cladec.train import train_members
        import os
        d = next(p for p in tmp_path.iterdir() if p.is_dir())
        train_members(lambda *a: None, ref.groups[0].decoder_params, {}, {}, {"x": x},
                      steps=3, batch_size=8, checkpoint_dir=str(d), progress=False)


def test_reference_ae_trains_fresh_encoder(small):
    model, x, y = small
    before = _leaves(nnx.state(model))
    ae = fit_reference_ae(model, x, ["fc1"], steps=STEPS, lr=3e-3, progress=False)
    for a, b in zip(before, _leaves(nnx.state(model))):
        np.testing.assert_array_equal(a, b)
    (g,) = ae.groups
    enc_params = g.encoder[1][0]
    # the encoder is not the classifier: fresh weights, then trained
    k_enc = np.asarray(jax.tree.map(lambda a: a[0], enc_params)["fc1"]["kernel"][...])
    assert not np.allclose(k_enc, np.asarray(model.fc1.kernel[...]), atol=1e-2)
    h = g.history[:, 0]
    assert h[-1] < 0.8 * h[0]                    # MSE decreased
    r = reconstruct_ae(ae, x[:4], "fc1")
    assert r.shape == (4, 16, 16, 1) and 0 <= r.min() and r.max() <= 1


def test_bad_input_errors(small):
    model, x, y = small
    with pytest.raises(KeyError, match="unknown layer 'fc3'.*fc1"):
        fit_cladec(model, x, y, "fc3", 0.1, steps=1, progress=False)
    with pytest.raises(InputError, match=r"alpha must lie in \[0, 1\]"):
        fit_cladec(model, x, y, "fc1", [0.1, 1.5], steps=1, progress=False)
    with pytest.raises(InputError, match=r"alpha must lie in \[0, 1\]"):
        fit_cladec(model, x, y, "fc1", -0.1, steps=1, progress=False)
    with pytest.raises(InputError, match=r"images: values must lie in \[0.0, 1.0\]"):
        fit_cladec(model, x * 255, y, "fc1", 0.1, steps=1, progress=False)
    with pytest.raises(InputError, match=r"values must lie in \[0.0, 1.0\]"):
        fit_reference_ae(model, x - 0.5, "fc1", steps=1, progress=False)
    with pytest.raises(InputError, match="labels"):
        fit_cladec(model, x, y[:-1], "fc1", 0.1, steps=1, progress=False)
    with pytest.raises(InputError, match="labels: must lie in"):
        fit_cladec(model, x, y + 10, "fc1", 0.1, steps=1, progress=False)
    fit = fit_cladec(model, x[:16], y[:16], "fc1", 0.1, steps=1, progress=False)
    with pytest.raises(KeyError, match="unknown"):
        reconstruct(fit, x[:2], "fc1", 0.7)
    with pytest.raises(InputError, match="values must lie"):
        reconstruct(fit, x[:2] + 2, "fc1", 0.1)


def test_member_map_unroll_equals_vmap_values_and_gradients(digits_net):
    """Unrolled members (the CPU default for conv-owning members) compute what vmap does."""
    from repsim_jax.cladec.train import _stack, _taps, _with_mode, map_members
    from repsim_jax.cladec.decoder import reinitialize
    nets = [_with_mode(reinitialize(digits_net(rngs=nnx.Rngs(0)), s), train_bn=True)
            for s in (1, 2, 3)]
    graphdef = nets[0][0]
    params, rest = _stack([n[1] for n in nets]), _stack([n[2] for n in nets])
    x = jax.random.uniform(jax.random.key(0), (3, 8, 16, 16, 1))     # one batch per member

    def member(p, r, xb):
        (code,), logits, r = _taps(graphdef, p, r, xb, ("features.1",))
        return jax.numpy.mean(code ** 2) + jax.numpy.mean(logits ** 2), r

    def total(p, mode):
        losses, r = map_members(member, p, rest, x, mode=mode)
        return losses.sum(), (losses, r)

    out = {m: jax.value_and_grad(total, has_aux=True)(params, m) for m in ("vmap", "unroll")}
    (lv, (losses_v, rest_v)), gv = out["vmap"]
    (lu, (losses_u, rest_u)), gu = out["unroll"]
    np.testing.assert_allclose(np.asarray(losses_u), np.asarray(losses_v), rtol=1e-5)
    assert len(set(np.round(np.asarray(losses_u), 6))) == 3      # members really differ
    for a, b in zip(jax.tree.leaves((gu, rest_u)), jax.tree.leaves((gv, rest_v))):
        # (conv biases in front of BN have a zero gradient: float noise ~1e-6 both ways)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(gu)) > 1e-3
    with pytest.raises(KeyError, match="member_map"):
        map_members(member, params, rest, x, mode="pmap")


def test_step_loops_agree_python_vs_fori(small):
    """One dispatch per step (CPU default) and device-side fori_loop blocks: same run."""
    model, x, y = small
    kw = dict(steps=6, log_every=3, progress=False)
    fits = {m: fit_cladec(model, x, y, "fc1", [0.0, 0.5], step_loop=m, **kw)
            for m in ("python", "fori")}
    a, b = (fits[m].groups[0] for m in ("python", "fori"))
    for p, q in zip(jax.tree.leaves(a.decoder_params), jax.tree.leaves(b.decoder_params)):
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.history, b.history, rtol=1e-4)
    assert a.history.shape == (2, 2) and np.all(np.isfinite(a.history))
    with pytest.raises(KeyError, match="step_loop"):
        fit_cladec(model, x, y, "fc1", 0.1, steps=1, step_loop="scan", progress=False)
