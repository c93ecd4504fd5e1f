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
# # Concept similarity: which layers of two networks encode the same concepts?
#
# Mikriukov, Schwalbe, Hellert, Bade, **"Revealing Similar Semantics Inside CNNs: An
# Interpretable Concept-based Comparison of Feature Spaces"**, 2023
# ([arXiv 2305.07663](https://arxiv.org/abs/2305.07663)).
#
# Layers are compared through the **concepts** they encode instead of raw activations:
#
# * *supervised* (**Net2Vec**): per layer and annotated concept, a 1x1 conv filter is
#   trained to segment the concept; its set IoU on held-out images says how well the
#   layer encodes it, and the concept maps of two layers are compared concept by
#   concept;
# * *unsupervised* (**ICE**): non-negative matrix factorisation of a layer's
#   activations `A ~ S V` gives `k` concept vectors `V` and concept maps `S`; two
#   layers' concept maps are compared pairwise (Pearson) and the layer pair scores the
#   best match of each concept.
#
# The paper finds that concepts recur at similar *relative depth* across architectures.
#
# This notebook: Net2Vec IoU per concept and layer, ICE concept maps, and the layer x
# layer concept similarity of a VGG-like and a ResNet-like network.

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
N_IMAGES = 48 if SMALL else 1000
K_CONCEPTS = 4 if SMALL else 8         # ICE concepts per layer
NET2VEC_EPOCHS = 4 if SMALL else 30
MODEL_B = "small_resnet"               # second built-in model (repsim_shapes)
ARCH_B = "vgg16_bn"                    # second ported architecture (tfds)

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
                    size=SIZE, layers={"small_vgg": ['features.7', 'features.11', 'features.15'],
                                       "resnet18": ['layer2', 'layer3', 'layer4']})
model, images, labels, LAYERS = nb.model, nb.images, nb.labels, list(nb.layers)
class_names, class_rules = list(nb.class_names), nb.class_rules   # rules: None on tfds
concept_labels, concept_names = nb.concept_labels, list(nb.concept_names)
concept_masks = nb.concept_masks   # (N, H, W, C) bool, pixel-exact; None on tfds

# %% [markdown]
# ## A second model on the same images

# %%
# the second model: the other built-in CNN, or ARCH_B with torchvision's ImageNet weights
name_a, name_b = nb.model_name, (MODEL_B if nb.builtin else ARCH_B)
model_b, _ = notebook.load_model(name_b, size=SIZE)
LAYERS_B = ["layer1", "layer2", "layer3"] if nb.builtin else \
    ["features.23", "features.33", "features.43"]
acts_a = models.activations(model, images, LAYERS)
acts_a = {l: np.asarray(acts_a[l]) for l in LAYERS}       # in forward order
acts_b = models.activations(model_b, images, LAYERS_B)
acts_b = {l: np.asarray(acts_b[l]) for l in LAYERS_B}
for name, acts in ((name_a, acts_a), (name_b, acts_b)):
    print(name, {k: v.shape[1:] for k, v in acts.items()})

# %% [markdown]
# ## Supervised: Net2Vec concept filters
#
# Trained on the first half of the images, set IoU measured on the second half. Needs
# per-pixel concept masks (built-in data only).

# %%
from repsim_jax import concepts

if concept_masks is not None:
    half = len(images) // 2
    cfg = concepts.Net2VecConfig(epochs=NET2VEC_EPOCHS, progress=False)
    n2v_a = concepts.net2vec({k: v[:half] for k, v in acts_a.items()}, concept_masks[:half],
                             {k: v[half:] for k, v in acts_a.items()}, concept_masks[half:],
                             concept_names, cfg)
    # the report's figure: concept x layer map of the held-out set IoU
    show(figures.net2vec_heatmap(n2v_a.iou, n2v_a.layers, n2v_a.concept_names, model=name_a))
    for c, (l, iou) in n2v_a.best_layers().items():
        print(f"{c:>9}: best layer {l:<12} IoU {iou:.2f}")
else:
    print("no concept masks for", DATA, "- Net2Vec skipped")

# %% [markdown]
# ## Unsupervised: ICE concepts (NMF)
#
# The concept maps of one layer for a few images: each column is one NMF concept,
# bright where the image shows it.

# %%
layer = LAYERS[1]
ice = concepts.ice_fit(np.maximum(acts_a[layer], 0), K_CONCEPTS, layer=layer)
print(f"{layer}: k={K_CONCEPTS}, relative reconstruction error {ice.relative_error:.3f}")
# the report's figure: each concept's map over the first images (normalised per map)
show(figures.concept_overlays(images[:4], np.moveaxis(np.asarray(ice.maps)[:4], -1, 1)))

# %% [markdown]
# ## Layer x layer concept similarity of the two models
#
# `concepts.ice_layer_similarity` fits ICE concepts for every layer of both models,
# brings the concept maps to one resolution, compares all concept pairs of all layer
# pairs in one batched call (Pearson) and scores each layer pair by best match.
# Comparing model A with itself is the sanity check: its diagonal is 1.

# %%
pos = lambda acts: {k: np.maximum(v, 0) for k, v in acts.items()}
self_cmp, ice_a, _ = concepts.ice_layer_similarity(pos(acts_a), None, K_CONCEPTS)
cmp, _, _ = concepts.ice_layer_similarity(pos(acts_a), pos(acts_b), K_CONCEPTS,
                                          concepts_a=ice_a)
print("A vs A, diagonal:", np.round(np.diag(self_cmp.matrix), 4))
# the report's maps: within one model and across the two models, one per pair
for comp, (ma, mb) in ((self_cmp, (name_a, name_a)), (cmp, (name_a, name_b))):
    show(figures.layer_map(comp.matrix, comp.layers_a, comp.layers_b,
                           measure="ICE concept similarity", row_model=ma, col_model=mb))
idx, depth_b, rho = cmp.best_matches()
for l, j, d in zip(cmp.layers_a, idx, depth_b):
    print(f"{name_a} {l:<12} -> most similar {name_b} layer {cmp.layers_b[j]:<8} "
          f"(relative depth {d:.2f})")
show(cmp.plot_relative_depth(label_a=name_a, label_b=name_b))

# %% [markdown]
# **Reading it.** Net2Vec shows in which layer each annotated concept can be
# segmented by a linear filter (the large background concepts are easy everywhere;
# object attributes need enough images and epochs, so run with `SMALL = False`). The
# ICE map compares layers without annotations. The paper's main observation is that
# the best-matching layer of another architecture lies at a similar *relative*
# depth; the relative-depth plot shows whether that holds for these two models
# (the red line near the diagonal).
