"""The solver interface and its registry.

A solver is an object with a ``name``, an option table ``options`` ({option: default}),
per-option validation, and two pure functions for ONE pair (jit/vmap-able):

- ``plan(cost, norms_a, norms_b, **opts) -> (subproblems, aux)``: the square sub-problems
  ``(..., m, m)`` that must be solved exactly (maximisation), and whatever ``assemble``
  needs (for in-graph solvers, ``aux`` is already the permutation);
- ``assemble(s, sub_perms, aux, **opts) -> perm`` (S,) int32.

Between the two, the scheduler (:mod:`repsim_jax.semantic.schedule`) solves the
sub-problems exactly, on the host (threads) or in-graph (optax's Hungarian). Solvers
register themselves with :func:`register`; ``rsm(matcher=name)`` looks them up by name.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from repsim_jax._checks import InputError, unknown_name

__all__ = ["Option", "Solver", "register", "get_solver", "SOLVERS", "matcher_options",
           "check_options"]


@dataclass(frozen=True)
class Option:
    """One solver option: its default, its kind (``"int"`` positive integer, ``"frac"`` a
    number in (0, 1), ``"nonneg"`` a number >= 0, ``"choice"`` one of ``choices``,
    ``"any"``) and whether ``None`` is allowed."""
    default: Any
    kind: str = "any"
    choices: tuple = ()
    nullable: bool = False
    doc: str = ""

    def check(self, solver: str, key: str, value):
        if value is None and (self.nullable or self.default is None):
            return value
        bad = None
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                    int(value) != value or int(value) < 1:
                bad = "a positive integer"
            else:
                value = int(value)
        elif self.kind in ("frac", "nonneg", "pos"):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                bad = "a number"
            elif self.kind == "frac" and not 0 < value < 1:
                bad = "in (0, 1)"
            elif self.kind == "nonneg" and not value >= 0:
                bad = ">= 0"
            elif self.kind == "pos" and not value > 0:
                bad = "> 0"
            else:
                value = float(value)
        elif self.kind == "choice" and value not in self.choices:
            bad = "one of " + ", ".join(map(repr, self.choices))
        if bad:
            extra = f" ({self.doc})" if self.doc else ""
            raise InputError(f"matcher {solver!r}: option {key} must be {bad}{extra}, "
                             f"got {value!r}")
        return value


@dataclass(frozen=True)
class Solver:
    """Base class of the matchers (see the module docstring)."""
    name: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    ingraph: bool = True          # no exact sub-problems (plan's aux is the permutation)
    certified: bool = False       # computes a dual bound on the optimum (``tol``)
    # capabilities the scheduler reads instead of testing names:
    optimal: bool = False         # returns the optimum: bound 0, quality 1 with no re-solve
    work_items: bool = False      # RSMs run on flat (layer, i, j) work items with the
    #                               solver's certificate (schedule._auction_statistics),
    #                               not on tiles of plan/assemble
    cpu_block_bytes: int = 32 << 20   # default bytes of cost matrices at once on CPU

    def check_run(self, opts: Mapping) -> None:
        """Checks of validated options that only apply to a whole-RSM run (InputError)."""

    def defaults(self) -> dict:
        return {k: o.default for k, o in self.options.items()}

    def check(self, options: Mapping) -> dict:
        """Options merged with the defaults, validated; unknown keys get "did you mean"."""
        for key in options:
            if key not in self.options:
                valid = sorted(self.options)
                msg = unknown_name(f"option of matcher {self.name!r}", key,
                                   valid).args[0] if valid else \
                    f"matcher {self.name!r} takes no options, got {key!r}"
                raise InputError(msg)
        out = self.defaults()
        for key, value in options.items():
            out[key] = self.options[key].check(self.name, key, value)
        return self.finalise(out)

    def finalise(self, opts: dict) -> dict:      # solver-specific normalisation
        return opts

    # per pair, jit/vmap-able
    def plan(self, cost, norms_a, norms_b, **opts):
        raise NotImplementedError

    def assemble(self, s: int, sub_perms, aux, **opts):
        return aux

    def solve_one(self, cost, norms_a, norms_b, **opts):
        """In-graph solvers: ``(perm, diagnostics)`` of one pair; diagnostics is a dict with
        any of ``gap``, ``converged``, ``iterations``, ``marginal_error``."""
        return self.plan(cost, norms_a, norms_b, **opts)[1], {}


SOLVERS: dict[str, Solver] = {}


def register(solver: Solver) -> Solver:
    SOLVERS[solver.name] = solver
    return solver


def get_solver(name) -> Solver:
    """The registered solver called ``name`` (KeyError with "did you mean" otherwise)."""
    if isinstance(name, Solver):
        return name
    if name not in SOLVERS:
        raise unknown_name("matcher", name, tuple(SOLVERS))
    return SOLVERS[name]


def matcher_options() -> dict[str, dict[str, Any]]:
    """{matcher: {option: default}} for every registered matcher (for config validation)."""
    return {name: s.defaults() for name, s in SOLVERS.items()}


def check_options(matcher: str, options: Mapping) -> dict:
    """Validated options of ``matcher`` merged with its defaults (InputError / KeyError)."""
    return get_solver(matcher).check(options)

