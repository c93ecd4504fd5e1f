"""A folder's class labels and concept table reach the sweep's semantic method."""
from __future__ import annotations

import textwrap

import numpy as np

OWN = '''
import jax
from flax import nnx


class Net(nnx.Module):
    def __init__(self):
        r = nnx.Rngs(0)
        self.conv = nnx.Conv(3, 4, (3, 3), strides=2, rngs=r)
        self.head = nnx.Linear(4, 2, rngs=r)
        self.input_shape = (16, 16, 3)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.conv(x)).mean(axis=(1, 2)))


def make(num_classes=2):
    return Net()
'''


def test_folder_labels_and_concepts_reach_the_semantic_method(tmp_path, monkeypatch):
    from PIL import Image

    from repsim_jax import semantic
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep import run as run_mod
    from repsim_jax.sweep.store import Store
    (tmp_path / "folder_semantic_i15.py").write_text(textwrap.dedent(OWN))
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(1)
    colour = {"blue": [0.1, 0.1, 0.9], "red": [0.9, 0.1, 0.1]}
    files, rows = [], ["path,bright,dark"]
    for c in ("red", "blue"):          # sorted class folders: blue 0, red 1
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            x = np.clip(np.asarray(colour[c]) * (0.6 + 0.1 * i)
                        + rng.normal(0, 0.02, (20, 20, 3)), 0, 1)
            Image.fromarray(np.round(x * 255).astype(np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
            files.append(f"{c}/{i}.png")
            rows.append(f"{c}/{i}.png,{int(i >= 2)},{int(i < 2)}")
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    cfg = C.from_dict({"methods": ["semantic"], "layers": ["conv"], "output": str(out),
                       "data": {"source": f"folder:{tmp_path / 'imgs'}",
                                "concepts": str(tmp_path / "tags.csv")},
                       "models": [{"name": "m", "factory": "folder_semantic_i15:make"}]})
    run_mod.run_sweep(cfg, progress=False, echo=None, write_report=False)
    store = Store(out, "", {})
    (unit,) = [u for u in map(store.load, store.finished_units())
               if "semantic_layers" in u["tables"]]
    (row,) = unit["tables"]["semantic_layers"]
    assert unit["meta"]["class_names"] == ["blue", "red"]
    # the folder's labels (by class folder) and the table's concepts, in sorted file order
    order = sorted(files)
    labels = np.asarray([0 if f.startswith("blue") else 1 for f in order])
    tags = np.asarray([[int(f[-5]) >= 2, int(f[-5]) < 2] for f in order])
    s = np.asarray(unit["arrays"]["rsm/conv"])
    assert s.shape == (8, 8)
    assert row["top1_class_semantic"] == semantic.top1_agreement(s, labels)
    assert row["retrieval_f1_semantic"] == semantic.retrieval_f1(s, tags)
    # the colours make the classes separable: each image retrieves one of its own class
    assert row["top1_class_semantic"] == 1.0
    assert semantic.top1_agreement(s, np.arange(8) % 2) < 1.0    # not any labelling
