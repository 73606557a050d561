"""Shared test helpers: exact evaluation of SymPy expressions at a point."""

from __future__ import annotations

from pathlib import Path

import sympy as sp

ROOT = Path(__file__).resolve().parent.parent  # the checkout


def at(expr, values: dict) -> sp.Expr:
    """``expr`` evaluated exactly at ``values`` (symbol -> number)."""
    return sp.sympify(expr).xreplace({k: sp.sympify(v) for k, v in values.items()})


# The what-if tests' question (predict's options, no loop): Llama-3-8B on one H100 SXM, bf16,
# prompts of 1024 and outputs of 256 tokens.
WHATIF_QUESTION = (
    *("--model", "llama-3-8b", "--hardware", "h100-sxm", "--tp", "1"),
    *("--weight-dtype", "bf16", "--kv-dtype", "bf16", "--isl", "1024", "--osl", "256"),
)
