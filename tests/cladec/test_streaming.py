"""ClaDec on a lazy source: training, reconstruction, errors and the retrain check read it
in minibatches / chunks (never as a whole) and give the numbers of the in-memory path.
(The reference auto-encoder streams through the same trainer; the sweep test
tests/sweep/test_stream_images.py runs it on a lazy data set.)"""
import jax
import numpy as np
import pytest
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.cladec import evaluate, train
from repsim_jax.data.views import MappedView

B = 8


@pytest.fixture(scope="module")
def small(digits, digits_net):
    x, y = digits[0][:40], digits[1][:40]
    return x, y, digits_net(rngs=nnx.Rngs(0))


def test_streamed_cladec_matches_memory_and_reads_batches(small, recording):
    x, y, net = small
    kw = dict(steps=4, batch_size=B, log_every=2, progress=False)
    src = recording(x)
    fit_m = train.fit_cladec(net, x, y, "fc1", 0.1, **kw)
    fit_s = train.fit_cladec(net, src, y, "fc1", 0.1, **kw)
    for u, v in zip(jax.tree.leaves(fit_s.groups[0].decoder_params),
                    jax.tree.leaves(fit_m.groups[0].decoder_params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit_s.groups[0].history, fit_m.groups[0].history, rtol=1e-5)
    # one read of B images per step (the first is also the up-front range check)
    assert src.requests == [B] * 5

    rec_m = train.reconstruct(fit_m, x, "fc1", batch_size=B)
    rec_s = train.reconstruct(fit_s, src, "fc1", batch_size=B)
    assert isinstance(rec_s, MappedView) and rec_s.shape == x.shape
    for red in ("sum", "mean"):
        np.testing.assert_allclose(
            evaluate.reconstruction_error(src, rec_s, reduction=red, batch_size=B),
            evaluate.reconstruction_error(x, rec_m, reduction=red), rtol=1e-5)
    np.testing.assert_allclose(rec_s[3:17], rec_m[3:17], atol=1e-5)
    src.check_bounded(B)


def test_streamed_retrain_accuracy_matches_memory(small, recording):
    x, y, net = small
    h, src = 24, recording(x)
    flipped = MappedView(src, lambda b: 1.0 - b, batch_size=B)     # a second, derived set
    rkw = dict(steps=3, batch_size=B, progress=False)
    acc_m = evaluate.retrain_accuracy(net, {"input": x[:h], "flipped": 1.0 - x[:h]}, y[:h],
                                      {"input": x[h:], "flipped": 1.0 - x[h:]}, y[h:], **rkw)
    head, tail = np.arange(h), np.arange(h, len(x))
    acc_s = evaluate.retrain_accuracy(
        net, {"input": src.take(head), "flipped": flipped.take(head)}, y[:h],
        {"input": src.take(tail), "flipped": flipped.take(tail)}, y[h:],
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
