# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # repsim_jax quickstart
#
# **repsim_jax** asks *what* a neural network represents and *how similar* two
# representations are, in JAX/Flax: ported model weights -> activations of named
# layers -> semantic RSMs, INVERT concept labels, concept similarity, ClaDec and visual
# summaries -> arrays, tables and pictures.
#
# This notebook walks the whole path once:
#
# 1. data and a trained model,
# 2. activations of named layers (torchvision module paths) from one jit-compiled pass,
# 3. a **semantic RSM** of one layer (Wald et al., NeurIPS 2024),
# 4. **INVERT** labels of the class logits (Bykov et al., NeurIPS 2023),
# 5. a **layer x layer CKA map**,
# 6. the same at scale from the command line: `repsim demo` / `repsim sweep`.
#
# One notebook per method goes deeper: `semantic_rsm`, `invert`, `concept_similarity`,
# `cladec`, `visual_summaries`.

# %% [markdown]
# ## Install
#
# On Colab, set `REPO_URL` to where repsim_jax lives; the cell installs it with the
# notebook extras (matplotlib, scikit-learn, scikit-image). Where `repsim_jax` already
# imports (a local install, CI) the cell does nothing. If pip upgrades JAX on Colab,
# restart the runtime once (*Runtime -> Restart session*) and run on.

# %%
# Where pip finds repsim_jax on Colab: set this to the project's git repository.
REPO_URL = "https://github.com/YOUR-ORG/repsim_jax"  # <- set me (any URL `pip install git+...` takes)

try:
    import repsim_jax  # already installed (local Jupyter, CI): nothing to install
except ImportError:
    # %pip install -q "repsim_jax[notebooks] @ git+{REPO_URL}"
    import repsim_jax
print("repsim_jax", repsim_jax.__version__)

# %% [markdown]
# ## Configuration: one line to change
#
# * `DATA = "repsim_shapes"` (default) uses the **built-in concept data** (64x64 images with
#   pixel-exact concept masks and class rules) and a **built-in trained CNN** (trained on first
#   use in a few minutes on a CPU, then cached). Runs on a free CPU runtime in minutes.
# * `DATA = "tfds:<name>"` (e.g. `"tfds:imagenette/160px"`, `"tfds:cifar10"`) uses a
#   tensorflow-datasets set and an **ImageNet-trained ResNet-18 ported from torchvision**
#   (`ARCH` / `WEIGHTS` below). Switch the runtime to GPU or TPU first (*Runtime -> Change
#   runtime type*). Without concept annotations, the classes serve as concepts. Any other
#   source of `repsim_jax.data.load` works the same way (an image folder `folder:DIR`, ...).
#
# `SMALL` shrinks every size so CI can execute the notebook on a CPU in seconds; leave it.

# %%
import os

SMALL = os.environ.get("REPSIM_NOTEBOOK_SMALL", "0") == "1"  # tiny sizes (CI sets this)
DATA = "repsim_shapes"  # <- the one line to change: "tfds:imagenette/160px", "tfds:cifar10", ... on a GPU/TPU runtime

# %%
MODEL = "small_vgg"  # built-in trained model for repsim_shapes
N_IMAGES = 105 if SMALL else 700     # images analysed
RSM_LAYER_SHAPES = "features.11"      # a conv layer for the semantic RSM (8x8 positions)
RSM_LAYER_REAL = "layer4"             # ... and its counterpart in ResNet-18 (7x7)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from repsim_jax import models
from repsim_jax import notebook   # data and model of every notebook
from repsim_jax.sweep import figures          # the report's figures, shown inline here
from repsim_jax.sweep.figures import image_rows, show

print("JAX", jax.__version__, "on", jax.devices())

# %% [markdown]
# ### Real data (used only when `DATA` is a tfds name)
#
# `ARCH` is a torchvision architecture of `repsim_jax.models.model_names()`; its ImageNet
# weights come from torchvision (`WEIGHTS = None`, needs `torchvision`) or from a
# `.pth` / `.safetensors` / `.npz` file, ported without executing pickled code. The ported
# model carries its ImageNet preprocessing (resize, crop, normalisation), so every method
# sees images in [0, 1].

# %%
ARCH = "resnet18"  # any of repsim_jax.models.model_names() with torchvision weights
WEIGHTS = None     # None: torchvision's ImageNet weights (needs torchvision); or a weight file
SIZE = 224         # input side for ARCH

# %% [markdown]
# ## Data and model
#
# On the built-in data, the concepts are the ground truth of the generator (shape, colour,
# texture, size, background), and every class is a Boolean rule over them. On a tfds set, the
# classes are the concepts (one-hot) and the model's own predictions serve as the labels the
# methods explain. `repsim_jax.notebook.setup` loads either (the same call in every notebook).

# %%
# data, model and layers for either kind of DATA (built-in: trained on first use, then cached)
nb = notebook.setup(DATA, n_images=N_IMAGES, model=MODEL, arch=ARCH, weights=WEIGHTS,
                    size=SIZE)   # layers: notebook.DEFAULT_LAYERS, input to logits
model, images, labels, LAYERS = nb.model, nb.images, nb.labels, list(nb.layers)
class_names, class_rules = list(nb.class_names), nb.class_rules   # rules: None on tfds
concept_labels, concept_names = nb.concept_labels, list(nb.concept_names)
concept_masks = nb.concept_masks   # (N, H, W, C) bool, pixel-exact; None on tfds

# %% [markdown]
# A few images with their class. On `repsim_shapes` the class is a rule over the
# concepts (printed under each class name).

# %%
show(figures.class_thumbnails(images, labels, class_names, per_class=6))   # as in the report
if class_rules is not None:
    for name, rule in zip(class_names, class_rules):
        print(f"{name:>14}: {rule}")

# %% [markdown]
# ## Activations of named layers
#
# `models.list_layers(model)` names every capturable layer;
# `models.activations(model, images, layers)` returns them from ONE jit-compiled
# forward pass (XLA drops what the requested layers do not need). `"logits"` is
# always a valid name.

# %%
print(len(models.list_layers(model)), "capturable layers, e.g.",
      models.list_layers(model)[:6])
acts = models.activations(model, images, LAYERS)
for name in LAYERS:
    print(f"{name:>14}: {tuple(acts[name].shape)}")

# %% [markdown]
# ## A semantic RSM
#
# A representational similarity matrix compares every pair of images. The usual
# (*spatio-semantic*) RSM compares feature vectors position by position, so the same
# object at another place looks dissimilar. The **semantic RSM** first matches the
# spatial positions of the two images optimally (an assignment problem) and then
# compares: `K[i, j] = max_P  k(X_i, P X_j)`. With the cosine kernel the diagonal
# is 1.

# %%
from repsim_jax import semantic

layer = RSM_LAYER_SHAPES if DATA == "repsim_shapes" else RSM_LAYER_REAL
K = semantic.rsm(acts[layer], kernel="cosine", matcher="exact")
K_id = semantic.rsm(acts[layer], kernel="cosine", matcher="identity")
# the report's figure: inputs ordered by class, one colour scale for both RSMs
show(figures.rsm_pair(K, K_id, labels, class_names, title=layer,
                      left="semantic (exact matching)"))
off = ~np.eye(len(K), dtype=bool)
print(f"RSM diagonal: min {np.diag(K).min():.6f} max {np.diag(K).max():.6f}")
print(f"mean off-diagonal similarity: semantic {K[off].mean():.3f} >= "
      f"identity {K_id[off].mean():.3f}")
print(f"nearest neighbour has the same class: semantic "
      f"{semantic.top1_agreement(K, labels):.3f}, identity "
      f"{semantic.top1_agreement(K_id, labels):.3f}")

# %% [markdown]
# The semantic RSM is never below the identity RSM (matching can only improve the
# score), and the class blocks along the diagonal show which images the layer deems
# alike regardless of where their objects are.
#
# ## INVERT labels of the logits
#
# INVERT explains a neuron by the Boolean formula over concepts (up to `L` literals,
# `AND`/`OR`/`NOT`) whose indicator best separates the inputs by the neuron's
# activation, scored by the AUC. Applied to the class logits of the trained model,
# it should recover each class's rule.

# %%
from repsim_jax import invert
from repsim_jax.data.shapes import evaluate_rule

res = invert.explain(acts["logits"], concept_labels, concept_names, L=3, B=5)
show_units = range(len(res)) if DATA == "repsim_shapes" else \
    np.argsort(-np.asarray(acts["logits"]).std(0))[:10]
for u in show_units:
    best = res[u].best
    rule = ""
    if class_rules is not None:   # where the formula holds vs where the rule holds
        f = invert.parse(best.formula, concept_labels, concept_names)
        r = evaluate_rule(class_rules[u], concept_labels, concept_names)
        iou = (f & r).sum() / max((f | r).sum(), 1)
        rule = (f"  IoU with the class rule {iou:.2f}"
                f"  (rule: {class_rules[u]})")
    print(f"logit[{class_names[u]}] INVERT: {best.formula}  AUC {best.auc:.3f}{rule}")

# %% [markdown]
# Each logit's formula reads like its class's rule (concepts and connectives may
# be rearranged: INVERT returns the best formula with at most `L=3` literals, and
# on a finite sample several formulas separate equally well). An AUC near 1 means
# the logit is high exactly when the formula holds.
#
# ## Layer x layer CKA map
#
# Linear CKA between the RSMs of every pair of layers (`semantic.compare`, one
# batched call). Here with the plain inner-product RSM of the flattened activations
# (`X X^T`), i.e. classic linear CKA; pass semantic RSMs instead to compare layers
# independently of spatial layout (see the `semantic_rsm` notebook).

# %%
flat = {l: np.asarray(acts[l]).reshape(len(images), -1) for l in LAYERS}
grams = np.stack([f @ f.T for f in flat.values()])   # (layers, N, N) linear kernels
C = semantic.compare(grams, method="linear_cka")
show(figures.layer_map(C, LAYERS, LAYERS, measure="linear CKA", row_model=nb.model_name,
                       col_model=nb.model_name))
print("CKA diagonal:", np.round(np.diag(C), 4))
print("CKA of neighbouring layers:", np.round(np.diag(C, 1), 3))

# %% [markdown]
# Neighbouring layers are usually the most alike; a sharp drop between neighbours
# marks a layer that reorganises the representation (on the built-in model: the
# global max-pool, which throws away where things are).
#
# ## At scale: `repsim demo` and `repsim sweep`
#
# The command line runs any subset of the five methods over all (or chosen) layers of
# one or more models, shards the work over every visible device, checkpoints
# finished units (a killed run resumes) and writes arrays, CSV/JSON tables, PNG
# pictures and a self-contained `report.html` into one directory:
#
# ```bash
# repsim demo                                     # everything, built-in models + data
# repsim layers small_vgg                         # layer names and shapes
# repsim sweep --models small_vgg,small_resnet --layers features.11,layer3 \
#              --methods semantic,invert --out runs/a
# repsim sweep --arch resnet18 --weights resnet18.pth --num-classes 1000 \
#              --data tfds:imagenette/160px --n-images 512 --methods semantic,invert
# ```
#
# The same from Python: `repsim_jax.sweep.run_sweep(repsim_jax.sweep.from_dict({...}))`.
# Set `RUN_DEMO = True` to run the demo here (a few minutes on a CPU).

# %%
import subprocess
import sys

RUN_DEMO = False
cli = [sys.executable, "-m", "repsim_jax.cli"]
print(subprocess.run(cli + ["--help"], capture_output=True, text=True).stdout[:600])
if RUN_DEMO:
    subprocess.run(cli + ["demo", "--out", "repsim-out/demo"], check=True)
