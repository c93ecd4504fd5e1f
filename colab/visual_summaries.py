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
# # Visual summaries: what image parts a classifier relies on, per class
#
# Godi, Carletti, Aghaei, Giuliari, Cristani, **"Understanding Deep Architectures by
# Visual Summaries"**, BMVC 2018 ([arXiv 1801.09103](https://arxiv.org/abs/1801.09103)).
#
# Stage 1 finds, for each correctly classified image, a sparse, smooth **mask** of the
# pixels whose blurring destroys the class score (meaningful perturbations: minimise
# the class probability of the perturbed image plus L1 and total-variation penalties;
# a smooth then a sharp pass). Stage 2 cuts the masks into **regions**, measures how
# alike regions of different images look (appearance x geometric consistency), and
# **clusters** them with affinity propagation; clusters that recur across images and
# look coherent (SSIM) are the class's **visual summaries** - the parts the network
# consistently uses (for a bird: head, wings, tail...).
#
# `repsim_jax.summaries.visual_summaries` optimises the masks of all images in one
# vmapped program and runs stage 2 per class.

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
N_IMAGES = 140 if SMALL else 1400
CLASSES = [0, 3] if SMALL else None      # None: every class
IMAGES_PER_CLASS = 4 if SMALL else 10
SMOOTH_STEPS, SHARP_STEPS = (30, 15) if SMALL else (None, None)   # None: the paper's

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
                    size=SIZE, layers={"small_vgg": ['features.11'],
                                       "resnet18": ['layer4']})
model, images, labels, LAYERS = nb.model, nb.images, nb.labels, list(nb.layers)
class_names, class_rules = list(nb.class_names), nb.class_rules   # rules: None on tfds
concept_labels, concept_names = nb.concept_labels, list(nb.concept_names)
concept_masks = nb.concept_masks   # (N, H, W, C) bool, pixel-exact; None on tfds

# %% [markdown]
# ## Masks and summaries

# %%
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
    show(image_rows([images[sel[:8]], 1 - m.sharp[:8], images[sel[:8]] * m.sharp[:8, ..., None]],
                    col_titles=[class_names[labels[i]] for i in sel[:8]],
                    row_labels=["input", "deleted\n(1 - mask)", "kept pixels"]))

# %% [markdown]
# ## The summaries of each class
#
# One row per summary (cluster of regions recurring across images), exemplar first.
# On `repsim_shapes` each region's dominant ground-truth concept is known, so the
# **purity** of a summary (the share of its members showing the same concept) says
# whether it is one visual part.

# %%
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

# %% [markdown]
# **Reading it.** Blurring only the few pixels of the sharp mask lowers the class
# probability a lot: those pixels carry the evidence the classifier uses (blurring
# the *whole* image can hurt less, as blur keeps colour, which this model relies
# on). The summaries group such regions across images, and purity tells whether a
# summary is one ground-truth concept. Counting summaries per class compares
# architectures, as in the paper. With the paper's step counts (`SMALL = False`)
# masks and clusters become cleaner.
