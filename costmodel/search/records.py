"""JSON-ready records of an optimisation: the question, the answer, every combination's outcome,
the verifier's answer, and data for the plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from costmodel.config.specs import Scenario
from costmodel.present.report import efficiency_record, engine_record
from costmodel.search.explain import explain_infeasible, limit_text, loss_text
from costmodel.search.operating import operating_point
from costmodel.search.optimise import ComboResult, Optimum
from costmodel.search.problem import (
    CONSTRAINTS,
    OBJECTIVES,
    Point,
    combo_table,
    combos,
    evaluate,
    point_record,
    problem,
    scenario_values,
    take,
)
from costmodel.search.verifier import BruteForce, agree

METHOD = (
    "SLSQP relaxation in log(batch) with jax.jacfwd gradients, then an exact certificate over "
    "breakpoint and constraint-root neighbours"
)


def combo_record(result: ComboResult, best: Point | None, scenario: Scenario) -> dict[str, Any]:
    """One combination's outcome: its best batch and why it lost (or won)."""
    limit = limit_text(result, scenario_values(scenario))
    record: dict[str, Any] = {
        "tp": result.combo.tp,
        "weight_dtype": result.combo.weight_dtype,
        "kv_dtype": result.combo.kv_dtype,
        "feasible": result.best is not None,
        "limit": result.limit,
        "limit_text": limit,
        "relaxed_batch": result.relaxed.batch if result.relaxed else None,
        "relaxation_exact": result.relaxation_exact,
        "certificate_candidates": result.candidates,
        "best": point_record(result.best) if result.best else None,
    }
    if result.best is None:
        record["lost_because"] = "infeasible"
        record["reason"] = limit
    elif best is not None and result.best == best:
        record["lost_because"] = None
        record["reason"] = "chosen"
    elif best is not None:
        record["lost_because"] = "objective"
        record["reason"] = f"{loss_text(result.best, best, scenario.objective)}; {limit}"
    return record


def scenario_record(scenario: Scenario) -> dict[str, Any]:
    """The question being answered, JSON-ready."""
    return {
        "name": scenario.name,
        "model": scenario.model.name,
        "attention_kind": scenario.model.attention_kind,
        "hardware": scenario.hardware.name,
        "n_gpus": scenario.n_gpus,
        "activation_dtype": scenario.activation_dtype,
        "attention_impl": scenario.attention_impl,
        "prompt_tokens": scenario.workload.prompt_tokens,
        "output_tokens": scenario.workload.output_tokens,
        "slo": {"tpot_ms": scenario.slo.tpot_ms, "ttft_ms": scenario.slo.ttft_ms},
        "search": {
            "tp": list(dict.fromkeys(c.tp for c in combos(scenario))),
            "tp_listed": list(scenario.search.tp),
            "weight_dtypes": list(scenario.search.weight_dtypes),
            "kv_dtypes": list(scenario.search.kv_dtypes),
            "batch_max": scenario.search.batch_max,
        },
        "objective": scenario.objective,
        "gpu_hour_usd": scenario.gpu_hour_usd,
    }


def objective_record(scenario: Scenario) -> dict[str, Any]:
    """The objective's name, direction and unit."""
    spec = OBJECTIVES[scenario.objective]
    return {"name": scenario.objective, "maximise": spec.maximise, "unit": spec.unit}


def constraints_record(scenario: Scenario) -> dict[str, Any]:
    """The limits (ms, bytes) and the context at which TPOT is taken [tokens]."""
    limits = scenario_values(scenario)
    return {
        "tpot_ms_max": limits.tpot_max_s * 1e3,
        "ttft_ms_max": limits.ttft_max_s * 1e3,
        "memory_bytes_per_gpu_max": limits.memory_max_bytes,
        "tpot_context_tokens": scenario.workload.prompt_tokens + scenario.workload.output_tokens,
    }


def best_record(scenario: Scenario, point: Point) -> dict[str, Any]:
    """The chosen configuration with everything the report prints about it."""
    record = point_record(point)
    replicas = scenario.n_gpus // point.combo.tp
    operating = operating_point(scenario, point)
    record |= {
        "replicas": replicas,
        "gpus_used": replicas * point.combo.tp,
        "throughput_tok_s_per_replica": point.throughput_per_gpu * point.combo.tp,
        "throughput_tok_s_total": point.throughput_per_gpu * point.combo.tp * replicas,
        "regime": operating.regime,
        "ridge_batch": operating.ridge_batch,
        "decode_compute_s": operating.compute_s,
        "decode_memory_s": operating.memory_s,
    }
    return record


def optimisation_report(
    scenario: Scenario, optimum: Optimum, brute: BruteForce | None
) -> dict[str, Any]:
    """Everything ``experiments.optimise`` prints and writes, as JSON-ready data."""
    maximise = OBJECTIVES[scenario.objective].maximise
    best = optimum.best
    feasible = sorted(
        (r for r in optimum.combos if r.best is not None),
        key=lambda r: -r.best.objective if maximise else r.best.objective,
    )
    infeasible = [r for r in optimum.combos if r.best is None]
    report: dict[str, Any] = {
        "scenario": scenario_record(scenario),
        "objective": objective_record(scenario),
        "constraints": constraints_record(scenario),
        "best": best_record(scenario, best) if best else None,
        "combinations": [combo_record(r, best, scenario) for r in feasible + infeasible],
        "optimiser": {
            "method": METHOD,
            "combinations": len(optimum.combos),
            "relaxations_solved": sum(r.relaxed is not None for r in optimum.combos),
            "relaxations_exact": sum(r.relaxation_exact for r in optimum.combos),
            "relaxation_evaluations": sum(
                r.relaxed.evaluations for r in optimum.combos if r.relaxed
            ),
            "certificate_candidates": sum(r.candidates for r in optimum.combos),
            "evaluations": optimum.evaluations,
        },
        "optimiser_seconds": optimum.seconds,
        "explanation": None if best else explain_infeasible(scenario, optimum),
    }
    report["runners_up"] = [c for c in report["combinations"] if c["lost_because"] is not None]
    if brute is not None:
        report["brute_force"] = {
            "best": point_record(brute.best) if brute.best else None,
            "evaluated": brute.evaluated,
            "feasible": brute.feasible,
            "agrees": agree(best, brute.best),
        }
        report["brute_force_seconds"] = brute.seconds
    return report


def batch_curves(scenario: Scenario, max_points: int = 1024) -> list[dict[str, Any]]:
    """Per combination, outputs against batch (every batch, or a geometric sample of about
    ``max_points``) and the feasibility of each constraint: data for the plots."""
    batch_max = scenario.search.batch_max
    if batch_max <= max_points:
        batches = np.arange(1, batch_max + 1, dtype=np.float64)
    else:
        batches = np.unique(np.round(np.geomspace(1, batch_max, max_points)))
    combo_list = combos(scenario)
    if not combo_list:
        return []
    n = len(batches)
    table = combo_table(scenario, combo_list)
    owner = np.repeat(np.arange(len(combo_list)), n)
    out = evaluate(
        problem(scenario),
        np.tile(batches, len(combo_list)),
        take(table, owner),
        scenario_values(scenario),
    )
    curves = []
    for i, combo in enumerate(combo_list):
        part = {k: v[i * n : (i + 1) * n] for k, v in out.items()}
        curves.append(
            {
                "tp": combo.tp,
                "weight_dtype": combo.weight_dtype,
                "kv_dtype": combo.kv_dtype,
                "batch": batches,
                **{k: part[k] for k in ("throughput_per_gpu", "tpot_s", "ttft_s", "memory")},
                **{f"{c.name}_ok": part[f"{c.name}_slack"] <= 0 for c in CONSTRAINTS},
            }
        )
    return curves


def pareto_front(tpot: np.ndarray, throughput: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both lower TPOT and higher throughput,
    ordered by TPOT."""
    order = np.lexsort((-throughput, tpot))
    front = []
    best = -np.inf
    for i in order:
        if throughput[i] > best:
            front.append(i)
            best = throughput[i]
    return np.asarray(front, dtype=int)


def question_record(scenario: Scenario) -> dict[str, Any]:
    """The parts of the report known before any computation (for the header)."""
    return {
        "scenario": scenario_record(scenario),
        "objective": objective_record(scenario),
        "constraints": constraints_record(scenario),
        "calibrated": bool(scenario.hardware.efficiency.calibrated),
        "efficiency": efficiency_record(scenario.hardware.efficiency),
        "engine": engine_record(scenario),
    }


def pareto_data(curves: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Feasible points (TPOT [ms], throughput, tp) and the points that fit in memory and meet
    the TPOT SLO but break the TTFT SLO, over every combination's batch curve."""
    ok = [c["memory_ok"] & c["tpot_ok"] & c["ttft_ok"] for c in curves]
    ttft_broken = [c["memory_ok"] & c["tpot_ok"] & ~c["ttft_ok"] for c in curves]

    def gather(key: str, masks, scale: float = 1.0) -> np.ndarray:
        parts = [c[key][m] * scale for c, m in zip(curves, masks, strict=True)]
        return np.concatenate(parts) if parts else np.empty(0)

    return {
        "tpot_ms": gather("tpot_s", ok, 1e3),
        "throughput": gather("throughput_per_gpu", ok),
        "tp": np.concatenate(
            [np.full(int(m.sum()), c["tp"]) for c, m in zip(curves, ok, strict=True)]
        )
        if curves
        else np.empty(0),
        "broken_tpot_ms": gather("tpot_s", ttft_broken, 1e3),
        "broken_throughput": gather("throughput_per_gpu", ttft_broken),
    }
