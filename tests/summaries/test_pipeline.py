"""Stage 2 end to end on planted masks, degenerate inputs, pictures."""
import numpy as np
import pytest
import jax.numpy as jnp

from repsim_jax._checks import InputError
from repsim_jax.summaries import pipeline, plots, masks

H = 40


def _planted(n=6, seed=0):
    """A red disc (left half) and a blue cross (right half) per image at random places;
    the 'sharp masks' delete exactly the two objects. kind: -1 bg, 0 disc, 1 cross."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :H]
    imgs = 0.5 + rng.normal(0, 0.02, (n, H, H, 3))
    m = np.ones((n, H, H), np.float32)
    kind = np.full((n, H, H), -1)
    for i in range(n):
        cy, cx = rng.integers(9, H - 9), rng.integers(8, H // 2 - 7)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 6 ** 2
        cy2, cx2 = rng.integers(9, H - 9), rng.integers(H // 2 + 8, H - 8)
        cross = (((abs(yy - cy2) <= 7) & (abs(xx - cx2) <= 2))
                 | ((abs(yy - cy2) <= 2) & (abs(xx - cx2) <= 7)))
        imgs[i][disc], imgs[i][cross] = [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]
        m[i][disc | cross] = 0.0
        kind[i][disc], kind[i][cross] = 0, 1
    return np.clip(imgs, 0, 1).astype(np.float32), m, kind


def _dominant(cs, kind):
    out = []
    for mem in cs.summaries:
        ks = []
        for r in mem:
            y0, x0, y1, x1 = cs.regions.boxes[r]
            k = kind[cs.image_indices[cs.regions.image_ids[r]], y0:y1, x0:x1]
            k = k[k >= 0]
            ks.append(np.bincount(k, minlength=2).argmax() if k.size else -1)
        out.append(ks)
    return out


@pytest.fixture(scope="module")
def planted_summary():
    imgs, m, kind = _planted()
    return imgs, m, kind, pipeline.summarise_regions(imgs, m, class_index=3)


def test_planted_parts_give_pure_summaries(planted_summary):
    imgs, m, kind, cs = planted_summary
    assert cs.status == "ok" and cs.class_index == 3
    assert cs.n_summaries >= 2
    dom = _dominant(cs, kind)
    for ks in dom:                                   # every summary shows one object kind
        assert len(set(ks)) == 1 and ks[0] in (0, 1), dom
    assert {ks[0] for ks in dom} == {0, 1}           # both parts are summarised
    for mem in cs.summaries:                         # <= 10 members, one per image, >= 2
        ids = cs.regions.image_ids[mem]
        assert 2 <= len(mem) <= 10 and len(set(ids.tolist())) == len(mem)
    med = cs.coherence[np.isfinite(cs.coherence)]
    assert (cs.coherence[cs.kept] >= 0.9 * np.median(med) - 1e-9).all()
    np.testing.assert_allclose(cs.similarity, cs.similarity.T, atol=1e-6)
    assert len(cs.labels) == len(cs.regions)
    # the purity score agrees: concept masks = the planted objects
    concept_masks = np.stack([kind == 0, kind == 1], -1)
    purity, best = pipeline.summary_purity(cs, concept_masks, min_cover=0.25)
    assert (purity == 1.0).all()
    assert best.tolist() == [ks[0] for ks in dom]
    mixed = [np.concatenate([cs.summaries[i][:1] for i in range(len(dom))])]
    assert pipeline.summary_purity(cs, concept_masks, members=mixed)[0][0] < 1.0


def test_summary_pictures(planted_summary, tmp_path):
    imgs, m, kind, cs = planted_summary
    result = pipeline.SummaryResult(np.arange(len(imgs)), None, {3: cs})
    paths = plots.save_summaries(result, imgs, tmp_path, class_names=["a", "b", "c", "d"])
    assert len(paths) == cs.n_summaries and all(p.exists() for p in paths)
    assert paths[0].parent.name == "d"
    import matplotlib.pyplot as plt
    strip = plt.imread(paths[0])
    assert strip.shape[0] == 64 and strip.shape[1] >= 2 * 64
    strip = plots.summary_strip(imgs, cs, cs.summaries[0], height=32)
    assert strip.shape[0] == 32


def test_degenerate_inputs_have_clear_outcomes():
    imgs, m, kind = _planted(n=3)
    with pytest.warns(UserWarning, match="collapsed to empty"):
        cs = pipeline.summarise_regions(imgs, np.ones_like(m))
    assert cs.status == "empty_masks" and cs.n_summaries == 0
    assert cs.empty_masks.tolist() == [0, 1, 2]
    one = np.ones_like(m[:1])
    one[0, 5:15, 5:15] = 0.0                             # a single square region
    with pytest.warns(UserWarning, match="only one region"):
        cs = pipeline.summarise_regions(imgs[:1], one, proposals=False)
    assert cs.status == "single_region" and cs.n_summaries == 0 and len(cs.regions) == 1
    with pytest.warns(UserWarning, match="single image"):
        cs = pipeline.summarise_regions(imgs[:1], m[:1], proposals=False)
    assert cs.status == "no_recurring_cluster" and cs.n_summaries == 0
    with pytest.raises(InputError, match="sharp_masks"):
        pipeline.summarise_regions(imgs, m[:2])


def test_visual_summaries_class_without_correct_images():
    imgs, m, kind = _planted(n=4)

    def logits_fn(x):                       # always predicts class 0
        return jnp.stack([jnp.ones(x.shape[0]), jnp.zeros(x.shape[0])], -1)

    with pytest.warns(UserWarning, match="no image of this class"):
        res = pipeline.visual_summaries(logits_fn, imgs, np.array([1, 1, 1, 1]),
                                        smooth_steps=2, sharp_steps=2, progress=False)
    assert res.masks is None and res.counts() == {1: 0}
    assert res.classes[1].status == "no_correct_images"
    with pytest.raises(InputError, match="labels"):
        pipeline.visual_summaries(logits_fn, imgs, np.array([0.5, 1, 1, 1]))


def test_part_labels_and_label_purity():
    # one 20 x 20 square object (instance 0) at rows/cols 10..29 in image 0, a second
    # object (instance 1) at rows 0..3 in image 1
    inst = np.full((2, 40, 40), -1)
    inst[0, 10:30, 10:30] = 0
    inst[1, 0:4, 30:40] = 1
    boxes = np.array([[8, 8, 32, 32],      # whole object (covers 100% of it)
                      [10, 10, 18, 30],    # top band, 40% of the object
                      [22, 10, 30, 30],    # bottom band
                      [10, 10, 30, 18],    # left band
                      [10, 22, 30, 30],    # right band
                      [30, 0, 40, 10],     # background only
                      [0, 0, 40, 40],      # object fills 25% >= min_object 0.2: whole
                      [0, 20, 10, 40]])    # image 1: instance 1 fills 40/200 = 0.2 -> whole
    ids = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    reg = pipeline._regions.Regions(ids, boxes, np.zeros(len(ids), np.int8))
    cs = pipeline.ClassSummary(0, "ok", "", np.array([0, 1]), reg, np.zeros((8, 8)),
                               np.zeros(8, np.int64), [], np.zeros(0), np.zeros(0, bool),
                               np.zeros(0, np.int64))
    lab = pipeline.part_labels(cs, inst)
    assert [pipeline.PARTS[i] if i >= 0 else None for i in lab] == [
        "whole", "top", "bottom", "left", "right", None, "whole", "whole"]
    assert pipeline.part_labels(cs, inst, min_object=0.3)[6] == -1   # 25% < 30%
    assert pipeline.part_labels(cs, inst, whole=0.3)[1] == 0          # 40% > 30%: whole
    # the caller's image indices are honoured: image 1 of the summary is caller image 0
    swapped = pipeline.ClassSummary(0, "ok", "", np.array([1, 0]), reg, *[None] * 6)
    assert pipeline.part_labels(swapped, inst[::-1]).tolist() == lab.tolist()
    # purity: majority label share; unlabelled members count against it
    pur = pipeline.label_purity(lab, [[0, 6, 7], [0, 1, 5], [1, 2, 3, 4], []])
    np.testing.assert_allclose(pur[:3], [1.0, 1 / 3, 1 / 4])
    assert np.isnan(pur[3])
    with pytest.raises(InputError, match="instance_map"):
        pipeline.part_labels(cs, inst[0])
