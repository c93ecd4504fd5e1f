"""``repsim_shapes``: a procedural concept world with pixel-exact ground truth.

Every image (``size x size`` RGB in [0, 1], default 64) shows 1-3 non-overlapping objects
on a background. Each object has one value of four attributes and the image one background:

==========  =================================
group       concepts (identifiers)
==========  =================================
shape       ``circle``, ``square``, ``triangle``
colour      ``red``, ``green``, ``blue``, ``yellow``
texture     ``solid``, ``stripes``, ``dots``
size        ``small``, ``large``
background  ``dark``, ``light``
==========  =================================

Ground truth per image:

* ``concept_labels[n, c]`` — concept ``c`` is present: some object carries it (object
  concepts) or it is the image's background;
* ``concept_masks()[n, y, x, c]`` — pixel ``(y, x)`` belongs to an object carrying ``c``
  (object concepts) or to the visible background (background concepts). Objects never
  overlap, so ``concept_labels[n, c] == concept_masks()[n, ..., c].any()`` exactly;
* ``labels[n]`` — the class, given by a compositional rule over the image-level concept
  labels. The rules (``CLASS_RULES``) are Python boolean expressions over concept names,
  pairwise disjoint and jointly exhaustive, so exactly one holds for every image:

  .. math::  y_n = k \\iff \\mathrm{rule}_k(\\text{concept\\_labels}_n) = \\text{True}.

They need AND (``red and circle``), OR (``square or triangle``) and NOT (``not red``).

Sampling is class-first (balanced classes): the class sequence is a seeded permutation of
``arange(n) % K``; object attributes are drawn uniformly in vectorised batches and each
class takes, in order, the candidates whose rule holds (rejection sampling). Rendering is
vectorised numpy over chunks of images; pixel values are quantised to multiples of 1/255
(so the images survive a round trip through uint8 storage, e.g. the tfds builder, exactly). The masks are stored compactly as an object-index
map ``object_map`` (N, H, W) int8 (-1 = background) plus per-object attributes; the
(N, H, W, C) boolean tensor is derived on demand.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
from typing import Sequence

import numpy as np

from repsim_jax._checks import InputError, unknown_name

__all__ = [
    "SHAPES", "COLOURS", "TEXTURES", "SIZES", "BACKGROUNDS", "CONCEPT_NAMES", "CONCEPT_GROUPS",
    "CLASS_NAMES", "CLASS_RULES", "SPLITS", "ShapesData", "generate", "load",
    "evaluate_rule", "classify",
]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
TEXTURES = ("solid", "stripes", "dots")
SIZES = ("small", "large")
BACKGROUNDS = ("dark", "light")
# Object attribute columns of ``ShapesData.objects`` in this order.
ATTRIBUTES = (("shape", SHAPES), ("colour", COLOURS), ("texture", TEXTURES), ("size", SIZES))
CONCEPT_GROUPS = {"shape": SHAPES, "colour": COLOURS, "texture": TEXTURES, "size": SIZES,
                  "background": BACKGROUNDS}
CONCEPT_NAMES = tuple(c for group in CONCEPT_GROUPS.values() for c in group)
MAX_OBJECTS = 3

# Pairwise disjoint, jointly exhaustive (checked in tests on every generated image).
CLASS_NAMES = ("red_circle", "red_large", "red_small", "angular_dark", "angular_light",
               "round_striped", "round_plain")
CLASS_RULES = (
    "red and circle",
    "red and not circle and large",
    "red and not circle and not large",
    "not red and (square or triangle) and dark",
    "not red and (square or triangle) and not dark",
    "not red and not (square or triangle) and stripes",
    "not red and not (square or triangle) and not stripes",
)

# name -> (n, seed) of the default splits served by :func:`load`.
SPLITS = {"train": (8000, 0), "test": (2000, 1)}

_RGB = np.array([[0.90, 0.12, 0.10],    # red
                 [0.12, 0.75, 0.18],    # green
                 [0.15, 0.30, 0.95],    # blue
                 [0.95, 0.88, 0.12]],   # yellow
                np.float32)


# --------------------------------------------------------------------------- rules
def _rule_fn(rule: str, names: Sequence[str]):
    """Compiles a boolean rule into a function of a dict ``{concept: bool array}``."""
    tree = ast.parse(rule, mode="eval").body

    def build(node):
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            return lambda env: functools.reduce(op, [p(env) for p in parts])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            inner = build(node.operand)
            return lambda env: np.logical_not(inner(env))
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            a, b = build(node.left), build(node.right)
            op = np.logical_and if isinstance(node.op, ast.BitAnd) else np.logical_or
            return lambda env: op(a(env), b(env))
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise unknown_name("concept", node.id, list(names))
            return lambda env: np.asarray(env[node.id], bool)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return lambda env: np.asarray(node.value)
        raise InputError(f"rule {rule!r}: unsupported syntax {ast.dump(node)[:60]}; use concept "
                         "names with and/or/not (or &, |, ~) and parentheses")

    return build(tree)


def evaluate_rule(rule: str, concept_labels, concept_names: Sequence[str] = CONCEPT_NAMES):
    """Evaluates a boolean formula over concept names for every row of ``concept_labels``.

    ``rule`` uses concept identifiers with ``and``/``or``/``not`` (or ``&``/``|``/``~``) and
    parentheses; returns an (N,) bool array. Unknown names raise ``KeyError``.
    """
    labels = np.asarray(concept_labels, bool)
    if labels.ndim != 2 or labels.shape[1] != len(concept_names):
        raise InputError(f"concept_labels: expected shape (N, {len(concept_names)}), got "
                         f"{labels.shape}")
    env = {name: labels[:, i] for i, name in enumerate(concept_names)}
    return np.broadcast_to(_rule_fn(rule, list(concept_names))(env), labels.shape[:1]).copy()


def classify(concept_labels, rules: Sequence[str] = CLASS_RULES,
             concept_names: Sequence[str] = CONCEPT_NAMES) -> np.ndarray:
    """Index of the first rule that holds for each row (-1 where none holds)."""
    hits = np.stack([evaluate_rule(r, concept_labels, concept_names) for r in rules], axis=1)
    return np.where(hits.any(1), hits.argmax(1), -1).astype(np.int32)


# ------------------------------------------------------------------ data container
@dataclasses.dataclass(frozen=True, eq=False)
class ShapesData:
    """A sample of ``repsim_shapes`` (see the module docstring for the semantics).

    ``objects`` (N, 3, 4) int8 holds per object slot the indices of (shape, colour, texture,
    size), -1 for an empty slot; ``background`` (N,) int8 indexes ``BACKGROUNDS``;
    ``object_map`` (N, H, W) int8 says which slot covers each pixel (-1: background).
    """

    images: np.ndarray
    labels: np.ndarray
    concept_labels: np.ndarray
    object_map: np.ndarray
    objects: np.ndarray
    background: np.ndarray
    seed: int = 0
    concept_names: list = dataclasses.field(default_factory=lambda: list(CONCEPT_NAMES))
    class_names: list = dataclasses.field(default_factory=lambda: list(CLASS_NAMES))
    class_rules: list = dataclasses.field(default_factory=lambda: list(CLASS_RULES))
    concept_groups: dict = dataclasses.field(
        default_factory=lambda: {k: list(v) for k, v in CONCEPT_GROUPS.items()})

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def concept_masks(self, indices=None) -> np.ndarray:
        """Per-pixel concept masks (n, H, W, C) bool, derived from ``object_map``.

        ``indices`` (slice, int array) selects images, bounding memory for large N.
        """
        sel = slice(None) if indices is None else indices
        omap = self.object_map[sel].astype(np.int64)
        objs = self.objects[sel].astype(np.int64)
        bg = self.background[sel].astype(np.int64)
        n = omap.shape[0]
        # per-pixel attribute values: (n, H, W, 4), -1 on background
        safe = np.maximum(omap, 0)
        attrs = objs[np.arange(n)[:, None, None], safe]            # (n, H, W, 4)
        attrs = np.where(omap[..., None] >= 0, attrs, -1)
        masks = []
        for col, (_, values) in enumerate(ATTRIBUTES):
            masks += [attrs[..., col] == v for v in range(len(values))]
        on_bg = omap < 0
        masks += [on_bg & (bg[:, None, None] == v) for v in range(len(BACKGROUNDS))]
        return np.stack(masks, axis=-1)

    def take(self, indices) -> "ShapesData":
        """A new ShapesData with the selected images (fancy index or slice)."""
        return dataclasses.replace(
            self, images=self.images[indices], labels=self.labels[indices],
            concept_labels=self.concept_labels[indices], object_map=self.object_map[indices],
            objects=self.objects[indices], background=self.background[indices])


# ---------------------------------------------------------------------- sampling
def _concepts_of(objects: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Image-level concept labels (M, C) from object attributes (M, 3, 4) and background."""
    cols = []
    for col, (_, values) in enumerate(ATTRIBUTES):
        cols += [(objects[:, :, col] == v).any(1) for v in range(len(values))]
    cols += [background == v for v in range(len(BACKGROUNDS))]
    return np.stack(cols, axis=1)


def _candidates(rng: np.random.Generator, m: int):
    """``m`` random attribute sets: objects (m, 3, 4) int8 (-1 = empty), background (m,)."""
    count = rng.integers(1, MAX_OBJECTS + 1, m)
    objects = np.stack([rng.integers(0, len(v), (m, MAX_OBJECTS)) for _, v in ATTRIBUTES], -1)
    objects[np.arange(MAX_OBJECTS)[None, :] >= count[:, None]] = -1
    background = rng.integers(0, len(BACKGROUNDS), m)
    return objects.astype(np.int8), background.astype(np.int8)


def _sample_attributes(rng: np.random.Generator, labels: np.ndarray):
    """Object attributes and backgrounds such that image i has exactly class labels[i]."""
    n = labels.shape[0]
    objects = np.full((n, MAX_OBJECTS, len(ATTRIBUTES)), -1, np.int8)
    background = np.zeros(n, np.int8)
    todo = {k: np.flatnonzero(labels == k) for k in range(len(CLASS_RULES))}
    filled = {k: 0 for k in todo}
    while any(filled[k] < len(todo[k]) for k in todo):
        m = max(4096, 16 * max(len(todo[k]) - filled[k] for k in todo))
        cand_obj, cand_bg = _candidates(rng, m)
        cls = classify(_concepts_of(cand_obj, cand_bg))
        for k, idx in todo.items():
            need = len(idx) - filled[k]
            if need <= 0:
                continue
            hit = np.flatnonzero(cls == k)[:need]
            dst = idx[filled[k]:filled[k] + hit.size]
            objects[dst], background[dst] = cand_obj[hit], cand_bg[hit]
            filled[k] += hit.size
    return objects, background


# ---------------------------------------------------------------------- rendering
def _layout(rng: np.random.Generator, objects: np.ndarray, size: int):
    """Cells, centres and radii (n, 3) of the objects: one per quadrant, never overlapping."""
    n = objects.shape[0]
    cells = np.argsort(rng.random((n, 4)), axis=1)[:, :MAX_OBJECTS]   # distinct quadrants
    scale = size / 64.0
    large = objects[:, :, 3] == 1
    radius = np.where(large, rng.uniform(11.0, 14.0, (n, MAX_OBJECTS)),
                      rng.uniform(5.5, 7.5, (n, MAX_OBJECTS))) * scale
    cs = size // 2
    slack = np.maximum(cs / 2.0 - radius - 1.5 * scale, 0.0)
    jitter = rng.uniform(-1.0, 1.0, (n, MAX_OBJECTS, 2)) * slack[..., None]
    cy = cs / 2.0 + jitter[..., 0]          # centre within the cell
    cx = cs / 2.0 + jitter[..., 1]
    tint = rng.uniform(-0.07, 0.07, (n, MAX_OBJECTS, 3)).astype(np.float32)
    phase = rng.integers(0, 1 << 16, (n, MAX_OBJECTS))
    return cells, cy, cx, radius, tint, phase


def _render(objects, cells, cy, cx, radius, tint, phase, bg_level, noise_rng, size):
    """Images (n, H, W, 3) uint8 and object map (n, H, W) int8 for a chunk of images.

    Each object is drawn inside its own quadrant cell (``size // 2`` square), so the work
    per object is a quarter image and objects cannot overlap.
    """
    n = objects.shape[0]
    cs = size // 2
    base = bg_level[:, None, None] + np.float32(0.03) * noise_rng.standard_normal((n, size, size), dtype=np.float32)
    img = np.repeat(base[..., None], 3, axis=-1)
    omap = np.full((n, size, size), -1, np.int8)
    period = max(int(round(6 * size / 64)), 2)
    loc = np.arange(cs, dtype=np.float32)
    nidx = np.arange(n)[:, None, None]
    for k in range(MAX_OBJECTS):
        present = objects[:, k, 0] >= 0
        oy = ((cells[:, k] // 2) * cs)[:, None, None]
        ox = ((cells[:, k] % 2) * cs)[:, None, None]
        rows, cols = oy + np.arange(cs)[None, :, None], ox + np.arange(cs)[None, None, :]
        shape = objects[:, k, 0][:, None, None]
        r = radius[:, k][:, None, None].astype(np.float32)
        dy = loc[None, :, None] + np.float32(0.5) - cy[:, k][:, None, None].astype(np.float32)
        dx = loc[None, None, :] + np.float32(0.5) - cx[:, k][:, None, None].astype(np.float32)
        circle = dx * dx + dy * dy <= r * r
        square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.88 * r
        tri_r = 1.15 * r      # apex up; base at +0.8 tri_r, half-width tri_r at the base
        triangle = (dy >= -tri_r) & (dy <= 0.8 * tri_r) & (np.abs(dx) <= (dy + tri_r) / 1.8)
        inside = np.where(shape == 0, circle, np.where(shape == 1, square, triangle))
        inside &= present[:, None, None]
        colour = _RGB[np.maximum(objects[:, k, 1], 0)] + tint[:, k]
        texture = objects[:, k, 2][:, None, None]
        p = (phase[:, k] % period)[:, None, None]
        stripes = ((rows + cols + p) // max(period // 2, 1)) % 2 == 1
        gx = (cols + p) % period - period / 2 + 0.5
        gy = (rows + p) % period - period / 2 + 0.5
        dots = gx * gx + gy * gy <= (0.3 * period) ** 2
        shade = np.where((texture == 1) & stripes, 0.35,
                         np.where((texture == 2) & dots, 0.2, 1.0)).astype(np.float32)
        obj_rgb = colour[:, None, None, :] * shade[..., None]
        img[nidx, rows, cols] = np.where(inside[..., None], obj_rgb, img[nidx, rows, cols])
        omap[nidx, rows, cols] = np.where(inside, np.int8(k), omap[nidx, rows, cols])
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8), omap


def generate(n: int, seed: int = 0, size: int = 64, *, chunk: int = 1024) -> ShapesData:
    """``n`` images of ``repsim_shapes``, deterministic for ``seed`` (and ``size``).

    Classes are balanced (counts differ by at most one). Returns a :class:`ShapesData`.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n: expected a positive number of images, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise InputError(f"size: expected an integer image side >= 16, got {size!r}")
    n, size = int(n), int(size)
    rng = np.random.default_rng([int(seed), 0x5EA9E5])
    labels = rng.permutation(np.arange(n) % len(CLASS_RULES)).astype(np.int32)
    objects, background = _sample_attributes(rng, labels)
    cells, cy, cx, radius, tint, phase = _layout(rng, objects, size)
    bg_level = np.where(background == 0, rng.uniform(0.05, 0.25, n),
                        rng.uniform(0.72, 0.92, n)).astype(np.float32)
    images = np.empty((n, size, size, 3), np.float32)
    object_map = np.empty((n, size, size), np.int8)
    for start in range(0, n, chunk):
        s = slice(start, start + chunk)
        noise_rng = np.random.default_rng([int(seed), 0x5EA9E5, start])
        pixels, object_map[s] = _render(objects[s], cells[s], cy[s], cx[s], radius[s], tint[s],
                                        phase[s], bg_level[s], noise_rng, size)
        images[s] = pixels.astype(np.float32) / np.float32(255.0)
    concept_labels = _concepts_of(objects, background)
    return ShapesData(images=images, labels=labels, concept_labels=concept_labels,
                      object_map=object_map, objects=objects, background=background,
                      seed=int(seed))


@functools.lru_cache(maxsize=4)
def _load_cached(split: str, size: int) -> ShapesData:
    n, seed = SPLITS[split]
    return generate(n, seed=seed, size=size)


def load(split: str = "train", size: int = 64) -> ShapesData:
    """The default split ``"train"`` (8000 images, seed 0) or ``"test"`` (2000, seed 1).

    Generated once per process and cached in memory (generation takes seconds). Treat the
    returned arrays as read-only: they are shared between callers.
    """
    if split not in SPLITS:
        raise unknown_name("split", split, list(SPLITS))
    data = _load_cached(split, int(size))
    for arr in (data.images, data.labels, data.concept_labels, data.object_map):
        arr.flags.writeable = False
    return data
