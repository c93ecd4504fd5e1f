"""Integration: the class logits of a trained built-in model get the concepts of their rule."""
import numpy as np
import pytest

from repsim_jax.invert import explain, rank_auc


@pytest.mark.slow
def test_class_logits_labelled_with_their_rule_concepts():
    from repsim_jax.data import shapes
    from repsim_jax.models import forward
    from repsim_jax.models.zoo import load_trained

    model, info = load_trained("small_vgg")
    data = shapes.load("test")
    logits = np.asarray(forward(model, np.asarray(data.images)))
    names = list(data.concept_names)
    lab = np.asarray(data.concept_labels, bool)
    truth = np.stack([shapes.evaluate_rule(r, lab, names) for r in data.class_rules], 1)
    res = explain(logits, lab, names, L=3, B=10)
    iou = np.zeros((len(data.class_rules),) * 2)
    for k in range(len(data.class_rules)):
        sup = res[k].best.structure.evaluate(lab)
        iou[k] = (sup[:, None] & truth).sum(0) / (sup[:, None] | truth).sum(0)
        assert res[k].best.auc > 0.85 and res[k].q_value < 1e-50
        # a formula of at most 3 literals is never better than the rule by much: the search
        # finds formulas about as discriminative as the class definition
        assert res[k].best.auc > float(rank_auc(logits[:, k], truth[:, k])) - 0.12
    # "explanation accuracy": logit k's best formula describes class k best, for every class
    assert np.argmax(iou, axis=1).tolist() == list(range(len(data.class_rules)))
    # rules that are left-deep chains of <= 3 literals are recovered exactly
    for k, name in enumerate(data.class_names):
        if name in ("red_circle", "red_large", "red_small"):
            assert iou[k, k] == 1.0, (name, res[k].best.formula, data.class_rules[k])
    assert {names[c] for c in res[0].best.structure.concepts} == {"red", "circle"}
