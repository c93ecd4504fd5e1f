"""Bad weight files and bad state_dicts give clear errors naming the problem; no pickled code runs."""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from repsim_jax.models import (PortError, UnsafeWeightsError, WeightsFileError,  # noqa: E402
                               build, export_state_dict, load_ported, load_state_dict,
                               port_torchvision, save_npz, save_safetensors)


class _Payload:
    """Pickles to ``os.system("touch <marker>")``: executing the pickle creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def small_sd():
    """A tiny torchvision-named state_dict (conv + BN + linear) as torch tensors."""
    g = torch.Generator().manual_seed(0)
    return {"conv1.weight": torch.randn(4, 3, 3, 3, generator=g),
            "bn1.weight": torch.rand(4, generator=g), "bn1.bias": torch.randn(4, generator=g),
            "bn1.running_mean": torch.randn(4, generator=g),
            "bn1.running_var": torch.rand(4, generator=g) + 0.5,
            "bn1.num_batches_tracked": torch.tensor(3),
            "fc.weight": torch.randn(2, 4, generator=g).t().contiguous().t(),  # strided view
            "fc.half": torch.randn(5, generator=g).half(),
            "fc.bf16": torch.randn(5, generator=g).bfloat16()}


@pytest.mark.parametrize("how", ["zip", "legacy", "plain_pickle", "nested_in_state_dict"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how, small_sd):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = _Payload(marker)
    if how == "zip":
        torch.save(payload, path)
    elif how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif how == "plain_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:  # a real state_dict with one poisoned entry
        torch.save({**small_sd, "evil": payload}, path)
    with pytest.raises(UnsafeWeightsError, match=r"(posix|os|nt)\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_builtins_eval_and_unknown_torch_globals_are_refused(tmp_path):
    path = tmp_path / "eval.pt"
    # GLOBAL builtins.eval + REDUCE, handwritten: refused at find_class, before any call
    path.write_bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x06\x00\x00\x001 + 1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafeWeightsError, match="builtins.eval"):
        load_state_dict(path)
    path.write_bytes(b"\x80\x02ctorch\nload\nq\x00.")
    with pytest.raises(UnsafeWeightsError, match="torch.load"):
        load_state_dict(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors", "npz"])
def test_formats_read_back_exactly(tmp_path, fmt, small_sd):
    path = tmp_path / f"w.{fmt}"
    if fmt == "zip":
        torch.save(small_sd, path)
    elif fmt == "legacy":
        torch.save(small_sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in small_sd.items()}, str(path))
    else:
        np.savez(path, **{k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                          for k, v in small_sd.items()})
    sd = load_state_dict(path)
    assert set(sd) == set(small_sd)
    for k, v in small_sd.items():
        want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        got = sd[k].astype(np.float32) if v.dtype == torch.bfloat16 else sd[k]
        assert got.shape == want.shape and np.array_equal(got, want), k


def test_checkpoint_wrappers_are_unwrapped(tmp_path, small_sd):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in small_sd.items()}},
               path)
    sd = load_state_dict(path)
    assert set(sd) == set(small_sd)
    assert np.array_equal(sd["conv1.weight"], small_sd["conv1.weight"].numpy())


def _write(fmt, sd, path):
    if fmt == "zip":
        torch.save(sd, path)
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        with open(path, "wb") as f:  # a file handle: savez would append ".npz" to the name
            np.savez(f, **{k: v.numpy() for k, v in sd.items()})


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors", "npz"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_fail_clearly(tmp_path, fmt, keep):
    sd = {"a.weight": torch.randn(64, 64), "b.bias": torch.randn(64)}
    path = tmp_path / "w.bin"
    _write(fmt, sd, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(WeightsFileError, match=r"truncated|corrupt"):
        load_state_dict(path)


def test_corrupt_unknown_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsFileError, match="empty file"):
        load_state_dict(empty)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsFileError, match="unrecognised weights format|corrupt"):
        load_state_dict(junk)
    with pytest.raises(WeightsFileError, match="no such weights file"):
        load_state_dict(tmp_path / "absent.pt")
    # a zip that is neither torch nor npz
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(WeightsFileError, match="neither a torch.save file nor an .npz"):
        load_state_dict(other)
    # a torch zip whose storage bytes were flipped in length (corrupt member)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/data/" in item.filename:
                data = data[:40]
            zout.writestr(item, data)
    with pytest.raises(WeightsFileError, match="truncated"):
        load_state_dict(bad)
    # npz with a pickled object array
    obj = tmp_path / "obj.npz"
    np.savez(obj, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsFileError, match="pickled objects"):
        load_state_dict(obj)


def test_wrong_architecture_names_missing_unexpected_and_misshaped_keys():
    r18 = build("resnet18", num_classes=10, input_shape=(32, 32, 3))
    r50 = build("resnet50", num_classes=10, input_shape=(32, 32, 3))
    with pytest.raises(PortError) as err:
        port_torchvision(r50, export_state_dict(r18))
    msg = str(err.value)
    assert "does not fit resnet50" in msg and "wrong architecture" in msg
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "mis-shaped keys" in msg and "layer1.0.conv1.weight" in msg  # 3x3 vs 1x1
    with pytest.raises(PortError) as err:
        port_torchvision(r18, export_state_dict(r50))
    msg = str(err.value)
    assert "unexpected keys" in msg and "layer1.0.conv3.weight" in msg
    assert "fc.weight (got (10, 2048), model needs (10, 512))" in msg
    # a VGG state_dict for AlexNet fails too, naming keys
    with pytest.raises(PortError, match=r"features\.\d+\.weight"):
        port_torchvision(build("alexnet", num_classes=10, input_shape=(63, 63, 3)),
                         export_state_dict(build("vgg11", num_classes=10, hidden=16,
                                                 input_shape=(32, 32, 3))))


def test_misshaped_nonfinite_and_partial_state_dicts(tmp_path):
    src = build("resnet18", num_classes=10, input_shape=(32, 32, 3))
    sd = export_state_dict(src)
    model = build("resnet18", num_classes=1000, input_shape=(32, 32, 3))
    with pytest.raises(PortError, match=r"fc\.weight \(got \(10, 512\), model needs \(1000, 512\)\)"):
        port_torchvision(model, sd)
    bad = dict(sd, **{"layer2.0.bn1.running_var": np.full(128, np.nan, np.float32)})
    with pytest.raises(PortError, match=r"NaN/Inf values \(1\): layer2.0.bn1.running_var"):
        port_torchvision(build("resnet18", num_classes=10), bad)
    partial = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with pytest.raises(PortError, match=r"missing keys \(2\): fc.bias, fc.weight|"
                                        r"missing keys \(2\): fc.weight, fc.bias"):
        port_torchvision(build("resnet18", num_classes=10), partial)
    # strict=False ports what is there and keeps the rest
    target = build("resnet18", num_classes=10, input_shape=(32, 32, 3))
    fc_before = np.asarray(target.fc.weight[...]).copy()
    port_torchvision(target, dict(partial, extra=np.zeros(3)), strict=False)
    assert np.array_equal(np.asarray(target.conv1.weight[...]),
                          np.transpose(sd["conv1.weight"], (2, 3, 1, 0)))
    assert np.array_equal(np.asarray(target.fc.weight[...]), fc_before)
    # save_npz / save_safetensors round-trip through load_ported with the head size inferred
    for save in (save_npz, save_safetensors):
        path = save(src, tmp_path / f"r18.{save.__name__}")
        back = load_ported("resnet18", path, input_shape=(32, 32, 3))
        assert back.fc.weight.shape == (512, 10)
        assert all(np.array_equal(a, b) for a, b in zip(export_state_dict(back).values(),
                                                         sd.values()))


def test_port_rejects_non_mapping():
    with pytest.raises(PortError, match="expected a mapping"):
        port_torchvision(build("resnet18", num_classes=2), [np.zeros(3)])


def test_expanding_stride_zero_tensor_is_refused(tmp_path):
    # a 4-element storage viewed as 10^6 x 10^6 with stride 0 would expand to 4 TB
    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.zeros(4).as_strided((10**6, 10**6), (0, 0))}, path)
    with pytest.raises(WeightsFileError, match="more elements than its storage"):
        load_state_dict(path)
