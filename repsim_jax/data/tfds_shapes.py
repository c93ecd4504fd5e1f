"""``repsim_shapes`` as a tensorflow-datasets builder (no TensorFlow needed).

The builder writes array_record files with :class:`tfds.features.Tensor` /
:class:`tfds.features.ClassLabel` features (``tfds.features.Image`` would need TensorFlow
for PNG coding), so the whole pipeline runs on numpy::

    builder = RepsimShapes(data_dir="/tmp/tfds", config="small")
    builder.download_and_prepare()
    ds = builder.as_data_source()["train"]      # random access, ds[i] -> dict of numpy
    data = to_shapes_data(ds)                   # back to a ShapesData

Features per example: ``image`` (64, 64, 3) uint8 (the generator quantises to 1/255, so
``image / 255`` equals :func:`repsim_jax.data.shapes.generate` bit for bit), ``label``
(ClassLabel over the class names), ``concepts`` (C,) bool, ``object_map`` (64, 64) int8,
``objects`` (3, 4) int8, ``background`` () int8. Configs: ``default`` (the splits of
:data:`repsim_jax.data.shapes.SPLITS`) and ``small`` (256 train / 64 test, same seeds).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from repsim_jax.data import shapes

__all__ = ["RepsimShapes", "RepsimShapesConfig", "to_shapes_data", "prepare"]


@dataclasses.dataclass(eq=False)
class RepsimShapesConfig(tfds.core.BuilderConfig):
    """Split sizes: ``{split: (n, seed)}``."""

    splits: dict = dataclasses.field(default_factory=lambda: dict(shapes.SPLITS))


class RepsimShapes(tfds.core.GeneratorBasedBuilder):
    """The ``repsim_shapes`` concept world (see :mod:`repsim_jax.data.shapes`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        RepsimShapesConfig(name="default", description="Default train/test splits."),
        RepsimShapesConfig(name="small", description="256 train / 64 test images.",
                           splits={"train": (256, shapes.SPLITS["train"][1]),
                                   "test": (64, shapes.SPLITS["test"][1])}),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds derives this through `importlib_resources` (not always installed); the
        # builder's code is simply this file.
        from etils import epath
        return epath.Path(__file__)

    def __init__(self, *args, file_format="array_record", **kwargs):
        super().__init__(*args, file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size, c = 64, len(shapes.CONCEPT_NAMES)
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(shapes.CLASS_NAMES)),
                "concepts": tfds.features.Tensor(shape=(c,), dtype=np.bool_),
                "object_map": tfds.features.Tensor(shape=(size, size), dtype=np.int8),
                "objects": tfds.features.Tensor(shape=(shapes.MAX_OBJECTS, 4), dtype=np.int8),
                "background": tfds.features.Tensor(shape=(), dtype=np.int8),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,     # keep the order of `generate`
            metadata=tfds.core.MetadataDict(concept_names=list(shapes.CONCEPT_NAMES),
                                            class_rules=list(shapes.CLASS_RULES)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # procedural: nothing to download
        return {split: self._generate_examples(n, seed)
                for split, (n, seed) in self.builder_config.splits.items()}

    def _generate_examples(self, n, seed):
        data = shapes.generate(n, seed=seed)
        images = np.round(data.images * 255.0).astype(np.uint8)
        for i in range(n):
            yield i, {"image": images[i], "label": int(data.labels[i]),
                      "concepts": data.concept_labels[i], "object_map": data.object_map[i],
                      "objects": data.objects[i], "background": data.background[i]}


def prepare(data_dir, config: str = "default") -> tfds.core.DatasetBuilder:
    """Builds (once) and returns the prepared builder under ``data_dir``."""
    builder = RepsimShapes(data_dir=str(data_dir), config=config)
    builder.download_and_prepare()
    return builder


def to_shapes_data(source, seed: int = -1) -> shapes.ShapesData:
    """Stacks a random-access tfds source of ``repsim_shapes`` into a ShapesData."""
    rows = [source[i] for i in range(len(source))]
    stack = lambda key: np.stack([np.asarray(r[key]) for r in rows])  # noqa: E731
    return shapes.ShapesData(
        images=stack("image").astype(np.float32) / np.float32(255.0),
        labels=stack("label").astype(np.int32), concept_labels=stack("concepts").astype(bool),
        object_map=stack("object_map").astype(np.int8), objects=stack("objects").astype(np.int8),
        background=stack("background").astype(np.int8), seed=seed)
