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
# # INVERT: label neurons with concept formulas
#
# Bykov, Kopf, Nakajima, Kloft, Höhne, **"Labeling Neural Representations with Inverse
# Recognition"**, NeurIPS 2023 ([arXiv 2311.13594](https://arxiv.org/abs/2311.13594)).
#
# INVERT explains a neuron by the compositional concept whose presence best *ranks* the
# inputs by the neuron's activation. For a formula `phi` over Boolean concept labels
# (literals joined by `AND`/`OR`, possibly negated, at most `L` literals), its score is
# the AUC
#
# $$\mathrm{AUC}(\phi) = P\big(a(x^+) > a(x^-)\big),\quad x^+ : \phi(x^+)=1,\ x^- : \phi(x^-)=0,$$
#
# the Mann-Whitney statistic (ties count 1/2), found by a beam search of width `B`.
# A p-value (Mann-Whitney U test) and a Benjamini-Hochberg q-value across all
# neurons say whether the label is more than chance. `repsim_jax.invert.explain`
# runs the search for all neurons of a layer at once (vectorised, sharded).
#
# This notebook: labels for the logits and the neurons of a hidden layer, the strongest
# neurons with their top images, and a check of the reported AUC.

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
N_IMAGES = 140 if SMALL else 2000
L_MAX, BEAM = (3, 5) if SMALL else (3, 10)

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
                    size=SIZE, layers={"small_vgg": ['globalpool', 'classifier.1', 'logits'],
                                       "resnet18": ['avgpool', 'logits']})
model, images, labels, LAYERS = nb.model, nb.images, nb.labels, list(nb.layers)
class_names, class_rules = list(nb.class_names), nb.class_rules   # rules: None on tfds
concept_labels, concept_names = nb.concept_labels, list(nb.concept_names)
concept_masks = nb.concept_masks   # (N, H, W, C) bool, pixel-exact; None on tfds

# %% [markdown]
# ## Labels for every neuron of two layers

# %%
from repsim_jax import invert
from repsim_jax.data.shapes import evaluate_rule

acts = models.activations(model, images, LAYERS)
hidden = LAYERS[-2]
out = invert.explain({hidden: acts[hidden], "logits": acts["logits"]},
                     concept_labels, concept_names, L=L_MAX, B=BEAM)
for name, res in out.items():
    auc = res.auc[:, -1, 0]
    print(f"{name}: {len(res)} neurons, median best AUC {np.nanmedian(auc):.3f}, "
          f"q < 0.05 for {int(np.sum(res.q_value < 0.05))}")

# %% [markdown]
# ### The logits
#
# On `repsim_shapes` each class is defined by a rule over the concepts, so the logit
# of a well-trained model should be explained by (a formula close to) its rule.

# %%
res = out["logits"]
units = range(len(res)) if DATA == "repsim_shapes" else \
    np.argsort(-res.auc[:, -1, 0])[:10]
for u in units:
    beam = res[u]
    rule = ""
    if class_rules is not None:   # where the formula holds vs where the rule holds
        f = invert.parse(beam.best.formula, concept_labels, concept_names)
        r = evaluate_rule(class_rules[u], concept_labels, concept_names)
        iou = (f & r).sum() / max((f | r).sum(), 1)
        rule = (f"  IoU with the class rule {iou:.2f}"
                f"  (rule: {class_rules[u]})")
    print(f"logit[{class_names[u]}] INVERT: {beam.best.formula}  AUC {beam.best.auc:.3f}  "
          f"p {beam.p_value:.1e}{rule}")

# %% [markdown]
# ### The hidden layer: strongest neurons and the images that drive them

# %%
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
    labels_.append(f"neuron {u}\n{res_h[u].best.formula}")
show(image_rows(rows, row_labels=labels_))

# the report's figure: activation of the inputs with and without each formula's concept
holds = np.stack([invert.parse(res_h[u].best.formula, concept_labels, concept_names)
                  for u in top[:4]])
show(figures.activation_histograms(a[:, top[:4]].T, holds,
                                   [f"neuron {u}: {res_h[u].best.formula}" for u in top[:4]]))

# %% [markdown]
# ### Checking a label
#
# The reported AUC is the rank AUC of the formula's indicator against the neuron's
# activations; recompute it independently with `invert.parse` (formula string ->
# indicator) and `invert.rank_auc`.

# %%
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

# %% [markdown]
# **Reading it.** A high AUC with a small q-value means the neuron responds to the
# concept formula, not just to chance. Hidden neurons usually respond to mixtures
# (e.g. a colour OR another colour), which is why compositional formulas label them
# better than single concepts. On real data without concept annotations, the
# classes are the concepts, as in the paper's ImageNet experiments.
