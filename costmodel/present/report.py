"""Numbers for one scenario: the roofline report behind ``experiments.roofline``.

Library code: builds plain dicts and lists (JSON-ready), never prints.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from costmodel.config.bind import Setting, phase_workload, scenario_ops, substitution
from costmodel.config.specs import Scenario
from costmodel.model import symbols as sy
from costmodel.model.memory import memory_per_gpu
from costmodel.model.ops import Op
from costmodel.model.roofline import (
    NO_HIT,
    ROOFLINE,
    TimeModel,
    cache_hit_fraction,
    n_params,
    op_time,
    regime,
    seed_decode_bytes,
    seed_decode_flops,
    seed_decode_time,
    step_time,
    totals,
    whole_model_time,
)

SEED_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _num(expr, values) -> float:
    """Evaluate ``expr`` exactly at ``values`` (symbol -> number), then round to float."""
    exact_values = {k: sp.sympify(v) for k, v in values.items()}
    return float(sp.sympify(expr).xreplace(exact_values))


def op_records(
    op_list: list[Op], values: dict, model: TimeModel = ROOFLINE
) -> list[dict[str, Any]]:
    """Per-kernel numbers at a full substitution: one execution's costs, its time, its regime.

    ``model`` switches on the calibration terms of a calibrated hardware spec.
    """
    hit = cache_hit_fraction(op_list) if model.cache else NO_HIT
    records = []
    for op in op_list:
        cost = op.cost
        flops = _num(cost.flops, values)
        moved = _num(cost.bytes, values)
        time = _num(op_time(op, model, hit), values)
        repeat = int(_num(op.repeat, values))
        records.append(
            {
                "name": op.name,
                "unit": op.unit,
                "repeat": repeat,
                "flops": flops,
                "bytes_read": _num(cost.bytes_read, values),
                "bytes_written": _num(cost.bytes_written, values),
                "transcendentals": _num(cost.transcendentals, values),
                "comm_bytes": _num(cost.comm_bytes, values),
                "intensity_flop_per_byte": flops / moved if moved else None,
                "regime": regime(op, values, hit, model),
                "time_s": time,
                "total_time_s": time * repeat,
            }
        )
    return records


def _table_row(batch: int, flops: float, moved: float, latency: float, peak: float, ridge: float):
    return {
        "batch": batch,
        "intensity_flop_per_byte": flops / moved,
        "regime": "compute-bound" if flops / moved > ridge else "memory-bound",
        "latency_ms": latency * 1e3,
        "throughput_tok_s": batch / latency,
        "utilisation": flops / (latency * peak),
    }


def seed_decode_table(scenario: Scenario, batches=SEED_BATCHES) -> list[dict[str, Any]]:
    """The seed post's decode table: weights only, 2 bytes/parameter, nominal size, bf16 peak."""
    hardware = scenario.hardware
    params = scenario.model.nominal_params
    if params is None:
        raise ValueError(f"model {scenario.model.name} has no nominal_params")
    peak = hardware.peak_flops("bf16")
    values = {
        n_params: sp.Rational(repr(params)),
        sy.b_w: 2,
        sy.peak_matmul: peak,
        sy.hbm_bandwidth: hardware.hbm_bandwidth,
        sy.eta_compute: 1,
        sy.eta_memory: 1,
    }
    ridge = float(hardware.ridge_point("bf16"))
    rows = []
    for batch in batches:
        point = values | {sy.B: batch}
        rows.append(
            _table_row(
                batch,
                _num(seed_decode_flops(), point),
                _num(seed_decode_bytes(), point),
                _num(seed_decode_time(), point),
                float(peak),
                ridge,
            )
        )
    return rows


def decode_table(
    scenario: Scenario, setting: Setting, context: int, batches=SEED_BATCHES
) -> list[dict[str, Any]]:
    """The seed's table from the full per-kernel model: every kernel, KV cache at ``context``."""
    op_list = scenario_ops(scenario, "decode")
    total = totals(op_list)
    latency = step_time(op_list, scenario.hardware.time_model())
    base = substitution(scenario, setting, calibrated=True)
    peak = float(base[sy.peak_matmul])
    ridge = peak / float(base[sy.hbm_bandwidth])
    rows = []
    for batch in batches:
        values = base | phase_workload("decode", batch, 1, context)
        rows.append(
            _table_row(
                batch,
                _num(total.flops, values),
                _num(total.bytes, values),
                _num(latency, values),
                peak,
                ridge,
            )
        )
    return rows


def phase_summary(op_list: list[Op], values: dict, model: TimeModel = ROOFLINE) -> dict[str, float]:
    """Whole-step totals of a phase: FLOPs, bytes, per-kernel and whole-model times."""
    total = totals(op_list)
    return {
        "flops": _num(total.flops, values),
        "bytes": _num(total.bytes, values),
        "comm_bytes": _num(total.comm_bytes, values),
        "time_s": _num(step_time(op_list, model), values),
        "time_whole_model_max_s": _num(whole_model_time(op_list), values),
    }


def efficiency_record(efficiency) -> dict[str, Any]:
    """The spec's efficiency values and the calibration terms they switch on."""
    return efficiency.model_dump() | {"terms": efficiency.time_model()._asdict()}


def roofline_report(
    scenario: Scenario,
    *,
    batch: int = 1,
    context: int | None = None,
    setting: Setting = Setting(),
) -> dict[str, Any]:
    """Everything the roofline report shows, as JSON-ready data."""
    context = context or scenario.workload.default_context
    prompt = scenario.workload.prompt_tokens
    base = substitution(scenario, setting, calibrated=True)
    hardware = scenario.hardware
    model = hardware.time_model()
    phases = {}
    for phase in ("prefill", "decode"):
        op_list = scenario_ops(scenario, phase)
        values = base | phase_workload(phase, batch, prompt, context)
        phases[phase] = (op_list, values)
    memory = memory_per_gpu(scenario.model.attention_kind, scenario.model.tie_word_embeddings, sy.T)
    memory_values = base | {sy.B: batch, sy.S: prompt, sy.T: context}
    return {
        "scenario": scenario.name,
        "model": scenario.model.name,
        "hardware": hardware.name,
        "attention_kind": scenario.model.attention_kind,
        "attention_impl": scenario.attention_impl,
        "setting": {
            "tp": setting.tp,
            "weight_dtype": setting.weight_dtype,
            "kv_dtype": setting.kv_dtype,
            "activation_dtype": scenario.activation_dtype,
        },
        "calibrated": bool(hardware.efficiency.calibrated),
        "efficiency": efficiency_record(hardware.efficiency),
        "batch": batch,
        "prompt_tokens": prompt,
        "context": context,
        "ridge_point_flop_per_byte": float(hardware.ridge_point("bf16")),
        "hbm_bandwidth_bytes_s": float(hardware.hbm_bandwidth),
        "peak_flops": {
            dtype: float(hardware.peak_flops(dtype))
            for dtype in ("fp8", "bf16", "fp32")
            if getattr(hardware.peak_tflops, dtype) is not None
        },
        "ridge_points_flop_per_byte": {
            dtype: float(hardware.ridge_point(dtype))
            for dtype in ("bf16", "fp8", "int8", "fp32")
            if getattr(hardware.peak_tflops, dtype) is not None
        },
        "kv_cache_bytes": _num(memory.kv_cache, memory_values),
        "memory_bytes_per_gpu": {
            "weights": _num(memory.weights, memory_values),
            "kv_cache": _num(memory.kv_cache, memory_values),
            "workspace": _num(memory.workspace, memory_values),
            "usable": float(hardware.usable_memory),
        },
        "decode_table_weights_only": seed_decode_table(scenario),
        "decode_table": decode_table(scenario, setting, context),
        "summary": {phase: phase_summary(*phases[phase], model) for phase in phases},
        "ops": {phase: op_records(*phases[phase], model) for phase in phases},
    }
