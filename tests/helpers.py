"""Shared test helpers: exact evaluation of SymPy expressions at a point."""

from __future__ import annotations

from pathlib import Path

import sympy as sp

ROOT = Path(__file__).resolve().parent.parent  # the checkout


def at(expr, values: dict) -> sp.Expr:
    """``expr`` evaluated exactly at ``values`` (symbol -> number)."""
    return sp.sympify(expr).xreplace({k: sp.sympify(v) for k, v in values.items()})
