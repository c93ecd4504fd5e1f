"""Synthetic concept worlds for the INVERT tests."""
import numpy as np
import pytest


def hierarchy(n, n_top=3, n_mid=3, n_leaf=4, seed=0):
    """One leaf per input plus its mid and top ancestors: labels (n, C), names."""
    rng = np.random.default_rng(seed)
    n_leaves = n_top * n_mid * n_leaf
    leaf = rng.integers(0, n_leaves, n)
    mid = leaf // n_leaf
    top = mid // n_mid
    c = n_leaves + n_top * n_mid + n_top
    lab = np.zeros((n, c), bool)
    rows = np.arange(n)
    lab[rows, leaf] = True
    lab[rows, n_leaves + mid] = True
    lab[rows, n_leaves + n_top * n_mid + top] = True
    names = ([f"leaf{i:02d}" for i in range(n_leaves)] + [f"mid{i}" for i in range(n_top * n_mid)]
             + [f"top{i}" for i in range(n_top)])
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
