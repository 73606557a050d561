"""The roofline: time per kernel, arithmetic intensity, ridge point, regime.

Time of a kernel = max(FLOPs / (eta_c · peak of its unit), bytes / (eta_m · HBM bandwidth))
+ a fixed per-kernel overhead t_k; a collective's time is its ring algorithm's
(:mod:`costmodel.model.parallel`).  A step's time is the sum over kernels.  The whole-model form of
the roofline post in ``shared/seed`` is also available: max(total FLOPs / peak, total bytes /
bandwidth) plus communication.

Measured devices need more than three numbers (:mod:`costmodel.validate.calibrate`): a
:class:`TimeModel` (derived from a :class:`costmodel.model.calibration.Calibration`) switches on
calibration terms, each off by default so the pure roofline's expressions are unchanged symbol
for symbol:

* ``overlap``: compute and memory time combine as (c^p + m^p)^(1/p) with a fitted exponent p
  (p = 1: the two are serialised, as in a CPU GEMM that packs its operands before it computes;
  p -> infinity: the roofline's max);
* ``cache``: when a step's working set (weights and KV cache it touches) fits in a cache of
  ``cache_capacity`` bytes, its traffic is served at ``cache_bandwidth`` instead of device
  memory bandwidth.  The hit fraction is the smooth step h = C^k / (C^k + W^k) of the working set
  W against the capacity C (k = ``CACHE_SHARPNESS``), so it has a gradient for fitting.  A real
  model's working set (all its layers) is far larger than any cache, so h ~ 0 there; a single
  layer timed in a loop can sit in a CPU's L3 or a GPU's L2;
* ``relayout``: a weight matmul of more than one row (m > 1 tokens sharing each weight) moves
  rho x its weight bytes more than it reads: a GEMM library lays the weight out afresh (packs
  it) on every call, whatever m is, so the cost weighs most when m is small.  A single-row
  product (m = 1) runs a matrix-vector kernel that streams the weight as stored, without it;
* ``attention``: attention kernels (score and value products) run at a fraction eta_a of the
  rates (FLOP/s and bandwidth) the other kernels reach, e.g. when the key cache is read
  transposed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import sympy as sp

from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE, TimeModel
from costmodel.model.ops import Op
from costmodel.model.parallel import COLLECTIVE_TIME
from costmodel.model.serving import StepParts
from costmodel.model.symbols import (
    attention_efficiency,
    cache_bandwidth,
    cache_capacity,
    n_params,
    overlap,
    relayout,
)

Regime = Literal["memory-bound", "compute-bound", "communication"]

UNIT_PEAK = {
    "matmul": sy.peak_matmul,
    "attention": sy.peak_attention,
    "vector": sy.peak_vector,
    "memory": sy.peak_vector,
}

# Calibration terms (symbols in costmodel.model.symbols), used only under a TimeModel that
# switches them on; which terms are on comes from a Calibration record.
CALIBRATION_SYMBOLS = sy.CALIBRATION
CACHE_SHARPNESS = 4  # exponent k of the hit fraction C^k / (C^k + W^k) [1]

# The time model of the one pure-roofline record (costmodel.model.calibration.PURE_ROOFLINE):
# every term off.  Derived from it, not a second definition.
ROOFLINE = PURE_ROOFLINE.time_model
NO_HIT = sp.Integer(0)  # cache-hit fraction of the pure roofline


def matmul_rows(op: Op) -> sp.Expr | None:
    """Rows m of a weight matmul (tokens sharing each weight element): FLOPs / (2 · weights);
    None for kernels that own no weights."""
    if op.unit != "matmul" or op.weight_params == 0:
        return None
    return sp.simplify(op.cost.flops / (2 * op.weight_params))


def relayout_bytes(op: Op) -> sp.Expr:
    """Extra traffic of a weight matmul of m > 1 rows, rho · weight bytes; 0 for a single-row
    product and for kernels without weights (see ``relayout``) [bytes]."""
    rows = matmul_rows(op)
    if rows is None:
        return sp.Integer(0)
    return sp.Piecewise((sp.Integer(0), sp.Eq(rows, 1)), (relayout * op.cost.weight_bytes, True))


def _unit_scale(op: Op, model: TimeModel) -> sp.Expr:
    return 1 / attention_efficiency if model.attention and op.unit == "attention" else 1


def compute_time(op: Op, model: TimeModel = ROOFLINE) -> sp.Expr:
    """FLOPs over the achievable FLOP/s of the kernel's unit [s]."""
    peak = UNIT_PEAK[op.unit] if op.peak is None else op.peak
    time = op.cost.flops / (sy.eta_compute * peak)
    return time * _unit_scale(op, model)


def memory_time(op: Op, cache_hit: sp.Expr = NO_HIT, model: TimeModel = ROOFLINE) -> sp.Expr:
    """Bytes read and written over the achievable HBM bandwidth [s].

    With a ``cache_hit`` fraction h (see :func:`cache_hit_fraction`), a fraction h of the
    traffic moves at ``cache_bandwidth`` and the rest at device-memory bandwidth; under
    ``model.relayout`` a multi-row weight matmul moves :func:`relayout_bytes` more.
    """
    moved = op.cost.bytes + (relayout_bytes(op) if model.relayout else 0)
    if cache_hit == 0:
        time = moved / (sy.eta_memory * sy.hbm_bandwidth)
    else:
        time = moved * (
            (1 - cache_hit) / (sy.eta_memory * sy.hbm_bandwidth) + cache_hit / cache_bandwidth
        )
    return time * _unit_scale(op, model)


def working_set(op_list: Iterable[Op]) -> sp.Expr:
    """Bytes of weights and KV cache one step touches: sum of repeat · (weight + KV bytes)."""
    return sum(
        (op.repeat * (op.cost.weight_bytes + op.cost.kv_bytes) for op in op_list), sp.Integer(0)
    )


def cache_hit_fraction(op_list: Iterable[Op]) -> sp.Expr:
    """Fraction of a step's traffic served from cache: C^k / (C^k + W^k), W its working set."""
    capacity = cache_capacity**CACHE_SHARPNESS
    return capacity / (capacity + working_set(op_list) ** CACHE_SHARPNESS)


def op_time(op: Op, model: TimeModel = ROOFLINE, cache_hit: sp.Expr = NO_HIT) -> sp.Expr:
    """Time of one execution of a kernel on one device [s].

    The pure roofline max(compute, memory) + t_k unless ``model`` switches on calibration
    terms; ``cache_hit`` (used when ``model.cache``) is the step's hit fraction.
    """
    if op.unit == "collective":
        return COLLECTIVE_TIME[op.collective](op.cost.comm_bytes)
    compute = compute_time(op, model)
    memory = memory_time(op, cache_hit if model.cache else NO_HIT, model)
    if not model.overlap:
        return sp.Max(compute, memory) + sy.kernel_overhead
    if compute == 0 or memory == 0:
        return compute + memory + sy.kernel_overhead
    # (c^p + m^p)^(1/p) written as max·(1 + (min/max)^p)^(1/p): no underflow at large p.
    larger, smaller = sp.Max(compute, memory), sp.Min(compute, memory)
    return larger * (1 + (smaller / larger) ** overlap) ** (1 / overlap) + sy.kernel_overhead


def step_time(op_list: Iterable[Op], model: TimeModel = ROOFLINE) -> sp.Expr:
    """Per-kernel time of one forward step: sum of repeat · op_time [s].

    Under the default ``model`` this is the pure per-kernel roofline.
    """
    op_list = list(op_list)
    hit = cache_hit_fraction(op_list) if model.cache else NO_HIT
    return sum((op.repeat * op_time(op, model, hit) for op in op_list), sp.Integer(0))


def totals(op_list: Iterable[Op]):
    """Sum of all kernels' costs, each counted ``repeat`` times."""
    op_list = list(op_list)
    total = op_list[0].total
    for op in op_list[1:]:
        total = total + op.total
    return total


def whole_model_time(op_list: Iterable[Op]) -> sp.Expr:
    """The seed's form: max(total FLOPs / matmul peak, total bytes / bandwidth) + comm [s]."""
    op_list = list(op_list)
    compute = [op for op in op_list if op.unit != "collective"]
    total = totals(compute)
    comm = sum(
        (op.repeat * op_time(op) for op in op_list if op.unit == "collective"), sp.Integer(0)
    )
    return (
        sp.Max(
            total.flops / (sy.eta_compute * sy.peak_matmul),
            total.bytes / (sy.eta_memory * sy.hbm_bandwidth),
        )
        + comm
    )


def intensity(op: Op) -> sp.Expr:
    """Arithmetic intensity: FLOPs per byte of device-memory traffic [FLOP/byte]."""
    return op.cost.flops / op.cost.bytes


def ridge_point(peak_flops, bandwidth):
    """Intensity at which compute time equals memory time: peak / bandwidth [FLOP/byte]."""
    return sp.nsimplify(peak_flops) / sp.nsimplify(bandwidth)


def regime(
    op: Op,
    values: Mapping[sp.Symbol, object],
    cache_hit: sp.Expr = NO_HIT,
    model: TimeModel = ROOFLINE,
) -> Regime:
    """Which ceiling binds a kernel at the given numeric substitution."""
    if op.unit == "collective":
        return "communication"
    exact_values = {k: sp.sympify(v) for k, v in values.items()}
    compute = compute_time(op, model).xreplace(exact_values)
    memory = memory_time(op, cache_hit, model).xreplace(exact_values)
    return "compute-bound" if bool(compute > memory) else "memory-bound"


# --------------------------------------------------------------------------- the seed's model


def seed_decode_flops() -> sp.Expr:
    """Weights-only decode FLOPs per step: one multiply-add per parameter per token, 2·N_p·B."""
    return 2 * n_params * sy.B


def seed_decode_bytes() -> sp.Expr:
    """Weights-only decode bytes per step: every weight read once, N_p·b_w [bytes]."""
    return n_params * sy.b_w


def seed_decode_time() -> sp.Expr:
    """The seed post's decode latency: max(2·N_p·B / peak, N_p·b_w / bandwidth) [s]."""
    return sp.Max(
        seed_decode_flops() / (sy.eta_compute * sy.peak_matmul),
        seed_decode_bytes() / (sy.eta_memory * sy.hbm_bandwidth),
    )


def seed_ridge_batch() -> sp.Expr:
    """Batch at which weights-only decode turns compute-bound: solve 2·N_p·B/P = N_p·b_w/W."""
    (solution,) = sp.solve(
        sp.Eq(seed_decode_flops() / sy.peak_matmul, seed_decode_bytes() / sy.hbm_bandwidth), sy.B
    )
    return solution


# Kernels whose work is attention over a context, and those run once per sampled position.
ATTENTION_ROLES = frozenset({"attention", "attention_scores", "softmax", "attention_values"})
HEAD_KERNELS = frozenset({"lm_head", "logits_all_gather"})


def step_parts(
    decode_ops: Iterable[Op], prefill_ops: Iterable[Op], model: TimeModel = ROOFLINE
) -> StepParts:
    """The per-kernel step time split by what each kernel's work scales with (see
    :class:`costmodel.model.serving.StepParts`), under ``model``; phase rules not applied."""
    decode_ops, prefill_ops = list(decode_ops), list(prefill_ops)

    def attention(op: Op) -> bool:
        return op.role in ATTENTION_ROLES

    def head(op: Op) -> bool:
        return op.name in HEAD_KERNELS

    return StepParts(
        tokens=step_time([op for op in decode_ops if not attention(op) and not head(op)], model),
        decode_attention=step_time([op for op in decode_ops if attention(op)], model),
        prefill_attention=step_time([op for op in prefill_ops if attention(op)], model),
        head=step_time([op for op in decode_ops if head(op)], model),
    )
