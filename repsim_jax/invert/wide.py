r"""Exact 64-bit integers and float64 AUCs from 32-bit arithmetic (the float32 INVERT path).

Backends without float64 (TPU) still get exactly the float64 search: the statistics are
integers below :math:`2^{48}` for :math:`N < 2^{24}` (twice a rank sum is at most
:math:`N(N+1)`), held as two uint32 limbs (:class:`U64`, ``hi * 2^32 + lo``) with carries;
the AUC :math:`2U / (2n(N-n))` is not rounded to float32 but computed as the IEEE bit
pattern of the float64 the float64 path computes, ``RN64(num / den)`` (round to nearest,
ties to even), by a 53-step restoring long division on the limbs. Non-negative doubles
order like their bit patterns, so ``(hi, lo)`` of the bits is an exact sort key
(:func:`sort_key`): the float32 path orders, ties included, as the float64 path.

* :func:`limb_sums` sums uint32/U64 values over a large axis exactly (linear reductions:
  matmuls, segment sums) by splitting them into limbs whose sums cannot overflow 32 bits
  (bits 16.., 8..15, 0..7; at most :math:`2^{24}` terms).
* :func:`ratio_bits` is ``RN64(num / den)`` for :math:`0 \le num \le den < 2^{62}`;
  :func:`abs_one_minus_bits` is ``RN64(|1 - y|)`` for a double :math:`0 \le y \le 2`
  (``1 - AUC``, and the differentiability ``2 |0.5 - AUC| = |1 - 2 AUC|``);
  :func:`double_bits` is ``2 y``; :func:`bits_to_float32` is ``RN32`` of the double.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["U64", "u64", "mul32", "limb_sums", "ratio_bits", "abs_one_minus_bits",
           "double_bits", "bits_to_float32", "sort_key", "to_int", "from_int"]

_U = jnp.uint32
_MASK32 = 0xFFFFFFFF


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class U64:
    """A non-negative integer ``hi * 2^32 + lo`` (uint32 arrays of one shape), mod 2^64."""
    hi: jax.Array
    lo: jax.Array

    def __add__(self, other: "U64") -> "U64":
        other = u64(other)
        lo = self.lo + other.lo
        return U64(self.hi + other.hi + (lo < self.lo).astype(_U), lo)

    def __sub__(self, other: "U64") -> "U64":
        other = u64(other)
        return U64(self.hi - other.hi - (self.lo < other.lo).astype(_U), self.lo - other.lo)

    def __rsub__(self, other) -> "U64":
        return u64(other) - self

    def __radd__(self, other) -> "U64":
        return self + other

    @property
    def shape(self):
        return jnp.shape(self.lo)


def u64(x) -> U64:
    """A U64 from a U64, a uint32 array or a Python int (constants: both limbs)."""
    if isinstance(x, U64):
        return x
    if isinstance(x, (int, np.integer)):
        return U64(_U(int(x) >> 32), _U(int(x) & _MASK32))
    return U64(jnp.zeros_like(jnp.asarray(x, _U)), jnp.asarray(x, _U))


def tree(fn, *xs):
    """``fn`` applied limb by limb (structural ops: take, concatenate, where, reshape)."""
    return jax.tree_util.tree_map(fn, *xs)


def from_int(x) -> U64:
    """Host integers (numpy int64/uint64 or exact float64, >= 0) -> U64 of numpy uint32."""
    x = np.asarray(x)
    x = x.astype(np.uint64) if x.dtype.kind != "f" else np.asarray(x, np.float64).astype(np.uint64)
    return U64((x >> np.uint64(32)).astype(np.uint32), (x & np.uint64(_MASK32)).astype(np.uint32))


def to_int(x: U64) -> np.ndarray:
    """U64 -> numpy uint64 (host)."""
    return (np.asarray(x.hi).astype(np.uint64) << np.uint64(32)) | np.asarray(x.lo).astype(np.uint64)


def mul32(a, b) -> U64:
    """Full 64-bit product of two uint32 arrays (16-bit halves, exact)."""
    a, b = jnp.asarray(a, _U), jnp.asarray(b, _U)
    a1, a0 = a >> 16, a & 0xFFFF
    b1, b0 = b >> 16, b & 0xFFFF
    mid = a1 * b0
    mid2 = a0 * b1
    low = U64(jnp.zeros_like(a), a0 * b0)
    return (low + U64(mid >> 16, mid << 16) + U64(mid2 >> 16, mid2 << 16)
            + U64(a1 * b1, jnp.zeros_like(a)))


def limb_sums(fn, x, max_terms: int) -> U64:
    """``fn(x)`` exactly, for a linear ``fn`` summing at most ``max_terms`` (< 2^24)
    entries of ``x`` (uint32 array or U64 with true values < 2^48) whose total is < 2^48.

    The bits 16..47 of every entry sum to less than 2^32 (the total is < 2^48); the bits
    8..15 and 0..7 of at most 2^24 entries sum to less than 2^32 (with at most 2^16
    entries, bits 0..15 in one limb). ``fn`` runs once, on the limbs stacked on a new
    leading axis (it must map over leading axes, e.g. ``w @ lab``).
    """
    if max_terms >= 2 ** 24:
        raise ValueError(f"limb_sums: at most 2^24 - 1 terms, got {max_terms}")
    x = u64(x)
    top = (x.hi << 16) | (x.lo >> 16)
    if max_terms < 2 ** 16:
        limbs, shifts = [top, x.lo & 0xFFFF], [16, 0]
    else:
        limbs, shifts = [top, (x.lo >> 8) & 0xFF, x.lo & 0xFF], [16, 8, 0]
    sums = fn(jnp.stack(limbs, axis=0))
    out = U64(jnp.zeros_like(sums[0]), jnp.zeros_like(sums[0]))
    for i, s in enumerate(shifts):
        v = sums[i]
        part = U64(v >> (32 - s), v << s) if s else U64(jnp.zeros_like(v), v)
        out = out + part
    return out


# -- 64-bit helpers ----------------------------------------------------------------------
def _clz(x: U64):
    return jnp.where(x.hi != 0, jax.lax.clz(x.hi), 32 + jax.lax.clz(x.lo)).astype(jnp.int32)


def _shl(x: U64, s):
    """x << s for 0 <= s < 64 (array s)."""
    s = jnp.asarray(s, _U)
    big = s >= 32
    sl = jnp.where(big, s - 32, s)
    hi_small = (x.hi << sl) | jnp.where(sl == 0, _U(0), x.lo >> (_U(32) - sl))
    hi = jnp.where(big, x.lo << sl, hi_small)
    lo = jnp.where(big, _U(0), x.lo << sl)
    return U64(hi, lo)


def _shr(x: U64, s):
    """x >> s for 0 <= s (array s; s >= 64 gives 0)."""
    s = jnp.asarray(s, _U)
    big = s >= 32
    sl = jnp.where(big, jnp.minimum(s - 32, 31), s)
    lo_small = (x.lo >> sl) | jnp.where(sl == 0, _U(0), x.hi << (_U(32) - sl))
    lo = jnp.where(big, x.hi >> sl, lo_small)
    hi = jnp.where(big, _U(0), x.hi >> sl)
    zero = s >= 64
    return U64(jnp.where(zero, _U(0), hi), jnp.where(zero, _U(0), lo))


def _ge(a: U64, b: U64):
    return (a.hi > b.hi) | ((a.hi == b.hi) & (a.lo >= b.lo))


def _is_zero(x: U64):
    return (x.hi == 0) & (x.lo == 0)


def _where(c, a: U64, b: U64) -> U64:
    return U64(jnp.where(c, a.hi, b.hi), jnp.where(c, a.lo, b.lo))


def _pack(e, m: U64) -> U64:
    """IEEE bits of ``m * 2^(e - 1075)`` for a normalised 53-bit m (2^52 <= m < 2^53)."""
    e = jnp.asarray(e, jnp.int32).astype(_U)
    return U64((e << 20) | (m.hi & 0xFFFFF), m.lo)


def _unpack(bits: U64):
    """(biased exponent int32, 53-bit mantissa U64) of a non-negative normal double/zero."""
    e = (bits.hi >> 20).astype(jnp.int32)
    implicit = jnp.where(e > 0, _U(1 << 20), _U(0))
    return e, U64((bits.hi & 0xFFFFF) | implicit, bits.lo)


def _normalise(d: U64, e):
    """IEEE bits of ``d * 2^e`` for an integer 0 <= d < 2^53 (exact: no rounding)."""
    shift = _clz(d) - 11                       # bit 52 set after the shift
    m = _shl(d, jnp.maximum(shift, 0))
    return _where(_is_zero(d), u64(0), _pack(e - shift + 1075, m))


def ratio_bits(num: U64, den: U64) -> U64:
    """IEEE bits of ``RN64(num / den)`` for 0 <= num <= den, 0 < den < 2^62 (den = 0 -> 0)."""
    num, den = u64(num), u64(den)
    zero = _is_zero(num) | _is_zero(den)
    s = jnp.maximum(_clz(num) - _clz(den), 0)
    a = _shl(num, s)
    low = ~_ge(a, den)
    s = s + low.astype(jnp.int32)
    a = _where(low, _shl(a, 1), a)              # den <= a < 2 den: the quotient is in [1, 2)

    def step(_, carry):
        r, m = carry
        bit = _ge(r, den)
        r = _where(bit, r - den, r)
        m = _shl(m, 1) + u64(bit.astype(_U))
        return _shl(r, 1), m

    r, m = jax.lax.fori_loop(0, 53, step, (a, u64(jnp.zeros_like(a.lo))))
    guard = _ge(r, den)
    sticky = ~_is_zero(_where(guard, r - den, r))
    up = guard & (sticky | ((m.lo & 1) == 1))
    m = m + u64(up.astype(_U))
    carry = m.hi >> 21 != 0                     # rounded up to 2^53
    m = _where(carry, u64(1 << 52), m)
    e = 1023 - s + carry.astype(jnp.int32)
    return _where(zero, u64(0), _pack(e, m))


def double_bits(bits: U64) -> U64:
    """IEEE bits of ``2 y`` (y a non-negative normal double or zero)."""
    e, _ = _unpack(bits)
    return _where(e > 0, U64(bits.hi + _U(1 << 20), bits.lo), bits)


def abs_one_minus_bits(bits: U64) -> U64:
    """IEEE bits of ``RN64(|1 - y|)`` for a double 0 <= y <= 2 (normal or zero).

    With y = m 2^-k (m the 53-bit mantissa): k <= 52 (y >= 1): m - 2^k, exact; k = 53
    (1/2 <= y < 1): 2^53 - m, exact (Sterbenz); k >= 54: 1 - y in (1/2, 1], whose double
    is (2^53 - RN_even(m 2^(53-k))) 2^-53 (2^53 is even, so ties go the same way).
    """
    e, m = _unpack(bits)
    k = 1075 - e                                # y = m 2^-k
    zero = e == 0
    big = k <= 52                               # y >= 1
    d_big = m - _shl(u64(jnp.ones_like(m.lo)), jnp.clip(k, 0, 63))
    d_mid = u64(1 << 53) - m
    sh = jnp.clip(k - 53, 1, 64)
    q = _shr(m, sh)
    rem = m - _shl(q, jnp.minimum(sh, 63))
    half = _shl(u64(jnp.ones_like(m.lo)), jnp.minimum(sh - 1, 63))
    rem = _where(sh >= 64, m, rem)              # everything shifted out
    half = _where(sh >= 64, u64(1 << 62), half)  # m < 2^53 < half: rounds to 0
    up = _ge(rem, half) & (~(_ge(half, rem) & _ge(rem, half)) | ((q.lo & 1) == 1))
    q = q + u64(up.astype(_U))
    d_small = u64(1 << 53) - q
    d = _where(big, d_big, _where(k == 53, d_mid, d_small))
    e_scale = jnp.where(big, -k, -53)
    out = _normalise(d, e_scale)
    return _where(zero, u64(0x3FF0000000000000), out)


def bits_to_float32(bits: U64):
    """``RN32`` of a non-negative double given by its bits (normal or zero; no overflow)."""
    e, m = _unpack(bits)
    q = _shr(m, 29)                               # 24 bits
    rem = m.lo & 0x1FFFFFFF
    up = (rem > 0x10000000) | ((rem == 0x10000000) & ((q.lo & 1) == 1))
    q24 = q.lo + up.astype(_U)
    over = q24 >> 24 != 0
    q24 = jnp.where(over, q24 >> 1, q24)
    e = e + over.astype(jnp.int32)
    val = jnp.ldexp(q24.astype(jnp.float32), e - 1023 - 23)
    return jnp.where(e == 0, jnp.float32(0), val)


def sort_key(bits: U64, valid, negate: bool = False):
    """A lexicographic (int32, uint32) key ordered as the doubles (reversed if ``negate``);
    invalid entries below every valid one."""
    hi = bits.hi.astype(jnp.int32)                # < 2^31 for doubles in [0, 2]
    lo = bits.lo
    if negate:
        hi, lo = ~hi, ~lo
    return (jnp.where(valid, hi, jnp.iinfo(jnp.int32).min), jnp.where(valid, lo, _U(0)))
