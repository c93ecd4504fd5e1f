"""Decoder pieces: the transposed convolution against PyTorch, shape plans, fresh encoders."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from repsim_jax.cladec.decoder import (TORCH_PADDING_K4S2P1, Decoder, UpConv, conv3x3,
                                       decoder_plan, reinitialize)


def test_upconv_matches_torch_conv_transpose():
    torch = pytest.importorskip("torch")
    u = UpConv(3, 5, rngs=nnx.Rngs(0))
    u.bias[...] = jnp.arange(5.0)
    t = torch.nn.ConvTranspose2d(3, 5, kernel_size=4, stride=2, padding=1)
    t.weight.data = torch.tensor(np.asarray(u.kernel[...]).transpose(2, 3, 0, 1).copy())
    t.bias.data = torch.arange(5.0)
    x = np.random.default_rng(0).random((2, 6, 7, 3), dtype=np.float32)
    ref = t(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    out = np.asarray(u(jnp.asarray(x)))
    assert out.shape == (2, 12, 14, 5)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # and the stride-dilated lax formulation with the same (spatially flipped) kernel
    ct = nnx.ConvTranspose(3, 5, (4, 4), strides=(2, 2), padding=TORCH_PADDING_K4S2P1,
                           rngs=nnx.Rngs(0))
    ct.kernel[...] = jnp.asarray(np.asarray(u.kernel[...])[::-1, ::-1])
    ct.bias[...] = jnp.arange(5.0)
    np.testing.assert_allclose(np.asarray(ct(jnp.asarray(x))), ref, atol=1e-5)


def test_conv3x3_matches_lax_conv():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(conv3x3(x, k)), np.asarray(ref), atol=1e-4)


@pytest.mark.parametrize("code_shape,kind,start", [
    ((32,), "dense", (4, 4)), ((4, 4, 8), "conv", (4, 4)), ((8, 8, 3), "conv", (8, 8)),
    ((1, 1, 16), "dense", (4, 4)), ((7, 7, 4), "dense", (4, 4)), ((32, 32, 2), "conv", (32, 32))])
def test_decoder_reaches_input_resolution_in_unit_range(code_shape, kind, start):
    plan = decoder_plan(code_shape, (32, 32, 3))
    assert (plan.kind, plan.start) == (kind, start)
    d = Decoder(code_shape, (32, 32, 3), rngs=nnx.Rngs(0))
    out = np.asarray(d(10 * jax.random.normal(jax.random.key(0), (2, *code_shape))))
    assert out.shape == (2, 32, 32, 3)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    # number of stages: log2(32 / start)
    assert len(d.stages) == int(np.log2(32 // start[0]))


def test_reinitialize_keeps_architecture_draws_new_weights(digits_net):
    m = digits_net(rngs=nnx.Rngs(0))
    m.bn1.mean[...] = jnp.full((8,), 3.0)
    f = reinitialize(m, seed=5)
    s_old, s_new = nnx.state(m), nnx.state(f)
    assert jax.tree.structure(s_old) == jax.tree.structure(s_new)
    assert not np.allclose(np.asarray(f.conv1.kernel[...]), np.asarray(m.conv1.kernel[...]))
    np.testing.assert_array_equal(np.asarray(f.bn1.mean[...]), 0.0)   # running stats reset
    np.testing.assert_array_equal(np.asarray(m.bn1.mean[...]), 3.0)   # original untouched
    k = np.asarray(f.fc1.kernel[...])
    assert abs(k.std() - np.sqrt(2.0 / k.shape[0])) < 0.2 * np.sqrt(2.0 / k.shape[0])
    g = reinitialize(m, seed=5)
    np.testing.assert_array_equal(np.asarray(g.fc1.kernel[...]), k)    # seeded
