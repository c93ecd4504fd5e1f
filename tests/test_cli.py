"""`repsim` command line: help everywhere, `layers`, a tiny sweep, and one clear error line
(exit status 2) for each kind of bad input."""
import errno
import json

import numpy as np
import pytest

from repsim_jax import cli

RANDOM_VGG = ["--arch", "small_vgg", "--num-classes", "8"]


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("repsim: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, expect", [
    ([], ["sweep", "demo", "layers", "report"]),
    (["report"], ["OUT", "recomputed"]),
    (["sweep"], ["--config", "--methods", "--arch", "--weights", "--layers", "--data",
                 "--set", "--out", "--coordinator", "--process-id"]),
    (["demo"], ["--out", "--n-images", "--no-progress"]),
    (["layers"], ["--num-classes", "model"]),
])
def test_help_everywhere(capsys, argv, expect):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in expect:
        assert word in out


def test_no_command_prints_help(capsys):
    rc, out, _ = _run(capsys)
    assert rc == 0 and "repsim demo" in out


def test_layers_lists_names_and_shapes_in_forward_order(capsys):
    from repsim_jax import models
    rc, out, _ = _run(capsys, "layers", "resnet18")
    assert rc == 0
    rows = [l.split() for l in out.splitlines()[1:]]
    names = [r[0] for r in rows]
    model = models.build("resnet18", num_classes=1000)
    assert sorted(names) == sorted(models.list_layers(model))
    assert names[0] == "conv1" and names[-1] == "fc"                 # forward order
    assert names.index("layer3.1.conv2") < names.index("layer4.0.conv1")
    assert rows[names.index("layer3.1.conv2")][1:] == ["14", "x", "14", "x", "256"]


def test_tiny_sweep_prints_the_report_path(capsys, tmp_path):
    out_dir = tmp_path / "cli"
    rc, out, err = _run(capsys, "sweep", *RANDOM_VGG, "--methods", "invert", "--layers",
                        "features.15", "--n-images", "10", "--out", str(out_dir),
                        "--set", "invert.L=1", "--set", "invert.B=1", "--no-progress")
    assert rc == 0, err
    path = out.strip().splitlines()[-1].split()[1]
    assert path == str(out_dir / "report.html")
    rows = json.loads((out_dir / "tables" / "invert_neurons.json").read_text())
    assert len(rows) == 64 and {r["layer"] for r in rows} == {"features.15"}
    cfg = json.loads((out_dir / "manifest.json").read_text())["config"]
    assert cfg["options"]["invert"]["L"] == 1 and cfg["data"]["n_images"] == 10


def test_layer_typo(capsys, tmp_path):
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--layers", "feature.15", "--methods",
                      "invert", "--out", str(tmp_path / "o"))
    assert rc == 2
    assert "unknown layer 'feature.15'. Did you mean 'features.15'" in _error_line(err)


def test_unknown_method_and_missing_config(capsys, tmp_path):
    rc, _, err = _run(capsys, "sweep", "--methods", "semantics,invert")
    assert rc == 2 and "unknown method 'semantics'" in _error_line(err)
    rc, _, err = _run(capsys, "sweep", "--config", str(tmp_path / "none.toml"))
    assert rc == 2 and "none.toml' does not exist" in _error_line(err)


def test_unknown_builtin_model(capsys, tmp_path):
    rc, _, err = _run(capsys, "sweep", "--models", "resnet18", "--out", str(tmp_path / "o"))
    assert rc == 2
    line = _error_line(err)
    assert "unknown built-in model 'resnet18'" in line and "--arch" in line


def test_weight_file_of_another_architecture(capsys, tmp_path):
    from flax import nnx

    from repsim_jax import models
    wrong = models.build("small_resnet", num_classes=8, rngs=nnx.Rngs(0))
    path = models.save_npz(wrong, tmp_path / "resnet_weights.npz")
    rc, _, err = _run(capsys, "sweep", "--arch", "small_vgg", "--weights", str(path),
                      "--methods", "invert", "--out", str(tmp_path / "o"))
    assert rc == 2
    line = _error_line(err)
    assert "does not fit" in line and "wrong architecture" in line
    # the details (keys by name) follow, indented
    assert "features.0.weight" in err and "layer1.0.conv1.weight" in err
    assert not (tmp_path / "o").exists()      # inputs are validated before any write


def test_missing_weight_file_and_bad_array_file(capsys, tmp_path):
    rc, _, err = _run(capsys, "sweep", "--arch", "small_vgg", "--weights",
                      str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o"))
    assert rc == 2 and "nope.pth' not found" in _error_line(err)
    np.savez(tmp_path / "arrays.npz", pictures=np.zeros((4, 8, 8, 3)))
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--data", str(tmp_path / "arrays.npz"),
                      "--methods", "semantic", "--out", str(tmp_path / "o2"))
    assert rc == 2 and "has no 'images' array" in _error_line(err)


def test_foreign_and_non_sweep_output_directories(capsys, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps(
        {"config_hash": "0123456789abcdef", "config": {"seed": 5}}))
    # another configuration's manifest with a finished unit: its results are refused
    (foreign / "units" / "invert__x__y").mkdir(parents=True)
    (foreign / "units" / "invert__x__y.done.json").write_text(
        json.dumps({"config_hash": "0123456789abcdef"}))
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--methods", "invert", "--out",
                      str(foreign))
    assert rc == 2
    assert "holds the results of another configuration" in _error_line(err)
    assert (foreign / "units" / "invert__x__y.done.json").is_file()   # untouched
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--methods", "invert", "--out",
                      str(other))
    assert rc == 2 and "is not a repsim sweep directory" in _error_line(err)
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]    # untouched


def test_full_disk(capsys, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("repsim_jax.sweep.store.os.replace", full)
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--methods", "invert", "--out",
                      str(tmp_path / "o"))
    assert rc == 2 and "no space left on the device" in _error_line(err)


def test_unknown_tfds_name_and_manual_download(capsys, tmp_path):
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--methods", "semantic", "--data",
                      "tfds:cifar11", "--data-dir", str(tmp_path / "tfds"), "--out",
                      str(tmp_path / "o"))
    assert rc == 2
    assert "unknown tfds data set 'cifar11'. Did you mean" in _error_line(err)
    assert "'cifar10'" in _error_line(err)
    rc, _, err = _run(capsys, "sweep", *RANDOM_VGG, "--methods", "semantic", "--data",
                      "tfds:imagenet2012", "--data-dir", str(tmp_path / "tfds"), "--out",
                      str(tmp_path / "o"))
    assert rc == 2 and "needs a manual download" in _error_line(err)
    assert not (tmp_path / "o").exists()
