"""Synthetic concept worlds for the INVERT tests."""
import numpy as np
import pytest

from repsim_jax.invert.reference import hierarchical_labels


def hierarchy(n, n_top=3, n_mid=3, n_leaf=4, seed=0):
    """One leaf per input plus its mid and top ancestors: labels (n, C), names."""
    lab, names, _ = hierarchical_labels(n, n_top, n_mid, n_leaf, seed=seed)
    return lab, names


@pytest.fixture(scope="session")
def world():
    """N=1200 inputs, 36 leaves + 9 mids + 3 tops, 7 noisy neurons (mu=2: imperfect)."""
    lab, names = hierarchy(1200)
    rng = np.random.default_rng(1)
    planted = [lab[:, 3], lab[:, 5] | lab[:, 20], lab[:, 36] & ~lab[:, 0], lab[:, 45],
               lab[:, 7] | lab[:, 8] | lab[:, 30], ~lab[:, 46], lab[:, 40]]
    acts = np.stack([2.0 * p + rng.normal(size=1200) for p in planted], 1).astype(np.float32)
    return acts, lab, names
