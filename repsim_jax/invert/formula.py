r"""Compositional concept formulas: left-deep chains of literals joined by AND / OR.

The INVERT search language (Bykov et al., 2023): a literal is a concept :math:`c` or its
negation :math:`\lnot c`; a formula of length :math:`k` is built left-deep,

.. math:: \varphi = (\dots((\ell_1 \circ_2 \ell_2) \circ_3 \ell_3) \dots) \circ_k \ell_k,
   \qquad \circ_j \in \{\land, \lor\},

so it is stored as two small integer arrays: ``literals`` (k,) with values in
``[0, 2C)`` (``c`` for concept c, ``C + c`` for NOT c) and ``ops`` (k,) (``ops[0]`` unused,
then ``AND = 0`` / ``OR = 1``). The string form uses Python's ``&``, ``|`` and ``~``
(parenthesised where the left part's operator differs), so
``eval(formula, {}, dict(zip(names, label_columns)))`` evaluates it on boolean numpy
arrays when the concept names are identifiers.
"""
from __future__ import annotations

import ast
import dataclasses
from typing import Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["AND", "OR", "Formula", "formula_string", "evaluate", "parse"]

AND, OR = 0, 1


@dataclasses.dataclass(frozen=True)
class Formula:
    """A left-deep chain of literals.

    Attributes:
      concepts: concept index of each literal, in order.
      negated: whether each literal is negated.
      ops: the operator joining literal j to the formula before it (``"&"`` or ``"|"``);
        ``len(ops) == len(concepts) - 1``.
    """
    concepts: tuple[int, ...]
    negated: tuple[bool, ...]
    ops: tuple[str, ...]

    @classmethod
    def from_arrays(cls, literals, ops, n_concepts: int) -> "Formula":
        lit = [int(x) for x in np.asarray(literals) if int(x) >= 0]
        op = [int(x) for x in np.asarray(ops)[1:len(lit)]]
        return cls(tuple(x % n_concepts for x in lit), tuple(x >= n_concepts for x in lit),
                   tuple("&" if o == AND else "|" for o in op))

    def __len__(self) -> int:
        return len(self.concepts)

    def to_string(self, names: Sequence[str]) -> str:
        return formula_string(self, names)

    def evaluate(self, labels) -> np.ndarray:
        return evaluate(self, labels)


def _literal(name: str, neg: bool) -> str:
    return f"~{name}" if neg else name


def formula_string(formula: Formula, names: Sequence[str]) -> str:
    """``a & ~b``, ``(a | b) & c``: Python-evaluable over boolean arrays."""
    if not formula.concepts:
        return ""
    s = _literal(names[formula.concepts[0]], formula.negated[0])
    prev_op = None
    for op, c, neg in zip(formula.ops, formula.concepts[1:], formula.negated[1:]):
        if prev_op is not None and prev_op != op:
            s = f"({s})"
        s = f"{s} {op} {_literal(names[c], neg)}"
        prev_op = op
    return s


def evaluate(formula: Formula, labels) -> np.ndarray:
    """Indicator (N,) of the formula on boolean labels (N, C)."""
    lab = np.asarray(labels, bool)
    if not formula.concepts:
        raise InputError("cannot evaluate an empty formula")
    out = lab[:, formula.concepts[0]] ^ formula.negated[0]
    for op, c, neg in zip(formula.ops, formula.concepts[1:], formula.negated[1:]):
        lit = lab[:, c] ^ neg
        out = (out & lit) if op == "&" else (out | lit)
    return out


def parse(text: str, labels, names: Sequence[str]) -> np.ndarray:
    """Indicator (N,) of any formula string over ``names`` with ``&``, ``|``, ``~``, parens.

    Accepts the strings of this package and of the official code (sympy syntax); names
    need not be Python identifiers as long as they contain no operator characters or
    spaces. Safe: only names and the three operators are allowed.
    """
    lab = np.asarray(labels, bool)
    index = {n: i for i, n in enumerate(names)}
    # replace names by placeholders so non-identifier names parse
    tokens, buf, mapping = [], "", {}
    for ch in text + " ":
        if ch in "&|~() ":
            if buf:
                if buf not in index:
                    raise InputError(f"unknown concept {buf!r} in formula {text!r}")
                key = f"_c{index[buf]}"
                mapping[key] = index[buf]
                tokens.append(key)
                buf = ""
            tokens.append(ch)
        else:
            buf += ch
    tree = ast.parse("".join(tokens), mode="eval")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Name):
            return lab[:, mapping[node.id]]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return ~ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            a, b = ev(node.left), ev(node.right)
            return (a & b) if isinstance(node.op, ast.BitAnd) else (a | b)
        raise InputError(f"unsupported syntax in formula {text!r}")

    return np.asarray(ev(tree), bool)
