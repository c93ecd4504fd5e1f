"""repsim_jax.notebook.setup: the notebooks' data-and-model cell as one library call.

The real-data branch runs on a mocked tfds set (``tfds.testing.mock_data``: images of
differing sizes, no download) with a ported architecture holding random weights; the
built-in branch on the repsim_shapes test split with a given (untrained) small CNN, so no
test trains or downloads anything.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from repsim_jax import models, notebook
from repsim_jax._checks import InputError
from repsim_jax.data import sample_indices
from repsim_jax.models.preprocess import resize_array, to_unit_range

# torchvision's documented ImageNet normalisation (the ported architectures carry it)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def resnet():
    """resnet18 with random weights, 10 classes, set up for 32 x 32 inputs (cheap)."""
    return models.build("resnet18", num_classes=10, input_shape=(32, 32, 3), rngs=nnx.Rngs(1))


def test_real_data_branch_on_mocked_tfds(resnet, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    lines = []
    with tfds.testing.mock_data(num_examples=7):
        nb = notebook.setup("tfds:imagenette/160px", n_images=5, seed=2, model=resnet,
                            layers={"resnet18": ["layer2", "layer4"], "small_vgg": ["x"]},
                            echo=lines.append)
        src = tfds.data_source("imagenette/160px", split="validation")
        order = sample_indices(7, 5, seed=2)   # the loader's seeded subset, in source order
        raw = [np.asarray(src[int(i)]["image"]) for i in order]
        truth = np.array([int(src[int(i)]["label"]) for i in order])
        names = tfds.builder("imagenette/160px").info.features["label"].names
        # a backbone without a classifier head: the data set's classes as labels
        own = notebook.setup("tfds:imagenette/160px", n_images=5, seed=2, model=resnet,
                             layers=["layer3"], predict=False, echo=None)
    assert len({r.shape[:2] for r in raw}) > 1          # the mock's images differ in size
    assert nb.data == "tfds:imagenette/160px" and not nb.builtin
    assert nb.model is resnet and nb.model_name == "resnet18"
    assert nb.layers == ("layer2", "layer4") and nb.class_rules is None
    assert nb.concept_masks is None and nb.info["split"] == "validation"
    # images: the model's crop/resize rule applied to each mock image, pixels in [0, 1]
    assert nb.images.shape == (5, 32, 32, 3) and nb.images.dtype == np.float32
    assert nb.images.min() >= 0 and nb.images.max() <= 1
    ref = np.stack([resize_array(to_unit_range(r[None]), resnet.preprocess)[0] for r in raw])
    assert np.abs(nb.images - ref).mean() < 1 / 255 and np.abs(nb.images - ref).max() < 6 / 255
    # the model's normalisation is torchvision's documented ImageNet mean/std
    normed = np.asarray(resnet.preprocess.normalize(nb.images))
    by_hand = (ref - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(normed.mean((0, 1, 2)), by_hand.mean((0, 1, 2)), atol=0.02)
    np.testing.assert_allclose(normed.std((0, 1, 2)), by_hand.std((0, 1, 2)), rtol=0.02)
    # labels: the model's predictions on the normalised images (normalised once, by hand)
    logits = np.asarray(resnet(jnp.asarray((nb.images - IMAGENET_MEAN) / IMAGENET_STD)))
    np.testing.assert_array_equal(nb.labels, logits.argmax(-1))
    assert nb.labels.dtype == np.int32 and len(nb.class_names) == 10
    # concepts: the data set's own classes, one-hot
    assert nb.concept_names == tuple(names)
    np.testing.assert_array_equal(nb.info["data_labels"], truth)
    np.testing.assert_array_equal(nb.concept_labels, np.eye(len(names), dtype=bool)[truth])
    assert any("5 images (32, 32, 3)" in line and "layer2" in line for line in lines)
    np.testing.assert_array_equal(own.labels, truth)
    assert own.class_names == tuple(names) and own.layers == ("layer3",)
    np.testing.assert_array_equal(own.images, nb.images)
    d = nb.to_dict()
    assert "model" not in d and d["model_name"] == "resnet18" and d["images"].shape[0] == 5


def test_an_annotated_folder_gives_its_concepts_not_its_classes(resnet, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    tags = {"cat/a.png": ["fur"], "cat/b.png": ["fur", "sky"], "dog/c.png": [],
            "dog/d.png": ["sky"]}
    for i, rel in enumerate(tags):
        (tmp_path / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 36, 3), dtype=np.uint8)).save(
            tmp_path / "img" / rel)
    rows = [f"{rel},{c}" for rel, cs in tags.items() for c in cs]
    (tmp_path / "tags.csv").write_text("path,concept\n" + "\n".join(rows) + "\n")
    nb = notebook.setup(f"folder:{tmp_path / 'img'}", n_images=4, model=resnet,
                        layers=["avgpool"], concepts=tmp_path / "tags.csv", echo=None)
    assert nb.images.shape == (4, 32, 32, 3)
    assert set(nb.concept_names) == {"fur", "sky"}
    want = np.array([[c in tags[rel] for c in nb.concept_names] for rel in sorted(tags)])
    np.testing.assert_array_equal(nb.concept_labels, want)
    np.testing.assert_array_equal(nb.info["data_labels"], [0, 0, 1, 1])   # cat, dog


def test_builtin_branch_takes_the_test_split_and_its_ground_truth(tmp_path):
    from repsim_jax._results import load_result
    from repsim_jax.data import shapes
    vgg = models.build("small_vgg", num_classes=len(shapes.CLASS_NAMES), rngs=nnx.Rngs(0))
    nb = notebook.setup("repsim_shapes", n_images=9, model=vgg, echo=None)
    assert nb.builtin and nb.model is vgg and nb.model_name == "small_vgg"
    assert nb.layers == notebook.DEFAULT_LAYERS["small_vgg"]
    test = shapes.load("test")
    np.testing.assert_array_equal(nb.images, np.asarray(test.images[:9], np.float32))
    np.testing.assert_array_equal(nb.labels, test.labels[:9])
    np.testing.assert_array_equal(nb.concept_labels, test.concept_labels[:9])
    assert nb.concept_masks.shape == (9, *nb.images.shape[1:3], len(nb.concept_names))
    # each image's image-level concept labels are the concepts present in its masks
    np.testing.assert_array_equal(nb.concept_masks.any((1, 2)), nb.concept_labels)
    assert nb.class_rules == tuple(test.class_rules) and len(nb.class_names) == 7
    kind, back = load_result(nb.save(tmp_path / "setup"))   # everything but the model
    assert kind == "NotebookSetup" and "model" not in back and back["model_name"] == "small_vgg"
    np.testing.assert_array_equal(back["concept_masks"], nb.concept_masks)
    assert back["class_rules"] == list(nb.class_rules)


def test_builtin_data_is_resized_for_an_own_model_of_another_size():
    """A model set up for 32 x 32 inputs gets the 64 x 64 built-in images (and masks)
    resized/cropped by its rule."""
    from repsim_jax.data import shapes
    net = models.build("resnet18", num_classes=3, input_shape=(32, 32, 3))
    nb = notebook.setup("repsim_shapes", n_images=4, model=net, layers=["layer1"], echo=None)
    test = shapes.load("test")
    ref = resize_array(np.asarray(test.images[:4], np.float32), net.preprocess)
    assert nb.images.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(nb.images, ref, atol=1e-6)
    assert nb.concept_masks.shape[1:3] == (32, 32)
    np.testing.assert_array_equal(nb.labels, test.labels[:4])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"data": "imagenette"}, KeyError, "unknown data source 'imagenette'"),
    ({"data": "tfds:cifar10", "model": "small_vgg", "arch": "resnet19"}, KeyError,
     "unknown model 'resnet19'.*resnet18"),
    ({"data": "repsim_shapes", "model": "resnet18"}, KeyError,
     "unknown built-in trained model.*small_vgg"),
    ({"n_images": 0}, InputError, "n_images must be >= 1"),
    ({"n_images": 2.5}, InputError, "n_images must be an integer"),
    ({"n_images": 5000}, InputError, "test split has 2000 images"),
])
def test_bad_input_is_named(kwargs, error, match):
    vgg = models.build("small_vgg", num_classes=7)
    args = {"data": "repsim_shapes", "n_images": 3, "model": vgg, "echo": None, **kwargs}
    with pytest.raises(error, match=match):
        notebook.setup(args.pop("data"), **args)


def test_bad_layers_are_named_before_any_image_is_loaded(resnet):
    with pytest.raises(KeyError, match="unknown layer of resnet18 'layer9'"):
        notebook.setup("tfds:no_such_set", n_images=2, model=resnet, layers=["layer9"])
    with pytest.raises(InputError, match="layers names models.*not 'resnet18'"):
        notebook.setup("tfds:no_such_set", n_images=2, arch=resnet, layers={"vgg16": ["x"]})
    with pytest.raises(InputError, match="weights= is for torchvision"):
        notebook.load_model("small_vgg", weights="w.pth")
