"""Property-based tests of the cost formulas (hypothesis, >= 200 examples per property).

Every comparison here is exact (SymPy Rationals) unless a tolerance is written down.
"""

from __future__ import annotations

import math
from functools import cache

import jax
import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given
from hypothesis import strategies as st

from costmodel.compile.codegen import compile_exprs
from costmodel.model import symbols as sy
from costmodel.model.dtypes import bytes_per_element
from costmodel.model.layers import decoder_layer, model_ops
from costmodel.model.memory import memory_per_gpu
from costmodel.model.ops import ATTENTION_ROLES as ATTENTION
from costmodel.model.roofline import step_time, totals
from tests.helpers import at

KINDS = ("mha", "gqa", "mqa", "mla")
PHASES = ("prefill", "decode")
DTYPES = ("bf16", "fp8", "int8", "int4")


@st.composite
def shapes(draw, kind=None, tp=None):
    """A random model shape of the given attention kind, with a tp that divides its heads."""
    kind = kind or draw(st.sampled_from(KINDS))
    heads = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    if kind == "mha" or kind == "mla":
        kv_heads = heads
    elif kind == "mqa":
        kv_heads = 1
    else:
        kv_heads = draw(st.sampled_from([d for d in (1, 2, 4, 8) if heads % d == 0]))
    degree = tp or draw(st.sampled_from([d for d in (1, 2, 4, 8) if heads % d == 0]))
    head_dim = draw(st.sampled_from([8, 16, 64, 128]))
    values = {
        sy.L: draw(st.integers(1, 96)),
        sy.D: draw(st.integers(1, 64)) * 64,
        sy.H: heads,
        sy.H_kv: kv_heads,
        sy.d_h: head_dim,
        sy.F: draw(st.integers(1, 64)) * 64 * degree,
        sy.V: draw(st.integers(1, 4096)) * degree,
        sy.r_q: draw(st.integers(1, 32)) * 32,
        sy.r_kv: draw(st.integers(1, 16)) * 32,
        sy.d_rope: draw(st.sampled_from([16, 32, 64])),
        sy.d_nope: draw(st.sampled_from([32, 64, 128])),
        sy.d_v: draw(st.sampled_from([32, 64, 128])),
        sy.b_w: bytes_per_element(draw(st.sampled_from(DTYPES))),
        sy.b_a: bytes_per_element(draw(st.sampled_from(("bf16", "fp32")))),
        sy.b_kv: bytes_per_element(draw(st.sampled_from(DTYPES))),
        sy.tp: degree,
    }
    return kind, values


workloads = st.fixed_dictionaries(
    {sy.B: st.integers(1, 512), sy.S: st.integers(1, 4096), sy.T: st.integers(1, 131072)}
)


@cache
def _ops(kind, phase, flash):
    return model_ops(kind, phase, flash=flash)


@given(shapes(), workloads, st.sampled_from(PHASES), st.booleans())
def test_every_cost_is_non_negative(shape, workload, phase, flash):
    kind, values = shape
    point = values | workload
    for op in _ops(kind, phase, flash):
        for field, expr in zip(op.cost._fields, op.total, strict=True):
            assert at(expr, point) >= 0, (op.name, field)


@given(
    shapes(),
    workloads,
    st.sampled_from(PHASES),
    st.booleans(),
    st.sampled_from([sy.B, sy.S, sy.T]),
)
def test_costs_are_monotone_in_batch_prompt_and_context(shape, workload, phase, flash, symbol):
    kind, values = shape
    point = values | workload
    bigger = point | {symbol: point[symbol] + 1}
    for op in _ops(kind, phase, flash):
        for field, expr in zip(op.cost._fields, op.total, strict=True):
            assert at(expr, bigger) >= at(expr, point), (op.name, field, symbol)


@given(shapes(), workloads, st.sampled_from(PHASES), st.booleans())
def test_flops_are_linear_in_batch(shape, workload, phase, flash):
    """Equal steps in B add equal FLOPs: f(3k) - f(2k) == f(2k) - f(k), exactly."""
    kind, values = shape
    flops = totals(_ops(kind, phase, flash)).flops
    k = workload[sy.B]
    point = values | workload
    f1, f2, f3 = (at(flops, point | {sy.B: m * k}) for m in (1, 2, 3))
    assert f3 - f2 == f2 - f1


@given(shapes(tp=1), st.sampled_from(PHASES), st.booleans(), st.sampled_from([2, 4, 8]), workloads)
def test_per_gpu_flops_times_tp_equals_total(shape, phase, flash, degree, workload):
    """Sharded kernels split their FLOPs exactly; replicated kernels repeat them on each device.

    The one replicated piece inside a sharded kernel is the causal mask's S·T position compare,
    which every device evaluates once (it is shared by batch and heads).
    """
    kind, values = shape
    assume(values[sy.H] % degree == 0 and values[sy.H_kv] % degree == 0)
    point = values | workload
    single = _ops(kind, phase, flash)
    split = model_ops(kind, phase, flash=flash, degree=sp.Integer(degree))
    for whole, part in zip(single, split, strict=True):
        total = at(whole.total.flops, point)
        per_gpu = at(part.total.flops, point)
        if whole.sharded:
            replicated = 0
            if phase == "prefill" and whole.name in {"attention", "attention.scores"}:
                replicated = at(sy.S * sy.T * whole.repeat, point)
            assert per_gpu * degree - total == (degree - 1) * replicated, whole.name
        else:
            assert per_gpu == total, whole.name


@given(shapes(), workloads, st.sampled_from(PHASES))
def test_int8_weights_are_exactly_half_of_bf16(shape, workload, phase):
    kind, values = shape
    point = values | workload
    weight_traffic = totals(_ops(kind, phase, True)).weight_bytes
    bf16 = at(weight_traffic, point | {sy.b_w: bytes_per_element("bf16")})
    int8 = at(weight_traffic, point | {sy.b_w: bytes_per_element("int8")})
    assert int8 * 2 == bf16


@given(shapes(), workloads, st.sampled_from(PHASES))
def test_flash_attention_moves_no_more_bytes_for_the_same_flops(shape, workload, phase):
    kind, values = shape
    point = values | workload

    def attention_total(flash):
        return totals([op for op in _ops(kind, phase, flash) if op.role in ATTENTION])

    flash, naive = attention_total(True), attention_total(False)
    assert at(flash.flops, point) == at(naive.flops, point)
    assert at(flash.transcendentals, point) == at(naive.transcendentals, point)
    assert at(flash.bytes, point) <= at(naive.bytes, point)


@given(shapes(), workloads)
def test_memory_is_positive_and_grows_with_batch(shape, workload):
    kind, values = shape
    memory = memory_per_gpu(kind, tied_embeddings=False)
    point = values | workload
    assert at(memory.total, point) > 0
    assert at(memory.total, point | {sy.B: workload[sy.B] + 1}) > at(memory.total, point)


def test_decode_intensity_tends_to_batch():
    """T -> 0 then d_model -> oo: only the weights remain, 2·B FLOPs per 2-byte weight."""
    heads_per_kv, ffn_ratio = 8, sp.Rational(7, 2)
    flat = {sy.tp: 1, sy.S: 1, sy.b_w: 2, sy.b_a: 2, sy.b_kv: 2}
    scaling = {
        sy.H: sy.D / sy.d_h,
        sy.H_kv: sy.D / (heads_per_kv * sy.d_h),
        sy.F: ffn_ratio * sy.D,
    }
    total = totals(model_ops("gqa", "decode"))
    intensity = (total.flops / total.bytes).subs(flat).subs(scaling)
    at_zero_context = sp.limit(intensity, sy.T, 0)
    assert sp.limit(at_zero_context, sy.D, sp.oo) == sy.B


# --------------------------------------------------------------------------- SymPy vs JAX

ARGS = (sy.B, sy.T, sy.b_w, sy.b_kv, sy.tp)
LLAMA_70B = {
    sy.L: 80,
    sy.D: 8192,
    sy.H: 64,
    sy.H_kv: 8,
    sy.d_h: 128,
    sy.F: 28672,
    sy.V: 128256,
    sy.b_a: 2,
    sy.S: 1,
}
H100 = {
    sy.peak_matmul: sp.Integer(989) * 10**12,
    sy.peak_attention: sp.Integer(989) * 10**12,
    sy.peak_vector: sp.Integer(67) * 10**12,
    sy.hbm_bandwidth: sp.Rational(335, 100) * 10**12,
    sy.link_bandwidth: sp.Integer(450) * 10**9,
    sy.link_latency: sp.Rational(2, 10**6),
    sy.eta_compute: 1,
    sy.eta_memory: 1,
    sy.kernel_overhead: sp.Rational(3, 10**6),
}


@pytest.fixture(scope="module")
def decode_cost():
    """The full Llama-3-70B decode model, symbolic in (B, T, b_w, b_kv, tp), and its JAX form."""
    op_list = model_ops("gqa", "decode")
    exprs = {
        "time": step_time(op_list),
        "flops": totals(op_list).flops,
        "bytes": totals(op_list).bytes,
        "memory": memory_per_gpu("gqa", tied_embeddings=False).total,
    }
    constants = {k: sp.sympify(v) for k, v in (LLAMA_70B | H100).items()}
    exprs = {name: expr.xreplace(constants) for name, expr in exprs.items()}
    return exprs, compile_exprs(exprs, ARGS)


points = st.tuples(
    st.floats(1, 4096),
    st.floats(1, 262144),
    st.sampled_from([float(bytes_per_element(d)) for d in DTYPES]),
    st.sampled_from([float(bytes_per_element(d)) for d in DTYPES]),
    st.sampled_from([1.0, 2.0, 4.0, 8.0]),
)


@given(points)
def test_jax_equals_sympy_exactly(decode_cost, point):
    exprs, compiled = decode_cost
    got = compiled(*point)
    exact = {s: sp.Rational(repr(v)) for s, v in zip(ARGS, point, strict=True)}
    for name, expr in exprs.items():
        want = float(at(expr, exact))
        assert abs(float(got[name]) - want) <= 1e-12 * abs(want), name


@given(points)
def test_jax_grad_matches_central_difference_away_from_kinks(decode_cost, point):
    _, compiled = decode_cost
    batch, rest = point[0], point[1:]

    def time(b):
        return compiled(b, *rest)["time"]

    grad = float(jax.grad(time)(batch))
    h = 1e-3 * batch
    forward = (float(time(batch + h)) - float(time(batch))) / h
    backward = (float(time(batch)) - float(time(batch - h))) / h
    # A kink (a kernel crossing its ridge) between B - h and B + h makes the one-sided slopes
    # differ; the property is about smooth stretches only.
    assume(math.isclose(forward, backward, rel_tol=1e-6, abs_tol=1e-18))
    central = (forward + backward) / 2
    assert np.isfinite(grad)
    assert grad == pytest.approx(central, rel=1e-5, abs=1e-15)


def test_grad_is_finite_everywhere_including_kinks(decode_cost):
    _, compiled = decode_cost
    grad = jax.grad(lambda b: compiled(b, 32768.0, 2.0, 2.0, 8.0)["time"])
    batches = np.linspace(1, 4096, 257)
    assert all(np.isfinite(float(grad(b))) for b in batches)


def test_vmap_equals_broadcasting(decode_cost):
    _, compiled = decode_cost
    batches = np.arange(1.0, 65.0)
    mapped = jax.vmap(lambda b: compiled(b, 4096.0, 1.0, 2.0, 4.0)["time"])(batches)
    broadcast = compiled(batches, 4096.0, 1.0, 2.0, 4.0)["time"]
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(broadcast))


def test_decoder_layer_kernels_cover_the_issue_list():
    names = {op.name for op in model_ops("gqa", "decode", flash=False)}
    expected = {
        "embed", "attn_norm", "q_proj", "k_proj", "v_proj", "rope", "attention.scores",
        "attention.softmax", "attention.pv", "o_proj", "attn_residual", "mlp_norm",
        "gate_proj", "up_proj", "silu", "gate_mul", "down_proj", "mlp_residual",
        "final_norm", "lm_head", "attn_all_reduce", "mlp_all_reduce",
    }  # fmt: skip
    assert expected <= names
    mla = {op.name for op in decoder_layer("mla", "decode", absorb=False)}
    assert {"q_down", "q_up", "kv_down", "kv_up", "kv_norm", "q_norm"} <= mla
    absorbed = {op.name for op in decoder_layer("mla", "decode", absorb=True)}
    assert {"q_absorb", "v_up"} <= absorbed and "kv_up" not in absorbed


@given(shapes(), workloads, st.sampled_from(PHASES), st.booleans())
def test_every_kernel_has_a_role_and_unfused_traffic_at_least_its_bytes(
    shape, workload, phase, flash
):
    """Each kernel says what it is, and running its elementary operations one by one moves at
    least what the kernel moves (collectives move nothing through memory)."""
    kind, values = shape
    point = values | workload
    for op in _ops(kind, phase, flash):
        assert op.role != "generic", op.name
        assert (op.role == "collective") == (op.unit == "collective"), op.name
        unfused = at(op.unfused_bytes, point)
        if op.role == "collective":
            assert unfused == 0, op.name
        else:
            assert unfused >= at(op.cost.bytes, point) > 0, op.name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("phase", PHASES)
def test_flash_attention_carries_the_unfused_traffic_of_its_naive_kernels(kind, phase):
    def attention_unfused(flash):
        chosen = [op for op in decoder_layer(kind, phase, flash=flash) if op.role in ATTENTION]
        return sp.expand(sum((op.unfused_bytes for op in chosen), sp.Integer(0)))

    assert attention_unfused(True) == attention_unfused(False) != 0


def test_unfused_traffic_exceeds_kernel_traffic_where_a_kernel_is_several_operations():
    """RMSNorm, RoPE (MLA's q_rope and k_rope included), SiLU and softmax are several
    elementary operations each: their unfused traffic is strictly more than one pass."""
    several = {"norm", "rope", "activation", "softmax", "attention_scores"}
    for kind in KINDS:
        layer = decoder_layer(kind, "prefill", flash=False) + decoder_layer(kind, "decode")
        chosen = [op for op in layer if op.role in several]
        assert {op.role for op in chosen} == several
        for op in chosen:
            extra = sp.expand(op.unfused_bytes - op.cost.bytes)
            assert extra != 0 and all(c > 0 for c in sp.Poly(extra).coeffs()), (kind, op.name)
