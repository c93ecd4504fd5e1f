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
# # Your own model: a DINOv2 / ViT checkpoint from Hugging Face, swept like the built-ins
#
# Semantic RSMs were introduced on ViTs and DINOv2 next to ResNets (Wald et al., NeurIPS
# 2024, [arXiv:2410.23222](https://arxiv.org/abs/2410.23222)). This notebook loads a
# transformers checkpoint directory (`config.json` + `model.safetensors` +
# `preprocessor_config.json`, as `save_pretrained` writes it) into repsim_jax - no torch
# at run time - lists its layers under their transformers names, computes semantic RSMs
# of every block's patch tokens and runs a sweep with a `hf = "DIR"` model entry.
#
# Offline (and in CI) it builds a **random** DINOv2-with-registers-shaped model and writes
# it as a checkpoint directory; on Colab, save a pretrained hub model first (cell below)
# and set `MODEL_DIR`.

# %%
# Where pip finds repsim_jax on Colab: set this to the project's git repository.
REPO_URL = "https://github.com/YOUR-ORG/repsim_jax"  # <- set me (any URL `pip install git+...` takes)

try:
    import repsim_jax  # already installed (local Jupyter, CI): nothing to install
except ImportError:
    # %pip install -q "repsim_jax[notebooks] @ git+{REPO_URL}"
    import repsim_jax
print("repsim_jax", repsim_jax.__version__)

# %%
import os

SMALL = os.environ.get("REPSIM_NOTEBOOK_SMALL", "0") == "1"  # tiny sizes (CI sets this)
DATA = "repsim_shapes"  # built-in concept data; "tfds:imagenette/160px", ... with a pretrained model
MODEL_DIR = None  # <- the one line to change: a save_pretrained directory, e.g. "dinov2-small"

# %% [markdown]
# ## A pretrained model (Colab, with network)
#
# transformers and torch are only needed once, to write the directory:
#
# ```python
# from transformers import AutoImageProcessor, AutoModel
# AutoModel.from_pretrained("facebook/dinov2-small").save_pretrained("dinov2-small")
# AutoImageProcessor.from_pretrained("facebook/dinov2-small").save_pretrained("dinov2-small")
# MODEL_DIR = "dinov2-small"      # or "google/vit-base-patch16-224", "openai/clip-vit-base-patch32", ...
# ```

# %%
import re

import numpy as np

from repsim_jax import models, notebook, semantic, sweep
from repsim_jax.models.preprocess import Preprocess
from repsim_jax.sweep import figures          # the report's figures, shown inline here
from repsim_jax.sweep.figures import show

if MODEL_DIR is None:   # offline: a random model of the same family, written as a checkpoint
    config = {"model_type": "dinov2_with_registers", "architectures": ["Dinov2WithRegistersModel"],
              "hidden_size": 32 if SMALL else 96, "num_hidden_layers": 2 if SMALL else 4,
              "num_attention_heads": 4, "mlp_ratio": 2, "image_size": 64, "patch_size": 8,
              "num_register_tokens": 2}
    random_model = models.build_hf(config, preprocess=Preprocess(mean=(0.5, 0.5, 0.5),
                                                                 std=(0.5, 0.5, 0.5)))
    MODEL_DIR = str(models.save_hf(random_model, "random-dinov2"))

model = models.load_hf(MODEL_DIR)
print(model.arch, "|", model.preprocess.describe())
print("prefix tokens (CLS + registers):", model.num_prefix_tokens)
names = models.list_layers(model)
blocks = [n for n in names if re.fullmatch(r"(\w+\.)?(embeddings|encoder\.layers?\.\d+|layernorm)", n)]
print(len(names), "layers; blocks:", blocks)

# %% [markdown]
# ## Activations of every block
#
# Images enter as NHWC in [0, 1]; `notebook.setup` (given the model, on either kind of data)
# applies the processor's resize/crop rule (a no-op for the random model, 64 px),
# `activations` the normalisation. Token layers are `[CLS, registers..., patches]`: the
# patch tokens start at `model.num_prefix_tokens`.

# %%
N = 24 if SMALL else 160
# your model on either kind of DATA: images resized/cropped by its rule, the data's classes
nb = notebook.setup(DATA, n_images=N, model=model, layers=blocks, predict=False, batch_size=16)
x, classes = nb.images, nb.labels
labels = nb.concept_labels   # label sets of retrieval: ground-truth concepts, or classes one-hot
acts = models.activations(model, x, blocks, batch_size=16)
patches = {b: np.asarray(acts[b])[:, model.num_prefix_tokens:] for b in blocks}
for b in blocks:
    print(f"{b:24s} {tuple(acts[b].shape)} -> patch tokens {patches[b].shape[1]}")

# %% [markdown]
# ## Semantic RSMs per block, and how the blocks relate
#
# The semantic RSM matches patch tokens between two images optimally (permutation
# invariant); the spatio-semantic baseline compares them position by position.

# %%
K = semantic.rsm(patches, kernel="cosine", matcher="exact")
K0 = semantic.rsm(patches, kernel="cosine", matcher="identity")
for b in blocks:
    d = np.diag(np.asarray(K[b]))
    print(f"{b:24s} diagonal min {d.min():.4f} | retrieval F1 semantic "
          f"{semantic.retrieval_f1(K[b], labels):.3f} vs spatio-semantic "
          f"{semantic.retrieval_f1(K0[b], labels):.3f} | semantic >= spatio-semantic: "
          f"{bool((np.asarray(K[b]) >= np.asarray(K0[b]) - 1e-5).all())}")
cka = semantic.compare(K, method="linear_cka")
print("CKA diagonal:", np.round(np.diag(cka), 4))

show(figures.rsm_pair(K[blocks[-1]], K0[blocks[-1]], classes,
                      title=f"{blocks[-1]}: patch tokens, semantic vs spatio-semantic"))
show(figures.layer_map(cka, blocks, blocks, measure="linear CKA", row_model="model",
                       col_model="model"))

# %% [markdown]
# ## The same as a sweep: `hf = "DIR"` in `[[models]]`
#
# In a TOML file: `[[models]]` / `name = "dinov2"` / `hf = "dinov2-small"`. The sweep
# writes arrays, tables and one `report.html`; rerunning the same command resumes.

# %%
cfg = sweep.from_dict({
    "methods": ["semantic", "invert"],
    "models": [{"name": "dinov2", "hf": MODEL_DIR}],
    "layers": blocks[-2:],
    "data": {"source": DATA, "n_images": N},
    "output": "own-model-sweep",
})
report = sweep.run_sweep(cfg, progress=False)
print("report:", report)
