"""repsim_shapes: determinism, balance, ground-truth consistency (rules, masks, labels)."""
import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax.data import shapes


@pytest.fixture(scope="module")
def sample():
    return shapes.generate(700, seed=3)


def test_deterministic_per_seed(sample):
    again = shapes.generate(700, seed=3)
    other = shapes.generate(700, seed=4)
    for field in ("images", "labels", "concept_labels", "object_map", "objects", "background"):
        np.testing.assert_array_equal(getattr(sample, field), getattr(again, field))
    assert not np.array_equal(sample.images, other.images)
    assert not np.array_equal(sample.labels, other.labels)


def test_format_and_balance(sample):
    n, c = len(sample), len(sample.concept_names)
    assert sample.images.shape == (n, 64, 64, 3) and sample.images.dtype == np.float32
    assert 0.0 <= sample.images.min() and sample.images.max() <= 1.0
    # quantised to 1/255 (exact uint8 round trip)
    np.testing.assert_array_equal(np.round(sample.images * 255) / np.float32(255), sample.images)
    assert sample.labels.dtype == np.int32 and sample.concept_labels.shape == (n, c)
    assert sample.concept_labels.dtype == bool
    assert len(sample.class_names) == len(sample.class_rules) == 7
    counts = np.bincount(sample.labels, minlength=7)
    assert counts.max() - counts.min() <= 1
    n_obj = (sample.objects[:, :, 0] >= 0).sum(1)
    assert n_obj.min() == 1 and n_obj.max() == 3
    # each concept occurs, and each group's concepts are all used
    assert sample.concept_labels.any(0).all()
    # exactly one background per image
    bg = [sample.concept_names.index(b) for b in shapes.BACKGROUNDS]
    np.testing.assert_array_equal(sample.concept_labels[:, bg].sum(1), 1)


def test_class_label_is_its_rule(sample):
    """Exactly one rule holds per image, and it is the one of the image's class."""
    hits = np.stack([shapes.evaluate_rule(r, sample.concept_labels, sample.concept_names)
                     for r in sample.class_rules], axis=1)
    np.testing.assert_array_equal(hits.sum(1), 1)
    np.testing.assert_array_equal(hits.argmax(1), sample.labels)
    # the rules are plain python: eval on one image's booleans agrees
    for i in range(20):
        env = dict(zip(sample.concept_names, map(bool, sample.concept_labels[i])))
        truth = [eval(r, {"__builtins__": {}}, env) for r in sample.class_rules]  # noqa: S307
        assert truth.index(True) == sample.labels[i] and sum(truth) == 1


def test_rules_use_and_or_not():
    text = " ".join(shapes.CLASS_RULES)
    assert " and " in text and " or " in text and "not " in text


def test_masks_agree_with_labels(sample):
    masks = sample.concept_masks()
    assert masks.shape == (len(sample), 64, 64, len(sample.concept_names))
    assert masks.dtype == bool
    np.testing.assert_array_equal(masks.any(axis=(1, 2)), sample.concept_labels)
    # each pixel: object pixels carry exactly one concept per object group, background
    # pixels exactly one background concept
    groups = sample.concept_groups
    on_obj = sample.object_map >= 0
    for group, names in groups.items():
        idx = [sample.concept_names.index(c) for c in names]
        per_pixel = masks[..., idx].sum(-1)
        expect = (~on_obj if group == "background" else on_obj).astype(int)
        np.testing.assert_array_equal(per_pixel, expect)
    # subset selection matches the full computation
    np.testing.assert_array_equal(sample.concept_masks(np.arange(5, 9)), masks[5:9])


def test_pixels_follow_masks(sample):
    """Red object pixels are red-dominant; dark background pixels are darker than light ones."""
    masks = sample.concept_masks(slice(0, 200))
    imgs = sample.images[:200]
    c = sample.concept_names.index
    red = imgs[masks[..., c("red")] & masks[..., c("solid")]]
    assert (red[:, 0] > red[:, 1] + 0.4).all() and (red[:, 0] > red[:, 2] + 0.4).all()
    dark = imgs[masks[..., c("dark")]].mean()
    light = imgs[masks[..., c("light")]].mean()
    assert dark < 0.3 < 0.7 < light
    large = masks[..., c("large")].sum((1, 2))[sample.concept_labels[:200, c("large")]]
    small_only = sample.concept_labels[:200, c("small")] & ~sample.concept_labels[:200, c("large")]
    small = masks[..., c("small")].sum((1, 2))[small_only]
    assert large.min() > small.max() / 3 and np.median(large) > 2 * np.median(small)


def test_take_and_load():
    train = shapes.load("test")
    n, seed = shapes.SPLITS["test"]
    assert len(train) == n
    assert shapes.load("test") is train                      # cached
    np.testing.assert_array_equal(train.images, shapes.generate(n, seed=seed).images)
    with pytest.raises(ValueError):
        train.images[0, 0, 0, 0] = 1.0                         # shared: read-only
    sub = train.take(np.array([3, 1]))
    np.testing.assert_array_equal(sub.labels, train.labels[[3, 1]])
    with pytest.raises(KeyError, match="train"):
        shapes.load("validation")


def test_bad_input():
    with pytest.raises(InputError, match="n"):
        shapes.generate(0)
    with pytest.raises(InputError, match="size"):
        shapes.generate(10, size=8)
    with pytest.raises(KeyError, match="purple"):
        shapes.evaluate_rule("purple and circle", np.zeros((2, len(shapes.CONCEPT_NAMES)), bool))
    with pytest.raises(InputError, match="concept_labels"):
        shapes.evaluate_rule("circle", np.zeros((2, 3), bool))
