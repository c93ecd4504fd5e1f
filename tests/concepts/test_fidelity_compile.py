"""concepts.fidelity with a callable head compiles once per shape (was a fresh jax.jit of
the head on every call)."""
import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax.concepts.nmf import fidelity

W = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)


def _head(a):
    return a @ W


def test_fidelity_head_compiles_once():
    rng = np.random.default_rng(1)
    acts = rng.random((16, 6)).astype(np.float32)
    rec = acts + 0.01 * rng.normal(size=acts.shape).astype(np.float32)
    first = fidelity(_head, acts, rec, batch_size=8)
    n = {"c": 0}

    def listen(event, duration, **kw):
        n["c"] += event == "/jax/core/compile/backend_compile_duration"
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        again = fidelity(_head, acts * 2.0, rec * 2.0, batch_size=8)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert n["c"] == 0
    ref = np.abs(acts @ np.asarray(W) - rec @ np.asarray(W)) / (np.abs(acts @ np.asarray(W))
                                                               + 1e-4)
    np.testing.assert_allclose(first["relative_logit_error"], ref.mean(0), rtol=1e-4)
    assert 0.0 <= again["agreement"] <= 1.0
