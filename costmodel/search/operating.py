"""The chosen configuration's decode operating point: compute against memory time under the
hardware's time model, the batch where they cross, and which dominates."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import sympy as sp

from costmodel.config.bind import bind
from costmodel.config.specs import Scenario
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.roofline import NO_HIT, cache_hit_fraction, compute_time, memory_time
from costmodel.search.problem import Point

RIDGE_SEARCH_MAX = 2.0**40  # largest batch searched for a non-linear ridge [sequences]
RIDGE_SCAN_POINTS = 400  # geometric scan points before bisection
RIDGE_BISECTIONS = 200  # bisection steps (float64 converges well before)


class OperatingPoint(NamedTuple):
    """Facts of a decode step: summed compute and memory times of its kernels [s], the batch at
    which they are equal (None if they never cross at a positive batch), which dominates."""

    compute_s: float
    memory_s: float
    ridge_batch: float | None
    regime: str


def decode_times(scenario: Scenario, point: Point) -> tuple[sp.Expr, sp.Expr]:
    """Summed compute and memory time [s] of the non-communication kernels of a decode step at
    full context (prompt + output tokens), as functions of the batch B, under the hardware
    spec's time model (its efficiencies, cache, relayout and attention terms)."""
    binding = bind(scenario, point.combo.setting)
    model = binding.time_model
    ops = binding.ops("decode")
    hit = cache_hit_fraction(ops) if model.cache else NO_HIT
    kernels = [op for op in ops if op.unit != "collective"]
    compute = sum((op.repeat * compute_time(op, model) for op in kernels), sp.Integer(0))
    memory = sum((op.repeat * memory_time(op, hit, model) for op in kernels), sp.Integer(0))
    context = scenario.workload.prompt_tokens + scenario.workload.output_tokens
    workload = phases.workload(
        "decode", batch=sy.B, prompt=scenario.workload.prompt_tokens, context=context
    )
    values = binding.values | workload
    return compute.xreplace(values), memory.xreplace(values)


def _numeric_root(difference: sp.Expr) -> float | None:
    """First positive batch where ``difference`` (a function of B) changes sign, or None."""
    f = sp.lambdify(sy.B, difference, modules="numpy")
    grid = np.geomspace(1e-3, RIDGE_SEARCH_MAX, RIDGE_SCAN_POINTS)
    with np.errstate(all="ignore"):
        values = np.asarray(f(grid), dtype=float) * np.ones_like(grid)
    sign = np.sign(values)
    change = np.flatnonzero(sign[:-1] * sign[1:] < 0)
    if not change.size:
        return None
    lo, hi = grid[change[0]], grid[change[0] + 1]
    f_lo = np.sign(float(f(lo)))
    for _ in range(RIDGE_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if np.sign(float(f(mid))) == f_lo:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return float(0.5 * (lo + hi))


def ridge_batch(compute: sp.Expr, memory: sp.Expr) -> float | None:
    """The batch where ``compute`` equals ``memory`` time: exact when their difference is
    linear in B (the pure roofline), else found numerically.  None if none is positive."""
    difference = sp.expand(compute - memory)
    if difference.is_polynomial(sy.B) and sp.degree(difference, sy.B) <= 1:
        slope = sp.diff(difference, sy.B)
        if slope == 0:
            return None
        root = -difference.xreplace({sy.B: sp.Integer(0)}) / slope
        return float(root) if root > 0 else None
    return _numeric_root(difference)


def operating_point(scenario: Scenario, point: Point) -> OperatingPoint:
    """Decode regime at ``point`` and the ridge batch of its combination, under the hardware's
    time model (the one the optimiser's step times use)."""
    compute, memory = decode_times(scenario, point)
    at = {sy.B: sp.Integer(point.batch)}
    c, m = float(compute.xreplace(at)), float(memory.xreplace(at))
    return OperatingPoint(
        c, m, ridge_batch(compute, memory), "compute-bound" if c > m else "memory-bound"
    )


class DecodeStep(NamedTuple):
    """A decode step kernel by kernel (:func:`costmodel.present.report.op_records`, under the
    hardware's time model) and its totals: FLOPs, bytes moved and time [s]."""

    records: list[dict]
    flops: float
    bytes: float
    time_s: float


def decode_step(scenario: Scenario, point: Point) -> DecodeStep:
    """The decode step of ``point`` at full context under the binding's time model: the data
    of the roofline figure.  Its time is the optimiser's TPOT at ``point``."""
    from costmodel.present.report import op_records

    binding = bind(scenario, point.combo.setting)
    context = scenario.workload.prompt_tokens + scenario.workload.output_tokens
    workload = phases.workload(
        "decode", batch=point.batch, prompt=scenario.workload.prompt_tokens, context=context
    )
    records = op_records(binding.ops("decode"), binding.values | workload, binding.time_model)
    return DecodeStep(
        records,
        sum(r["flops"] * r["repeat"] for r in records),
        sum((r["bytes_read"] + r["bytes_written"]) * r["repeat"] for r in records),
        sum(r["total_time_s"] for r in records),
    )
