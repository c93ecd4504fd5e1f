"""The progress convention (repsim_jax._progress): log-line mode output and silence.

Under pytest stderr is not a terminal, so ``progress=None`` is the log-line mode."""
import re

import numpy as np
import pytest

from repsim_jax import _progress


def test_modes_follow_the_convention(monkeypatch):
    monkeypatch.delenv("REPSIM_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert _progress.mode(None) == "lines" and _progress.mode(True) == "lines"
    assert _progress.mode(False) == "off"
    with _progress.disabled():                       # what `repsim --no-progress` does
        assert _progress.mode(None) == _progress.mode(True) == "off"
    assert _progress.mode(None) == "lines"
    monkeypatch.setenv("REPSIM_PROGRESS", "0")
    assert _progress.mode(None) == "off"
    monkeypatch.setenv("REPSIM_PROGRESS", "bar")
    assert _progress.mode(None) == "bar" and _progress.mode(False) == "off"


def test_line_mode_inner_loops_report_only_when_long(capsys, monkeypatch):
    monkeypatch.delenv("REPSIM_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    list(_progress.track(range(5), desc="short", unit="tile"))          # quick: quiet
    assert capsys.readouterr().err == ""
    clock = iter(np.arange(0.0, 100.0, 12.0))
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: float(next(clock)))
    with _progress.bar(4, desc="long", unit="tile", interval=20) as p:
        for _ in range(4):
            p.update(1)
    lines = capsys.readouterr().err.splitlines()
    # one interim line each >= 20 s (with an ETA) and a last one
    assert lines[0].startswith("long: 2/4 tile (50%), 24 s elapsed, ETA 24 s"), lines
    assert lines[-1].startswith("long: 4/4 tile (100%)") and len(lines) == 2


def test_first_use_training_says_what_it_does_and_logs_one_line_per_epoch(tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.delenv("REPSIM_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    from repsim_jax.data import shapes
    from repsim_jax.models import zoo
    from repsim_jax.models.train import TrainConfig, train
    small = {"train": shapes.generate(48, seed=3), "test": shapes.generate(32, seed=4)}
    monkeypatch.setattr(shapes, "load", lambda split: small[split])   # no full splits
    cfg = TrainConfig(epochs=3, batch_size=16, learning_rate=2e-3, warmup_steps=2)
    model, info = zoo._load_or_train("small_vgg", cfg, root=tmp_path, train_size=48)
    err = capsys.readouterr().err
    assert not info["cached"]
    assert re.search(r"^training small_vgg on first use, about \d+ min .*; cached in "
                     + re.escape(str(tmp_path)), err, re.M), err
    epochs = re.findall(r"^train SmallVGG epoch (\d)/3: loss ([0-9.]+), accuracy ([0-9.]+)",
                        err, re.M)
    assert [e[0] for e in epochs] == ["1", "2", "3"], err
    assert all(0.0 <= float(a) <= 1.0 for _, _, a in epochs)
    assert "\r" not in err and len(err.splitlines()) == 4     # no bar redraws in a log
    # served from the cache: nothing to say
    _, info = zoo._load_or_train("small_vgg", cfg, root=tmp_path, train_size=48)
    assert info["cached"] and capsys.readouterr().err == ""
    # progress=False: silent
    d = small["test"]
    hist = train(model, d.images, d.labels, config=TrainConfig(epochs=2, batch_size=16),
                 progress=False)
    assert capsys.readouterr().err == "" and len(hist["train_accuracy"]) == 2
    # ... and so is progress=None under the global switch (repsim --no-progress)
    with _progress.disabled():
        train(model, d.images, d.labels, config=TrainConfig(epochs=1, batch_size=16))
    assert capsys.readouterr().err == ""
