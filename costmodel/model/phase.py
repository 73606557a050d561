"""The phase rule: how prefill and decode fix the workload symbols S and T.

Kernels (:mod:`costmodel.model.layers`) are symbolic in B sequences, S new tokens per sequence
and T attended positions.  Prefill processes a prompt of S tokens that attends to itself, so
T = S; decode appends one token per sequence to a cache, so S = 1 and T is the context (the new
token included).  This module is the only place that says so.
"""

from __future__ import annotations

from typing import Literal

import sympy as sp

from costmodel.model import symbols as sy

Phase = Literal["prefill", "decode"]
PHASES: tuple[Phase, ...] = ("prefill", "decode")


def rule(phase: Phase) -> dict[sp.Symbol, sp.Expr]:
    """The substitution a phase imposes on the workload symbols: prefill T = S, decode S = 1."""
    if phase == "prefill":
        return {sy.T: sy.S}
    if phase == "decode":
        return {sy.S: sp.Integer(1)}
    raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")


def apply(expr: sp.Expr, phase: Phase) -> sp.Expr:
    """``expr`` with the phase rule substituted (symbolic in B and S, or B and T)."""
    return sp.sympify(expr).xreplace(rule(phase))


def workload(phase: Phase, *, batch, prompt, context) -> dict[sp.Symbol, object]:
    """B, S, T for a prefill of ``prompt`` tokens per sequence or a decode step at ``context``.

    ``prompt`` is ignored in decode and ``context`` in prefill: the phase rule fixes them.
    Values may be numbers or SymPy expressions.
    """
    point = {sy.B: batch, sy.S: prompt, sy.T: context}
    fixed = rule(phase)
    return {
        symbol: sp.sympify(fixed[symbol]).xreplace(point) if symbol in fixed else value
        for symbol, value in point.items()
    }
