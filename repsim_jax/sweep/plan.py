"""Units of work of a sweep: method x model x layer group, and their share per process.

A :class:`Unit` is the grain of checkpointing: it is computed once, saved, and never
recomputed by a resumed run. Per-layer methods get one unit per *group* of layers of equal
activation shape (so the method can stack the group and ``jax.vmap`` over it); ClaDec
trains one decoder per layer; visual summaries work per model. Two aggregate units
(``semantic_compare``, ``concepts_compare``) read the finished per-layer units and build
the layer x layer maps across all models, and ``invert_fdr`` corrects the p-values of every
neuron of the sweep together (Benjamini-Hochberg); they run in a second phase.

Unit keys are deterministic strings (also used as directory names and to derive each
unit's random seed), so every process of a multi-host run, and every restart, plans the
same units in the same order.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Mapping, Sequence

from repsim_jax._checks import InputError, unknown_name

__all__ = ["Unit", "select_layers", "group_by_shape", "plan_units", "partition",
           "unit_seed", "AGGREGATES"]

# aggregate kind -> the per-layer method whose units it reads
AGGREGATES = {"semantic_compare": "semantic", "invert_fdr": "invert",
              "concepts_compare": "concepts"}
# relative cost of one layer of each kind (for balancing processes)
_COST = {"similarity": 0.5, "semantic": 4.0, "invert": 1.0, "concepts": 3.0, "cladec": 8.0, "summaries": 10.0,
         "semantic_compare": 0.5, "invert_fdr": 0.2, "concepts_compare": 1.0}


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of work: ``method`` on ``layers`` of ``model`` (``"*"``: all models)."""
    method: str
    model: str
    layers: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        tail = "+".join(self.layers) if self.layers else "all"
        if len(tail) > 80:
            digest = hashlib.sha256(tail.encode()).hexdigest()[:8]
            tail = f"{self.layers[0]}+{len(self.layers) - 1}more-{digest}"
        model = "ALL" if self.model == "*" else self.model
        return f"{self.method}__{model}__{tail}"

    @property
    def phase(self) -> int:
        return 2 if self.method in AGGREGATES else 1

    @property
    def cost(self) -> float:
        return _COST.get(self.method, 1.0) * max(1, len(self.layers))


def unit_seed(seed: int, key: str) -> int:
    """The unit's own seed: depends on the sweep seed and the unit key only (not on the
    order in which units run), so resumed and multi-host runs draw the same numbers."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def select_layers(requested, available: Sequence[str], *, what: str = "layers") -> list[str]:
    """``"all"``, ``"last"`` or a list of names, validated against ``available``."""
    available = list(available)
    if requested == "all":
        return available
    if requested == "last":
        return available[-1:]
    if isinstance(requested, str):
        requested = [requested]
    out = []
    for name in requested:
        if name not in available:
            raise unknown_name("layer", name, available)
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"{what}: no layers selected")
    order = {n: i for i, n in enumerate(available)}
    return sorted(out, key=order.__getitem__)


def group_by_shape(layers: Sequence[str], shapes: Mapping[str, tuple],
                   max_group: int = 8) -> list[tuple[str, ...]]:
    """Groups layers of equal shape (in order of first appearance), at most
    ``max_group`` per group so a stacked group stays within memory."""
    groups: dict[tuple, list[list[str]]] = {}
    order: list[tuple[tuple, int]] = []
    for name in layers:
        shape = tuple(shapes[name])
        chunks = groups.setdefault(shape, [])
        if not chunks or len(chunks[-1]) >= max_group:
            chunks.append([])
            order.append((shape, len(chunks) - 1))
        chunks[-1].append(name)
    return [tuple(groups[s][i]) for s, i in order]


def plan_units(methods: Sequence[str], layers_by_model: Mapping[str, Sequence[str]],
               shapes_by_model: Mapping[str, Mapping[str, tuple]],
               method_layers: Mapping[str, object] | None = None,
               max_group: int = 8) -> list[Unit]:
    """All units of a sweep, phase 1 (per model, in model order) then aggregates.

    ``layers_by_model``: the sweep's validated layer list per model;
    ``method_layers``: per method an optional narrowing ("all", "last", or names - names a
    model does not have are skipped for that model, but must exist in at least one).
    """
    method_layers = dict(method_layers or {})
    units: list[Unit] = []
    for method in methods:
        sel = method_layers.get(method, "all")
        if isinstance(sel, (list, tuple)):
            everywhere = {n for ls in layers_by_model.values() for n in ls}
            for n in sel:
                if n not in everywhere:
                    raise unknown_name(f"layer (in {method}.layers)", n, sorted(everywhere))
    for model, layers in layers_by_model.items():
        for method in methods:
            sel = method_layers.get(method, "all")
            if isinstance(sel, (list, tuple)):
                chosen = [n for n in layers if n in sel]
            else:
                chosen = select_layers(sel, layers)
            if method == "similarity":
                continue                # one unit over every model, below
            if method == "summaries":
                units.append(Unit(method, model))
            elif method == "cladec":
                units.extend(Unit(method, model, (n,)) for n in chosen)
            elif chosen:
                units.extend(Unit(method, model, g)
                             for g in group_by_shape(chosen, shapes_by_model[model], max_group))
    if "similarity" in methods:
        # layer x layer maps of the activations of every model: one phase-1 unit whose
        # layers are "model:layer" (it reads activations, not other units)
        sel = method_layers.get("similarity", "all")
        chosen = []
        for model, layers in layers_by_model.items():
            names = ([n for n in layers if n in sel] if isinstance(sel, (list, tuple))
                     else select_layers(sel, layers))
            chosen += [f"{model}:{n}" for n in names]
        if chosen:
            units.append(Unit("similarity", "*", tuple(chosen)))
    for agg, base in AGGREGATES.items():
        deps = tuple(u.key for u in units if u.method == base)
        if base in methods and deps:
            units.append(Unit(agg, "*", (), deps))
    return units


def partition(units: Sequence[Unit], process_index: int, process_count: int) -> list[Unit]:
    """This process's share of ``units`` (greedy longest-processing-time balancing).

    Every process computes the same assignment (it depends only on the unit list), the
    shares are disjoint and together cover every unit; the share keeps plan order so a
    process visits its units model by model (activation cache hits).
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise InputError(f"process {process_index} of {process_count}: invalid")
    load = [0.0] * process_count
    owner: dict[str, int] = {}
    for u in sorted(units, key=lambda u: (-u.cost, u.key)):
        p = min(range(process_count), key=lambda i: (load[i], i))
        owner[u.key] = p
        load[p] += u.cost
    return [u for u in units if owner[u.key] == process_index]
