"""Small CNNs (SmallVGG / SmallResNet), the optax trainer and the trained-model zoo."""
import json
import shutil
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.data import shapes
from repsim_jax.models import capture, zoo
from repsim_jax.models.small import SMALL_MODELS, BatchNorm2d, SmallResNet, SmallVGG
from repsim_jax.models.train import TrainConfig, evaluate, train


def test_layer_names_and_depth():
    vgg = SmallVGG(7, rngs=nnx.Rngs(0))
    res = SmallResNet(7, rngs=nnx.Rngs(0))
    assert SMALL_MODELS == {"small_vgg": SmallVGG, "small_resnet": SmallResNet}
    vgg_layers = capture.layer_shapes(vgg)
    assert list(vgg_layers)[:4] == ["features.0", "features.1", "features.2", "features.3"]
    assert vgg_layers["features.0"] == (64, 64, 16) and vgg_layers["features.15"] == (4, 4, 64)
    assert vgg_layers["classifier.2"] == (7,)
    res_layers = capture.layer_shapes(res)
    for name in ("conv1", "maxpool", "layer1.0.conv1", "layer2.0.downsample.0", "layer3.1", "layer3.1.conv2",
                 "layer3", "globalpool", "fc.0", "fc.2", "fc"):
        assert name in res_layers, name
    assert res_layers["layer3"] == (8, 8, 64) and res_layers["fc"] == (7,)
    n_conv = lambda m: sum(1 for p, v in nnx.iter_graph(m)  # noqa: E731
                           if type(v).__name__ == "Conv2d")
    assert n_conv(res) == 11 and n_conv(vgg) == 4          # different depths


def test_batchnorm_matches_torch_train_and_eval():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (8, 5, 5, 4)).astype(np.float32)
    bn = BatchNorm2d(4)
    bn.weight[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.array(bn.weight[...])))
        ref.bias.copy_(torch.from_numpy(np.array(bn.bias[...])))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    bn.train()
    ref.train()
    y = np.asarray(bn(jnp.asarray(x)))
    yt = ref(xt).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, yt, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.running_mean[...]), ref.running_mean.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.running_var[...]), ref.running_var.numpy(),
                               atol=1e-4)
    bn.eval()
    ref.eval()
    np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))),
                               ref(xt).detach().numpy().transpose(0, 2, 3, 1), atol=1e-4)


def test_train_learns_a_planted_rule():
    """Dark vs light background, from 320 images: the trainer must get it right."""
    data = shapes.generate(400, seed=11)
    y = data.background.astype(np.int32)
    model = SmallVGG(2, rngs=nnx.Rngs(1))
    hist = train(model, data.images[:320], y[:320], config=TrainConfig(
        epochs=2, batch_size=32, learning_rate=3e-3, warmup_steps=2), progress=False)
    assert hist["steps"] == 20 and hist["loss"][-1] < hist["loss"][0]
    assert evaluate(model, data.images[320:], y[320:]) >= 0.95
    assert model.features[1].use_running_average          # returned in eval mode


def test_trainer_bad_input():
    model = SmallVGG(3, rngs=nnx.Rngs(0))
    x = np.zeros((4, 64, 64, 3), np.float32)
    y = np.array([0, 1, 2, 0])
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        train(model, bad, y, progress=False)
    with pytest.raises(InputError, match=r"labels.*\[0, 3\)"):
        train(model, x, np.array([0, 1, 5, 0]), progress=False)
    with pytest.raises(InputError, match="shape"):
        train(model, np.zeros((4, 32, 32, 3), np.float32), y, progress=False)
    with pytest.raises(InputError, match="labels"):
        train(model, x, y[:3], progress=False)
    with pytest.raises(KeyError, match="small_vgg"):
        zoo.load_trained("small_vgg16")


TINY = TrainConfig(epochs=1, batch_size=32, learning_rate=3e-3, warmup_steps=1)


@pytest.mark.slow
def test_cache_lock_and_corruption(tmp_path):
    """Two concurrent callers train once; a corrupt entry is detected and retrained."""
    results = []

    def work():
        results.append(zoo._load_or_train("small_vgg", TINY, root=tmp_path, train_size=64,
                                          progress=False))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(info["cached"] for _, info in results) == [False, True]
    (m1, i1), (m2, i2) = results
    x = shapes.load("test").images[:8]
    np.testing.assert_allclose(capture.forward(m1, x), capture.forward(m2, x), atol=1e-5)
    entry = zoo.entry_dir("small_vgg", TINY, root=tmp_path, train_size=64)
    assert i1["path"] == str(entry) and json.loads((entry / "info.json").read_text())
    # an entry of an earlier version (orbax checkpoint/, no state.npz) is still read
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(entry / "checkpoint", nnx.state(m1).to_pure_dict())
    good = (entry / "state.npz").read_bytes()
    (entry / "state.npz").unlink()
    m_old, i_old = zoo._load_or_train("small_vgg", TINY, root=tmp_path, train_size=64)
    assert i_old["cached"]
    np.testing.assert_array_equal(capture.forward(m_old, x), capture.forward(m1, x))
    shutil.rmtree(entry / "checkpoint")
    # a truncated weight file -> warning + retrain
    (entry / "state.npz").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m3, i3 = zoo._load_or_train("small_vgg", TINY, root=tmp_path, train_size=64,
                                    progress=False)
    assert not i3["cached"] and any("retraining" in str(w.message) for w in caught)
    np.testing.assert_allclose(capture.forward(m3, x), capture.forward(m1, x), atol=1e-4)
    _, i4 = zoo._load_or_train("small_vgg", TINY, root=tmp_path, train_size=64)
    assert i4["cached"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["small_vgg", "small_resnet"])
def test_trained_zoo_models_reach_95_percent(name):
    model, info = zoo.load_trained(name)
    test = shapes.load("test")
    acc = evaluate(model, test.images, test.labels)
    print(f"{name}: test accuracy {acc:.4f}, trained in {info['train_seconds']:.0f} s "
          f"(cached={info['cached']})")
    assert acc >= 0.95
    assert abs(acc - info["test_accuracy"]) < 1e-6
    assert info["data"]["class_rules"] == list(shapes.CLASS_RULES)
    # activations of named layers work on the trained model
    acts = capture.activations(model, test.images[:4], ["globalpool", "logits"])
    assert acts["logits"].shape == (4, 7)
    # served from the cache the second time, same weights
    again, info2 = zoo.load_trained(name)
    assert info2["cached"]
    np.testing.assert_allclose(capture.forward(again, test.images[:16]),
                               capture.forward(model, test.images[:16]), atol=1e-5)


@pytest.mark.slow
def test_data_parallel_training_matches_single_device():
    """8 CPU devices, batch split across them: same losses and weights as one device."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    data = shapes.load("test").take(slice(0, 64))
    cfg = TrainConfig(epochs=1, batch_size=32, warmup_steps=1)
    runs = []
    for sharding in (None, NamedSharding(mesh, P("data"))):
        model = SmallVGG(7, rngs=nnx.Rngs(2))
        hist = train(model, data.images, data.labels, config=cfg, progress=False,
                     data_sharding=sharding)
        runs.append((hist, model))
    np.testing.assert_allclose(runs[0][0]["loss"], runs[1][0]["loss"], rtol=1e-4)
    np.testing.assert_allclose(capture.forward(runs[0][1], data.images[:8]),
                               capture.forward(runs[1][1], data.images[:8]), atol=1e-3)
    with pytest.raises(InputError, match="multiple"):
        train(SmallVGG(7, rngs=nnx.Rngs(2)), data.images, data.labels, progress=False,
              config=TrainConfig(epochs=1, batch_size=12),
              data_sharding=NamedSharding(mesh, P("data")))
