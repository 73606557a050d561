"""Where one exact expression overtakes another over an interval of one variable.

:func:`crossover` takes two expressions of one symbol (everything else already substituted
with exact numbers, e.g. two step times as functions of the batch) and an interval on which
their difference changes sign, and returns the point where they are equal:

1. bisection on exact values (SymPy Rationals, no floating point) narrows the bracket to a
   relative width ``rtol``;
2. at the bracket's midpoint every ``Max``, ``Min`` and ``Piecewise`` of the difference is
   replaced by its active branch (the roofline's time is a sum of such maxima), and SymPy
   solves the smooth equation that is left;
3. a root of it inside the bracket at which the *original* difference is exactly zero is the
   crossover in closed form (``exact=True``, ``width=0``); otherwise the midpoint of the
   bracket is returned, within ``width`` (at most ``rtol`` x |hi|) of the crossover.

Pure SymPy, no I/O; a command calls it with a scenario's values substituted.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import sympy as sp

DEFAULT_RTOL = sp.Rational(1, 10**12)  # relative width of the bisection bracket [1]
_DIGITS = 60  # working precision for the sign of a value that is not a Rational [digits]

Side = Literal["a", "b"]


class Crossover(NamedTuple):
    """The point where ``expr_a - expr_b`` changes sign, and which is lower on each side."""

    point: sp.Expr  # the crossover: exact when ``exact``, else a Rational within ``width``
    exact: bool  # True when SymPy solved the active branches in closed form and it checked
    width: sp.Expr  # 0 when exact, else the final bracket's width (the error bound)
    below: Side  # the expression that is lower (faster, for times) just below the point
    above: Side  # the expression that is lower just above the point


class NoCrossoverError(ValueError):
    """The two expressions do not change order over the interval."""


def _sign(value: sp.Expr) -> int:
    value = sp.sympify(value)
    if value.is_Rational:
        return int(sp.sign(value))
    number = value.evalf(_DIGITS)
    if not number.is_real:
        raise ValueError(f"not a real number: {value}")
    return int(sp.sign(number))


def _active(expr: sp.Expr, symbol: sp.Symbol, point: sp.Expr) -> sp.Expr:
    """``expr`` with each Max/Min replaced by its largest/smallest argument at ``point`` and each
    Piecewise by the branch whose condition holds there (innermost first)."""
    if expr.is_Atom:
        return expr
    args = [_active(arg, symbol, point) for arg in expr.args]
    if isinstance(expr, (sp.Max, sp.Min)):
        values = [sp.N(arg.xreplace({symbol: point}), _DIGITS) for arg in args]
        pick = max if isinstance(expr, sp.Max) else min
        return args[values.index(pick(values))]
    if isinstance(expr, sp.Piecewise):
        for branch, condition in expr.args:
            if bool(condition.xreplace({symbol: point})):
                return _active(branch, symbol, point)
        raise ValueError(f"no branch of {expr} holds at {symbol} = {point}")
    return expr.func(*args)


def _is_zero(value: sp.Expr) -> bool:
    value = sp.sympify(value)
    if value.is_Rational:
        return value == 0
    return sp.simplify(value) == 0


def crossover(
    expr_a: sp.Expr,
    expr_b: sp.Expr,
    symbol: sp.Symbol,
    lo,
    hi,
    rtol=DEFAULT_RTOL,
) -> Crossover:
    """The point in [lo, hi] where ``expr_a`` and ``expr_b`` (of ``symbol`` only) are equal.

    ``expr_a - expr_b`` must have opposite signs at ``lo`` and ``hi`` (else
    :class:`NoCrossoverError`); with several sign changes, one of them is found.  Bounds are
    taken exactly (a float as the binary fraction it is).  See the module docstring for the
    method: the result is SymPy's closed form of the active branches when it checks exactly,
    else the midpoint of a bracket of relative width ``rtol``.
    """
    a, b = sp.sympify(expr_a), sp.sympify(expr_b)
    difference = a - b
    extra = difference.free_symbols - {symbol}
    if extra:
        names = ", ".join(sorted(str(s) for s in extra))
        raise ValueError(f"substitute every symbol but {symbol} first (left: {names})")
    lo, hi, rtol = sp.Rational(lo), sp.Rational(hi), sp.Rational(rtol)
    if not lo < hi:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")

    def sign_at(x: sp.Expr) -> int:
        return _sign(difference.xreplace({symbol: x}))

    sign_lo, sign_hi = sign_at(lo), sign_at(hi)
    if sign_lo == 0 or sign_hi == 0 or sign_lo == sign_hi:
        if sign_lo == 0 and sign_hi != 0:
            side: Side = "a" if sign_hi < 0 else "b"
            return Crossover(lo, True, sp.Integer(0), "b" if side == "a" else "a", side)
        if sign_hi == 0 and sign_lo != 0:
            side = "a" if sign_lo < 0 else "b"
            return Crossover(hi, True, sp.Integer(0), side, "b" if side == "a" else "a")
        raise NoCrossoverError(f"{symbol}: the two expressions keep their order over [{lo}, {hi}]")
    below: Side = "a" if sign_lo < 0 else "b"
    above: Side = "a" if sign_hi < 0 else "b"
    left, right = lo, hi
    while right - left > rtol * abs(hi):
        middle = (left + right) / 2
        sign = sign_at(middle)
        if sign == 0:
            return Crossover(middle, True, sp.Integer(0), below, above)
        if sign == sign_lo:
            left = middle
        else:
            right = middle
    middle = (left + right) / 2
    variable = sp.Dummy("x", real=True)
    smooth = _active(difference, symbol, middle).xreplace({symbol: variable})
    try:
        roots = sp.solve(smooth, variable)
    except (NotImplementedError, ValueError):
        roots = []
    for root in roots:
        if not (root.is_real and left <= root <= right):
            continue
        if _is_zero(difference.xreplace({symbol: root})):
            return Crossover(root, True, sp.Integer(0), below, above)
    return Crossover(middle, False, right - left, below, above)
