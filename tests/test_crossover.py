"""Crossover points between two choices (issue 13): closed forms checked at numbers.

Llama-3-70B on the H100 SXM, pure roofline (costmodel.model.derivations).  Tolerances: the
closed forms and the roots :func:`crossover` returns are exact, so at the crossover the two
times agree exactly (compared at relative 1e-12 where a float is involved); a bisected root
is within its stated width.
"""

from __future__ import annotations

import pytest
import sympy as sp

from costmodel.config.load import hardware_catalogue, load_scenario
from costmodel.model import derivations as dv
from costmodel.model import symbols as sy
from costmodel.model.crossover import NoCrossoverError, crossover
from costmodel.model.roofline import compute_time, memory_time
from costmodel.present.paper.model import values_of
from tests.helpers import ROOT, at

SCENARIO = load_scenario(ROOT / "configs" / "h100_70b.yaml")
H100 = hardware_catalogue()["h100-sxm"]
CONTEXT = SCENARIO.workload.default_context  # 2560
RTOL = 1e-12


def close(x, y) -> bool:
    return float(x) == pytest.approx(float(y), rel=RTOL)


@pytest.fixture(scope="module")
def llama():
    """Llama-3-70B on the H100, pure roofline, with both formats' peaks and int4's group."""
    values = {k: v for k, v in values_of(SCENARIO).items() if k not in (sy.b_w, sy.peak_matmul)}
    return values | {
        sy.peak_bf16: H100.matmul_peak("int4"),
        dv.peak_fp8: H100.matmul_peak("fp8"),
        dv.group_size: sp.Integer(SCENARIO.search.group_size),
    }


# --------------------------------------------------------------------------- crossover()


def test_crossover_finds_closed_forms_and_bisects_otherwise():
    x = sp.Symbol("x", positive=True)
    # Two rooflines: the root is where the first's compute meets the second's memory.
    found = crossover(sp.Max(2 * x, 3), sp.Max(x, 5), x, 0, 10)
    assert found.point == sp.Rational(5, 2) and found.exact and found.width == 0
    assert (found.below, found.above) == ("a", "b")
    # An irrational closed form, checked exactly.
    found = crossover(x**2, sp.Integer(2), x, 0, 3)
    assert found.point == sp.sqrt(2) and found.exact
    # No closed form: bisection on exact values to the stated width.
    found = crossover(x, sp.cos(x), x, 0, 1, rtol=sp.Rational(1, 10**9))
    assert not found.exact and found.width <= sp.Rational(1, 10**9)
    assert abs(float(found.point) - 0.7390851332151607) <= float(found.width)
    with pytest.raises(NoCrossoverError):
        crossover(x + 1, x, x, 0, 10)
    with pytest.raises(ValueError, match="left: y"):
        crossover(x, sp.Symbol("y"), x, 0, 1)


# --------------------------------------------------------------------------- fp8 against int4


def test_fp8_int4_closed_form_is_the_bf16_ridge_of_one_byte_weights():
    result = dv.fp8_int4_crossover()
    op = dv.weight_matmul()
    int4_compute = compute_time(op).xreplace(dv.DECODE | dv.PURE_VALUES | dv.INT4_WEIGHTS)
    fp8_memory = memory_time(op).xreplace(dv.DECODE | dv.PURE_VALUES | dv.FP8_WEIGHTS)
    assert (result.int4_meets, result.fp8_meets) == (int4_compute, fp8_memory)
    k, n = dv.k_in, dv.n_out
    expected = (
        sy.peak_bf16 * k * n / (2 * k * n * sy.hbm_bandwidth - sy.b_a * (k + n) * sy.peak_bf16)
    )
    assert sp.simplify(result.batch - expected) == 0
    assert result.batch.free_symbols == {sy.peak_bf16, sy.hbm_bandwidth, sy.b_a, k, n}


@pytest.mark.parametrize(
    "shape", [(sy.D, sy.F), (sy.F, sy.D), (sy.D, sy.D)], ids=["up", "down", "out"]
)
def test_fp8_int4_matmul_crossover_at_numbers(llama, shape):
    result = dv.fp8_int4_crossover()
    point = llama | {dv.k_in: llama[shape[0]], dv.n_out: llama[shape[1]]}
    batch = at(result.batch, point)
    assert batch.is_Rational and batch > 0

    def times(b):
        return at(result.fp8_time, point | {sy.B: b}), at(result.int4_time, point | {sy.B: b})

    fp8, int4 = times(batch)
    assert fp8 == int4  # exact rationals
    assert close(fp8, int4)
    fp8, int4 = times(batch * sp.Rational(99, 100))
    assert int4 < fp8  # int4 wins below: memory-bound on fewer weight bytes
    fp8, int4 = times(batch * sp.Rational(101, 100))
    assert fp8 < int4  # fp8 wins above: int4 computes at the bf16 peak
    # crossover() on the exact maxima returns the same closed form.
    found = crossover(at(result.fp8_time, point), at(result.int4_time, point), sy.B, 1, 4096)
    assert found.exact and found.point == batch and (found.below, found.above) == ("b", "a")


def test_fp8_int4_llama_numbers(llama):
    result = dv.fp8_int4_crossover()
    up = llama | {dv.k_in: llama[sy.D], dv.n_out: llama[sy.F]}
    assert float(at(result.batch, up)) == pytest.approx(154.78, abs=0.01)


def test_fp8_int4_whole_decode_step_crossover(llama):
    result = dv.fp8_int4_crossover()
    point = llama | {sy.T: CONTEXT}
    fp8, int4 = at(result.fp8_step, point), at(result.int4_step, point)
    found = crossover(fp8, int4, sy.B, 1, 4096)
    assert found.exact  # the active branches' root, checked exactly
    assert (found.below, found.above) == ("b", "a")  # int4 faster below, fp8 above
    assert close(fp8.xreplace({sy.B: found.point}), int4.xreplace({sy.B: found.point}))
    assert float(found.point) == pytest.approx(156.30, abs=0.01)
    below, above = found.point * sp.Rational(99, 100), found.point * sp.Rational(101, 100)
    assert int4.xreplace({sy.B: below}) < fp8.xreplace({sy.B: below})
    assert fp8.xreplace({sy.B: above}) < int4.xreplace({sy.B: above})


# --------------------------------------------------------------------------- tp against tp/2


def test_tensor_parallel_halving_closed_form_balances_the_layer(llama):
    result = dv.tensor_parallel_halving()
    point = llama | {sy.T: CONTEXT, sy.tp: sp.Integer(8), sy.b_w: sp.Integer(2)}
    point |= {sy.peak_matmul: H100.matmul_peak("bf16")}
    batch = at(result.batch, point)
    assert batch.is_Rational and batch > 0
    large = at(result.large_time, point | {sy.B: batch})
    small = at(result.small_time, point | {sy.B: batch})
    assert large == small and close(large, small)
    for factor, tp8_faster in ((sp.Rational(9, 10), True), (sp.Rational(11, 10), False)):
        b = batch * factor
        large = at(result.large_time, point | {sy.B: b})
        small = at(result.small_time, point | {sy.B: b})
        assert (large < small) == tp8_faster
    assert float(batch) == pytest.approx(278.28, abs=0.01)
    # The closed form assumes every kernel memory-bound: true here, at both degrees, since the
    # split form equals the layer's exact per-kernel roofline time.
    layer = dv.tensor_parallel().layer_time
    for degree, share, split in ((8, 1, result.large_time), (4, 2, result.small_time)):
        exact = at(layer, point | {sy.tp: degree, sy.B: batch / share})
        assert exact == at(split, point | {sy.B: batch})


def test_tensor_parallel_halving_whole_step(llama):
    result = dv.tensor_parallel_halving()
    point = llama | {sy.T: CONTEXT, sy.tp: sp.Integer(8), sy.b_w: sp.Integer(2)}
    point |= {sy.peak_matmul: H100.matmul_peak("bf16")}
    large, small = at(result.large_step, point), at(result.small_step, point)
    found = crossover(large, small, sy.B, 1, 4096)
    assert found.exact
    assert (found.below, found.above) == ("a", "b")  # tp 8 faster below, two tp 4 above
    assert close(large.xreplace({sy.B: found.point}), small.xreplace({sy.B: found.point}))
    assert float(found.point) == pytest.approx(274.37, abs=0.01)
    b = found.point
    assert large.xreplace({sy.B: b * sp.Rational(9, 10)}) < small.xreplace(
        {sy.B: b * sp.Rational(9, 10)}
    )
    assert small.xreplace({sy.B: b * sp.Rational(11, 10)}) < large.xreplace(
        {sy.B: b * sp.Rational(11, 10)}
    )
