"""End-to-end sweeps at tiny size: report numbers = the method functions' numbers,
determinism, resume after a real kill, foreign output directories, full disk."""
import base64
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from repsim_jax.sweep import config as C
from repsim_jax.sweep.run import run_sweep

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["features.11", "features.15"]
TINY = {
    "methods": ["semantic", "invert", "concepts"],
    "layers": LAYERS,
    "data": {"source": "repsim_shapes", "split": "test", "n_images": 12},
    "models": [{"name": "rvgg", "arch": "small_vgg", "num_classes": 8}],
    "batch_size": 8,
    "seed": 0,
    "invert": {"L": 2, "B": 2},
    "concepts": {"k": 3, "max_iter": 30, "net2vec_epochs": 3},
}


def _cfg(out, **kw):
    return C.from_dict({**TINY, "output": str(out), **kw})


def _toml(path: Path, out: Path) -> Path:
    lines = ['methods = ["semantic", "invert", "concepts"]',
             f'layers = {json.dumps(LAYERS)}', f'output = "{out}"', "batch_size = 8",
             "seed = 0", "[data]", 'source = "repsim_shapes"', 'split = "test"',
             "n_images = 12", "[[models]]", 'name = "rvgg"', 'arch = "small_vgg"',
             "num_classes = 8", "[invert]", "L = 2", "B = 2", "[concepts]", "k = 3",
             "max_iter = 30", "net2vec_epochs = 3"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _results(out: Path) -> dict:
    """Every number of a finished sweep: arrays of every unit + every table row."""
    res = {}
    for f in sorted((out / "arrays").glob("*.npz")):
        with np.load(f) as z:
            res.update({f"{f.stem}:{k}": z[k] for k in z.files})
    for f in sorted((out / "tables").glob("*.json")):
        res[f.name] = json.loads(f.read_text())
    return res


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "ref"
    path = run_sweep(_cfg(out), progress=False, echo=None)
    return out, path


def _direct_inputs():
    from flax import nnx

    from repsim_jax import models
    from repsim_jax.sweep.inputs import load_data
    data = load_data(C.DataSpec(n_images=12))
    model = models.build("small_vgg", num_classes=8, rngs=nnx.Rngs(0))
    acts = models.activations(model, data.images, LAYERS)
    return data, {k: np.asarray(v) for k, v in acts.items()}


@pytest.mark.slow
def test_report_holds_the_numbers_of_the_method_functions(reference):
    from repsim_jax import concepts, invert, semantic
    out, path = reference
    data, acts = _direct_inputs()
    res = _results(out)
    # semantic: RSM arrays, per-layer table, layer x layer CKA
    direct = semantic.rsm({l: acts[l] for l in LAYERS}, kernel="cosine", matcher="exact")
    for l in LAYERS:
        np.testing.assert_allclose(res[f"semantic__rvgg__{l}:rsm/{l}"], direct[l],
                                   rtol=1e-5, atol=1e-6)
    rows = {r["layer"]: r for r in res["semantic_layers.json"]}
    for l in LAYERS:
        assert rows[l]["top1_class_semantic"] == pytest.approx(
            semantic.top1_agreement(direct[l], data.labels))
    cka = semantic.compare(np.stack([direct[l] for l in LAYERS]), method="cka_debiased")
    table = {(r["layer_a"], r["layer_b"]): r["cka_debiased"]
             for r in res["semantic_layer_similarity.json"]}
    for i, a in enumerate(LAYERS):
        for j, b in enumerate(LAYERS):
            assert table[(a, b)] == pytest.approx(cka[i, j], abs=1e-5)
    # invert: every neuron's best formula and AUC, as in the CSV
    with open(out / "tables" / "invert_neurons.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == sum(acts[l].shape[-1] for l in LAYERS)     # every neuron
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = invert.explain({l: acts[l] for l in LAYERS}, data.concept_labels,
                             list(data.concept_names), L=2, B=2)
    for r in csv_rows:
        beam = inv[r["layer"]][int(r["neuron"])]
        if beam.best is None:
            assert r["formula"] == ""
            continue
        assert float(r["auc"]) == pytest.approx(beam.best.auc, abs=1e-6)
        assert float(r["p_value"]) == pytest.approx(beam.p_value, rel=1e-6)
    same = np.mean([r["formula"] == (inv[r["layer"]][int(r["neuron"])].best.formula
                                     if inv[r["layer"]][int(r["neuron"])].best else "")
                    for r in csv_rows])
    assert same >= 0.97          # identical up to ties flipped by float round-off
    # concepts: ICE reconstruction error per layer
    for r in res["concepts_ice.json"]:
        ice = concepts.ice_fit(np.maximum(acts[r["layer"]], 0), 3, max_iter=30)
        assert r["reconstruction_error"] == pytest.approx(ice.reconstruction_error, rel=1e-3)
    # concepts: Net2Vec set IoU per (layer, concept) - trained on the first half of the
    # images with the unit's seed, evaluated on the second half
    from repsim_jax.concepts import Net2VecConfig, net2vec
    from repsim_jax.sweep.plan import unit_seed
    masks, names = data.concept_masks, list(data.concept_names)
    n = len(masks) // 2
    keep = np.flatnonzero(masks[:n].any((0, 1, 2)) & masks[n:].any((0, 1, 2)))
    n2v = {(r["layer"], r["concept"]): r["set_iou"] for r in res["concepts_net2vec.json"]}
    assert len(n2v) == len(LAYERS) * len(keep)
    for l in LAYERS:
        ref = net2vec({l: acts[l][:n]}, masks[:n][..., keep], {l: acts[l][n:]},
                      masks[n:][..., keep], [names[i] for i in keep],
                      Net2VecConfig(epochs=3, seed=unit_seed(0, f"concepts__rvgg__{l}"),
                                    progress=False))
        for j, c in enumerate(ref.concept_names):
            assert n2v[(l, c)] == pytest.approx(float(ref.iou[0, j]), abs=1e-4)
    # the report: self-contained, every figure embedded, the configuration shown
    html = path.read_text()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) >= 2 * len(LAYERS) + 2
    assert html.count("data:image/png;base64,") == len(figures)
    for f in figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(first)[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] in html and "features.15" in html
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert {r["status"] for r in log} == {"ran"} and all(r["devices"] for r in log)
    run_log = json.loads((out / "run_log.json").read_text())
    assert run_log["devices"]["device_count"] == 8 and run_log["units"] == len(log)


@pytest.mark.slow
def test_identical_config_and_seed_give_identical_numbers(reference, tmp_path):
    out, _ = reference
    run_sweep(_cfg(tmp_path / "again"), progress=False, echo=None)
    _assert_same(_results(out), _results(tmp_path / "again"))


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_and_ends_identical(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "killed"
    toml = _toml(tmp_path / "run.toml", out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "repsim_jax.cli", "sweep", "--config",
                             str(toml), "--no-progress"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list((out / "units").glob("*.done.json"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p.name: p.read_text() for p in (out / "units").glob("*.done.json")}
    total = len(json.loads((ref_out / "run_log.json").read_text())["unit_seconds"])
    assert 2 <= len(finished) < total
    assert not (out / "report.html").exists()
    run_sweep(_cfg(out), progress=False, echo=None)
    # nothing finished was recomputed: markers untouched, logged as resumed
    for name, text in finished.items():
        assert (out / "units" / name).read_text() == text
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    resumed = {r["unit"] for r in log if r["status"] == "resumed"}
    assert resumed == {n[:-len(".done.json")] for n in finished}
    ran = [r["unit"] for r in log if r["status"] == "ran"]
    assert len(ran) == len(set(ran)) == total     # each unit computed exactly once
    _assert_same(_results(ref_out), _results(out))


@pytest.mark.slow
def test_output_dir_of_another_configuration_is_refused(reference):
    out, _ = reference
    before = sorted(p.name for p in (out / "units").iterdir())
    with pytest.raises(C.SweepError, match=r"another configuration.*seed: 0 -> 1"):
        run_sweep(_cfg(out, seed=1), progress=False, echo=None)
    assert sorted(p.name for p in (out / "units").iterdir()) == before


def test_full_disk_during_a_sweep_is_a_clear_error_and_resumable(tmp_path, monkeypatch):
    import errno
    cfg = C.from_dict({**TINY, "methods": ["invert"], "layers": ["features.15"],
                       "output": str(tmp_path / "full")})
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if str(dst).endswith(".done.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr("repsim_jax.sweep.store.os.replace", replace)
    with pytest.raises(C.SweepError, match="no space left on the device"):
        run_sweep(cfg, progress=False, echo=None)
    monkeypatch.undo()
    assert not list((tmp_path / "full" / "units").glob("*.done.json"))
    path = run_sweep(cfg, progress=False, echo=None)       # rerun: completes
    assert path.is_file()
    rows = json.loads((tmp_path / "full" / "tables" / "invert_neurons.json").read_text())
    assert len(rows) == 64 and all(0.0 <= r["auc"] <= 1.0 for r in rows if r["formula"])


def test_methods_needing_annotations_refuse_bare_arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imgs.npz", images=rng.uniform(size=(6, 64, 64, 3)).astype(np.float32))
    cfg = C.from_dict({**TINY, "methods": ["invert"], "output": str(tmp_path / "o"),
                       "data": {"source": str(tmp_path / "imgs.npz")}})
    with pytest.raises(C.InputError if hasattr(C, "InputError") else Exception,
                       match="needs concept labels.*'imgs'"):
        run_sweep(cfg, progress=False, echo=None)


@pytest.mark.slow
def test_two_fake_hosts_share_the_units_and_match_one_host(tmp_path, monkeypatch):
    """Two processes of a multi-host run, simulated by two threads with their own
    process index and a shared key-value store (real processes: test_multihost.py): each
    unit runs exactly once, on one host, and the results equal a single-process run."""
    import threading

    from repsim_jax.sweep import run as R
    from repsim_jax.sweep.hosts import Hosts, MemoryKV
    cfg_kw = dict(methods=["invert"], layers=["features.11", "features.15"])
    single = tmp_path / "single"
    run_sweep(_cfg(single, **cfg_kw), progress=False, echo=None)
    local, kv = threading.local(), MemoryKV()
    monkeypatch.setattr(R, "_hosts", lambda cfg: Hosts(local.index, 2, kv, poll_s=0.05))
    multi = tmp_path / "multi"
    errors = []

    def host(i):
        local.index = i
        try:
            run_sweep(_cfg(multi, **cfg_kw), progress=False, echo=None)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=host, args=(i,)) for i in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    log = [json.loads(l) for l in (multi / "log.jsonl").read_text().splitlines()]
    ran = {r["unit"]: r["process"] for r in log if r["status"] == "ran"}
    assert len(ran) == len([r for r in log if r["status"] != "report"]) == 3  # + FDR unit
    assert set(ran.values()) == {0, 1}                   # both hosts worked
    _assert_same(_results(single), _results(multi))
