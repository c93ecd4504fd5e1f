"""Writes the Colab notebooks of ``colab/`` with nbformat (run: ``python colab/make_notebooks.py``).

Every notebook has the same opening - an install cell that is a no-op where repsim_jax
already imports, a "one line to change" configuration cell (``DATA``), a set-up cell and a
data + model cell - followed by its method. The shared cells are written once here so the
notebooks cannot drift apart. Outputs are not stored; CI executes the notebooks
(``tests/test_notebooks.py``) with ``REPSIM_NOTEBOOK_SMALL=1``.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str):
    return new_code_cell(textwrap.dedent(text).strip("\n"))


# ----------------------------------------------------------------------------- shared cells
INSTALL = '''
# Where pip finds repsim_jax on Colab: set this to the project's git repository.
REPO_URL = "https://github.com/YOUR-ORG/repsim_jax"  # <- set me (any URL `pip install git+...` takes)

try:
    import repsim_jax  # already installed (local Jupyter, CI): nothing to install
except ImportError:
    %pip install -q "repsim_jax[notebooks] @ git+{REPO_URL}"
    import repsim_jax
print("repsim_jax", repsim_jax.__version__)
'''

CONFIG = '''
import os

SMALL = os.environ.get("REPSIM_NOTEBOOK_SMALL", "0") == "1"  # tiny sizes (CI sets this)
DATA = "repsim_shapes"  # <- the one line to change: "tfds:imagenette/160px", "tfds:cifar10", ... on a GPU/TPU runtime
'''

CONFIG_MD = '''
## Configuration: one line to change

* `DATA = "repsim_shapes"` (default) uses the **built-in concept data** (64x64 images with
  pixel-exact concept masks and class rules) and a **built-in trained CNN** (trained on first
  use in a few minutes on a CPU, then cached). Runs on a free CPU runtime in minutes.
* `DATA = "tfds:<name>"` (e.g. `"tfds:imagenette/160px"`, `"tfds:cifar10"`) uses a
  tensorflow-datasets set and an **ImageNet-trained ResNet-18 ported from torchvision**
  (`ARCH` / `WEIGHTS` below). Switch the runtime to GPU or TPU first (*Runtime -> Change
  runtime type*). Without concept annotations, the classes serve as concepts.

`SMALL` shrinks every size so CI can execute the notebook on a CPU in seconds; leave it.
'''

SETUP = '''
import io

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from repsim_jax import models
from repsim_jax._checks import InputError
from repsim_jax.data import sources

print("JAX", jax.__version__, "on", jax.devices())


def show(fig):
    """Displays a matplotlib figure inline (Colab, Jupyter and headless CI alike), closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))


def image_grid(rows, titles=None, row_labels=None, size=1.3):
    """A figure of image rows: ``rows`` is a list of (n, H, W, C|none) arrays in [0, 1]."""
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                im = np.clip(np.asarray(row[j], np.float32), 0, 1)
                ax.imshow(im if im.ndim == 3 and im.shape[-1] == 3 else np.squeeze(im),
                          cmap=None if im.ndim == 3 and im.shape[-1] == 3 else "magma",
                          vmin=0, vmax=1)
                if titles is not None and i == 0:
                    ax.set_title(titles[j], fontsize=7)
        if row_labels is not None:
            axes[i, 0].text(-0.1, 0.5, row_labels[i], transform=axes[i, 0].transAxes,
                            ha="right", va="center", fontsize=8)
    return fig
'''

REAL_DATA_MD = '''
### Helpers for real data (used only when `DATA` is a tfds name)

`load_tfds` reads `N` images of a tensorflow-datasets set through
`repsim_jax.data.sources.load` (random access, no TensorFlow); sets whose images differ in
size (imagenette, ...) are centre-cropped and resized per image. `imagenet_classifier` ports
torchvision's ImageNet weights into the nnx architecture (`repsim_jax.models.load_ported`,
no pickled code executed) and folds the ImageNet normalisation into the model, so every
method sees images in [0, 1].
'''

REAL_DATA = '''
ARCH = "resnet18"  # any of repsim_jax.models.model_names() with torchvision weights
WEIGHTS = None     # None: torchvision's ImageNet weights (needs torch); or a .pth/.safetensors/.npz path
SIZE = 224         # input side for ARCH


def load_tfds(source, n, size):
    """``n`` images of ``source`` ("tfds:<name>") as an ImageSet of (n, size, size, 3)."""
    last = None
    for split in ("validation", "test", "train"):
        try:
            ds = sources.load(source, split=f"{split}[:{n}]")
            break
        except InputError as err:
            if "differ in shape" not in str(err):
                raise
            ds = _load_cropped(source[len("tfds:"):], f"{split}[:{n}]", size)
            break
        except (ValueError, KeyError) as err:  # the set has no such split: try the next
            if "split" not in str(err).lower():
                raise
            last = err
    else:
        raise last
    images = sources.to_rgb(ds.images)
    if images.shape[1:3] != (size, size):
        images = sources.resize(images, size)
    return sources.ImageSet(images, ds.labels, ds.class_names, ds.name)


def _load_cropped(name, split, size):
    """Images of different sizes: centre square crop, bicubic resize (PIL), one by one."""
    import tensorflow_datasets as tfds
    from PIL import Image as PILImage
    src = tfds.data_source(name, split=split)
    images, labels = [], []
    for i in range(len(src)):
        row = src[i]
        im = np.asarray(row["image"])
        h, w = im.shape[:2]
        s = min(h, w)
        crop = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        crop = PILImage.fromarray(crop.squeeze()).convert("RGB").resize((size, size),
                                                                         PILImage.BICUBIC)
        images.append(np.asarray(crop))
        labels.append(int(row["label"]))
    names = list(tfds.builder(name).info.features["label"].names)
    return sources.from_arrays(np.stack(images), np.asarray(labels), class_names=names,
                               name=f"tfds:{name}:{split}")


def imagenet_classifier(arch=ARCH, weights=WEIGHTS, size=SIZE):
    """``arch`` with ImageNet weights, taking images in [0, 1] (normalised inside)."""
    from flax import nnx
    if weights is None:
        import torchvision
        net = torchvision.models.get_model(arch, weights="DEFAULT")
        weights = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    ported = models.load_ported(arch, weights, input_shape=(size, size, 3))

    class ImageNetNormalised(nnx.Module):
        """The ported network behind torchvision's input normalisation; same layer names."""

        def __init__(self, net):
            self.net = net
            self.input_shape = net.input_shape

        def __call__(self, x, taps=None):
            mean = jnp.asarray([0.485, 0.456, 0.406], x.dtype)
            std = jnp.asarray([0.229, 0.224, 0.225], x.dtype)
            return self.net((x - mean) / std, taps=taps)

    return ImageNetNormalised(ported)
'''

DATA_MD = '''
## Data and model

On the built-in data, the concepts are the ground truth of the generator (shape, colour,
texture, size, background), and every class is a Boolean rule over them. On a tfds set, the
classes are the concepts (one-hot) and the model's own predictions serve as the labels the
methods explain.
'''

# {model} and {layers} are filled in per notebook
DATA_MODEL = '''
if DATA == "repsim_shapes":
    from repsim_jax.models import zoo
    model, info = zoo.load_trained(MODEL)  # trains on first use (minutes), then cached
    print(f"{{MODEL}}: test accuracy {{info['test_accuracy']:.3f}} "
          f"({{'cached' if info['cached'] else 'trained now'}})")
    shapes = sources.load("repsim_shapes", split="test").meta["shapes"].take(np.arange(N_IMAGES))
    images, labels = shapes.images, shapes.labels
    class_names, class_rules = list(shapes.class_names), list(shapes.class_rules)
    concept_labels, concept_names = shapes.concept_labels, list(shapes.concept_names)
    concept_masks = shapes.concept_masks()          # (N, H, W, C) bool, pixel-exact
    LAYERS = {shapes_layers}

    def rule_iou(formula, rule):
        """IoU of the images where an INVERT formula holds and where a class rule holds."""
        from repsim_jax.data.shapes import evaluate_rule
        from repsim_jax.invert import parse
        f = parse(formula, concept_labels, concept_names)
        r = evaluate_rule(rule, concept_labels, concept_names)
        return float((f & r).sum() / max((f | r).sum(), 1))
else:
    ds = load_tfds(DATA, N_IMAGES, SIZE)
    model = imagenet_classifier()
    images = ds.images
    logits = models.activations(model, images, ["logits"])["logits"]
    labels = np.asarray(logits).argmax(-1).astype(np.int32)   # the model's predictions
    class_names = [f"imagenet_{{k}}" for k in range(logits.shape[-1])]
    class_rules = None
    # the data set's classes are the concepts (one-hot), as INVERT does with ImageNet labels
    concept_names = [str(c) for c in ds.class_names]
    concept_labels = ds.labels[:, None] == np.arange(len(concept_names))[None, :]
    concept_masks = None
    LAYERS = {real_layers}

print(f"{{len(images)}} images {{images.shape[1:]}}, {{len(concept_names)}} concepts, "
      f"layers {{LAYERS}}")
'''


def opening(title: str, intro: str, sizes: str, *, model: str, shapes_layers, real_layers):
    return [
        md(f"# {title}\n\n" + textwrap.dedent(intro).strip("\n")),
        md("""
           ## Install

           On Colab, set `REPO_URL` to where repsim_jax lives; the cell installs it with the
           notebook extras (matplotlib, scikit-learn, scikit-image). Where `repsim_jax` already
           imports (a local install, CI) the cell does nothing. If pip upgrades JAX on Colab,
           restart the runtime once (*Runtime -> Restart session*) and run on.
           """),
        code(INSTALL),
        md(CONFIG_MD),
        code(CONFIG),
        code(f'MODEL = "{model}"  # built-in trained model for repsim_shapes\n'
             + textwrap.dedent(sizes).strip("\n")),
        code(SETUP),
        md(REAL_DATA_MD),
        code(REAL_DATA),
        md(DATA_MD),
        code(DATA_MODEL.format(shapes_layers=repr(list(shapes_layers)),
                               real_layers=repr(list(real_layers)))),
    ]


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": [], "toc_visible": True}
    nb.metadata["accelerator"] = "GPU"
    return nb


# ----------------------------------------------------------------------------- quickstart
def quickstart():
    cells = opening(
        "repsim_jax quickstart",
        """
        **repsim_jax** asks *what* a neural network represents and *how similar* two
        representations are, in JAX/Flax: ported model weights -> activations of named
        layers -> semantic RSMs, INVERT concept labels, concept similarity, ClaDec and visual
        summaries -> arrays, tables and pictures.

        This notebook walks the whole path once:

        1. data and a trained model,
        2. activations of named layers (torchvision module paths) from one jit-compiled pass,
        3. a **semantic RSM** of one layer (Wald et al., NeurIPS 2024),
        4. **INVERT** labels of the class logits (Bykov et al., NeurIPS 2023),
        5. a **layer x layer CKA map**,
        6. the same at scale from the command line: `repsim demo` / `repsim sweep`.

        One notebook per method goes deeper: `semantic_rsm`, `invert`, `concept_similarity`,
        `cladec`, `visual_summaries`.
        """,
        """
        N_IMAGES = 105 if SMALL else 700     # images analysed
        RSM_LAYER_SHAPES = "features.11"      # a conv layer for the semantic RSM (8x8 positions)
        RSM_LAYER_REAL = "layer4"             # ... and its counterpart in ResNet-18 (7x7)
        """,
        model="small_vgg",
        shapes_layers=["features.3", "features.7", "features.11", "features.15", "globalpool",
                       "classifier.1", "logits"],
        real_layers=["layer1", "layer2", "layer3", "layer4", "avgpool", "logits"])
    cells += [
        md("""
           A few images with their class. On `repsim_shapes` the class is a rule over the
           concepts (printed under each class name).
           """),
        code("""
             first = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)[:8]]
             show(image_grid([images[first]], titles=[class_names[labels[i]] for i in first]))
             if class_rules is not None:
                 for name, rule in zip(class_names, class_rules):
                     print(f"{name:>14}: {rule}")
             """),
        md("""
           ## Activations of named layers

           `models.list_layers(model)` names every capturable layer;
           `models.activations(model, images, layers)` returns them from ONE jit-compiled
           forward pass (XLA drops what the requested layers do not need). `"logits"` is
           always a valid name.
           """),
        code("""
             print(len(models.list_layers(model)), "capturable layers, e.g.",
                   models.list_layers(model)[:6])
             acts = models.activations(model, images, LAYERS)
             for name in LAYERS:
                 print(f"{name:>14}: {tuple(acts[name].shape)}")
             """),
        md("""
           ## A semantic RSM

           A representational similarity matrix compares every pair of images. The usual
           (*spatio-semantic*) RSM compares feature vectors position by position, so the same
           object at another place looks dissimilar. The **semantic RSM** first matches the
           spatial positions of the two images optimally (an assignment problem) and then
           compares: `K[i, j] = max_P  k(X_i, P X_j)`. With the cosine kernel the diagonal
           is 1.
           """),
        code("""
             from repsim_jax import semantic

             layer = RSM_LAYER_SHAPES if DATA == "repsim_shapes" else RSM_LAYER_REAL
             K = semantic.rsm(acts[layer], kernel="cosine", matcher="exact")
             K_id = semantic.rsm(acts[layer], kernel="cosine", matcher="identity")
             order = np.argsort(labels, kind="stable")
             fig, axes = plt.subplots(1, 2, figsize=(9, 4))
             for ax, M, title in ((axes[0], K_id, "spatio-semantic (identity)"),
                                  (axes[1], K, "semantic (exact matching)")):
                 im = ax.imshow(M[np.ix_(order, order)], cmap="viridis")
                 ax.set_title(f"{layer}: {title}", fontsize=9)
                 ax.set_xlabel("image (sorted by class)")
                 fig.colorbar(im, ax=ax, fraction=0.046)
             show(fig)
             off = ~np.eye(len(K), dtype=bool)
             print(f"RSM diagonal: min {np.diag(K).min():.6f} max {np.diag(K).max():.6f}")
             print(f"mean off-diagonal similarity: semantic {K[off].mean():.3f} >= "
                   f"identity {K_id[off].mean():.3f}")
             print(f"nearest neighbour has the same class: semantic "
                   f"{semantic.top1_agreement(K, labels):.3f}, identity "
                   f"{semantic.top1_agreement(K_id, labels):.3f}")
             """),
        md("""
           The semantic RSM is never below the identity RSM (matching can only improve the
           score), and the class blocks along the diagonal show which images the layer deems
           alike regardless of where their objects are.

           ## INVERT labels of the logits

           INVERT explains a neuron by the Boolean formula over concepts (up to `L` literals,
           `AND`/`OR`/`NOT`) whose indicator best separates the inputs by the neuron's
           activation, scored by the AUC. Applied to the class logits of the trained model,
           it should recover each class's rule.
           """),
        code("""
             from repsim_jax import invert

             res = invert.explain(acts["logits"], concept_labels, concept_names, L=3, B=5)
             show_units = range(len(res)) if DATA == "repsim_shapes" else \\
                 np.argsort(-np.asarray(acts["logits"]).std(0))[:10]
             for u in show_units:
                 best = res[u].best
                 rule = ""
                 if class_rules is not None:   # where the formula holds vs where the rule holds
                     rule = (f"  IoU with the class rule {rule_iou(best.formula, class_rules[u]):.2f}"
                             f"  (rule: {class_rules[u]})")
                 print(f"logit[{class_names[u]}] INVERT: {best.formula}  AUC {best.auc:.3f}{rule}")
             """),
        md("""
           Each logit's formula reads like its class's rule (concepts and connectives may
           be rearranged: INVERT returns the best formula with at most `L=3` literals, and
           on a finite sample several formulas separate equally well). An AUC near 1 means
           the logit is high exactly when the formula holds.

           ## Layer x layer CKA map

           Linear CKA between the RSMs of every pair of layers (`semantic.compare`, one
           batched call). Here with the plain inner-product RSM of the flattened activations
           (`X X^T`), i.e. classic linear CKA; pass semantic RSMs instead to compare layers
           independently of spatial layout (see the `semantic_rsm` notebook).
           """),
        code("""
             flat = {l: np.asarray(acts[l]).reshape(len(images), -1) for l in LAYERS}
             grams = np.stack([f @ f.T for f in flat.values()])   # (layers, N, N) linear kernels
             C = semantic.compare(grams, method="linear_cka")
             fig, ax = plt.subplots(figsize=(5, 4.2))
             im = ax.imshow(C, vmin=0, vmax=1, cmap="magma")
             ax.set_xticks(range(len(LAYERS)), LAYERS, rotation=60, ha="right", fontsize=8)
             ax.set_yticks(range(len(LAYERS)), LAYERS, fontsize=8)
             ax.set_title("linear CKA, layer x layer")
             fig.colorbar(im, ax=ax)
             show(fig)
             print("CKA diagonal:", np.round(np.diag(C), 4))
             print("CKA of neighbouring layers:", np.round(np.diag(C, 1), 3))
             """),
        md("""
           Neighbouring layers are usually the most alike; a sharp drop between neighbours
           marks a layer that reorganises the representation (on the built-in model: the
           global max-pool, which throws away where things are).

           ## At scale: `repsim demo` and `repsim sweep`

           The command line runs any subset of the five methods over all (or chosen) layers of
           one or more models, shards the work over every visible device, checkpoints
           finished units (a killed run resumes) and writes arrays, CSV/JSON tables, PNG
           pictures and a self-contained `report.html` into one directory:

           ```bash
           repsim demo                                     # everything, built-in models + data
           repsim layers small_vgg                         # layer names and shapes
           repsim sweep --models small_vgg,small_resnet --layers features.11,layer3 \\
                        --methods semantic,invert --out runs/a
           repsim sweep --arch resnet18 --weights resnet18.pth --num-classes 1000 \\
                        --data tfds:imagenette/160px --n-images 512 --methods semantic,invert
           ```

           The same from Python: `repsim_jax.sweep.run_sweep(repsim_jax.sweep.from_dict({...}))`.
           Set `RUN_DEMO = True` to run the demo here (a few minutes on a CPU).
           """),
        code("""
             import subprocess
             import sys

             RUN_DEMO = False
             cli = [sys.executable, "-m", "repsim_jax.cli"]
             print(subprocess.run(cli + ["--help"], capture_output=True, text=True).stdout[:600])
             if RUN_DEMO:
                 subprocess.run(cli + ["demo", "--out", "repsim-out/demo"], check=True)
             """),
    ]
    return notebook(cells)


# ----------------------------------------------------------------------------- semantic RSM
def semantic_nb():
    cells = opening(
        "Semantic RSMs: similarity that ignores *where*",
        """
        Wald et al., **"Decoupling Semantic Similarity from Spatial Alignment for Neural
        Networks"**, NeurIPS 2024 ([arXiv 2410.23107](https://arxiv.org/abs/2410.23107)).

        A representational similarity matrix (RSM) of a conv layer usually compares two images'
        feature maps position by position: `K[i, j] = k(X_i, X_j)` with `X` of shape
        `(positions, channels)`. Two images of the same object at different places then look
        dissimilar. The **semantic RSM** makes the comparison invariant to spatial
        permutations by matching positions first:

        $$K^{\\mathrm{sem}}_{ij} = \\max_{P \\in \\mathcal{P}_S} k(X_i, P X_j),$$

        an assignment problem per pair (exact: Hungarian/auction; approximations: greedy,
        top-k greedy, windowed, Sinkhorn). `repsim_jax.semantic.rsm` solves all N x N pairs
        in vmapped, chunked blocks and shards them over devices.

        This notebook: semantic vs spatio-semantic RSM of a layer, permutation invariance,
        retrieval quality, matchers (exactness vs speed), and a layer x layer CKA map.
        """,
        """
        N_IMAGES = 56 if SMALL else 600
        LAYER_SHAPES, LAYER_REAL = "features.11", "layer4"
        """,
        model="small_vgg",
        shapes_layers=["features.11", "features.15", "globalpool"],
        real_layers=["layer3", "layer4", "avgpool"])
    cells += [
        md("""
           ## Semantic vs spatio-semantic RSM of one layer
           """),
        code("""
             from repsim_jax import semantic

             layer = LAYER_SHAPES if DATA == "repsim_shapes" else LAYER_REAL
             acts = models.activations(model, images, LAYERS)
             X = np.asarray(acts[layer])
             print(layer, X.shape, "=", X.shape[1] * X.shape[2], "positions per image")
             K = semantic.rsm(X, kernel="cosine", matcher="exact")
             K_id = semantic.rsm(X, kernel="cosine", matcher="identity")
             order = np.argsort(labels, kind="stable")
             fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
             for ax, M, t in ((axes[0], K_id, "spatio-semantic"), (axes[1], K, "semantic"),
                              (axes[2], K - K_id, "semantic - spatio-semantic")):
                 im = ax.imshow(M[np.ix_(order, order)], cmap="viridis")
                 ax.set_title(f"{layer}: {t}", fontsize=9)
                 fig.colorbar(im, ax=ax, fraction=0.046)
             show(fig)
             print(f"diagonal of the semantic RSM: min {np.diag(K).min():.6f}, max {np.diag(K).max():.6f}")
             print(f"symmetric: max |K - K.T| = {np.abs(K - K.T).max():.2e}")
             print(f"semantic >= spatio-semantic everywhere: {bool((K >= K_id - 1e-5).all())}")
             """),
        md("""
           ## Invariance to where things are

           Shuffling the spatial positions of some images' feature maps (the same
           permutation for all channels) leaves their semantic similarities unchanged, while
           the spatio-semantic ones change.
           """),
        code("""
             rng = np.random.default_rng(0)
             n, h, w, c = X.shape
             flat = X.reshape(n, h * w, c).copy()
             for i in range(0, n, 2):                       # every other image
                 flat[i] = flat[i][rng.permutation(h * w)]
             Xp = flat.reshape(n, h, w, c)
             Kp = semantic.rsm(Xp, kernel="cosine", matcher="exact")
             Kp_id = semantic.rsm(Xp, kernel="cosine", matcher="identity")
             print(f"semantic RSM, max change after shuffling positions: {np.abs(Kp - K).max():.2e}")
             print(f"spatio-semantic RSM, max change:                    {np.abs(Kp_id - K_id).max():.2e}")
             """),
        md("""
           ## Does the RSM retrieve semantically similar images?

           For each image take its most similar other image: does it share the class
           (`top1_agreement`), and how well do their concept sets agree (`retrieval_f1`,
           F1@1 of the ground-truth concept labels)?
           """),
        code("""
             rows = [("semantic", K), ("spatio-semantic", K_id)]
             for name, M in rows:
                 print(f"{name:>16}: same class {semantic.top1_agreement(M, labels):.3f}   "
                       f"concept F1@1 {semantic.retrieval_f1(M, concept_labels):.3f}")
             q = 0
             def neighbours(M, q, k=5):
                 row = np.array(M[q], copy=True)
                 row[q] = -np.inf                       # not the query itself
                 return [int(j) for j in np.argsort(-row)[:k]]

             show(image_grid([images[[q] + neighbours(K, q)], images[[q] + neighbours(K_id, q)]],
                             titles=["query"] + [f"#{r + 1}" for r in range(5)],
                             row_labels=["semantic", "spatio-\\nsemantic"]))
             """),
        md("""
           ## Matchers: exact vs approximate

           Exact matching costs O(S^3) per pair (S positions). The approximate matchers trade
           exactness for speed; `return_quality=True` reports the matched score divided by the
           exact one (1 = optimal).
           """),
        code("""
             import time

             for matcher in ("exact", "greedy", "sinkhorn", "identity"):
                 t = time.perf_counter()
                 M, quality = semantic.rsm(X, kernel="cosine", matcher=matcher, return_quality=True)
                 dt = time.perf_counter() - t
                 print(f"{matcher:>9}: mean quality {np.mean(quality):.4f}, "
                       f"min {np.min(quality):.4f}, {dt:.2f} s (incl. compilation)")
             """),
        md("""
           ## Layer x layer: semantic CKA map

           `semantic.rsm` takes a dict of layers (equal shapes are vmapped together) and
           `semantic.compare` compares all RSMs in one batched call.
           """),
        code("""
             Ks = semantic.rsm({l: acts[l] for l in LAYERS}, kernel="cosine", matcher="exact")
             Ks_id = semantic.rsm({l: acts[l] for l in LAYERS}, kernel="cosine", matcher="identity")
             C = semantic.compare(Ks, method="linear_cka")
             C_cross = semantic.compare(Ks, Ks_id, method="linear_cka")
             fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
             for ax, M, t in ((axes[0], C, "semantic vs semantic"),
                              (axes[1], C_cross, "semantic (rows) vs spatio-semantic")):
                 im = ax.imshow(M, vmin=0, vmax=1, cmap="magma")
                 ax.set_xticks(range(len(LAYERS)), LAYERS, rotation=45, ha="right", fontsize=8)
                 ax.set_yticks(range(len(LAYERS)), LAYERS, fontsize=8)
                 ax.set_title(f"linear CKA: {t}", fontsize=9)
                 fig.colorbar(im, ax=ax, fraction=0.046)
             show(fig)
             print("CKA(semantic, spatio-semantic) per layer:", np.round(np.diag(C_cross), 3))
             """),
        md("""
           **Reading it.** Wherever a layer has several spatial positions, the semantic RSM
           differs from the spatio-semantic one (CKA between them below 1); after global
           pooling (one position) both are identical. Retrieval by the semantic RSM
           finds images with the same concepts regardless of where they sit, which is the
           paper's argument for comparing networks with semantic RSMs.
           """),
    ]
    return notebook(cells)


# ----------------------------------------------------------------------------- INVERT
def invert_nb():
    cells = opening(
        "INVERT: label neurons with concept formulas",
        """
        Bykov, Kopf, Nakajima, Kloft, Höhne, **"Labeling Neural Representations with Inverse
        Recognition"**, NeurIPS 2023 ([arXiv 2311.13594](https://arxiv.org/abs/2311.13594)).

        INVERT explains a neuron by the compositional concept whose presence best *ranks* the
        inputs by the neuron's activation. For a formula `phi` over Boolean concept labels
        (literals joined by `AND`/`OR`, possibly negated, at most `L` literals), its score is
        the AUC

        $$\\mathrm{AUC}(\\phi) = P\\big(a(x^+) > a(x^-)\\big),\\quad x^+ : \\phi(x^+)=1,\\ x^- : \\phi(x^-)=0,$$

        the Mann-Whitney statistic (ties count 1/2), found by a beam search of width `B`.
        A p-value (Mann-Whitney U test) and a Benjamini-Hochberg q-value across all
        neurons say whether the label is more than chance. `repsim_jax.invert.explain`
        runs the search for all neurons of a layer at once (vectorised, sharded).

        This notebook: labels for the logits and the neurons of a hidden layer, the strongest
        neurons with their top images, and a check of the reported AUC.
        """,
        """
        N_IMAGES = 140 if SMALL else 2000
        L_MAX, BEAM = (3, 5) if SMALL else (3, 10)
        """,
        model="small_vgg",
        shapes_layers=["globalpool", "classifier.1", "logits"],
        real_layers=["avgpool", "logits"])
    cells += [
        md("## Labels for every neuron of two layers"),
        code("""
             from repsim_jax import invert

             acts = models.activations(model, images, LAYERS)
             hidden = LAYERS[-2]
             out = invert.explain({hidden: acts[hidden], "logits": acts["logits"]},
                                  concept_labels, concept_names, L=L_MAX, B=BEAM)
             for name, res in out.items():
                 auc = res.auc[:, -1, 0]
                 print(f"{name}: {len(res)} neurons, median best AUC {np.nanmedian(auc):.3f}, "
                       f"q < 0.05 for {int(np.sum(res.q_value < 0.05))}")
             """),
        md("""
           ### The logits

           On `repsim_shapes` each class is defined by a rule over the concepts, so the logit
           of a well-trained model should be explained by (a formula close to) its rule.
           """),
        code("""
             res = out["logits"]
             units = range(len(res)) if DATA == "repsim_shapes" else \\
                 np.argsort(-res.auc[:, -1, 0])[:10]
             for u in units:
                 beam = res[u]
                 rule = ""
                 if class_rules is not None:   # where the formula holds vs where the rule holds
                     rule = (f"  IoU with the class rule {rule_iou(beam.best.formula, class_rules[u]):.2f}"
                             f"  (rule: {class_rules[u]})")
                 print(f"logit[{class_names[u]}] INVERT: {beam.best.formula}  AUC {beam.best.auc:.3f}  "
                       f"p {beam.p_value:.1e}{rule}")
             """),
        md("""
           ### The hidden layer: strongest neurons and the images that drive them
           """),
        code("""
             res_h = out[hidden]
             auc = np.where(res_h.valid[:, -1, 0], res_h.auc[:, -1, 0], -np.inf)
             top = np.argsort(-auc)[:12]
             fig, ax = plt.subplots(figsize=(7, 4))
             ax.barh(range(len(top)), auc[top], color="tab:blue")
             ax.set_yticks(range(len(top)), [f"{u}: {res_h[u].best.formula}" for u in top],
                           fontsize=8)
             ax.invert_yaxis()
             ax.set_xlim(0.5, 1)
             ax.set_xlabel("AUC of the best formula")
             ax.set_title(f"INVERT, {hidden}")
             show(fig)

             a = invert.reduce_activations(np.asarray(acts[hidden]))
             rows, labels_ = [], []
             for u in top[:3]:
                 rows.append(images[np.argsort(-a[:, u])[:8]])
                 labels_.append(f"neuron {u}\\n{res_h[u].best.formula}")
             show(image_grid(rows, row_labels=labels_))
             """),
        md("""
           ### Checking a label

           The reported AUC is the rank AUC of the formula's indicator against the neuron's
           activations; recompute it independently with `invert.parse` (formula string ->
           indicator) and `invert.rank_auc`.
           """),
        code("""
             u = int(top[0])
             best = res_h[u].best
             indicator = invert.parse(best.formula, concept_labels, concept_names)
             recomputed = float(invert.rank_auc(a[:, u], indicator))
             print(f"neuron {u}: {best.formula}")
             print(f"reported AUC {best.auc:.6f}, recomputed AUC {recomputed:.6f}, "
                   f"formula holds on {indicator.mean():.1%} of the images")
             print("beam (best first):")
             for e in res_h[u]:
                 print(f"   {e.formula:<45} AUC {e.auc:.3f}  fraction {e.concept_fraction:.2f}")
             """),
        md("""
           **Reading it.** A high AUC with a small q-value means the neuron responds to the
           concept formula, not just to chance. Hidden neurons usually respond to mixtures
           (e.g. a colour OR another colour), which is why compositional formulas label them
           better than single concepts. On real data without concept annotations, the
           classes are the concepts, as in the paper's ImageNet experiments.
           """),
    ]
    return notebook(cells)


# ----------------------------------------------------------------------------- concepts
def concepts_nb():
    cells = opening(
        "Concept similarity: which layers of two networks encode the same concepts?",
        """
        Mikriukov, Schwalbe, Hellert, Bade, **"Revealing Similar Semantics Inside CNNs: An
        Interpretable Concept-based Comparison of Feature Spaces"**, 2023
        ([arXiv 2305.07663](https://arxiv.org/abs/2305.07663)).

        Layers are compared through the **concepts** they encode instead of raw activations:

        * *supervised* (**Net2Vec**): per layer and annotated concept, a 1x1 conv filter is
          trained to segment the concept; its set IoU on held-out images says how well the
          layer encodes it, and the concept maps of two layers are compared concept by
          concept;
        * *unsupervised* (**ICE**): non-negative matrix factorisation of a layer's
          activations `A ~ S V` gives `k` concept vectors `V` and concept maps `S`; two
          layers' concept maps are compared pairwise (Pearson) and the layer pair scores the
          best match of each concept.

        The paper finds that concepts recur at similar *relative depth* across architectures.

        This notebook: Net2Vec IoU per concept and layer, ICE concept maps, and the layer x
        layer concept similarity of a VGG-like and a ResNet-like network.
        """,
        """
        N_IMAGES = 48 if SMALL else 1000
        K_CONCEPTS = 4 if SMALL else 8         # ICE concepts per layer
        NET2VEC_EPOCHS = 4 if SMALL else 30
        MODEL_B = "small_resnet"               # second built-in model (repsim_shapes)
        ARCH_B = "vgg16_bn"                    # second ported architecture (tfds)
        """,
        model="small_vgg",
        shapes_layers=["features.7", "features.11", "features.15"],
        real_layers=["layer2", "layer3", "layer4"])
    cells += [
        md("## A second model on the same images"),
        code("""
             if DATA == "repsim_shapes":
                 model_b, info_b = zoo.load_trained(MODEL_B)
                 LAYERS_B = ["layer1", "layer2", "layer3"]
                 name_a, name_b = MODEL, MODEL_B
             else:
                 model_b = imagenet_classifier(ARCH_B)
                 LAYERS_B = ["features.23", "features.33", "features.43"]
                 name_a, name_b = ARCH, ARCH_B
             acts_a = models.activations(model, images, LAYERS)
             acts_a = {l: np.asarray(acts_a[l]) for l in LAYERS}       # in forward order
             acts_b = models.activations(model_b, images, LAYERS_B)
             acts_b = {l: np.asarray(acts_b[l]) for l in LAYERS_B}
             for name, acts in ((name_a, acts_a), (name_b, acts_b)):
                 print(name, {k: v.shape[1:] for k, v in acts.items()})
             """),
        md("""
           ## Supervised: Net2Vec concept filters

           Trained on the first half of the images, set IoU measured on the second half. Needs
           per-pixel concept masks (built-in data only).
           """),
        code("""
             from repsim_jax import concepts

             if concept_masks is not None:
                 half = len(images) // 2
                 cfg = concepts.Net2VecConfig(epochs=NET2VEC_EPOCHS, progress=False)
                 n2v_a = concepts.net2vec({k: v[:half] for k, v in acts_a.items()}, concept_masks[:half],
                                          {k: v[half:] for k, v in acts_a.items()}, concept_masks[half:],
                                          concept_names, cfg)
                 fig, ax = plt.subplots(figsize=(8, 2.6))
                 im = ax.imshow(n2v_a.iou, vmin=0, vmax=1, cmap="viridis", aspect="auto")
                 ax.set_xticks(range(len(concept_names)), concept_names, rotation=60, ha="right", fontsize=8)
                 ax.set_yticks(range(len(n2v_a.layers)), n2v_a.layers, fontsize=8)
                 ax.set_title(f"{name_a}: Net2Vec set IoU on held-out images")
                 fig.colorbar(im, ax=ax)
                 show(fig)
                 for c, (l, iou) in n2v_a.best_layers().items():
                     print(f"{c:>9}: best layer {l:<12} IoU {iou:.2f}")
             else:
                 print("no concept masks for", DATA, "- Net2Vec skipped")
             """),
        md("""
           ## Unsupervised: ICE concepts (NMF)

           The concept maps of one layer for a few images: each column is one NMF concept,
           bright where the image shows it.
           """),
        code("""
             layer = LAYERS[1]
             ice = concepts.ice_fit(np.maximum(acts_a[layer], 0), K_CONCEPTS, layer=layer)
             print(f"{layer}: k={K_CONCEPTS}, relative reconstruction error {ice.relative_error:.3f}")
             maps = np.asarray(ice.maps)[:4]
             maps = maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
             rows = [[images[i]] + [maps[i, ..., j] for j in range(K_CONCEPTS)] for i in range(4)]
             show(image_grid(rows, titles=["image"] + [f"concept {j}" for j in range(K_CONCEPTS)]))
             """),
        md("""
           ## Layer x layer concept similarity of the two models

           `concepts.ice_layer_similarity` fits ICE concepts for every layer of both models,
           brings the concept maps to one resolution, compares all concept pairs of all layer
           pairs in one batched call (Pearson) and scores each layer pair by best match.
           Comparing model A with itself is the sanity check: its diagonal is 1.
           """),
        code("""
             pos = lambda acts: {k: np.maximum(v, 0) for k, v in acts.items()}
             self_cmp, ice_a, _ = concepts.ice_layer_similarity(pos(acts_a), None, K_CONCEPTS)
             cmp, _, _ = concepts.ice_layer_similarity(pos(acts_a), pos(acts_b), K_CONCEPTS,
                                                       concepts_a=ice_a)
             print("A vs A, diagonal:", np.round(np.diag(self_cmp.matrix), 4))
             fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
             for ax, comp, t in ((axes[0], self_cmp, f"{name_a} vs {name_a}"),
                                 (axes[1], cmp, f"{name_a} vs {name_b}")):
                 im = ax.imshow(comp.matrix, vmin=0, vmax=1, cmap="viridis")
                 ax.set_xticks(range(len(comp.layers_b)), comp.layers_b, rotation=45, ha="right", fontsize=8)
                 ax.set_yticks(range(len(comp.layers_a)), comp.layers_a, fontsize=8)
                 ax.set_title(f"ICE concept similarity: {t}", fontsize=9)
                 fig.colorbar(im, ax=ax, fraction=0.046)
             show(fig)
             idx, depth_b, rho = cmp.best_matches()
             for l, j, d in zip(cmp.layers_a, idx, depth_b):
                 print(f"{name_a} {l:<12} -> most similar {name_b} layer {cmp.layers_b[j]:<8} "
                       f"(relative depth {d:.2f})")
             show(cmp.plot_relative_depth(label_a=name_a, label_b=name_b))
             """),
        md("""
           **Reading it.** Net2Vec shows in which layer each annotated concept can be
           segmented by a linear filter (the large background concepts are easy everywhere;
           object attributes need enough images and epochs, so run with `SMALL = False`). The
           ICE map compares layers without annotations. The paper's main observation is that
           the best-matching layer of another architecture lies at a similar *relative*
           depth; the relative-depth plot shows whether that holds for these two models
           (the red line near the diagonal).
           """),
    ]
    return notebook(cells)


# ----------------------------------------------------------------------------- ClaDec
def cladec_nb():
    cells = opening(
        "ClaDec: what a layer keeps, shown as images",
        """
        Schneider & Vlachos, **"Explaining Classifiers by Constructing Familiar Concepts"**,
        Machine Learning 2022 ([arXiv 2203.04109](https://arxiv.org/abs/2203.04109)).

        ClaDec trains a decoder `D` that turns a frozen classifier's layer activation `L(x)`
        back into an image. The decoder is trained with

        $$\\mathcal{L}_\\alpha = (1-\\alpha)\\,\\mathrm{MSE}\\big(D(L(x)), x\\big) + \\alpha\\,\\mathrm{CE}\\big(\\mathrm{Cla}(D(L(x))), y\\big),$$

        so the reconstruction shows what the layer keeps (and, with `alpha > 0`, what the
        classifier needs). It is compared with a **reference auto-encoder** of the same
        architecture trained end to end for reconstruction only: what ClaDec loses relative to
        it is what the classifier's layer discards. `repsim_jax.cladec` trains all
        `(layer, alpha)` decoders as one vmapped program.

        This notebook: ClaDec decoders for two layers and two alphas, the reference
        auto-encoder, reconstructions side by side, and the errors.
        """,
        """
        N_IMAGES = 48 if SMALL else 2000
        STEPS = 60 if SMALL else 1500
        LR = 3e-3 if SMALL else 3e-4           # 3e-4: the official default; SMALL: few steps
        BATCH = 32 if SMALL else 64
        LOG_EVERY = 10 if SMALL else 50
        ALPHAS = [0.0, 0.01]
        """,
        model="small_vgg",
        shapes_layers=["features.7", "features.15"],
        real_layers=["layer2", "layer4"])
    cells += [
        md("## Training the decoders and the reference auto-encoder"),
        code("""
             from repsim_jax import cladec
             from repsim_jax.cladec import evaluate as cl_eval
             from repsim_jax.cladec import train as cl_train

             # SMALL: the deepest layer only (every layer shape compiles its own training step)
             layers = LAYERS[-1:] if SMALL else LAYERS
             # train on all but the last 16 images, show the held-out 16
             train_x, train_y, test_x = images[:-16], labels[:-16], images[-16:]
             common = dict(steps=STEPS, lr=LR, batch_size=BATCH, log_every=LOG_EVERY,
                           progress=not SMALL)
             fit = cl_train.fit_cladec(model, train_x, train_y, layers, ALPHAS, **common)
             ae = cl_train.fit_reference_ae(model, train_x, layers, **common)
             fig, ax = plt.subplots(figsize=(6, 3))
             for g in fit.groups + ae.groups:
                 h = np.asarray(g.history)          # (logged blocks, members of the group)
                 for i, (l, a) in enumerate(zip(g.layers, g.alphas)):
                     name = f"{l} AE" if np.isnan(a) else f"{l} ClaDec a={a:g}"
                     ax.plot(np.arange(1, len(h) + 1) * LOG_EVERY, h[:, i], label=name)
                     print(f"{name:<28} training loss {h[0, i]:.4f} -> {h[-1, i]:.4f}")
             ax.set_xlabel("step")
             ax.set_ylabel("training loss")
             ax.legend(fontsize=7)
             show(fig)
             """),
        md("## Reconstructions of held-out images"),
        code("""
             n = 8
             rows, names = [test_x[:n]], ["input"]
             errors = {}
             for layer in layers:
                 for alpha in ALPHAS:
                     rec = cl_train.reconstruct(fit, test_x, layer, alpha)
                     rows.append(rec[:n])
                     names.append(f"{layer}\\nClaDec a={alpha:g}")
                     errors[f"{layer} ClaDec a={alpha:g}"] = cl_eval.reconstruction_error(test_x, rec)
                 rec_ae = cl_train.reconstruct_ae(ae, test_x, layer)
                 rows.append(rec_ae[:n])
                 names.append(f"{layer}\\nref. AE")
                 errors[f"{layer} reference AE"] = cl_eval.reconstruction_error(test_x, rec_ae)
             show(image_grid(rows, row_labels=names))
             print("reconstructions lie in [0, 1]:", all(0 <= r.min() and r.max() <= 1 for r in rows[1:]))
             for k, v in errors.items():
                 print(f"{k:<32} squared error per image {v:8.2f}")
             """),
        md("""
           **Reading it.** A ClaDec reconstruction shows what survives in the layer: what
           the classifier needs (here colour, shape and size, which define the classes)
           stays recognisable, what it discards (exact texture, position, noise) blurs, the
           more so the deeper the layer. The reference auto-encoder, free to learn its own
           encoder, is the baseline of how much a code of that shape *could* keep; a larger
           `alpha` pulls the reconstruction towards class evidence at the cost of pixel
           error. The `SMALL` run trains for a few dozen steps only, so its images are
           blurry; run with `SMALL = False` for the full picture.
           """),
    ]
    return notebook(cells)


# ----------------------------------------------------------------------------- summaries
def summaries_nb():
    cells = opening(
        "Visual summaries: what image parts a classifier relies on, per class",
        """
        Godi, Carletti, Aghaei, Giuliari, Cristani, **"Understanding Deep Architectures by
        Visual Summaries"**, BMVC 2018 ([arXiv 1801.09103](https://arxiv.org/abs/1801.09103)).

        Stage 1 finds, for each correctly classified image, a sparse, smooth **mask** of the
        pixels whose blurring destroys the class score (meaningful perturbations: minimise
        the class probability of the perturbed image plus L1 and total-variation penalties;
        a smooth then a sharp pass). Stage 2 cuts the masks into **regions**, measures how
        alike regions of different images look (appearance x geometric consistency), and
        **clusters** them with affinity propagation; clusters that recur across images and
        look coherent (SSIM) are the class's **visual summaries** - the parts the network
        consistently uses (for a bird: head, wings, tail...).

        `repsim_jax.summaries.visual_summaries` optimises the masks of all images in one
        vmapped program and runs stage 2 per class.
        """,
        """
        N_IMAGES = 140 if SMALL else 1400
        CLASSES = [0, 3] if SMALL else None      # None: every class
        IMAGES_PER_CLASS = 4 if SMALL else 10
        SMOOTH_STEPS, SHARP_STEPS = (30, 15) if SMALL else (None, None)   # None: the paper's
        """,
        model="small_vgg",
        shapes_layers=["features.11"],
        real_layers=["layer4"])
    cells += [
        md("## Masks and summaries"),
        code("""
             import warnings
             from repsim_jax import summaries

             classes = CLASSES
             if DATA != "repsim_shapes" and classes is None:
                 classes = [int(c) for c in np.bincount(labels).argsort()[::-1][:4]]  # most predicted
             with warnings.catch_warnings():
                 warnings.simplefilter("ignore")    # degenerate classes report a status instead
                 result = summaries.visual_summaries(
                     model, images, labels, classes, images_per_class=IMAGES_PER_CLASS,
                     smooth_steps=SMOOTH_STEPS, sharp_steps=SHARP_STEPS, progress=not SMALL)
             m = result.masks
             sel = np.asarray(result.image_indices)
             if m is None:
                 print("no image of these classes is classified correctly: no masks")
             else:
                 deleted = 1 - m.sharp.reshape(len(sel), -1).mean(1)
                 print(f"{len(sel)} images, {int(m.kept.sum())} with masks; deleted pixels per "
                       f"image: median {np.median(deleted[m.kept]):.1%}")
                 print(f"mean true-class probability: clean {np.nanmean(m.target_prob):.3f}, "
                       f"sharp mask's pixels blurred {np.nanmean(m.sharp_prob):.3f}, "
                       f"whole image blurred {np.nanmean(m.blurred_prob):.3f}")
                 show(image_grid([images[sel[:8]], 1 - m.sharp[:8], images[sel[:8]] * m.sharp[:8, ..., None]],
                                 titles=[class_names[labels[i]] for i in sel[:8]],
                                 row_labels=["input", "deleted\\n(1 - mask)", "kept pixels"]))
             """),
        md("""
           ## The summaries of each class

           One row per summary (cluster of regions recurring across images), exemplar first.
           On `repsim_shapes` each region's dominant ground-truth concept is known, so the
           **purity** of a summary (the share of its members showing the same concept) says
           whether it is one visual part.
           """),
        code("""
             for c, cs in sorted(result.classes.items()):
                 print(f"class {class_names[c]}: status {cs.status}, {len(cs.image_indices)} images, "
                       f"{len(cs.regions)} regions, {len(cs.members)} clusters, "
                       f"{cs.n_summaries} summaries")
                 if cs.n_summaries == 0:
                     continue
                 strips = [summaries.summary_strip(images, cs, s, height=48) for s in cs.summaries[:4]]
                 fig, axes = plt.subplots(len(strips), 1, figsize=(8, 1.1 * len(strips)), squeeze=False)
                 for ax, s in zip(axes[:, 0], strips):
                     ax.imshow(np.clip(s, 0, 1))
                     ax.axis("off")
                 axes[0, 0].set_title(f"{class_names[c]}: visual summaries", fontsize=9)
                 show(fig)
                 if concept_masks is not None:
                     purity, best = summaries.summary_purity(cs, concept_masks)
                     for k, (p, b) in enumerate(zip(purity, best)):
                         print(f"   summary {k}: purity {p:.2f} ({concept_names[b]})")
             """),
        md("""
           **Reading it.** Blurring only the few pixels of the sharp mask lowers the class
           probability a lot: those pixels carry the evidence the classifier uses (blurring
           the *whole* image can hurt less, as blur keeps colour, which this model relies
           on). The summaries group such regions across images, and purity tells whether a
           summary is one ground-truth concept. Counting summaries per class compares
           architectures, as in the paper. With the paper's step counts (`SMALL = False`)
           masks and clusters become cleaner.
           """),
    ]
    return notebook(cells)


NOTEBOOKS = {
    "quickstart.ipynb": quickstart,
    "semantic_rsm.ipynb": semantic_nb,
    "invert.ipynb": invert_nb,
    "concept_similarity.ipynb": concepts_nb,
    "cladec.ipynb": cladec_nb,
    "visual_summaries.ipynb": summaries_nb,
}


def main(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for name, make in NOTEBOOKS.items():
        nb = make()
        nbformat.validate(nb)
        path = Path(out_dir) / name
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main():
        print("wrote", p)
