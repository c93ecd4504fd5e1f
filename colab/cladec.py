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
# # ClaDec: what a layer keeps, shown as images
#
# Schneider & Vlachos, **"Explaining Classifiers by Constructing Familiar Concepts"**,
# Machine Learning 2022 ([arXiv 2203.04109](https://arxiv.org/abs/2203.04109)).
#
# ClaDec trains a decoder `D` that turns a frozen classifier's layer activation `L(x)`
# back into an image. The decoder is trained with
#
# $$\mathcal{L}_\alpha = (1-\alpha)\,\mathrm{MSE}\big(D(L(x)), x\big) + \alpha\,\mathrm{CE}\big(\mathrm{Cla}(D(L(x))), y\big),$$
#
# so the reconstruction shows what the layer keeps (and, with `alpha > 0`, what the
# classifier needs). It is compared with a **reference auto-encoder** of the same
# architecture trained end to end for reconstruction only: what ClaDec loses relative to
# it is what the classifier's layer discards. `repsim_jax.cladec` trains all
# `(layer, alpha)` decoders as one vmapped program.
#
# This notebook: ClaDec decoders for two layers and two alphas, the reference
# auto-encoder, reconstructions side by side, and the errors.

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
N_IMAGES = 48 if SMALL else 2000
STEPS = 60 if SMALL else 1500
LR = 3e-3 if SMALL else 3e-4           # 3e-4: the official default; SMALL: few steps
BATCH = 32 if SMALL else 64
LOG_EVERY = 10 if SMALL else 50
ALPHAS = [0.0, 0.01]

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
                    size=SIZE, layers={"small_vgg": ['features.7', 'features.15'],
                                       "resnet18": ['layer2', 'layer4']})
model, images, labels, LAYERS = nb.model, nb.images, nb.labels, list(nb.layers)
class_names, class_rules = list(nb.class_names), nb.class_rules   # rules: None on tfds
concept_labels, concept_names = nb.concept_labels, list(nb.concept_names)
concept_masks = nb.concept_masks   # (N, H, W, C) bool, pixel-exact; None on tfds

# %% [markdown]
# ## Training the decoders and the reference auto-encoder

# %%
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

# %% [markdown]
# ## Reconstructions of held-out images

# %%
n = 8
rows, names = [test_x[:n]], ["input"]
errors = {}
for layer in layers:
    for alpha in ALPHAS:
        rec = cl_train.reconstruct(fit, test_x, layer, alpha)
        rows.append(rec[:n])
        names.append(f"{layer}\nClaDec a={alpha:g}")
        errors[f"{layer} ClaDec a={alpha:g}"] = cl_eval.reconstruction_error(test_x, rec)
    rec_ae = cl_train.reconstruct_ae(ae, test_x, layer)
    rows.append(rec_ae[:n])
    names.append(f"{layer}\nref. AE")
    errors[f"{layer} reference AE"] = cl_eval.reconstruction_error(test_x, rec_ae)
show(image_rows(rows, row_labels=names))
print("reconstructions lie in [0, 1]:", all(0 <= r.min() and r.max() <= 1 for r in rows[1:]))
for k, v in errors.items():
    print(f"{k:<32} squared error per image {v:8.2f}")

# %% [markdown]
# **Reading it.** A ClaDec reconstruction shows what survives in the layer: what
# the classifier needs (here colour, shape and size, which define the classes)
# stays recognisable, what it discards (exact texture, position, noise) blurs, the
# more so the deeper the layer. The reference auto-encoder, free to learn its own
# encoder, is the baseline of how much a code of that shape *could* keep; a larger
# `alpha` pulls the reconstruction towards class evidence at the cost of pixel
# error. The `SMALL` run trains for a few dozen steps only, so its images are
# blurry; run with `SMALL = False` for the full picture.
