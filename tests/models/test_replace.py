"""Forward from a layer: ``activations(..., replace={layer: array})`` substitutes a layer's
output inside the tap mechanism (freshly initialised small CNNs; no training needed)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from repsim_jax._checks import InputError
from repsim_jax.models import activations, build, forward
from repsim_jax.models.capture import Taps, tap


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 3)).astype(np.float32)
    out = {}
    for name in ("small_vgg", "small_resnet"):
        m = build(name, num_classes=5, rngs=nnx.Rngs(1), input_shape=(32, 32, 3))
        # non-trivial running statistics, so that batch norm is not the identity
        for path, v in nnx.to_flat_state(nnx.state(m, nnx.BatchStat)):
            shape = v[...].shape
            v[...] = (jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
                      if path[-1] == "running_var"
                      else jnp.asarray(rng.normal(0, 0.1, shape), jnp.float32))
        out[name] = m
    return out, x


@pytest.mark.parametrize("name,layers", [
    ("small_vgg", ["features.0", "features.6", "globalpool", "classifier.1"]),
    ("small_resnet", ["relu", "layer2.0.bn2", "layer3.0", "layer2.0.downsample"])])
def test_replacing_a_layer_by_its_own_activation_reproduces_everything(models, name, layers):
    ms, x = models
    m = ms[name]
    ref = activations(m, x, layers + ["logits"])
    for layer in layers:
        got = activations(m, x, layers + ["logits"], replace={layer: ref[layer]})
        for k in ref:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]),
                                          err_msg=f"replace {layer} -> {k}")
    # several layers at once, and in chunks of the batch
    got = forward(m, x, replace={layers[1]: ref[layers[1]], layers[3]: ref[layers[3]]},
                  batch_size=3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref["logits"]), rtol=1e-6,
                               atol=1e-6)


def test_zeros_in_vgg_match_the_head_computed_by_hand(models):
    ms, x = models
    m = ms["small_vgg"]
    ref = activations(m, x, ["features.10", "features.14", "logits"])
    zeros = np.zeros(ref["features.14"].shape, np.float32)
    got = activations(m, x, ["features.10", "features.14", "features.15", "globalpool",
                             "logits"], replace={"features.14": zeros})
    # upstream untouched, the layer reads back as the replacement, downstream all zero
    np.testing.assert_array_equal(np.asarray(got["features.10"]), np.asarray(ref["features.10"]))
    assert not np.any(np.asarray(got["features.14"]))
    assert not np.any(np.asarray(got["features.15"]))
    assert not np.any(np.asarray(got["globalpool"]))
    # globalpool = 0  =>  logits = relu(b1) W2 + b2 (Linear weights are (in, out)), the
    # same for every image
    l0, l2 = m.classifier[0], m.classifier[2]
    expected = np.maximum(np.asarray(l0.bias[...]), 0) @ np.asarray(l2.weight[...]) \
        + np.asarray(l2.bias[...])
    np.testing.assert_allclose(np.asarray(got["logits"]),
                               np.broadcast_to(expected, got["logits"].shape), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(np.asarray(got["logits"]), np.asarray(ref["logits"]))


def test_zeros_in_a_residual_stage_match_the_next_block(models):
    ms, x = models
    m = ms["small_resnet"]
    ref = activations(m, x, ["layer2", "layer3.0", "layer3.1"])
    zeros = jnp.zeros_like(ref["layer3.0"])
    got = activations(m, x, ["layer2", "layer3.1", "logits"], replace={"layer3.0": zeros})
    expected = m.layer3[1](zeros, None, "layer3.1")     # the next block applied by hand
    np.testing.assert_allclose(np.asarray(got["layer3.1"]), np.asarray(expected), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got["layer2"]), np.asarray(ref["layer2"]))
    assert np.abs(np.asarray(got["layer3.1"]) - np.asarray(ref["layer3.1"])).max() > 1e-3
    # a replaced residual branch leaves the skip path fed by the images: the block output
    # with bn2 zeroed is relu(downsample(x)), not zero
    got = activations(m, x, ["layer2.0.downsample", "layer2.0"],
                      replace={"layer2.0.bn2": np.zeros((8, 8, 8, 32), np.float32)})
    np.testing.assert_allclose(np.asarray(got["layer2.0"]),
                               np.maximum(np.asarray(got["layer2.0.downsample"]), 0), atol=1e-6)
    assert np.asarray(got["layer2.0"]).max() > 0


def test_taps_substitute_inside_user_jit_and_differentiate(models):
    ms, x = models
    m = ms["small_vgg"]
    graphdef, state = nnx.split(m)
    a = activations(m, x, ["features.6"])["features.6"]

    @jax.jit
    def head(state, r):   # small_vgg is sequential: the images never reach the logits
        return nnx.merge(graphdef, state)(jnp.zeros((8, 32, 32, 3)),
                                          taps=Taps({"features.6": r}))

    np.testing.assert_allclose(np.asarray(head(state, a)),
                               np.asarray(forward(m, x)), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda r: jnp.sum(head(state, r)))(a)
    assert g.shape == a.shape and float(jnp.abs(g).sum()) > 0
    with pytest.raises(InputError,
                       match=r"replace\['features.6'\].*\(8, 16, 16, 32\).*\(8, 16, 16, 3\)"):
        head(state, a[..., :3])
    # plain dicts keep recording without substituting
    taps = {}
    assert tap(taps, "a", 1.0) == 1.0 and taps == {"a": 1.0}


def test_sharded_replace_equals_single_device(models):
    ms, x = models
    m = ms["small_resnet"]
    a = activations(m, x, ["layer2.0"])["layer2.0"] * 0.5
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    got = forward(m, x, replace={"layer2.0": a})
    sharded = activations(m, x, ["logits"], replace={"layer2.0": a},
                          sharding=NamedSharding(mesh, P("data")))["logits"]
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(got), rtol=1e-5, atol=1e-6)


def test_bad_replacements_raise_clear_errors(models):
    ms, x = models
    m = ms["small_vgg"]
    with pytest.raises(KeyError, match=r"unknown layer to replace 'features.99'.*features.0"):
        forward(m, x, replace={"features.99": np.zeros((8, 1))})
    with pytest.raises(KeyError, match="unknown layer to replace 'logits'"):
        forward(m, x, replace={"logits": np.zeros((8, 5))})
    with pytest.raises(InputError, match=r"replace\['features.2'\].*\(8, 32, 32, 16\).*"
                                         r"\(8, 32, 32, 8\)"):
        forward(m, x, replace={"features.2": np.zeros((8, 32, 32, 8), np.float32)})
    with pytest.raises(InputError, match=r"replace\['features.2'\].*\(8, 32, 32, 16\).*"
                                         r"\(4, 32, 32, 16\)"):
        forward(m, x, replace={"features.2": np.zeros((4, 32, 32, 16), np.float32)})
    bad = np.zeros((8, 32, 32, 16), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"replace\['features.2'\].*NaN"):
        forward(m, x, replace={"features.2": bad})
    with pytest.raises(InputError, match="replace: expected a dict"):
        forward(m, x, replace=[("features.2", bad)])


@pytest.mark.parametrize("batch_size", [None, 3])
def test_activations_come_back_in_the_requested_order(models, batch_size):
    # jit returns dict pytrees with sorted keys; callers (e.g. relative depth by position
    # in concepts.compare) rely on the requested order
    ms, x = models
    layers = ["features.10", "features.2", "features.6", "logits", "classifier.0"]
    got = activations(ms["small_vgg"], x, layers, batch_size=batch_size)
    assert list(got) == layers
    assert got["features.2"].shape == (8, 32, 32, 16)
