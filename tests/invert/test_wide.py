"""The 32-bit limb arithmetic of the float32 INVERT path against Python ints / float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repsim_jax.invert import wide
from repsim_jax.invert.wide import U64

rng = np.random.default_rng(0)
N_MAX = 2 ** 24 - 1


def _u(vals):
    return wide.from_int(np.asarray(vals, np.uint64))


def _ints(x):
    return [int(v) for v in wide.to_int(x)]


def _as_double(bits):
    return wide.to_int(bits).view(np.float64)


def test_add_sub_mul_carry_across_2_32():
    a = [2 ** 32 - 1, 2 ** 32, 2 ** 47 + 12345, 3, 2 ** 48 - 1]
    b = [1, 2 ** 32 - 1, 2 ** 40 + 2 ** 32 - 7, 2 ** 33, 2 ** 47]
    assert _ints(_u(a) + _u(b)) == [x + y for x, y in zip(a, b)]
    assert _ints(_u(a) - _u(np.minimum(a, b))) == [x - min(x, y) for x, y in zip(a, b)]
    assert _ints(2 ** 49 - _u(a)) == [2 ** 49 - x for x in a]          # int constant first
    x = rng.integers(0, 2 ** 32, 200, dtype=np.uint64)
    y = rng.integers(0, 2 ** 32, 200, dtype=np.uint64)
    x[:3], y[:3] = 2 ** 32 - 1, [2 ** 32 - 1, 0, 1]
    got = _ints(jax.jit(wide.mul32)(jnp.asarray(x, jnp.uint32), jnp.asarray(y, jnp.uint32)))
    assert got == [int(p) * int(q) for p, q in zip(x, y)]


@pytest.mark.parametrize("n_terms", [1000, 70_000])
def test_limb_sums_exact_beyond_2_32(n_terms):
    # group rank sums: n_terms values < 2^48 whose total stays < 2^48 (as twice the ranks)
    vals = rng.integers(0, 2 ** 48 // n_terms, n_terms, dtype=np.uint64)
    vals[0] = 2 ** 47 // n_terms * n_terms // 2 ** 10 + 2 ** 32 + 1   # one big group
    vals[1] = 2 ** 32 - 1
    lab = rng.random((n_terms, 3)) < 0.5
    lab[:, 2] = True
    got = wide.limb_sums(lambda w: w @ jnp.asarray(lab, jnp.uint32), _u(vals), n_terms)
    want = [sum(int(v) for v, l in zip(vals, lab[:, c]) if l) for c in range(3)]
    assert max(want) > 2 ** 40 and _ints(got) == want
    with pytest.raises(ValueError, match="2\\^24"):
        wide.limb_sums(lambda w: w, _u(vals), 2 ** 24)


def _ratio_cases():
    """(num, den) = (2U, 2 n (N - n)) of AUCs near and far beyond 2^32, ties, halves."""
    n_tot = rng.integers(2, N_MAX, 3000, dtype=np.int64)
    n = np.maximum(1, (rng.random(3000) * n_tot).astype(np.int64))
    n = np.minimum(n, n_tot - 1)
    den = 2 * n * (n_tot - n)
    num = (rng.random(3000) * den).astype(np.int64)
    num[:50] = den[:50] // 2                              # AUC 1/2
    num[50:100] = den[50:100]                             # AUC 1
    num[100:150] = 0
    num[150:200] = np.maximum(den[150:200] - 1, 0)        # just below 1
    num[200:250] = 1                                      # tiny
    extra = [(2 ** 32 + 1, 2 ** 33), (2 ** 32 - 1, 2 ** 32), (3, 2 ** 47 - 6),
             (2 ** 47 - 7, 2 ** 47 - 6), ((2 ** 46) // 3, 2 ** 46)]
    num = np.concatenate([num, [e[0] for e in extra]])
    den = np.concatenate([den, [e[1] for e in extra]])
    return num.astype(np.uint64), den.astype(np.uint64)


def test_ratio_bits_is_the_float64_division_and_its_float32_rounding():
    num, den = _ratio_cases()
    assert den.max() > 2 ** 44 and (den > 2 ** 32).mean() > 0.9
    bits = jax.jit(wide.ratio_bits)(_u(num), _u(den))
    want = num.astype(np.float64) / den.astype(np.float64)   # exact ints < 2^53: one rounding
    np.testing.assert_array_equal(_as_double(bits), want)
    f32 = np.asarray(jax.jit(wide.bits_to_float32)(bits))
    np.testing.assert_array_equal(f32, want.astype(np.float32))
    # the key orders as the doubles (ties exactly where the doubles are equal)
    hi, lo = (np.asarray(k) for k in wide.sort_key(bits, np.ones(num.shape, bool)))
    order = np.lexsort((lo, hi))
    assert np.all(np.diff(want[order]) >= 0)
    same = (hi[:, None] == hi[None, :]) & (lo[:, None] == lo[None, :])
    np.testing.assert_array_equal(same, want[:, None] == want[None, :])
    nhi, nlo = (np.asarray(k) for k in wide.sort_key(bits, np.arange(num.size) > 0, negate=True))
    order = np.lexsort((nlo, nhi))
    assert order[0] == 0 and np.all(np.diff(want[order[1:]]) <= 0)   # invalid first = lowest


def test_one_minus_and_differentiability_are_the_float64_ones():
    num, den = _ratio_cases()
    bits = wide.ratio_bits(_u(num), _u(den))
    v = _as_double(bits)
    np.testing.assert_array_equal(_as_double(jax.jit(wide.abs_one_minus_bits)(bits)), 1.0 - v)
    diff = _as_double(wide.abs_one_minus_bits(wide.double_bits(bits)))
    np.testing.assert_array_equal(diff, 2.0 * np.abs(0.5 - v))
    # doubles in [0, 2] that are not ratios: random bit patterns, powers of two, 2^-60
    y = np.concatenate([rng.random(2000) * 2, rng.random(200) * 2.0 ** -40,
                        [0.0, 1.0, 2.0, 0.5, 0.25, 2.0 ** -60, 1 - 2.0 ** -53, 1 + 2.0 ** -52]])
    yb = wide.from_int(y.view(np.uint64))
    np.testing.assert_array_equal(_as_double(wide.abs_one_minus_bits(yb)), np.abs(1.0 - y))


@pytest.mark.parametrize("n,k", [(3000, 7), (40, 5)])     # two-level and one-level paths
def test_stable_top_k_of_key_pairs_is_a_stable_lexicographic_sort(n, k):
    from repsim_jax.invert.search import stable_top_k
    hi = rng.integers(-3, 3, (4, n)).astype(np.int32)      # many ties in hi ...
    lo = rng.integers(0, 4, (4, n)).astype(np.uint32)      # ... and in (hi, lo)
    hi[:, ::3] = np.iinfo(np.int32).min                    # invalid entries
    lo[0, :] = 2 ** 32 - 1 - lo[0, :]                      # lo above 2^31
    (vh, vl), idx = jax.jit(stable_top_k, static_argnums=1)((jnp.asarray(hi), jnp.asarray(lo)), k)
    for r in range(4):
        want = np.lexsort((np.arange(n), -lo[r].astype(np.int64), -hi[r].astype(np.int64)))[:k]
        np.testing.assert_array_equal(np.asarray(idx[r]), want)
        np.testing.assert_array_equal(np.asarray(vh[r]), hi[r, want])
        np.testing.assert_array_equal(np.asarray(vl[r]), lo[r, want])
