"""Capture from any model: a hand-written nnx module (nested lists/dicts, tuple outputs,
functional points), linen (against capture_intermediates), a plain function; evaluation
mode, [0, 1] / uint8 inputs, size errors, chunking, mesh, the user's model untouched."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.models import (IMAGENET, Preprocess, activations, build, forward, from_function,
                               from_linen, layer_shapes, list_layers, tap)


class Block(nnx.Module):
    """Returns a tuple (output, auxiliary); records a functional point with tap."""

    def __init__(self, c, *, rngs):
        self.conv = nnx.Conv(c, c, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(c, rngs=rngs)

    def __call__(self, x):
        y = self.norm(self.conv(x))
        y = tap("act", jax.nn.gelu(y))            # not a submodule: recorded by hand
        return x + y, jnp.mean(y)


class Net(nnx.Module):
    def __init__(self, *, rngs):
        self.stem = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
        self.blocks = nnx.List([Block(8, rngs=rngs), Block(8, rngs=rngs)])
        self.heads = nnx.Dict({"cls": nnx.Linear(8, 5, rngs=rngs),
                               "unused": nnx.Linear(8, 2, rngs=rngs)})
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.act = jax.nn.relu                     # a plain function attribute
        self.input_shape = (16, 16, 3)

    def __call__(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x, _ = b(x)
        x = self.drop(jnp.mean(x, axis=(1, 2)))
        return self.heads["cls"](x)


def make_net(seed=0):
    net = Net(rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for b in net.blocks:          # non-trivial running statistics
        b.norm.mean[...] = jnp.asarray(rng.normal(0, 0.3, 8), jnp.float32)
        b.norm.var[...] = jnp.asarray(rng.uniform(0.5, 2, 8), jnp.float32)
    return net


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((6, 16, 16, 3), np.float32)


def by_hand(net, x):
    """Every layer computed by calling the submodules directly (eval mode)."""
    net = nnx.merge(*nnx.split(net))      # a copy, so the caller's model keeps its mode
    net.eval()
    out = {"stem": net.stem(jnp.asarray(x))}
    y = out["stem"]
    for i, b in enumerate(net.blocks):
        out[f"blocks.{i}.conv"] = b.conv(y)
        out[f"blocks.{i}.norm"] = b.norm(out[f"blocks.{i}.conv"])
        out[f"blocks.{i}.act"] = jax.nn.gelu(out[f"blocks.{i}.norm"])
        y, _ = b(y)
        out[f"blocks.{i}"] = y
    pooled = jnp.mean(y, axis=(1, 2))
    out["drop"] = pooled
    out["heads.cls"] = net.heads["cls"](pooled)
    return out


def test_names_order_and_values_equal_calling_submodules_by_hand(images):
    net = make_net()
    names = list_layers(net)
    assert names == ["stem", "blocks.0.conv", "blocks.0.norm", "blocks.0.act", "blocks.0",
                     "blocks.1.conv", "blocks.1.norm", "blocks.1.act", "blocks.1", "drop",
                     "heads.cls"]         # 'heads.unused' is never called, so no layer
    shapes = layer_shapes(net)
    assert shapes["stem"] == (8, 8, 8) and shapes["blocks.1"] == (8, 8, 8)
    assert shapes["heads.cls"] == (5,)
    got = activations(net, images, names + ["logits"])
    ref = by_hand(net, images)
    for k in names:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-5,
                                   atol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(ref["heads.cls"]),
                               rtol=1e-5, atol=1e-5)
    # a block returns a tuple: its activation is the first element, not the mean
    assert got["blocks.0"].shape == (6, 8, 8, 8)
    with pytest.raises(KeyError, match=r"unknown layer 'blocks.2'.*blocks.1"):
        activations(net, images, ["blocks.2"])


def test_eval_mode_is_used_and_the_users_model_is_untouched(images):
    net = make_net()
    net.train()                       # BatchNorm on batch statistics, dropout on
    state_before = jax.tree.map(np.asarray, nnx.state(net, nnx.Param, nnx.BatchStat))
    cls_before = {type(m) for _, m in nnx.iter_modules(net)}
    full = activations(net, images, ["blocks.1.norm", "logits"])
    one = activations(net, images[:1], ["blocks.1.norm", "logits"])
    chunked = activations(net, images, ["blocks.1.norm", "logits"], batch_size=4)
    for k in full:   # no batch-size dependence: running statistics, no dropout
        np.testing.assert_allclose(np.asarray(one[k]), np.asarray(full[k][:1]), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(chunked[k]), np.asarray(full[k]), rtol=1e-5,
                                   atol=1e-6)
    ref = by_hand(net, images)
    np.testing.assert_allclose(np.asarray(full["logits"]), np.asarray(ref["heads.cls"]),
                               rtol=1e-5, atol=1e-5)
    # the caller's object keeps its training mode, its classes and its state
    assert net.blocks[0].norm.use_running_average is False and net.drop.deterministic is False
    assert {type(m) for _, m in nnx.iter_modules(net)} == cls_before
    jax.tree.map(np.testing.assert_array_equal, state_before,
                 jax.tree.map(np.asarray, nnx.state(net, nnx.Param, nnx.BatchStat)))
    # in training mode, called directly, the same model does depend on the batch
    y = net.blocks[0].norm(jnp.asarray(images[:2, :8, :8, :1].repeat(8, -1)))
    assert float(jnp.abs(jnp.mean(y, axis=(0, 1, 2))).max()) < 1e-4   # batch-normalised


def test_uint8_is_scaled_and_out_of_range_float_is_refused(images):
    net = make_net()
    u8 = (images * 255).round().astype(np.uint8)
    a = activations(net, u8, ["blocks.1", "logits"])
    b = activations(net, u8.astype(np.float32) / 255, ["blocks.1", "logits"])
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=r"must be in \[0, 1\].*found values in \[-0.4"):
        forward(net, images - 0.5)
    with pytest.raises(InputError, match=r"must be in \[0, 1\].*uint8"):
        forward(net, jnp.asarray(images * 255))
    with pytest.raises(InputError, match="uint8 .* or float"):
        forward(net, (images * 255).astype(np.int32))
    # rounding just past the edges is accepted (clipped)
    np.testing.assert_allclose(np.asarray(forward(net, np.clip(images, 0, 1) * (1 + 1e-4))),
                               np.asarray(forward(net, images)), atol=1e-3)


def test_preprocessing_is_applied_inside_the_pass(images):
    net = make_net()
    net.preprocess = Preprocess(mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 2.0))
    plain = make_net()
    got = forward(net, images)
    x = (images - np.float32([0.2, 0.4, 0.6])) / np.float32([0.5, 0.25, 2.0])
    ref = by_hand(plain, x)["heads.cls"]      # the same weights on normalised input
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert build("resnet18", num_classes=3, input_shape=(32, 32, 3)).preprocess.mean \
        == IMAGENET.mean


def test_size_the_model_cannot_take_is_a_clear_error():
    class Flat(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(12 * 12 * 3, 4, rngs=nnx.Rngs(0))
            self.input_shape = (12, 12, 3)

        def __call__(self, x):
            return self.fc(x.reshape(x.shape[0], -1))

    x = np.random.default_rng(1).random((2, 20, 20, 3), np.float32)
    with pytest.raises(InputError, match=r"20 x 20 x 3 .* do not fit Flat: it expects "
                                         r"12 x 12 x 3.*dot_general"):
        activations(Flat(), x, ["fc"])
    m = build("small_vgg", num_classes=3)
    with pytest.raises(InputError, match=r"do not fit small_vgg: it expects 64 x 64 x 3.*"
                                         r"resize_array"):
        forward(m, x[:, :7, :7])
    np.testing.assert_equal(forward(Flat(), x[:, :12, :12]).shape, (2, 4))


def test_chunked_and_mesh_equal_single_device(images):
    net = make_net()
    x = np.concatenate([images, images[::-1], images[:1]])        # 13 images
    ref = activations(net, x, ["blocks.0.act", "logits"])
    chunked = activations(net, x, ["blocks.0.act", "logits"], batch_size=5)
    sharded = activations(net, x, ["blocks.0.act", "logits"], mesh="all", batch_size=8)
    whole = activations(net, x, ["blocks.0.act", "logits"], mesh=jax.devices())
    for k in ref:
        for got in (chunked, sharded, whole):
            assert got[k].shape == ref[k].shape
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-5,
                                       atol=1e-6)
    x16 = np.concatenate([x, images[:3]])
    out = activations(net, x16, ["logits"], mesh="all")["logits"]
    assert len(out.sharding.device_set) == 8
    with pytest.warns(DeprecationWarning, match="sharding"):
        old = activations(net, x16, ["logits"], sharding=jax.sharding.NamedSharding(
            jax.make_mesh((8,), ("data",)), jax.sharding.PartitionSpec("data")))["logits"]
    np.testing.assert_allclose(np.asarray(old), np.asarray(out), rtol=1e-5, atol=1e-6)


def test_replace_in_a_generic_model_runs_forward_from_that_layer(images):
    net = make_net()
    ref = activations(net, images, ["blocks.0", "blocks.1", "logits"])
    zeros = np.zeros_like(np.asarray(ref["blocks.0"]))
    got = activations(net, images, ["blocks.1", "logits"], replace={"blocks.0": zeros})
    copy = nnx.merge(*nnx.split(net))
    copy.eval()
    want, _ = copy.blocks[1](jnp.asarray(zeros))       # the next block applied by hand
    np.testing.assert_allclose(np.asarray(got["blocks.1"]), np.asarray(want), rtol=1e-5,
                               atol=1e-6)
    same = activations(net, images, ["logits"], replace={"blocks.0.act": ref_act(net, images)})
    np.testing.assert_allclose(np.asarray(same["logits"]), np.asarray(ref["logits"]),
                               rtol=1e-5, atol=1e-6)


def ref_act(net, images):
    return activations(net, images, ["blocks.0.act"])["blocks.0.act"]


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), strides=2)(x)
        x = nn.relu(x)
        x = Sub(name="sub")(x)
        return nn.Dense(4, name="head")(x.mean(axis=(1, 2)))


class Sub(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(6, (3, 3))(x) + x


def test_linen_names_and_values_equal_capture_intermediates(images):
    module = LinenNet()
    variables = module.init(jax.random.key(0), images[:1])
    model = from_linen(module, variables, input_shape=(16, 16, 3))
    names = list_layers(model)
    assert names == ["Conv_0", "sub.Conv_0", "sub", "head"]
    _, state = module.apply(variables, jnp.asarray(images), capture_intermediates=True,
                            mutable=["intermediates"])
    inter = state["intermediates"]
    got = activations(model, images, names + ["logits"])
    for k in names:
        node = inter
        for part in k.split("."):
            node = node[part]
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(node["__call__"][-1]),
                                   rtol=1e-6, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(np.asarray(got["logits"]),
                               np.asarray(module.apply(variables, jnp.asarray(images))),
                               rtol=1e-6, atol=1e-6)
    # forward from a layer: zeroing 'sub' leaves head = bias
    out = forward(model, images, replace={"sub": np.zeros((6, 8, 8, 6), np.float32)})
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(
        np.asarray(variables["params"]["head"]["bias"]), (6, 4)), atol=1e-6)


def test_function_model_names_are_the_dict_keys(images):
    w = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)

    def apply_fn(params, x):
        h = jnp.tanh(x @ params["w"])
        return {"hidden": h, "pooled": h.mean(axis=(1, 2)),
                "logits": h.mean(axis=(1, 2)) * 2}

    model = from_function(apply_fn, {"w": w}, input_shape=(16, 16, 3),
                          preprocess=Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3))
    assert list_layers(model) == ["hidden", "pooled"]
    got = activations(model, images, ["pooled", "hidden", "logits"])
    assert list(got) == ["pooled", "hidden", "logits"]
    h = np.tanh(((images - 0.5) / 0.5) @ w)
    np.testing.assert_allclose(np.asarray(got["hidden"]), h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["logits"]), 2 * h.mean(axis=(1, 2)), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(InputError, match="plain function.*cannot run forward from a layer"):
        forward(model, images, replace={"hidden": h})
    no_logits = from_function(lambda p, x: {"a": x * p}, np.float32(2.0),
                              input_shape=(16, 16, 3))
    assert list_layers(no_logits) == ["a"]
    with pytest.raises(KeyError, match="unknown layer 'logits'"):
        forward(no_logits, images)
