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
# # Semantic RSMs: similarity that ignores *where*
#
# Wald et al., **"Decoupling Semantic Similarity from Spatial Alignment for Neural
# Networks"**, NeurIPS 2024 ([arXiv 2410.23107](https://arxiv.org/abs/2410.23107)).
#
# A representational similarity matrix (RSM) of a conv layer usually compares two images'
# feature maps position by position: `K[i, j] = k(X_i, X_j)` with `X` of shape
# `(positions, channels)`. Two images of the same object at different places then look
# dissimilar. The **semantic RSM** makes the comparison invariant to spatial
# permutations by matching positions first:
#
# $$K^{\mathrm{sem}}_{ij} = \max_{P \in \mathcal{P}_S} k(X_i, P X_j),$$
#
# an assignment problem per pair (exact: Hungarian/auction; approximations: greedy,
# top-k greedy, windowed, Sinkhorn). `repsim_jax.semantic.rsm` solves all N x N pairs
# in vmapped, chunked blocks and shards them over devices.
#
# This notebook: semantic vs spatio-semantic RSM of a layer, permutation invariance,
# retrieval quality, matchers (exactness vs speed), and a layer x layer CKA map.

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
N_IMAGES = 56 if SMALL else 600
LAYER_SHAPES, LAYER_REAL = "features.11", "layer4"

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
                    size=SIZE, layers={"small_vgg": ['features.11', 'features.15', 'globalpool'],
                                       "resnet18": ['layer3', 'layer4', 'avgpool']})
model, images, labels, LAYERS = nb.model, nb.images, nb.labels, list(nb.layers)
class_names, class_rules = list(nb.class_names), nb.class_rules   # rules: None on tfds
concept_labels, concept_names = nb.concept_labels, list(nb.concept_names)
concept_masks = nb.concept_masks   # (N, H, W, C) bool, pixel-exact; None on tfds

# %% [markdown]
# ## Semantic vs spatio-semantic RSM of one layer

# %%
from repsim_jax import semantic

layer = LAYER_SHAPES if DATA == "repsim_shapes" else LAYER_REAL
acts = models.activations(model, images, LAYERS)
X = np.asarray(acts[layer])
print(layer, X.shape, "=", X.shape[1] * X.shape[2], "positions per image")
K = semantic.rsm(X, kernel="cosine", matcher="exact")
K_id = semantic.rsm(X, kernel="cosine", matcher="identity")
# the report's figure: inputs ordered by class (stable), class boundaries, one colour scale
show(figures.rsm_pair(K, K_id, labels, class_names, title=layer))
order = figures.class_order(labels)[0]
show(figures.heatmap((K - K_id)[np.ix_(order, order)], title=f"{layer}: semantic - "
                     "spatio-semantic (inputs ordered by class)", cbar="difference"))
print(f"diagonal of the semantic RSM: min {np.diag(K).min():.6f}, max {np.diag(K).max():.6f}")
print(f"symmetric: max |K - K.T| = {np.abs(K - K.T).max():.2e}")
print(f"semantic >= spatio-semantic everywhere: {bool((K >= K_id - 1e-5).all())}")

# %% [markdown]
# ## Invariance to where things are
#
# Shuffling the spatial positions of some images' feature maps (the same
# permutation for all channels) leaves their semantic similarities unchanged, while
# the spatio-semantic ones change.

# %%
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

# %% [markdown]
# ## Does the RSM retrieve semantically similar images?
#
# For each image take its most similar other image: does it share the class
# (`top1_agreement`), and how well do their concept sets agree (`retrieval_f1`,
# F1@1 of the ground-truth concept labels)?

# %%
rows = [("semantic", K), ("spatio-semantic", K_id)]
for name, M in rows:
    print(f"{name:>16}: same class {semantic.top1_agreement(M, labels):.3f}   "
          f"concept F1@1 {semantic.retrieval_f1(M, concept_labels):.3f}")
q = 0
others = np.arange(len(K)) != q            # not the query itself
top_sem = np.flatnonzero(others)[np.argsort(-K[q, others], kind="stable")[:5]]
top_id = np.flatnonzero(others)[np.argsort(-K_id[q, others], kind="stable")[:5]]
show(image_rows([images[[q, *top_sem]], images[[q, *top_id]]],
                col_titles=["query"] + [f"#{r + 1}" for r in range(5)],
                row_labels=["semantic", "spatio-\nsemantic"]))

# %% [markdown]
# ## Matchers: exact vs approximate
#
# Exact matching costs O(S^3) per pair (S positions). The approximate matchers trade
# exactness for speed; `return_info=True, quality=True` returns a `SemanticRSM` whose
# `.quality` is the matched score divided by the exact one (1 = optimal).

# %%
import time

for matcher in ("exact", "greedy", "sinkhorn", "identity"):
    t = time.perf_counter()
    info = semantic.rsm(X, kernel="cosine", matcher=matcher, return_info=True, quality=True)
    M, quality = info.rsm, info.quality
    dt = time.perf_counter() - t
    print(f"{matcher:>9}: mean quality {np.mean(quality):.4f}, "
          f"min {np.min(quality):.4f}, {dt:.2f} s (incl. compilation)")

# %% [markdown]
# ## Layer x layer: semantic CKA map
#
# `semantic.rsm` takes a dict of layers (equal shapes are vmapped together) and
# `semantic.compare` compares all RSMs in one batched call.

# %%
Ks = semantic.rsm({l: acts[l] for l in LAYERS}, kernel="cosine", matcher="exact")
Ks_id = semantic.rsm({l: acts[l] for l in LAYERS}, kernel="cosine", matcher="identity")
C = semantic.compare(Ks, method="linear_cka")
C_cross = semantic.compare(Ks, Ks_id, method="linear_cka")
# the report's layer x layer map (within one model), axes labelled by layer
show(figures.layer_map(C, LAYERS, LAYERS, measure="linear CKA of semantic RSMs",
                       row_model=nb.model_name, col_model=nb.model_name))
show(figures.heatmap(C_cross, LAYERS, LAYERS, vmin=0, vmax=1, cbar="linear CKA",
                     title="semantic (rows) vs spatio-semantic (columns)"))
print("CKA(semantic, spatio-semantic) per layer:", np.round(np.diag(C_cross), 3))

# %% [markdown]
# **Reading it.** Wherever a layer has several spatial positions, the semantic RSM
# differs from the spatio-semantic one (CKA between them below 1); after global
# pooling (one position) both are identical. Retrieval by the semantic RSM
# finds images with the same concepts regardless of where they sit, which is the
# paper's argument for comparing networks with semantic RSMs.
