"""SymPy -> JAX code generation: the printed code and the numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import sympy as sp

from costmodel.compile.codegen import compile_expr, compile_exprs, printed_source
from costmodel.model import symbols as sy


def test_max_prints_as_maximum_and_rationals_exactly():
    source = printed_source(sp.Max(sy.B, sy.T) + sp.Rational(7, 2) * sy.B, [sy.B, sy.T])
    assert "maximum" in source
    assert "7/2" in source


def test_large_integer_products_do_not_overflow():
    # 70e9 parameters x 2 bytes x 256 would wrap in int32.
    expr = sy.B * sy.D * sy.F
    value = compile_expr(expr, [sy.B, sy.D, sy.F])(256, 70_000_000_000, 2)
    assert value.dtype == jnp.float64
    assert float(value) == 256 * 70_000_000_000 * 2


def test_outputs_broadcast_to_the_input_shape():
    fn = compile_exprs({"constant": sp.Integer(3), "linear": 2 * sy.B}, [sy.B, sy.T])
    out = fn(jnp.arange(4.0), 1.0)
    assert out["constant"].shape == (4,)
    assert out["linear"].tolist() == [0.0, 2.0, 4.0, 6.0]


def test_missing_symbols_are_an_error():
    with pytest.raises(ValueError, match="T"):
        compile_expr(sy.B * sy.T, [sy.B])


def test_gradient_of_max_goes_to_the_active_branch_and_splits_at_a_tie():
    fn = compile_expr(sp.Max(2 * sy.B, sy.T), [sy.B, sy.T])
    assert float(jax.grad(fn, argnums=0)(3.0, 1.0)) == 2.0
    assert float(jax.grad(fn, argnums=0)(1.0, 5.0)) == 0.0
    assert float(jax.grad(fn, argnums=0)(2.0, 4.0)) == 1.0  # half of 2 at the tie


def test_ceiling_has_zero_gradient():
    fn = compile_expr(sp.ceiling(sy.B / 8), [sy.B])
    assert float(fn(9.0)) == 2.0
    assert float(jax.grad(fn)(9.0)) == 0.0


def test_integer_literals_beyond_int64_compile_as_floats():
    """A 16th power of 64 (2^96) is no JAX integer literal; it compiles as its float64 value."""
    x = sp.Symbol("x", positive=True)
    f = compile_expr(sp.Integer(2) ** 96 * x + sp.Rational(3, 2**70), [x])
    assert float(f(1.0)) == float(2**96) + 3 / 2**70
