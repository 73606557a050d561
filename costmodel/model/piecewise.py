"""Where the pieces of a piecewise-linear expression meet.

Roofline step times are sums of max(compute, memory) of terms linear in the batch, so they are
piecewise linear in it; the breakpoints are the batches where two arguments of a Max (or Min)
are equal.  Pure SymPy: the optimiser's integer certificate (:mod:`costmodel.search.certificate`)
and its compiled problem use these.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

_NONSMOOTH = (sp.Piecewise, sp.floor, sp.ceiling, sp.Abs, sp.Heaviside, sp.Mod, sp.sign)


def is_piecewise_linear(expr: sp.Expr, var: sp.Symbol) -> bool:
    """True if ``expr`` is built from terms linear in ``var`` with +, constant factors, Max, Min."""
    if var not in expr.free_symbols:
        return True
    if expr == var:
        return True
    if isinstance(expr, sp.Add | sp.Max | sp.Min):
        return all(is_piecewise_linear(a, var) for a in expr.args)
    if isinstance(expr, sp.Mul):
        varying = [a for a in expr.args if var in a.free_symbols]
        return len(varying) == 1 and is_piecewise_linear(varying[0], var)
    return False


def breakpoints(exprs: Sequence[sp.Expr], var: sp.Symbol) -> tuple[sp.Expr, ...] | None:
    """Values of ``var`` where two arguments of a Max/Min containing it are equal.

    None when some expression is not piecewise linear in ``var`` or nests such a Max.
    """
    roots: list[sp.Expr] = []
    for expr in exprs:
        if not is_piecewise_linear(expr, var):
            return None
        if any(var in a.free_symbols for a in expr.atoms(*_NONSMOOTH)):
            return None
        for m in expr.atoms(sp.Max, sp.Min):
            if var not in m.free_symbols:
                continue
            if any(var in inner.free_symbols for a in m.args for inner in a.atoms(sp.Max, sp.Min)):
                return None
            for i, a in enumerate(m.args):
                for b in m.args[i + 1 :]:
                    difference = a - b
                    slope = sp.diff(difference, var)
                    if slope == 0:
                        continue
                    roots.append(-difference.xreplace({var: sp.Integer(0)}) / slope)
    return tuple(dict.fromkeys(roots))
