"""Numbers for one scenario: the roofline report behind ``experiments.roofline``.

Library code: builds plain dicts and lists (JSON-ready), never prints.  Every number comes from
one :class:`~costmodel.config.bind.Binding` (:func:`~costmodel.config.bind.bind`), so the values
and the time model (calibration terms) always belong together.  Kernels are evaluated at the
full point before their times are built (:func:`bound_ops`): the same exact values as
substituting into the symbolic step time, without building its large ``Max`` expressions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sympy as sp

from costmodel.config.bind import Binding, Setting, bind
from costmodel.config.specs import Scenario
from costmodel.model import phase as phase_rule
from costmodel.model import symbols as sy
from costmodel.model.layers import model_parameters
from costmodel.model.ops import Cost, Op
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
SEED_BYTES_PER_PARAM = 2  # the seed post's weights-only table: bf16 weights


def _exact(values: dict) -> dict:
    return {k: sp.sympify(v) for k, v in values.items()}


def _num(expr, values) -> float:
    """Evaluate ``expr`` exactly at ``values`` (symbol -> number), then round to float."""
    return float(sp.sympify(expr).xreplace(_exact(values)))


def _float(expr, values) -> float:
    """Evaluate ``expr`` at ``values`` in float64 (Python's math): for the engine model's
    fitted (float) coefficients, where exact substitution buys nothing and costs seconds."""
    expr = sp.sympify(expr)
    symbols = sorted(expr.free_symbols, key=str)
    missing = [s for s in symbols if s not in values]
    if missing:
        raise ValueError(f"no value for {', '.join(map(str, missing))}")
    function = sp.lambdify(symbols, expr, modules="math")
    return float(function(*(float(values[s]) for s in symbols)))


def bound_ops(op_list: list[Op], values: dict) -> list[Op]:
    """The kernels with costs, repeat counts and weight counts evaluated exactly at ``values``
    (symbol -> number); times built from them are numbers once the hardware symbols are
    substituted."""
    exact = _exact(values)

    def at(expr):
        return sp.sympify(expr).xreplace(exact)

    return [
        replace(
            op,
            cost=Cost(*(at(field) for field in op.cost)),
            repeat=at(op.repeat),
            weight_params=at(op.weight_params),
        )
        for op in op_list
    ]


def op_records(
    op_list: list[Op], values: dict, model: TimeModel = ROOFLINE
) -> list[dict[str, Any]]:
    """Per-kernel numbers at a full substitution: one execution's costs, its time [s], its
    regime.  ``model`` must be the time model ``values`` belong to (``Binding.time_model``)."""
    op_list = bound_ops(op_list, values)
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


def weights_only_params(scenario: Scenario) -> tuple[sp.Expr, str]:
    """Parameter count of the seed's weights-only table and where it came from: the model
    spec's ``nominal_params`` ("nominal"), else the exact count of the scenario's kernels at
    tp 1 (:func:`~costmodel.model.layers.parameter_count`, "exact") [parameters]."""
    nominal = scenario.model.nominal_params
    if nominal is not None:
        return sp.Rational(repr(nominal)), "nominal"
    count = model_parameters(scenario.model.architecture, sp.Integer(1))
    count = count.xreplace(_exact(scenario.model.dims() | {sy.tp: 1, sy.ep: 1}))
    return sp.Integer(count), "exact"


def seed_decode_table(scenario: Scenario, batches=SEED_BATCHES) -> list[dict[str, Any]]:
    """The seed post's decode table: weights only, 2 bytes/parameter, bf16 peak, pure roofline;
    the parameter count as :func:`weights_only_params` says."""
    hardware = scenario.hardware
    params, _ = weights_only_params(scenario)
    peak = hardware.peak_flops("bf16")
    values = {
        n_params: params,
        sy.b_w: SEED_BYTES_PER_PARAM,
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


def _binding(scenario: Scenario, setting: Setting | Binding) -> Binding:
    return setting if isinstance(setting, Binding) else bind(scenario, setting)


def decode_table(
    scenario: Scenario, setting: Setting | Binding, context: int, batches=SEED_BATCHES
) -> list[dict[str, Any]]:
    """The seed's table from the full per-kernel model: every kernel, KV cache at ``context``,
    latency from ``Binding.step_time("decode")`` (``setting`` may be a Binding, or a Setting to
    bind)."""
    binding = _binding(scenario, setting)
    total = totals(binding.ops("decode"))
    latency = binding.step_time("decode")
    time_at = _num if binding.engine is None else _float
    peak = float(binding.values[sy.peak_matmul])
    ridge = peak / float(binding.values[sy.hbm_bandwidth])
    rows = []
    for batch in batches:
        values = binding.values | phase_rule.workload(
            "decode", batch=batch, prompt=1, context=context
        )
        rows.append(
            _table_row(
                batch,
                _num(total.flops, values),
                _num(total.bytes, values),
                time_at(latency, values),
                peak,
                ridge,
            )
        )
    return rows


def phase_summary(op_list: list[Op], values: dict, model: TimeModel = ROOFLINE) -> dict[str, float]:
    """Whole-step totals of a phase: FLOPs, bytes [bytes], per-kernel and whole-model times [s].
    ``model`` must be the time model ``values`` belong to (``Binding.time_model``)."""
    op_list = bound_ops(op_list, values)
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


def memory_record(binding: Binding, batch: int, prompt: int, context: int) -> dict[str, Any]:
    """Memory per GPU [bytes]: weights, KV cache of ``batch`` sequences of ``context`` tokens,
    the prefill workspace of ``batch`` x ``prompt`` tokens, their total, the usable memory,
    whether the total fits and the excess over the usable memory (0 when it fits)."""
    workload = {sy.B: batch, sy.S: prompt, sy.T: context}
    parts = binding.memory()
    weights, kv_cache, workspace = (part.xreplace(_exact(workload)) for part in parts)
    total = weights + kv_cache + workspace
    usable = binding.scenario.hardware.usable_memory
    return {
        "weights": float(weights),
        "kv_cache": float(kv_cache),
        "workspace": float(workspace),
        "total": float(total),
        "usable": float(usable),
        "fits": bool(total <= usable),
        "excess": float(sp.Max(total - usable, 0)),
    }


def engine_record(scenario: Scenario) -> dict[str, Any] | None:
    """Which engine calibration times the steps (None: the hardware spec's time model)."""
    calibration = scenario.kernels
    if scenario.engine is None or calibration is None:
        return None
    return {
        "name": scenario.engine,
        "hardware": calibration.hardware,
        "source": calibration.source,
        "heldout_median_abs_rel_err": {
            family: fit.heldout.median for family, fit in calibration.families.items()
        },
    }


def engine_kernel_records(binding: Binding, phase: phase_rule.Phase, values: dict) -> list[dict]:
    """Per engine kernel at a full substitution ``values`` (the binding's and a workload's):
    family, launches per step, shape, FLOPs, one launch's time [s] and the step's total [s]."""
    from costmodel.model import engine as engines

    profile = engines.PROFILES[binding.engine]
    records = []
    for kernel in engines.engine_kernels(profile, phase):
        time = _float(engines.kernel_time(kernel), values)
        count = int(_num(kernel.count, values))
        records.append(
            {
                "name": kernel.name,
                "family": kernel.family,
                "count": count,
                "shape": {str(s): _num(e, values) for s, e in kernel.shape.items()},
                "flops": _num(kernel.flops, values),
                "time_s": time,
                "total_time_s": time * count,
            }
        )
    gather = _float(engines.logits_gather_time(), values)
    records.append(
        {
            "name": "logits_all_gather",
            "family": "ring_model",
            "count": 1,
            "shape": {},
            "flops": 0.0,
            "time_s": gather,
            "total_time_s": gather,
        }
    )
    return records


def report_header(
    scenario: Scenario, setting: Setting, batch: int, context: int | None = None
) -> dict[str, Any]:
    """What the report is about (cheap: no expression is evaluated): scenario, model, hardware,
    attention, setting, calibration, batch, prompt and context [tokens]."""
    hardware = scenario.hardware
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
            "ep": setting.ep,
            "attention_dp": setting.attention_dp,
            "expert_dtype": setting.experts if scenario.model.moe is not None else None,
        },
        "calibrated": bool(hardware.efficiency.calibrated),
        "efficiency": efficiency_record(hardware.efficiency),
        "engine": engine_record(scenario),
        "batch": batch,
        "prompt_tokens": scenario.workload.prompt_tokens,
        "context": context or scenario.workload.default_context,
    }


def roofline_report(
    scenario: Scenario,
    *,
    batch: int = 1,
    context: int | None = None,
    setting: Setting = Setting(),
) -> dict[str, Any]:
    """Everything the roofline report shows, as JSON-ready data (times [s] unless a key says
    ms, sizes [bytes]); values and time model from ``bind(scenario, setting)``."""
    context = context or scenario.workload.default_context
    prompt = scenario.workload.prompt_tokens
    binding = bind(scenario, setting)
    hardware = scenario.hardware
    model = binding.time_model
    phases = {
        phase: (
            binding.ops(phase),
            binding.values
            | phase_rule.workload(phase, batch=batch, prompt=prompt, context=context),
        )
        for phase in ("prefill", "decode")
    }
    memory = memory_record(binding, batch, prompt, context)
    params, params_source = weights_only_params(scenario)
    return (
        report_header(scenario, setting, batch, context)
        | {
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
            "kv_cache_bytes": memory["kv_cache"],
            "memory_bytes_per_gpu": {
                key: memory[key] for key in ("weights", "kv_cache", "workspace", "total", "usable")
            },
            "fits_in_memory": memory["fits"],
            "memory_excess_bytes_per_gpu": memory["excess"],
            "decode_table_weights_only": seed_decode_table(scenario),
            "decode_table_weights_only_params": {
                "params": float(params),
                "source": params_source,
                "bytes_per_param": SEED_BYTES_PER_PARAM,
            },
            "decode_table": decode_table(scenario, binding, context),
            "summary": {phase: phase_summary(*phases[phase], model) for phase in phases},
            "ops": {phase: op_records(*phases[phase], model) for phase in phases},
        }
        | _engine_steps(binding, phases)
    )


def _engine_steps(binding: Binding, phases: dict) -> dict[str, Any]:
    """With an engine: its kernels and step time per phase (``engine_steps``); else nothing."""
    if binding.engine is None:
        return {}
    steps = {}
    for phase, (_, values) in phases.items():
        kernels = engine_kernel_records(binding, phase, values)
        steps[phase] = {"time_s": sum(k["total_time_s"] for k in kernels), "kernels": kernels}
    return {"engine_steps": steps}
