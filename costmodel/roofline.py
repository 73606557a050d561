"""The roofline: time per kernel, arithmetic intensity, ridge point, regime.

Time of a kernel = max(FLOPs / (eta_c · peak of its unit), bytes / (eta_m · HBM bandwidth))
+ a fixed per-kernel overhead t_k; a collective's time is its ring algorithm's
(:mod:`costmodel.parallel`).  A step's time is the sum over kernels.  The whole-model form of the
roofline post in ``shared/seed`` is also available: max(total FLOPs / peak, total bytes /
bandwidth) plus communication.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import sympy as sp

from costmodel import symbols as sy
from costmodel.ops import Op
from costmodel.parallel import COLLECTIVE_TIME

Regime = Literal["memory-bound", "compute-bound", "communication"]

UNIT_PEAK = {
    "matmul": sy.peak_matmul,
    "attention": sy.peak_attention,
    "vector": sy.peak_vector,
    "memory": sy.peak_vector,
}

# Symbols of the seed post's weights-only decode model.
n_params = sp.Symbol("N_p", positive=True)  # parameter count [parameters]


def compute_time(op: Op) -> sp.Expr:
    """FLOPs over the achievable FLOP/s of the kernel's unit [s]."""
    return op.cost.flops / (sy.eta_compute * UNIT_PEAK[op.unit])


def memory_time(op: Op) -> sp.Expr:
    """Bytes read and written over the achievable HBM bandwidth [s]."""
    return op.cost.bytes / (sy.eta_memory * sy.hbm_bandwidth)


def op_time(op: Op) -> sp.Expr:
    """Time of one execution of a kernel on one device [s]."""
    if op.unit == "collective":
        return COLLECTIVE_TIME[op.collective](op.cost.comm_bytes)
    return sp.Max(compute_time(op), memory_time(op)) + sy.kernel_overhead


def step_time(op_list: Iterable[Op]) -> sp.Expr:
    """Per-kernel roofline time of one forward step: sum of repeat · op_time [s]."""
    return sum((op.repeat * op_time(op) for op in op_list), sp.Integer(0))


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


def regime(op: Op, values: Mapping[sp.Symbol, object]) -> Regime:
    """Which ceiling binds a kernel at the given numeric substitution."""
    if op.unit == "collective":
        return "communication"
    exact_values = {k: sp.sympify(v) for k, v in values.items()}
    compute = compute_time(op).xreplace(exact_values)
    memory = memory_time(op).xreplace(exact_values)
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
