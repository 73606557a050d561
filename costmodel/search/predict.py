"""Serving predictions: many (binding, serving point) questions answered in few compiled calls.

Questions whose step time has the same structure (engine or time model, attention kind, tied
embeddings, attention implementation) share one compilation
(:func:`costmodel.compile.serving.compile_serving`): every model, hardware and engine value is
an argument, so a thousand rows over several models and GPUs cost a handful of compilations
and one jitted call per structure and loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import sympy as sp

from costmodel.compile import serving as compiled
from costmodel.config.bind import Binding, ServingPoint
from costmodel.model import serving


class Question(NamedTuple):
    """One serving question: a scenario bound at a setting, and how the replica is driven."""

    binding: Binding
    point: ServingPoint


def time_model_name(binding: Binding) -> str:
    """Which step-time model answers: the engine's calibration or the pure roofline."""
    if binding.engine is not None:
        return f"engine calibration ({binding.engine} on {binding.scenario.hardware.name})"
    return "calibrated roofline" if any(binding.time_model) else "pure roofline"


def structure_key(binding: Binding) -> tuple:
    """What a question's compiled step time depends on (values aside)."""
    scenario = binding.scenario
    return (
        binding.engine,
        binding.time_model,
        scenario.model.architecture,
        binding.setting.attention_dp,
        scenario.attention_impl,
        scenario.mla_absorb,
    )


_COMPILED: dict[tuple, compiled.ServingFunctions] = {}


def functions(binding: Binding) -> compiled.ServingFunctions:
    """The compiled serving model of ``binding``'s structure (built once per process)."""
    key = structure_key(binding)
    if key not in _COMPILED:
        _COMPILED[key] = compiled.compile_serving(binding.symbolic_mixed_step_time())
    return _COMPILED[key]


def capacity(binding: Binding, point: ServingPoint) -> tuple[int, int]:
    """KV-cache tokens of the replica and the requests whose whole KV fits at once."""
    profile = binding.profile()
    budget = point.token_budget or profile.token_budget
    block = point.block_tokens or profile.block_tokens
    request = point.isl + point.osl
    key = (binding.scenario.model, binding.scenario.hardware, binding.setting, budget, request)
    if key not in _KV:
        _KV[key] = int(binding.kv_capacity_tokens(budget, request))
    tokens = _KV[key]
    found = (tokens, point.isl + point.osl, block)
    if found not in _FITS:
        _FITS[found] = int(serving.fitting_requests(sp.Integer(max(tokens, 0)), *found[1:]))
    return tokens, _FITS[found]


_KV: dict[tuple, int] = {}
_FITS: dict[tuple, int] = {}


def _group(questions: Sequence[Question], loop: compiled.Loop) -> dict[str, np.ndarray]:
    """Solve questions of one structure and one loop together."""
    closed = loop[0]
    first = questions[0].binding
    fns = functions(first)
    by_binding: dict[int, list[float]] = {}
    for q in questions:
        if id(q.binding) not in by_binding:
            by_binding[id(q.binding)] = [float(q.binding.values[s]) for s in fns.values]
    table = np.array([by_binding[id(q.binding)] for q in questions], dtype=np.float64)
    values = [table[:, i] for i in range(len(fns.values))]
    workload = [q.binding.serving_values(q.point) for q in questions]
    work = {s: [float(r[s]) for r in workload] for s in compiled.WORKLOAD}
    arrival = np.array(
        [q.point.concurrency if closed else q.point.request_rate for q in questions], float
    )
    found: dict[tuple, tuple[int, int]] = {}  # by binding and request: hashing specs is slow
    rows = []
    for q in questions:
        p = q.point
        key = (id(q.binding), p.isl + p.osl, p.token_budget, p.block_tokens)
        if key not in found:
            found[key] = capacity(q.binding, p)
        rows.append(found[key])
    kv_tokens, limits = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    # Rows padded (with copies of the first) to a power of two: few shapes, few compilations.
    n = len(questions)
    size = max(MIN_BUCKET, 1 << (n - 1).bit_length())

    def padded(column):
        column = np.asarray(column, dtype=np.float64)
        return jnp.asarray(np.concatenate([column, np.repeat(column[:1], size - n)]))

    out = compiled.solver(fns, loop)(
        {s: padded(c) for s, c in work.items()},
        padded(arrival),
        padded(limits),
        [padded(v) for v in values],
    )
    result = {k: np.asarray(v)[:n] for k, v in out.items()}
    return result | {"kv_tokens": kv_tokens, "fits": limits}


MIN_BUCKET = 32  # fewest rows one compiled call takes


def predict(questions: Sequence[Question]) -> list[dict[str, Any]]:
    """Answer every question: TTFT and TPOT [ms], request latency [s], output throughput in
    total and per GPU [tokens/s], request throughput [requests/s], the replica's KV capacity
    [tokens] and the requests that fit in it, the steady state's decode batch and prefill
    load, and the time model that answered.  An unstable open loop (a rate the replica cannot
    carry) and a request that fits no KV cache give infinite times (``stable`` false)."""
    answers: list[dict[str, Any] | None] = [None] * len(questions)
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(questions):
        loop = (q.point.closed, q.point.disaggregated)
        groups.setdefault((structure_key(q.binding), loop), []).append(i)
    for (_, loop), members in groups.items():
        out = _group([questions[i] for i in members], loop)
        for j, i in enumerate(members):
            answers[i] = _answer(questions[i], {k: v[j] for k, v in out.items()})
    return answers  # type: ignore[return-value]


def _answer(question: Question, out: dict[str, np.ndarray]) -> dict[str, Any]:
    binding, point = question
    tokens, fits = int(out["kv_tokens"]), int(out["fits"])
    ttft, tpot = float(out["ttft_s"]), float(out["tpot_s"])
    rate = float(out["throughput_rps"])
    gpus = binding.setting.tp * point.replicas
    return {
        "ttft_ms": ttft * 1e3,
        "tpot_ms": tpot * 1e3,
        "request_latency_s": ttft + (point.osl - 1) * tpot,
        "output_tok_s": rate * point.osl,
        "output_tok_s_per_gpu": rate * point.osl / gpus,
        "request_throughput_rps": rate,
        "kv_capacity_tokens": max(tokens, 0),
        "max_concurrency_fits": fits,
        "decode_batch": float(out["decode_batch"]),
        "prefill_load": float(out["load"]),
        "gpus": gpus,
        "stable": bool(out["stable"]),
        "time_model": time_model_name(binding),
    }
