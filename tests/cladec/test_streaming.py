"""ClaDec on a lazy source: training, reconstruction, errors and the retrain check read it
in minibatches / chunks (never as a whole) and give the numbers of the in-memory path."""
import jax
import numpy as np
import pytest
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.cladec import evaluate, train

B = 8


@pytest.fixture(scope="module")
def small(digits, digits_net):
    x, y = digits[0][:40], digits[1][:40]
    return x, y, digits_net(rngs=nnx.Rngs(0))


def _leaves_close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_streamed_cladec_matches_memory_and_reads_batches(small, recording):
    x, y, net = small
    kw = dict(steps=4, batch_size=B, log_every=2, progress=False)
    src = recording(x)
    fit_m = train.fit_cladec(net, x, y, "fc1", 0.1, **kw)
    fit_s = train.fit_cladec(net, src, y, "fc1", 0.1, **kw)
    _leaves_close(fit_s.groups[0].decoder_params, fit_m.groups[0].decoder_params)
    np.testing.assert_allclose(fit_s.groups[0].history, fit_m.groups[0].history, rtol=1e-5)
    ae_m = train.fit_reference_ae(net, x, "features.2", **kw)
    ae_s = train.fit_reference_ae(net, src, "features.2", **kw)
    _leaves_close(ae_s.groups[0].decoder_params, ae_m.groups[0].decoder_params)
    # 4 steps x 2 fits: one minibatch each (+ the first-batch range checks)
    assert src.requests.count(B) >= 8

    rec_m = train.reconstruct(fit_m, x, "fc1", batch_size=B)
    rec_s = train.reconstruct(fit_s, src, "fc1", batch_size=B)     # lazy: nothing read yet
    assert rec_s.shape == x.shape
    ae_rec_m = train.reconstruct_ae(ae_m, x, "features.2", batch_size=B)
    ae_rec_s = train.reconstruct_ae(ae_s, src, "features.2", batch_size=B)
    for r_s, r_m in ((rec_s, rec_m), (ae_rec_s, ae_rec_m)):
        for red in ("sum", "mean"):
            np.testing.assert_allclose(
                evaluate.reconstruction_error(src, r_s, reduction=red, batch_size=B),
                evaluate.reconstruction_error(x, r_m, reduction=red), rtol=1e-5)
        np.testing.assert_allclose(r_s[3:17], r_m[3:17], atol=1e-5)

    h = 24
    sets_m = {"input": x, "cladec": rec_m, "ae": ae_rec_m}
    sets_s = {"input": src, "cladec": rec_s, "ae": ae_rec_s}
    rkw = dict(steps=3, batch_size=B, progress=False)
    acc_m = evaluate.retrain_accuracy(net, {k: v[:h] for k, v in sets_m.items()}, y[:h],
                                      {k: v[h:] for k, v in sets_m.items()}, y[h:], **rkw)
    acc_s = evaluate.retrain_accuracy(net, {k: v.take(np.arange(h)) for k, v in
                                            sets_s.items()}, y[:h],
                                      {k: v.take(np.arange(h, len(x)))
                                       for k, v in sets_s.items()}, y[h:],
                                      eval_batch_size=B, **rkw)
    assert acc_s.accuracy == acc_m.accuracy
    assert (acc_s.n_train, acc_s.n_test) == (h, len(x) - h)
    src.check_bounded(B)


def test_streamed_batches_are_checked(small, recording):
    x, y, net = small
    bad = x.copy()
    bad[-1] += 2.0                       # outside [0, 1], past the first batch
    with pytest.raises(InputError, match=r"images: values must lie in \[0.0, 1.0\]"):
        train.fit_cladec(net, recording(bad), y, "fc1", 0.0, steps=8, batch_size=B,
                         progress=False)
    with pytest.raises(InputError, match="step_loop='fori' needs the training data"):
        train.fit_cladec(net, recording(x), y, "fc1", 0.0, steps=2, batch_size=B,
                         progress=False, step_loop="fori")
