"""Why: what stops each combination's batch, why it lost to the chosen one, and, when nothing
is feasible, the closest configuration and the smallest change that would fit."""

from __future__ import annotations

from typing import Any

from costmodel.config.specs import Scenario
from costmodel.model import kernels
from costmodel.model.dtypes import KV_DTYPES, WEIGHT_DTYPES, bytes_per_element
from costmodel.search.optimise import ComboResult, Optimum
from costmodel.search.problem import (
    CONSTRAINT_LABEL,
    CONSTRAINTS,
    OBJECTIVES,
    Combo,
    Point,
    ScenarioValues,
    combos,
    evaluate_points,
    point_record,
    scenario_values,
)

_CONSTRAINT = {c.name: c for c in CONSTRAINTS}
_DISPLAY = {"tpot": (1e3, "ms"), "ttft": (1e3, "ms"), "memory": (1e-9, "GB")}  # scale, unit


def violation(point: Point, limits: ScenarioValues) -> float:
    """The worst ratio of value to limit over the constraints (<= 1 when feasible)."""
    return max(getattr(point, c.output) / getattr(limits, c.limit) for c in CONSTRAINTS)


def loss_text(point: Point, best: Point, objective: str) -> str:
    """How much worse ``point``'s objective is than ``best``'s, in words."""
    spec = OBJECTIVES[objective]
    change = (point.objective - best.objective) / best.objective
    word = "lower" if spec.maximise else "higher"
    return (
        f"objective: {point.objective:.4g} vs {best.objective:.4g} {spec.unit} "
        f"({abs(change):.1%} {word})"
    )


def limit_text(result: ComboResult, limits: ScenarioValues) -> str:
    """What stops a combination's batch, in words."""
    if result.limit == "infeasible":
        first = result.first
        parts = []
        for name in first.violated:
            c = _CONSTRAINT[name]
            scale, unit = _DISPLAY[name]
            value = getattr(first, c.output) * scale
            limit = getattr(limits, c.limit) * scale
            parts.append(f"{c.label} ({value:.4g} > {limit:.4g} {unit})")
        return "infeasible even at batch 1: " + ", ".join(parts)
    if result.limit == "objective":
        return "larger batches are feasible but worse"
    if result.limit == "batch_max":
        return "batch at search.batch_max"
    return f"batch capped by {CONSTRAINT_LABEL[result.limit]}"


def _fix(change: str, p: Point, text: str, **extra) -> dict[str, Any]:
    return {
        "change": change,
        "tp": p.combo.tp,
        **extra,
        "weight_dtype": p.combo.weight_dtype,
        "kv_dtype": p.combo.kv_dtype,
        "text": text,
    }


def _formats(scenario: Scenario) -> tuple[str, ...]:
    """The weight formats a fix may suggest: every format, or with an engine those its GEMM
    calibration measured."""
    if scenario.kernels is None:
        return WEIGHT_DTYPES
    fitted = scenario.kernels.fitted_dtypes("gemm")
    return tuple(d for d in WEIGHT_DTYPES if kernels.WEIGHT_GEMM_DTYPE.get(d) in fitted)


def explain_infeasible(scenario: Scenario, optimum: Optimum) -> dict[str, Any]:
    """Why nothing is feasible: the closest configuration and what it breaks, and the smallest
    change that would make batch 1 feasible (more GPUs for a larger tp, or lighter formats).

    Batch 1 is the most favourable batch for every constraint (all grow with the batch).
    """

    limits = scenario_values(scenario)
    firsts = [r.first for r in optimum.combos]
    explanation: dict[str, Any] = {"closest": None, "fixes": []}
    if firsts:
        closest = min(firsts, key=lambda p: violation(p, limits))
        explanation["closest"] = {
            **point_record(closest),
            "violated": [CONSTRAINT_LABEL[c] for c in closest.violated],
            "worst_ratio_to_limit": violation(closest, limits),
        }
    # Beyond the search space: every tp dividing the heads, every format.
    heads = scenario.model.n_heads
    weight_order = list(dict.fromkeys([*scenario.search.weight_dtypes, *_formats(scenario)]))
    kv_order = list(dict.fromkeys([*scenario.search.kv_dtypes, *KV_DTYPES]))
    tps = [t for t in range(1, heads + 1) if heads % t == 0]
    wide = [Combo(t, w, k) for t in tps for w in weight_order for k in kv_order]
    points = evaluate_points(scenario, [(c, 1) for c in wide])
    fits = [p for p in points if p.feasible]
    allowed_w = set(scenario.search.weight_dtypes)
    allowed_k = set(scenario.search.kv_dtypes)
    in_formats = [
        p for p in fits if p.combo.weight_dtype in allowed_w and p.combo.kv_dtype in allowed_k
    ]
    w_rank = {d: i for i, d in enumerate(weight_order)}
    k_rank = {d: i for i, d in enumerate(kv_order)}
    if in_formats:  # the smallest tp, then the least aggressive formats
        p = min(
            in_formats,
            key=lambda p: (p.combo.tp, w_rank[p.combo.weight_dtype], k_rank[p.combo.kv_dtype]),
        )
        text = (
            f"tp {p.combo.tp} ({p.combo.tp} GPUs) with {p.combo.weight_dtype} "
            f"weights and {p.combo.kv_dtype} KV cache would fit at batch 1"
        )
        explanation["fixes"].append(_fix("tp", p, text, gpus_needed=p.combo.tp))
    allowed_tp = {c.tp for c in combos(scenario)}
    in_tp = [p for p in fits if p.combo.tp in allowed_tp]
    if in_tp:  # the least aggressive quantisation (most bytes kept), then the smallest tp
        p = min(
            in_tp,
            key=lambda p: (
                -bytes_per_element(p.combo.weight_dtype),
                -bytes_per_element(p.combo.kv_dtype),
                w_rank[p.combo.weight_dtype],
                k_rank[p.combo.kv_dtype],
                p.combo.tp,
            ),
        )
        text = (
            f"{p.combo.weight_dtype} weights and {p.combo.kv_dtype} KV cache at "
            f"tp {p.combo.tp} would fit at batch 1"
        )
        explanation["fixes"].append(_fix("quantisation", p, text))
    if not fits:
        best = min(points, key=lambda p: violation(p, limits))
        explanation["fixes"].append(
            {
                "change": "none",
                "text": "no tp up to the head count and no format meets every constraint even "
                f"at batch 1; the closest, tp {best.combo.tp} {best.combo.weight_dtype}/"
                f"{best.combo.kv_dtype}, breaks "
                + ", ".join(CONSTRAINT_LABEL[c] for c in best.violated),
            }
        )
    return explanation
