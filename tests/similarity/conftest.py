"""Shared helpers of the similarity tests: float64 numpy references of the papers'
definitions, written independently of the library's (feature-space / SVD) routes."""
import contextlib

import jax
import numpy as np
import pytest

_COMPILES = {"n": 0}


def _listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def count_compiles():
    """Counts XLA backend compilations inside the block (jax.monitoring events)."""
    box = {}
    start = _COMPILES["n"]
    try:
        yield box
    finally:
        box["n"] = _COMPILES["n"] - start


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def centre(X):
    return X - X.mean(0)


def hsic_u_ref(K, L):
    """Song et al. (2012), eq. 5, literally."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def hsic_b_ref(K, L):
    n = K.shape[0]
    H = np.eye(n) - 1.0 / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def cka_ref(K, L, debiased):
    h = hsic_u_ref if debiased else hsic_b_ref
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def rbf_ref(X, sigma=1.0):
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma ** 2 * np.median(d2)))
