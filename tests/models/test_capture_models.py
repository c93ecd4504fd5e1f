"""Named-layer capture on the torchvision architectures: names, shapes, bad input, sharding."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from repsim_jax._checks import InputError
from repsim_jax.models import activations, build, forward, layer_shapes, list_layers, model_names


def abstract(name, **kw):
    return nnx.eval_shape(lambda: build(name, **kw))


def test_registry_and_unknown_model_name():
    names = model_names()
    for n in ("resnet18", "resnet34", "resnet50", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn",
              "alexnet"):
        assert n in names
    with pytest.raises(KeyError, match=r"unknown model 'resnet19'.*Valid models: resnet18"):
        build("resnet19")
    with pytest.raises(InputError, match="num_classes"):
        build("resnet18", num_classes=0)
    with pytest.raises(InputError, match="input_shape"):
        build("resnet18", input_shape=(32, 32))


@pytest.mark.parametrize("name,n_params", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                           ("resnet50", 25_557_032), ("vgg11", 132_863_336),
                                           ("vgg11_bn", 132_868_840), ("vgg16", 138_357_544),
                                           ("vgg16_bn", 138_365_992), ("alexnet", 61_100_840)])
def test_parameter_counts_match_torchvision(name, n_params):
    model = abstract(name)
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param))) \
        == n_params


def test_layer_names_and_shapes_at_224():
    s = layer_shapes(abstract("resnet50"))
    names = list(s)
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-2:] == ["avgpool", "fc"]
    assert s["maxpool"] == (56, 56, 64) and s["layer1.0.downsample.0"] == (56, 56, 256)
    assert s["layer3.5.conv2"] == (14, 14, 256) and s["layer4"] == (7, 7, 2048)
    assert s["avgpool"] == (1, 1, 2048) and s["fc"] == (1000,)
    assert names.index("layer1.0.conv3") < names.index("layer1.0") < names.index("layer1")
    v = layer_shapes(abstract("vgg16_bn"))
    assert [k for k in v if k.startswith("features.")][-1] == "features.43"
    assert v["features.43"] == (7, 7, 512) and v["avgpool"] == (7, 7, 512)
    assert v["classifier.0"] == (4096,) and v["classifier.6"] == (1000,)
    a = layer_shapes(abstract("alexnet"))
    assert a["features.0"] == (55, 55, 64) and a["features.12"] == (6, 6, 256)
    assert a["classifier.6"] == (1000,)
    # any input size the pooling allows, e.g. 32 px for VGG (adaptive pooling to 7x7)
    assert layer_shapes(abstract("vgg11"), (32, 32, 3))["avgpool"] == (7, 7, 512)


@pytest.fixture(scope="module")
def r18():
    return build("resnet18", num_classes=10, input_shape=(32, 32, 3))


def test_unknown_layer_and_bad_images(r18):
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    with pytest.raises(KeyError, match=r"unknown layer 'layer3.1.conv9'.*Valid layers: conv1"):
        activations(r18, x, ["layer3.1.conv9"])
    bad = x.copy()
    bad[1, 3, 4, 0] = np.nan
    with pytest.raises(InputError, match="NaN/Inf"):
        activations(r18, bad, ["fc"])
    with pytest.raises(InputError, match="expects 3 channels"):
        activations(r18, x[..., :1], ["fc"])
    with pytest.raises(InputError, match="4 dimensions"):
        activations(r18, x[0], ["fc"])
    with pytest.raises(InputError, match="too small for this model"):
        forward(build("vgg11", num_classes=2, hidden=8), x[:, :16, :16])


def test_chunked_equals_full_and_layers_are_consistent(r18):
    x = np.random.default_rng(1).random((10, 32, 32, 3), np.float32)
    full = activations(r18, x, ["layer2.1", "layer2.1.relu", "avgpool", "logits", "fc"])
    chunked = activations(r18, x, ["layer2.1", "avgpool", "logits"], batch_size=4)
    for k in chunked:
        np.testing.assert_allclose(chunked[k], full[k], atol=1e-5, rtol=1e-5)
    # the relu's last call is the block output; logits are fc; avgpool is the spatial mean
    np.testing.assert_array_equal(full["layer2.1.relu"], full["layer2.1"])
    np.testing.assert_array_equal(full["logits"], full["fc"])
    l4 = activations(r18, x, ["layer4"])["layer4"]
    np.testing.assert_allclose(full["avgpool"][:, 0, 0], l4.mean(axis=(1, 2)), atol=1e-5)


def test_sharded_forward_on_8_device_mesh_equals_single_device(r18):
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should give 8 CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    x = np.random.default_rng(2).random((16, 32, 32, 3), np.float32)
    layers = ["conv1", "layer3.0.downsample", "layer4", "logits"]
    ref = activations(r18, x, layers)
    out = activations(r18, x, layers, sharding=sharding)
    for k in layers:
        assert len(out[k].sharding.device_set) == 8, k
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), atol=1e-5, rtol=1e-5)
    chunked = activations(r18, x, ["logits"], sharding=sharding, batch_size=8)
    np.testing.assert_allclose(np.asarray(chunked["logits"]), np.asarray(ref["logits"]),
                               atol=1e-5, rtol=1e-5)


def test_sharded_forward_with_weights_committed_to_one_device():
    # weights restored from a checkpoint live (committed) on one device; sharded images
    # must still work (the weights are replicated onto the mesh), with the same numbers.
    from flax import nnx
    from repsim_jax.models import build
    model = build("small_vgg", num_classes=7, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, jax.devices()[0])
    model = nnx.merge(graphdef, state)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = np.random.default_rng(3).random((16, 64, 64, 3), np.float32)
    ref = activations(model, x, ["features.3", "logits"])
    out = activations(model, x, ["features.3", "logits"], sharding=NamedSharding(mesh, P("data")))
    for k in ref:
        assert len(out[k].sharding.device_set) == 8, k
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), atol=1e-5, rtol=1e-5)
