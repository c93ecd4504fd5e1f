"""Units of work, layer groups, and the per-process share (multi-host logic on CPU)."""
import itertools

import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax.sweep import plan as P

SHAPES = {"a": {"conv1": (8, 8, 4), "conv2": (8, 8, 4), "conv3": (4, 4, 8), "pool": (1, 1, 8),
                "fc": (3,)},
          "b": {"layer1": (8, 8, 4), "layer2": (4, 4, 8), "layer3": (4, 4, 8), "fc": (3,)}}
LAYERS = {m: list(s) for m, s in SHAPES.items()}
METHODS = ("semantic", "invert", "concepts", "cladec", "summaries")


def _units():
    return P.plan_units(METHODS, LAYERS, SHAPES, {"cladec": "last"})


def test_group_by_shape_groups_equal_shapes_in_order_and_caps_size():
    groups = P.group_by_shape(["conv1", "conv2", "conv3", "pool", "fc"], SHAPES["a"])
    assert groups == [("conv1", "conv2"), ("conv3",), ("pool",), ("fc",)]
    shapes = {f"l{i}": (2, 2) for i in range(7)}
    assert P.group_by_shape(list(shapes), shapes, max_group=3) == [
        ("l0", "l1", "l2"), ("l3", "l4", "l5"), ("l6",)]


def test_plan_covers_every_method_layer_and_adds_aggregates():
    units = _units()
    keys = [u.key for u in units]
    assert len(keys) == len(set(keys))
    for method in ("semantic", "invert", "concepts"):
        for model, layers in LAYERS.items():
            covered = [l for u in units if u.method == method and u.model == model
                       for l in u.layers]
            assert sorted(covered) == sorted(layers)           # each layer exactly once
    # equal-shape layers share a unit (so the method can vmap them)
    assert P.Unit("semantic", "a", ("conv1", "conv2")) in units
    assert P.Unit("semantic", "b", ("layer2", "layer3")) in units
    assert [u.layers for u in units if u.method == "cladec"] == [("fc",), ("fc",)]
    assert [u.model for u in units if u.method == "summaries"] == ["a", "b"]
    agg = {u.method: u for u in units if u.phase == 2}
    assert set(agg) == {"semantic_compare", "invert_fdr", "concepts_compare"}
    assert set(agg["semantic_compare"].depends) == {u.key for u in units
                                                    if u.method == "semantic"}
    assert all(u.phase == 1 for u in units[:-3])               # aggregates come last


def test_select_layers_typo_names_the_close_match():
    with pytest.raises(KeyError, match=r"unknown layer 'conv22'.*Did you mean 'conv2'"):
        P.select_layers(["conv22"], list(SHAPES["a"]))
    with pytest.raises(KeyError, match="unknown layer .*in cladec.layers"):
        P.plan_units(METHODS, LAYERS, SHAPES, {"cladec": ["nope"]})
    assert P.select_layers("last", ["x", "y"]) == ["y"]
    assert P.select_layers(["fc", "conv1"], list(SHAPES["a"])) == ["conv1", "fc"]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_partition_is_disjoint_complete_balanced_and_identical_everywhere(count):
    units = _units()
    phase1 = [u for u in units if u.phase == 1]
    shares = [P.partition(phase1, i, count) for i in range(count)]
    flat = [u.key for s in shares for u in s]
    assert sorted(flat) == sorted(u.key for u in phase1)       # complete and disjoint
    assert len(flat) == len(set(flat))
    loads = [sum(u.cost for u in s) for s in shares]
    # greedy LPT: no process exceeds another by more than the largest unit
    assert max(loads) - min(loads) <= max(u.cost for u in phase1) + 1e-9
    # every process computes the same assignment, whatever order it planned in
    again = [P.partition(list(reversed(phase1)), i, count) for i in range(count)]
    assert [{u.key for u in s} for s in again] == [{u.key for u in s} for s in shares]
    for s in shares:                                           # share keeps plan order
        pos = [phase1.index(u) for u in s]
        assert pos == sorted(pos)


def test_partition_with_fake_processes_runs_every_unit_once():
    """Simulates a P-process run: each fake process executes its share against a shared
    set of finished keys; no unit is executed twice and all finish."""
    units = _units()
    done: dict[str, int] = {}
    count = 3
    for phase in (1, 2):
        for pi in range(count):
            for u in P.partition([u for u in units if u.phase == phase], pi, count):
                assert all(d in done for d in u.depends)     # barrier respected
                assert u.key not in done
                done[u.key] = pi
    assert set(done) == {u.key for u in units}
    assert len(set(done.values())) == count                    # everyone got work


def test_partition_rejects_bad_process_index():
    with pytest.raises(InputError):
        P.partition(_units(), 3, 3)


def test_unit_seed_depends_on_seed_and_key_only():
    keys = [u.key for u in _units()]
    seeds = [P.unit_seed(0, k) for k in keys]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [P.unit_seed(0, k) for k in keys]
    assert P.unit_seed(1, keys[0]) != seeds[0]
    assert all(0 <= s < 2 ** 31 for s in seeds)


def test_local_mesh_spans_the_visible_devices():
    import jax
    from repsim_jax.sweep.run import local_mesh
    mesh = local_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == len(jax.local_devices()) == 8   # conftest: 8 CPU devices


def test_long_group_keys_stay_short_and_unique():
    layers = tuple(f"layer{i}.block{j}.conv" for i in range(4) for j in range(4))
    u1, u2 = P.Unit("semantic", "m", layers), P.Unit("semantic", "m", layers[:-1])
    assert len(u1.key) < 130 and u1.key != u2.key
    assert np.all([c not in u1.key for c in "/\\"])
    assert list(itertools.chain(u1.layers)) == list(layers)


def test_demo_configuration_names_real_layers_of_the_builtin_models():
    """Guards `repsim demo` against renamed layers: every demo layer exists in at least one
    built-in architecture, each model gets several, and the plan has every method."""
    from flax import nnx

    from repsim_jax import models
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.run import _layers_by_model, model_layers
    cfg = C.demo_config()
    shapes = {m.name: model_layers(models.build(m.name, num_classes=7, rngs=nnx.Rngs(0)))
              for m in cfg.models}
    layers = _layers_by_model(cfg, shapes)          # raises on a name no model has
    assert all(len(ls) >= 3 for ls in layers.values())
    units = P.plan_units(cfg.methods, layers, shapes,
                         {m: cfg.method_options(m)["layers"] for m in cfg.methods
                          if "layers" in cfg.method_options(m)})
    assert {u.method for u in units} == set(cfg.methods) | set(P.AGGREGATES)
    assert [u.layers for u in units if u.method == "cladec"] == [("features.15",)]
