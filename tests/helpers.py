"""Shared test helpers: exact evaluation of SymPy expressions at a point."""

from __future__ import annotations

import sympy as sp


def at(expr, values: dict) -> sp.Expr:
    """``expr`` evaluated exactly at ``values`` (symbol -> number)."""
    return sp.sympify(expr).xreplace({k: sp.sympify(v) for k, v in values.items()})
