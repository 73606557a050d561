"""SymPy expressions to jitted, differentiable, vectorisable JAX functions in float64.

Printing goes through SymPy's ``JaxPrinter`` (via ``lambdify(modules="jax", cse=True)``), so
the compiled function is the exact expression evaluated in IEEE float64: Rationals become float
divisions, ``Max`` becomes nested ``jnp.maximum``, ``ceiling`` ``jnp.ceil`` and ``Piecewise``
``jnp.select``.  Inputs are cast to float64 where they enter, so large integer products (a 70B
model's bytes) never overflow int32.

Gradients (``jax.grad``):

* ``Max(a, b)`` passes the gradient to the larger argument only; at an exact tie JAX splits it,
  half to each.  The roofline's max(compute, memory) therefore has a one-sided kink at the
  ridge, and finite gradients everywhere.
* ``ceiling`` and ``floor`` have zero gradient everywhere (and are undefined at integers):
  a gradient-based search must use a relaxed form and evaluate the exact one for the answer.
* ``Piecewise`` evaluates every branch and selects; the gradient is that of the selected
  branch, but a branch that is NaN or infinite where it is not selected still poisons the
  gradient (0·NaN), so guard such branches before they reach a Piecewise.

The cost model's own expressions use only +, ·, /, powers and Max, so their gradients are
finite wherever the inputs are positive.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import sympy as sp

from costmodel.runtime import require_x64

# Integers beyond this magnitude are printed as float64 constants: JAX parses a Python int
# literal as a 64-bit integer and refuses larger ones (a 16th power of 64 is 2^96).
LARGEST_INTEGER_LITERAL = 2**53


def _float_literals(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every integer (or rational's part) above LARGEST_INTEGER_LITERAL replaced
    by its nearest float64, the value float64 arithmetic would use anyway."""
    big = {
        r: sp.Float(float(r), 17)
        for r in expr.atoms(sp.Rational)
        if max(abs(r.p), abs(r.q)) > LARGEST_INTEGER_LITERAL
    }
    return expr.xreplace(big) if big else expr


def _lambdified(exprs, args: Sequence[sp.Symbol]) -> Callable:
    exprs = [_float_literals(sp.sympify(e)) for e in exprs]
    missing = set().union(*(e.free_symbols for e in exprs)) - set(args)
    if missing:
        names = ", ".join(sorted(str(s) for s in missing))
        raise ValueError(f"expression has symbols not among the arguments: {names}")
    return sp.lambdify(list(args), list(exprs), modules="jax", cse=True)


def compile_exprs(
    exprs: Mapping[str, sp.Expr], args: Sequence[sp.Symbol]
) -> Callable[..., dict[str, jax.Array]]:
    """One jitted function computing several named expressions with shared subexpressions.

    Returns a dict of float64 arrays, each broadcast to the common shape of the inputs.  Raises
    ``RuntimeError`` if JAX is not in float64 mode (:func:`costmodel.runtime.configure`).
    """
    require_x64()
    names = list(exprs)
    fn = _lambdified([exprs[n] for n in names], args)

    def evaluate(*values):
        inputs = [jnp.asarray(v, dtype=jnp.float64) for v in values]
        shape = jnp.broadcast_shapes(*(x.shape for x in inputs)) if inputs else ()
        outputs = fn(*inputs)
        return {
            n: jnp.broadcast_to(jnp.asarray(o, dtype=jnp.float64), shape)
            for n, o in zip(names, outputs, strict=True)
        }

    return jax.jit(evaluate)


def compile_expr(expr: sp.Expr, args: Sequence[sp.Symbol]) -> Callable[..., jax.Array]:
    """Jitted float64 JAX function of ``args`` (positional, broadcasting) computing ``expr``.

    ``compile_expr(B * S, [B, S])(jnp.arange(4), 2.0)`` gives ``[0., 2., 4., 6.]``.  The result
    is differentiable with ``jax.grad`` (for scalar inputs) and works under ``jax.vmap``.
    """
    named = compile_exprs({"value": expr}, args)
    return jax.jit(lambda *values: named(*values)["value"])


def printed_source(expr: sp.Expr, args: Sequence[sp.Symbol]) -> str:
    """The Python source that ``compile_expr`` would jit, as printed by SymPy's JaxPrinter."""
    fn = _lambdified([expr], args)
    return inspect.getsource(fn)
