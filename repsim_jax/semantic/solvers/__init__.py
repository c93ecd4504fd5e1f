"""The matchers, one per module, registered by name (:data:`SOLVERS`).

=============== ========================================= ==================================
name            module                                     what it returns
=============== ========================================= ==================================
``identity``    :mod:`.identity`                           the spatio-semantic baseline
``exact``       :mod:`.exact`                              the optimum (LAPJV / Hungarian)
``greedy``      :mod:`.greedy`                             sequential greedy (mutual best)
``topk_greedy`` :mod:`.topk`                               exact on the top-k norms, greedy
``window``      :mod:`.window`                             exact on norm-sorted blocks
``sinkhorn``    :mod:`.sinkhorn`                           entropic OT rounded, certified
``auction``     :mod:`.auction`                            sparse auction, certified
=============== ========================================= ==================================

``matcher_options()`` gives every matcher's option table {name: {option: default}}.
"""
from repsim_jax.semantic.solvers import (auction, exact, greedy, identity, sinkhorn, topk,  # noqa: F401
                                         window)
from repsim_jax.semantic.solvers.base import (SOLVERS, Option, Solver, check_options,
                                              get_solver, matcher_options, register)

_ORDER = ("identity", "exact", "greedy", "topk_greedy", "window", "sinkhorn", "auction")
for _n in _ORDER:                      # registry order = documentation order
    SOLVERS[_n] = SOLVERS.pop(_n)

__all__ = ["SOLVERS", "Option", "Solver", "check_options", "get_solver", "matcher_options",
           "register"]
