"""Fixtures for the ClaDec tests: scikit-learn digits at 16x16 and a small trained CNN."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from repsim_jax.models.capture import tap


class DigitsNet(nnx.Module):
    """Small capture-convention CNN: conv-BN-ReLU-pool x2, dense ``fc1`` (bottleneck), ``fc2``."""

    def __init__(self, *, bottleneck: int = 16, num_classes: int = 10, rngs: nnx.Rngs):
        self.input_shape = (16, 16, 1)
        self.conv1 = nnx.Conv(1, 8, (3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), padding="SAME", rngs=rngs)
        self.fc1 = nnx.Linear(4 * 4 * 16, bottleneck, rngs=rngs)
        self.fc2 = nnx.Linear(bottleneck, num_classes, rngs=rngs)

    def __call__(self, x, taps=None):
        h = tap(taps, "features.0", jax.nn.relu(self.bn1(self.conv1(x))))
        h = nnx.max_pool(h, (2, 2), strides=(2, 2))                      # 8x8
        h = tap(taps, "features.1", jax.nn.relu(self.conv2(h)))
        h = tap(taps, "features.2", nnx.max_pool(h, (2, 2), strides=(2, 2)))  # 4x4x16
        h = tap(taps, "fc1", jax.nn.relu(self.fc1(h.reshape(h.shape[0], -1))))
        return tap(taps, "fc2", self.fc2(h))


def digits_16():
    """scikit-learn digits as (N, 16, 16, 1) float32 in [0, 1] (2x nearest upsampling)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[..., None]
    return x, d.target.astype(np.int32)


def train_classifier(model, x, y, *, steps=300, batch=64, seed=0, lr=3e-3):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, rest, opt_state, xb, yb):
        def loss(p):
            m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
            logits = m(xb)
            _, _, r = nnx.split(m, nnx.Param, ...)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), r
        (l, rest), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, u), rest, opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        params, rest, opt_state = step(params, rest, opt_state, x[idx], y[idx])
    m = nnx.merge(graphdef, params, rest)
    m.eval()
    return m


@pytest.fixture(scope="session")
def digits():
    x, y = digits_16()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="session")
def digits_classifier(digits):
    xtr, ytr, _, _ = digits
    return train_classifier(DigitsNet(rngs=nnx.Rngs(0)), xtr, ytr)


@pytest.fixture(scope="session")
def digits_net():
    """The :class:`DigitsNet` class (test modules cannot import conftest by name)."""
    return DigitsNet
