"""What every configuration key of a sweep accepts: one table, checked before anything runs.

Each section of a sweep configuration (``[semantic]``, ``[invert]``, ... and ``[data]``,
``[distributed]``, the ``[[models]]`` entries) has a table ``{key: Option}`` in
:data:`OPTIONS`. :func:`check_section` checks a section's values against it - unknown key
(with "did you mean"), wrong type, value out of range or not among the valid names - and
raises :class:`~repsim_jax._checks.InputError` / ``KeyError`` naming the section and key.
:func:`repsim_jax.sweep.config.from_dict` calls it for every section, so a bad
configuration fails before any output directory or manifest is written.

Sources of truth:

* the valid names (kernels, matchers, comparisons, metrics, reductions, ...) are read from
  the method packages themselves (``repsim_jax.semantic.KERNELS`` etc.) when a value is
  checked, so a name added there is valid here without an edit;
* for ``[invert]`` the accepted keys are also every keyword parameter of
  :func:`repsim_jax.invert.explain` (``inspect.signature``; the adapter passes them on), so a
  new parameter of ``explain`` can be set from a configuration at once (its value is then
  checked by ``explain`` itself until it gets a row here);
* a method with no table of its own (a section added to ``METHOD_DEFAULTS`` by another
  part of the library) gets one inferred from its defaults: the keys of its defaults, each
  with the type of its default value (``None``: any value).

Other modules add or extend a section with :func:`register_options` (e.g. a new ``[data]``
key or a new method's options); the rows below are the ones the sweep's adapters use.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import numbers
from typing import Any, Callable, Mapping, Sequence

from repsim_jax._checks import InputError, unknown_name

__all__ = ["Option", "OPTIONS", "SECTION_CHECKS", "register_options", "check_section",
           "section_table", "matcher_options", "signature_keys"]

_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "layers": "'all', 'last' or a list of layer names",
               "ints": "'all' or a list of integers", "any": "any value",
               "number_or_str": "a number or a string",
               "floats": "a number or a non-empty list of numbers"}


@dataclasses.dataclass(frozen=True)
class Option:
    """One configuration key.

    kind: "int", "float" (ints accepted), "bool", "str", "layers" ("all" / "last" / a
      non-empty list of names), "ints" ("all" or a list of integers), "floats" (a number
      or a non-empty list of numbers; bounds apply to each), "number_or_str", "any".
    lo, hi: inclusive bounds of a number (``lo_open``/``hi_open``: exclusive).
    choices: valid strings, or ``(module, attribute)`` naming a tuple of valid names in a
      method package (read when checked), or a zero-argument callable returning them.
    none: ``None`` (TOML: leave the key out) is accepted.
    matchers: ``[semantic]`` only: the matchers this option belongs to.
    doc: one line for error messages and docs.
    """
    kind: str = "any"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Any = None
    none: bool = False
    matchers: tuple[str, ...] | None = None
    doc: str = ""

    def valid_names(self) -> tuple[str, ...] | None:
        c = self.choices
        if c is None:
            return None
        if callable(c):
            return tuple(c())
        if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str) and \
                c[0].startswith("repsim_jax."):
            return tuple(getattr(importlib.import_module(c[0]), c[1]))
        return tuple(c)

    def check(self, value, where: str) -> None:
        """Raises InputError/KeyError when ``value`` is not acceptable for ``where``."""
        if value is None:
            if self.none or self.kind == "any":
                return
            raise InputError(f"{where}: expected {_TYPE_WORDS[self.kind]}, got nothing (None)")
        kind = self.kind
        ok = {
            "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
            "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "number_or_str": isinstance(value, (str, numbers.Real))
            and not isinstance(value, bool),
            "layers": value in ("all", "last") or (
                isinstance(value, (list, tuple)) and len(value) > 0
                and all(isinstance(v, str) for v in value)),
            "ints": value == "all" or (
                isinstance(value, (list, tuple)) and len(value) > 0
                and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                        for v in value)),
            "floats": _is_real(value) or (
                isinstance(value, (list, tuple)) and len(value) > 0
                and all(_is_real(v) for v in value)),
            "any": True,
        }[kind]
        if not ok:
            raise InputError(f"{where}: expected {_TYPE_WORDS[kind]}"
                             f"{' (' + self.doc + ')' if self.doc else ''}, got {value!r} "
                             f"({type(value).__name__})")
        if kind in ("int", "float") or (kind == "number_or_str" and not isinstance(value, str)):
            self._check_range(value, where)
        if kind == "floats":
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                self._check_range(v, where)
        names = self.valid_names()
        if names is not None and isinstance(value, str) and value not in names:
            import difflib
            close = difflib.get_close_matches(value, list(names), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InputError(f"{where}: unknown value {value!r}.{hint} Valid: "
                             f"{', '.join(names)}")

    def _check_range(self, value, where: str) -> None:
        lo_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        hi_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if lo_bad or hi_bad:
            left = "-inf" if self.lo is None else f"{self.lo:g}"
            right = "inf" if self.hi is None else f"{self.hi:g}"
            span = (f"{'(' if self.lo_open or self.lo is None else '['}{left}, {right}"
                    f"{')' if self.hi_open or self.hi is None else ']'}")
            raise InputError(f"{where}: {value!r} is out of range, expected a value in {span}"
                             f"{' (' + self.doc + ')' if self.doc else ''}")


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(lo=None, hi=None, **kw) -> Option:
    return Option("int", lo, hi, **kw)


def _frac(lo_open=False, hi_open=False, **kw) -> Option:
    return Option("float", 0.0, 1.0, lo_open=lo_open, hi_open=hi_open, **kw)


_LAYERS = Option("layers", doc="this method's layers: narrows the sweep's layer list")
_SEM = "repsim_jax.semantic"
_POS = dict(lo=1)

# Section -> key -> Option. "layers" of a method: see repsim_jax.sweep.config.
OPTIONS: dict[str, dict[str, Option]] = {
    "semantic": {
        "kernel": Option("str", choices=(_SEM, "KERNELS")),
        "matcher": Option("str", choices=(_SEM, "MATCHERS")),
        "compare": Option("str", choices=(_SEM, "COMPARISONS"),
                          doc="how the layer x layer map compares RSMs"),
        "layers": _LAYERS,
        "n_images": _int(2, none=True, doc="a seeded subset of the inputs (cost ~ N^2)"),
        # options of semantic.rsm itself (every matcher)
        "sigma": Option("number_or_str", lo=0.0, lo_open=True,
                        doc="rbf bandwidth: 'lower_median', 'median', 'mean' or > 0"),
        "drop_first_token": Option("bool"),
        "solver": Option("str", choices=("auto", "host", "hungarian")),
        "max_block_bytes": _int(1, none=True),
        "block_pairs": _int(1, none=True),
        # matcher options (semantic.rsm's **options; see its docstring)
        "k": _int(**_POS, matchers=("topk_greedy", "auction"),
                  doc="candidates per row"),
        "size": _int(**_POS, matchers=("window",), doc="window size"),
        "eps": Option("float", 0.0, 1.0, lo_open=True, hi_open=True, matchers=("auction",),
                      doc="a fraction of the cost's row range"),
        "dual_eps": Option("float", 0.0, lo_open=True, matchers=("auction",)),
        "init_iters": _int(0, matchers=("auction",)),
        "init_eps": Option("float", 0.0, lo_open=True, matchers=("auction",)),
        "bidders": _int(**_POS, matchers=("auction",)),
        "max_bids": _int(**_POS, matchers=("auction",)),
        "lanes": _int(**_POS, matchers=("auction",)),
        "cost_dtype": Option("str", choices=("auto", "float32", "bfloat16", "float16"),
                             matchers=("auction",)),
        "tol": Option("float", 0.0, lo_open=True, none=True, matchers=("auction",),
                      doc="certified max error of every RSM entry (None: uncertified)"),
        "rounds": _int(**_POS, matchers=("auction",)),
        "eps_start": Option("float", 0.0, lo_open=True, matchers=("sinkhorn",)),
        "eps_end": Option("float", 0.0, lo_open=True, matchers=("sinkhorn",)),
        "n_stages": _int(**_POS, matchers=("sinkhorn",)),
        "max_iters": _int(**_POS, matchers=("sinkhorn",)),
        "marginal_tol": Option("float", 0.0, lo_open=True, matchers=("sinkhorn",)),
    },
    "invert": {
        "L": _int(1, doc="maximum number of literals of a formula"),
        "B": _int(1, doc="beam width"),
        "min_fraction": _frac(hi_open=True),
        "max_fraction": _frac(lo_open=True),
        "mode": Option("str", choices=("positive", "negative")),
        "limit_search": _int(1, none=True),
        "compat": Option("bool"),
        "reduction": Option("str", choices=("repsim_jax.invert.explainer", "REDUCTIONS")),
        "alternative": Option("str", choices=("repsim_jax.invert.auc", "ALTERNATIVES")),
        "block": _int(1, none=True),
        "rank_on": Option("str", choices=("host", "device"), none=True),
        "layers": _LAYERS,
    },
    "concepts": {
        "k": _int(1, doc="ICE concepts per layer"),
        "max_iter": _int(1),
        "metric": Option("str", choices=("repsim_jax.concepts.similarity", "METRICS")),
        "resolution": _int(1, doc="side of the resized concept maps"),
        "layer_score": Option("str", choices=("best_match", "hungarian", "diagonal")),
        "net2vec": Option("bool"),
        "net2vec_epochs": _int(1),
        "layers": _LAYERS,
        "fit_images": _int(2, none=True, doc="inputs the ICE concepts are fitted on"),
        "net2vec_images": _int(2, none=True, doc="inputs Net2Vec trains and tests on"),
    },
    "cladec": {
        "alpha": Option("floats", 0.0, 1.0,
                        doc="ClaDec weight of the classification loss, or a list of them"),
        "steps": _int(1),
        "lr": Option("float", 0.0, lo_open=True),
        "batch_size": _int(1),
        "layers": _LAYERS,
        "retrain_steps": _int(0, doc="retrain-accuracy check (0: off)"),
    },
    "summaries": {
        "classes": Option("ints", doc="class indices"),
        "max_images": _int(1, doc="images per class"),
        "steps_smooth": _int(1),
        "steps_sharp": _int(1),
    },
    "data": {
        "source": Option("str"),
        "split": Option("str"),
        "n_images": Option("number_or_str", lo=2, choices=("all",), none=True,
                           doc="need at least 2 images, or 'all'"),
        "data_dir": Option("str", none=True),
        "concepts": Option("str", none=True, doc="a concept CSV of an image folder"),
        "masks": Option("str", none=True, doc="a masks directory of an image folder"),
        "skip_bad_images": Option("bool"),
        "balanced": Option("bool"),
    },
    "distributed": {
        "enabled": Option("bool"),
        "coordinator_address": Option("str", none=True, doc="HOST:PORT"),
        "num_processes": _int(1, none=True),
        "process_id": _int(0, none=True),
        "peer_timeout": Option("float", 0.0, lo_open=True,
                               doc="seconds without a heartbeat before a peer counts as dead"),
    },
    "models": {
        "name": Option("str"),
        "arch": Option("str", none=True),
        "weights": Option("str", none=True, doc="a weight file"),
        "num_classes": _int(1, none=True),
        "hf": Option("str", none=True, doc="a Hugging Face checkpoint directory"),
        "factory": Option("str", none=True, doc="package.module:callable returning an nnx "
                          "model"),
        "activations": Option("str", none=True, doc="precomputed {layer: (N, ...)}: an .npz "
                              "or a directory of .npy"),
    },
    "sweep": {   # the top level of a configuration
        "seed": _int(0),
        "batch_size": _int(1, doc="images per forward chunk"),
        "output": Option("str"),
    },
}

# keyword parameters of these functions are accepted keys of the section (the adapter
# passes them on); those here are the ones a configuration must not set
SIGNATURE_OF: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "invert": ("repsim_jax.invert", "explain",
               ("activations", "labels", "concept_names", "devices", "mesh", "sharding",
                "progress")),
}


def _semantic_matchers(values: Mapping[str, Any]) -> None:
    matcher = values.get("matcher", "exact")
    table = section_table("semantic")
    for key in values:
        opt = table.get(key)
        if opt is not None and opt.matchers is not None and matcher not in opt.matchers:
            owners = " and ".join(repr(m) for m in opt.matchers)
            raise InputError(f"[semantic] option {key!r} belongs to matcher {owners}, but the "
                             f"matcher is {matcher!r}; remove {key!r} or set matcher = "
                             f"{opt.matchers[0]!r}")


def _invert_fractions(values: Mapping[str, Any]) -> None:
    lo, hi = values.get("min_fraction", 0.0), values.get("max_fraction", 0.5)
    if isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real) and lo >= hi:
        raise InputError(f"[invert] min_fraction ({lo!r}) must be below max_fraction "
                         f"({hi!r})")


def _distributed_ids(values: Mapping[str, Any]) -> None:
    n, i = values.get("num_processes"), values.get("process_id")
    if isinstance(n, int) and isinstance(i, int) and not 0 <= i < n:
        raise InputError(f"[distributed] process_id {i} is not in 0..{n - 1} "
                         f"(num_processes = {n})")


def _cladec_alphas(values: Mapping[str, Any]) -> None:
    a = values.get("alpha")
    if isinstance(a, (list, tuple)) and len(set(map(float, a))) != len(a):
        raise InputError(f"[cladec] alpha: {list(a)!r} names the same alpha twice")


# Section -> checks of several keys together (after every key passed its own check).
SECTION_CHECKS: dict[str, list[Callable[[Mapping[str, Any]], None]]] = {
    "semantic": [_semantic_matchers], "invert": [_invert_fractions],
    "distributed": [_distributed_ids], "cladec": [_cladec_alphas],
}


def register_options(section: str, options: Mapping[str, Option] | None = None, *,
                     check: Callable[[Mapping[str, Any]], None] | None = None,
                     **named: Option) -> None:
    """Adds (or replaces) keys of ``section`` and optionally a whole-section ``check``."""
    table = OPTIONS.setdefault(section, {})
    for key, opt in {**dict(options or {}), **named}.items():
        if not isinstance(opt, Option):
            raise TypeError(f"register_options: {section}.{key} must be an Option")
        table[key] = opt
    if check is not None:
        SECTION_CHECKS.setdefault(section, []).append(check)


def _inferred(value) -> Option:
    if isinstance(value, bool):
        return Option("bool")
    if isinstance(value, numbers.Integral):
        return Option("int")
    if isinstance(value, numbers.Real):
        return Option("float")
    if isinstance(value, str):
        return Option("str") if value not in ("all", "last") else Option("any")
    return Option("any")


def signature_keys(section: str) -> tuple[str, ...]:
    """Keyword parameters of the function ``section``'s adapter passes its options to."""
    if section not in SIGNATURE_OF:
        return ()
    module, name, excluded = SIGNATURE_OF[section]
    try:
        fn = getattr(importlib.import_module(module), name)
        params = inspect.signature(fn).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in excluded)


def section_table(section: str, defaults: Mapping[str, Any] | None = None) -> dict[str, Option]:
    """Every accepted key of ``section``: its table, keys inferred from ``defaults`` (a
    method's defaults) that have no row, and keyword parameters of its function."""
    table = dict(OPTIONS.get(section, {}))
    for key, value in (defaults or {}).items():
        table.setdefault(key, _LAYERS if key == "layers" else _inferred(value))
    for key in signature_keys(section):
        table.setdefault(key, Option("any"))
    return table


def matcher_options(matcher: str | None = None) -> tuple[str, ...]:
    """``[semantic]`` keys that are options of a matcher (of ``matcher`` when given)."""
    return tuple(k for k, o in OPTIONS["semantic"].items() if o.matchers is not None
                 and (matcher is None or matcher in o.matchers))


def check_section(section: str, values: Mapping[str, Any], *,
                  defaults: Mapping[str, Any] | None = None, label: str | None = None) -> None:
    """Checks ``values`` (one section of a configuration) against its table.

    ``label`` names the section in messages (default ``[section]``); ``defaults``: the
    section's default values (a method's ``METHOD_DEFAULTS`` entry), whose keys are
    accepted even without a row in the table.
    """
    label = label or f"[{section}]"
    if not isinstance(values, Mapping):
        raise InputError(f"{label}: expected a table of key = value, got {values!r}")
    table = section_table(section, defaults)
    for key, value in values.items():
        if key not in table:
            raise unknown_name(f"{label} option", str(key), sorted(table))
        table[key].check(value, f"{label} {key}")
    for check in SECTION_CHECKS.get(section, ()):
        check(values)


def check_list(section: str, entries: Sequence[Mapping[str, Any]], label: str) -> None:
    """:func:`check_section` for every entry of a list of tables (``[[models]]``)."""
    for i, entry in enumerate(entries):
        check_section(section, entry, label=f"{label}[{i}]")
