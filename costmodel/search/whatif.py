"""What-if questions on one serving deployment: elasticities and inverse questions.

:func:`sensitivity` gives d log(metric) / d log(parameter) of TTFT, TPOT, output throughput per
GPU and cost per million output tokens with respect to every hardware figure of the spec, the
workload numbers (isl, osl, the concurrency or request rate), every calibrated term, every
model dimension and, under an engine, the engine's step overhead.  The derivatives are exact
(forward-mode JAX through the compiled serving model, :mod:`costmodel.compile.serving`), not
finite differences: the steady state's decoding sequences n_d solve excess(n_d, x) = 0 by
bisection, which has no useful derivative, so the implicit function theorem supplies
dn_d/dx = -(d excess/dx) / (d excess/dn_d) at the solved n_d.  Each parameter is a tangent of
the compiled model's arguments (the binding's values, the workload, the arrival):

* a hardware figure reaches the arguments through the binding
  (:func:`costmodel.config.bind.bind`): the spec is rebound with the figure scaled by
  1 +/- 1e-5 and the arguments' exact (rational) central difference is the tangent; every
  argument is linear in the figures, so that difference is exact up to the figure's decimal
  rounding (about 1e-11 relative).  A figure that changes no argument has elasticity exactly 0;
* calibrated terms (kind "calibration"): under an engine, every fitted coefficient of the
  kernel families the deployment binds (:func:`costmodel.config.bind.engine_values`), named
  ``family[dtype].symbol`` (``gemm[bfloat16].t_gemm_launch``).  A coefficient becomes one or
  more binding values unchanged (the bf16 GEMM's also time the LM head and the elementwise
  launches), found by binding once with every coefficient replaced by a tag of its own
  (:func:`calibrated_symbols`); the tangent is those values.  Under a calibrated roofline (a
  spec whose ``efficiency`` was fitted) the efficiency terms (``efficiency.compute``, ...) are
  differenced exactly like hardware figures;
* model dimensions (kind "model"): hidden size, FFN width, layers, heads, KV heads, head
  dimension, vocabulary and, as the architecture has them, the MoE (experts, top-k, expert
  and shared widths, dense layers), MLA and sliding-window dimensions, by the model spec's
  names (``d_model``, ``moe.top_k``).  They are binding values the compiled model takes as
  arguments, so the tangent is the value itself (and, disaggregated, the KV transfer time's
  exact slope).  Integer dimensions are taken as continuous: this is the elasticity of the
  smooth model.

The KV capacity (an integer: the requests that fit) is piecewise constant, so its derivative
is 0 almost everywhere: memory figures, and the dimensions' effect on memory, come out 0
unless they move the step time.

:func:`solve` finds the least hardware figure (or the largest isl, osl, concurrency or request
rate) at which the deployment meets a constraint such as ``tpot_ms <= 20``, on the full model
(predict's own answers, a deployment with no steady state counting as not met): a geometric
(or integer) grid brackets the change, repeated grids narrow it, and the answer is
re-evaluated with :func:`costmodel.search.predict.predict`.  It also gives the least GPUs per
replica (``tp``: every power of two up to :data:`MAX_TP` dividing the query heads is predicted,
so the least that meets is exact) and the largest GPU-hour price at which the cost per million
output tokens stays within a bound (linear in the price: a closed form, re-evaluated).  Where
two choices cross over a parameter: :mod:`costmodel.search.crossover_search`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from costmodel.compile import serving as compiled
from costmodel.config.bind import Binding, ServingPoint, bind
from costmodel.config.specs import EngineCalibration, HardwareSpec
from costmodel.model import symbols as sy
from costmodel.search.predict import Question, functions, predict

METRICS = ("ttft_ms", "tpot_ms", "output_tok_s_per_gpu", "cost_usd_per_1m_tokens")
FIGURE_STEP = 1e-5  # relative step of the exact central difference of the binding's arguments
SCALAR_FIGURES = (
    "hbm_bandwidth_tb_s",
    "hbm_capacity_gb",
    "link_bandwidth_gb_s",
    "link_latency_us",
    "scale_out_bandwidth_gb_s",
    "scale_out_latency_us",
    "usable_memory_fraction",
)
# The calibrated roofline's fitted terms (costmodel.config.specs.Efficiency), by YAML name.
EFFICIENCY_TERMS = (
    "compute",
    "memory",
    "kernel_overhead_us",
    "overlap",
    "cache_mb",
    "cache_bandwidth_tb_s",
    "weight_relayout",
    "attention",
)
# What each efficiency term is (the reason it moves a metric).
EFFICIENCY_ROLES = {
    "compute": "the calibrated roofline: the fraction of the peak every kernel reaches",
    "memory": "the calibrated roofline: the fraction of HBM bandwidth every kernel reaches",
    "kernel_overhead_us": "the calibrated roofline: every kernel's fixed time",
    "overlap": "the calibrated roofline: how compute and memory time overlap",
    "cache_mb": "the calibrated roofline: the cache that serves a small working set",
    "cache_bandwidth_tb_s": "the calibrated roofline: the cache's bandwidth",
    "weight_relayout": "the calibrated roofline: multi-row weight matmuls' extra traffic",
    "attention": "the calibrated roofline: the attention kernels' share of the rates",
}
WORKLOAD_PARAMETERS = ("isl", "osl", "concurrency", "request_rate")
# A tag no binding value takes (negative and far beyond any count): an engine calibration's
# coefficients are replaced by TAG_BASE - i to find the binding values each one becomes.
TAG_BASE = -(2.0**50)
STEP_OVERHEAD = "step_overhead"
SOLVE_POINTS = 32  # candidate values evaluated per round (one batched prediction)
SOLVE_TOLERANCE = 1e-10  # relative width of the final bracket of a real-valued parameter
SOLVE_SPAN = 1e3  # a hardware figure is searched within [figure / SPAN, figure * SPAN]
MAX_ROUNDS = 40
MAX_TP = 64  # the largest GPUs per replica a GPU-count solve tries
PRICE = "gpu_hour_usd"  # the solvable price: USD per GPU-hour


# --------------------------------------------------------------------------- hardware figures


def hardware_figures(spec: HardwareSpec) -> dict[str, float]:
    """Every figure of ``spec`` a what-if can move, by its YAML name (``peak_tflops.bf16``):
    each peak present, bandwidths, capacity, link latencies, the usable memory fraction."""
    figures = {
        f"peak_tflops.{name}": float(value)
        for name, value in spec.peak_tflops.model_dump().items()
        if value is not None
    }
    for name in SCALAR_FIGURES:
        value = getattr(spec, name)
        if value is not None:
            figures[name] = float(value)
    return figures


def efficiency_terms(spec: HardwareSpec) -> dict[str, float]:
    """The calibrated roofline's fitted terms of ``spec`` (``efficiency.compute``, ...), by
    their YAML names: those above 0, and only where the spec says they were fitted (a pure
    roofline's fractions 1 and overhead 0 are no calibration)."""
    efficiency = spec.efficiency
    if not efficiency.calibrated:
        return {}
    return {
        f"efficiency.{name}": float(value)
        for name in EFFICIENCY_TERMS
        if (value := getattr(efficiency, name)) is not None and value > 0
    }


def with_figure(spec: HardwareSpec, name: str, value: float) -> HardwareSpec:
    """``spec`` with figure ``name`` (as :func:`hardware_figures` or :func:`efficiency_terms`
    names it) set to ``value``."""
    for group in ("peak_tflops", "efficiency"):
        if name.startswith(group + "."):
            part = getattr(spec, group).model_copy(update={name.split(".", 1)[1]: value})
            return spec.model_copy(update={group: part})
    return spec.model_copy(update={name: value})


def rebind(binding: Binding, hardware: HardwareSpec) -> Binding:
    """``binding``'s scenario and setting on ``hardware`` (engine coefficients kept: those
    that use the hardware's peaks and bandwidths take the new ones)."""
    scenario = binding.scenario.model_copy(update={"hardware": hardware})
    return bind(scenario, binding.setting)


# --------------------------------------------------------------------------- calibrated terms


class Coefficient(NamedTuple):
    """One fitted coefficient of an engine calibration: its kernel family, the dtype it was
    fitted at and its symbol's name (SI units, as the calibration stores it)."""

    family: str
    dtype: str
    name: str

    def __str__(self) -> str:
        return f"{self.family}[{self.dtype}].{self.name}"


def with_coefficients(
    calibration: EngineCalibration, change: Callable[[Coefficient, float], float]
) -> EngineCalibration:
    """``calibration`` with every coefficient c replaced by ``change(coefficient, c)``."""
    families = {}
    for family, fit in calibration.families.items():
        dtypes = {
            dtype: dfit.model_copy(
                update={
                    "params": {
                        name: change(Coefficient(family, dtype, name), value)
                        for name, value in dfit.params.items()
                    }
                }
            )
            for dtype, dfit in fit.dtypes.items()
        }
        families[family] = fit.model_copy(update={"dtypes": dtypes})
    return calibration.model_copy(update={"families": families})


def scaled_coefficient(
    calibration: EngineCalibration, coefficient: Coefficient, factor: float
) -> EngineCalibration:
    """``calibration`` with ``coefficient`` multiplied by ``factor`` (the others as they are)."""
    return with_coefficients(calibration, lambda c, v: v * factor if c == coefficient else v)


def rebind_calibration(binding: Binding, calibration: EngineCalibration) -> Binding:
    """``binding``'s scenario and setting under ``calibration`` (its engine's kernels)."""
    scenario = binding.scenario.model_copy(update={"kernels": calibration})
    return bind(scenario, binding.setting)


def calibrated_symbols(binding: Binding) -> dict[Coefficient, tuple[float, list[sp.Symbol]]]:
    """Each coefficient of the binding's engine calibration that becomes a binding value:
    its fitted value and the binding's symbols that take it (the bf16 GEMM's feed the LM head
    and the elementwise launch time too).  Found by binding once with every coefficient
    replaced by a tag of its own (:data:`TAG_BASE`), so it follows
    :func:`costmodel.config.bind.engine_values` whatever it picks.  Empty without an engine."""
    calibration = binding.scenario.kernels
    if binding.engine is None or calibration is None:
        return {}
    order: list[tuple[Coefficient, float]] = []

    def tag(coefficient: Coefficient, value: float) -> float:
        order.append((coefficient, value))
        return TAG_BASE - (len(order) - 1)

    tagged = rebind_calibration(binding, with_coefficients(calibration, tag))
    found: dict[Coefficient, tuple[float, list[sp.Symbol]]] = {}
    for symbol, value in tagged.values.items():
        number = float(value) if sp.sympify(value).is_number else 0.0
        index = round(TAG_BASE - number)
        if number <= TAG_BASE / 2 and 0 <= index < len(order) and TAG_BASE - index == number:
            coefficient, fitted = order[index]
            found.setdefault(coefficient, (fitted, []))[1].append(symbol)
    return dict(sorted(found.items(), key=lambda kv: (kv[0].family, kv[0].dtype, kv[0].name)))


# What each kernel family times (the reason a coefficient moves a metric).
FAMILY_ROLES = {
    "gemm": "the weight matmuls of every layer, prefill and decode",
    "context_attention": "prefill attention (TTFT, and the prefill share of mixed steps)",
    "generation_attention": "decode attention over the KV cache (TPOT)",
    "allreduce": "the tensor-parallel all-reduces of every layer",
    "moe": "the routed experts' grouped matmuls",
    "mla_context": "MLA attention in prefill",
    "mla_generation": "MLA attention in decode",
    "mla_context_module": "the MLA block in prefill",
    "mla_generation_module": "the MLA block in decode",
}


# --------------------------------------------------------------------------- model dimensions

# The model's shape symbols by the model spec's names (costmodel.config.specs.ModelSpec.dims).
DIMENSION_NAMES = {
    sy.L: "n_layers",
    sy.D: "d_model",
    sy.H: "n_heads",
    sy.H_kv: "n_kv_heads",
    sy.d_h: "head_dim",
    sy.F: "ffn_dim",
    sy.V: "vocab_size",
    sy.r_q: "mla.q_lora_rank",
    sy.r_kv: "mla.kv_lora_rank",
    sy.d_rope: "mla.qk_rope_head_dim",
    sy.d_nope: "mla.qk_nope_head_dim",
    sy.d_v: "mla.v_head_dim",
    sy.E: "moe.n_experts",
    sy.k_e: "moe.top_k",
    sy.F_e: "moe.expert_ffn_dim",
    sy.L_dense: "moe.dense_layers",
    sy.F_sh: "moe.shared_ffn_dim",
    sy.W_win: "sliding_window.tokens",
    sy.L_win: "sliding_window.layers",
}
# What each dimension sizes (the reason it moves a metric).
DIMENSION_ROLES = {
    "n_layers": "every per-layer kernel runs once per layer",
    "d_model": "the hidden size: every projection's weights and FLOPs, the activations",
    "n_heads": "query heads: the Q and output projections and attention FLOPs",
    "n_kv_heads": "KV heads: the K and V projections and the KV cache each decode step reads",
    "head_dim": "the head width: projections, attention FLOPs and the KV cache",
    "ffn_dim": "the MLP's width: its weights and FLOPs",
    "vocab_size": "the vocabulary: the LM head's matmul (and the embedding)",
    "moe.n_experts": "routed experts: the expert weights a batch touches",
    "moe.top_k": "experts per token: the routed FLOPs and the experts a batch touches",
    "moe.expert_ffn_dim": "each expert's width: its weights and FLOPs",
    "moe.dense_layers": "the dense layers among the MoE ones",
    "moe.shared_ffn_dim": "the shared expert's width",
    "sliding_window.tokens": "the window the sliding layers attend over",
    "sliding_window.layers": "the layers that attend over a window only",
}


def model_dimensions(binding: Binding) -> dict[sp.Symbol, float]:
    """The model's dimensions as the binding holds them (symbol -> value)."""
    return {s: float(binding.values[s]) for s in DIMENSION_NAMES if s in binding.values}


def with_value(binding: Binding, symbol: sp.Symbol, value) -> Binding:
    """``binding`` with one value replaced (the model as the compiled serving model sees it:
    the KV capacity, an integer count of requests, is what the binding's model spec gives)."""
    return binding._replace(values=binding.values | {symbol: value})


def _transfer_tangent(binding: Binding, point: ServingPoint, symbol: sp.Symbol) -> float:
    """d t_xfer / d log(dimension) of a disaggregated deployment [s]: the KV cache of one
    prompt over the link (:meth:`Binding.kv_transfer_time`), differentiated exactly."""
    if not point.disaggregated:
        return 0.0
    moved = binding.memory_parts(sp.Integer(point.isl)).kv_cache.xreplace({sy.B: 1})
    slope = sp.diff(moved, symbol).xreplace(binding.values) * binding.values[symbol]
    return float(slope / binding.scenario.hardware.link_bandwidth)


# --------------------------------------------------------------------------- sensitivities


class Elasticity(NamedTuple):
    """d log(metric) / d log(parameter) of each metric (None: the metric has no steady state),
    the parameter's value and why the largest one is what it is."""

    parameter: str
    kind: str  # "hardware", "workload", "engine", "calibration" or "model"
    value: float
    elasticities: dict[str, float | None]
    reason: str


class Sensitivity(NamedTuple):
    """The deployment's answers and its elasticities, ranked by the largest |elasticity|."""

    prediction: dict[str, Any]
    cost_usd_per_1m_tokens: float | None
    regime: str | None  # "memory-bound" / "compute-bound" decode (None: no steady state)
    step_shares: dict[str, float]  # the decode step's time by part, at the steady batch
    elasticities: list[Elasticity]
    note: str | None


def cost_per_million(prediction: dict[str, Any], gpu_hour_usd: float) -> float | None:
    """Dollars per million output tokens at ``gpu_hour_usd`` per GPU-hour."""
    rate = prediction["output_tok_s"]
    if not prediction["stable"] or not rate or not math.isfinite(rate):
        return None
    return gpu_hour_usd * prediction["gpus"] / 3600.0 / rate * 1e6


def _flat(binding: Binding, point: ServingPoint) -> tuple[np.ndarray, int]:
    """The compiled model's arguments as one vector (binding values, workload, arrival)."""
    fns = functions(binding)
    values = [float(binding.values[s]) for s in fns.values]
    work = binding.serving_values(point)
    arrival = point.concurrency if point.closed else point.request_rate
    flat = values + [float(work[s]) for s in compiled.WORKLOAD] + [float(arrival)]
    return np.array(flat, dtype=np.float64), len(values)


def _exact_tangent(binding: Binding, point: ServingPoint, name: str, value: float) -> np.ndarray:
    """d(arguments)/d log(figure): the exact central difference of the rebound arguments."""
    fns = functions(binding)
    sides = []
    for sign in (1, -1):
        bound = rebind(
            binding, with_figure(binding.scenario.hardware, name, value * (1 + sign * FIGURE_STEP))
        )
        work = bound.serving_values(point)
        exact = [bound.values[s] for s in fns.values]
        exact += [work[s] for s in compiled.WORKLOAD]
        sides.append([*exact, 0])
    scale = 2 * sp.Rational(repr(FIGURE_STEP))
    # Arguments the figure does not move are equal on both sides: exactly 0.  The others are
    # exact rationals (the spec's decimals), so their difference is exact too.
    return np.array(
        [
            0.0 if a == b else float((sp.sympify(a) - sp.sympify(b)) / scale)
            for a, b in zip(*sides, strict=True)
        ]
    )


_DERIVATIVES: dict = {}


def _derivative_function(binding: Binding, loop: compiled.Loop) -> Callable:
    """Jitted (x, n, limit, tangents) -> (outputs at x, d outputs along each tangent): the
    outputs are TTFT [s], TPOT [s] and request throughput [1/s]; n_d follows x by the implicit
    function theorem (or the bracket's top where the steady state sits on it)."""
    fns = functions(binding)
    key = (id(fns), loop)
    if key in _DERIVATIVES:
        return _DERIVATIVES[key][1]
    closed, split = loop
    n_values = len(fns.values)

    def parts(x, limit):
        values = [x[i] for i in range(n_values)]
        work = {s: x[n_values + i] for i, s in enumerate(compiled.WORKLOAD)}
        arrival = x[-1]
        if split:
            top = limit
            limit = limit * work[sy.y_dec]
        else:
            top = jnp.minimum(limit, compiled.derived(work)["saturation"] * (1 - 1e-9))
        running = jnp.minimum(arrival, limit) if closed else arrival
        if closed:
            top = jnp.minimum(top, running)
        return values, work, arrival, limit, running, top

    def model(x, n, limit):
        values, work, arrival, limit, running, top = parts(x, limit)
        out = compiled._state(fns, loop, n, work, running, values)
        excess = out["in_flight"] - running if closed else out["throughput_rps"] - arrival
        if closed:
            rate = out["throughput_rps"]
            ttft = out["ttft_s"] + jnp.maximum(arrival - limit, 0) / rate
        else:
            rate = arrival + 0 * out["throughput_rps"]
            ttft = out["ttft_s"]
        return jnp.stack([ttft, out["tpot_s"], rate]), excess, top

    def run(x, n, limit, tangents):
        # One pass of the model carries every tangent of x and, last, the tangent of n_d.
        count = tangents.shape[0]
        along_x = jnp.concatenate([tangents, jnp.zeros((1, x.shape[0]))])
        along_n = jnp.concatenate([jnp.zeros(count), jnp.ones(1)])

        def along(tx, tn):
            return jax.jvp(lambda y, m: model(y, m, limit), (x, n), (tx, tn))

        (outputs, excess, top), (d_out, d_excess, d_top) = jax.vmap(along)(along_x, along_n)
        outputs, excess, top = outputs[0], excess[0], top[0]
        dn_out, dn_excess = d_out[-1], d_excess[-1]
        # No root below the bracket's top (closed loop): n_d sits on the top and follows it.
        on_top = closed & (n >= top * (1 - 1e-6)) & (excess < 0)
        dn = jnp.where(on_top, d_top[:-1], -d_excess[:-1] / dn_excess)
        return outputs, d_out[:-1] + dn[:, None] * dn_out[None, :]

    jitted = jax.jit(run)
    _DERIVATIVES[key] = (fns, jitted)
    return jitted


def _step_shares(binding: Binding, point: ServingPoint, batch: float) -> dict[str, float]:
    """Shares of a plain decode step's time at ``batch`` sequences (context isl + osl/2): its
    token kernels, decode attention, LM head and the engine's fixed overhead."""
    parts = binding.symbolic_step_parts()
    context = sp.Rational(2 * point.isl + point.osl, 2)
    n = sp.Float(batch)
    values = binding.values
    where = {
        "tokens": (parts.tokens, {sy.B: n, sy.S: 1, sy.T: context}),
        "decode attention": (parts.decode_attention, {sy.B: n, sy.S: 1, sy.T: context}),
        "LM head": (parts.head, {sy.B: n, sy.S: 1, sy.T: context}),
    }
    times = {}
    for name, (expr, at) in where.items():
        times[name] = float(sp.N(expr.xreplace(at).xreplace(values)))
    times["step overhead"] = float(binding.step_overhead())
    total = sum(times.values())
    return {k: v / total for k, v in times.items()} if total > 0 else {}


def sensitivity(binding: Binding, point: ServingPoint, gpu_hour_usd: float = 2.0) -> Sensitivity:
    """Exact elasticities of the deployment's metrics (see the module's docstring)."""
    prediction = predict([Question(binding, point)])[0]
    cost = cost_per_million(prediction, gpu_hour_usd)
    x, n_values = _flat(binding, point)
    index = {s: n_values + i for i, s in enumerate(compiled.WORKLOAD)}
    params: list[tuple[str, str, float, np.ndarray]] = []
    for name, value in hardware_figures(binding.scenario.hardware).items():
        params.append((name, "hardware", value, _exact_tangent(binding, point, name, value)))
    for name, where, value in (
        ("isl", index[sy.N_prompt], point.isl),
        ("osl", index[sy.N_out], point.osl),
        ("concurrency" if point.closed else "request_rate", len(x) - 1, x[-1]),
    ):
        tangent = np.zeros_like(x)
        tangent[where] = value
        params.append((name, "workload", float(value), tangent))
    if binding.engine is not None:
        tangent = np.zeros_like(x)
        tangent[index[sy.t_sched]] = x[index[sy.t_sched]]
        params.append((STEP_OVERHEAD, "engine", float(x[index[sy.t_sched]]), tangent))
    params += _calibration_parameters(binding, point, x)
    params += _model_parameters(binding, point, x, index[sy.t_xfer])

    if not prediction["stable"]:
        why = "no steady state: " + (
            "one request's KV cache does not fit"
            if not prediction["max_concurrency_fits"]
            else "the replica cannot carry this request rate"
        )
        rows = [Elasticity(p, k, v, dict.fromkeys(METRICS), why) for p, k, v, _ in params]
        return Sensitivity(prediction, cost, None, {}, rows, why)

    loop = (point.closed, point.disaggregated)
    run = _derivative_function(binding, loop)
    tangents = np.stack([t for *_, t in params])
    moving = np.any(tangents != 0, axis=1)
    limit = float(prediction["max_concurrency_fits"])
    outputs, derivatives = run(
        jnp.asarray(x),
        jnp.asarray(prediction["decode_batch"]),
        jnp.asarray(limit),
        jnp.asarray(tangents[moving]) if moving.any() else jnp.zeros((1, len(x))),
    )
    outputs = np.asarray(outputs)
    full = np.zeros((len(params), 3))
    full[moving] = np.asarray(derivatives)[: int(moving.sum())]
    shares = _step_shares(binding, point, prediction["decode_batch"])
    rows = []
    for (name, kind, value, _), d in zip(params, full, strict=True):
        e_ttft, e_tpot, e_rate = (float(d[i] / outputs[i]) + 0.0 for i in range(3))
        e_out = e_rate + (1.0 if name == "osl" else 0.0)
        elasticity = {
            "ttft_ms": e_ttft,
            "tpot_ms": e_tpot,
            "output_tok_s_per_gpu": e_out,
            "cost_usd_per_1m_tokens": -e_out + 0.0,
        }
        rows.append(Elasticity(name, kind, value, elasticity, ""))
    by_name = {r.parameter: r.elasticities for r in rows}
    regime = _regime(by_name, binding)
    rows = [
        r._replace(reason=_reason(r, by_name, prediction, point, shares, regime, binding))
        for r in rows
    ]
    rows.sort(key=lambda r: -max(abs(v) for v in r.elasticities.values()))
    note = None
    if prediction["max_concurrency_fits"] < (point.concurrency or 0):
        note = (
            "the KV cache holds fewer requests than the clients: the requests that fit are an "
            "integer step function of memory, lengths and format (derivative 0 between steps)"
        )
    return Sensitivity(prediction, cost, regime, shares, rows, note)


def _argument_index(binding: Binding) -> dict[sp.Symbol, int]:
    """Where each binding value sits among the compiled model's arguments."""
    return {s: i for i, s in enumerate(functions(binding).values)}


def _calibration_parameters(
    binding: Binding, point: ServingPoint, x: np.ndarray
) -> list[tuple[str, str, float, np.ndarray]]:
    """(name, "calibration", value, tangent) of every calibrated term: an engine's fitted
    coefficients (each scales the binding values it becomes: the tangent is those values),
    or a calibrated roofline's efficiency terms (the exact central difference of the
    arguments, as for a hardware figure)."""
    rows = []
    where = _argument_index(binding)
    for coefficient, (fitted, symbols) in calibrated_symbols(binding).items():
        tangent = np.zeros_like(x)
        for symbol in symbols:
            if symbol in where:
                tangent[where[symbol]] = x[where[symbol]]
        rows.append((str(coefficient), "calibration", fitted, tangent))
    for name, value in efficiency_terms(binding.scenario.hardware).items():
        rows.append((name, "calibration", value, _exact_tangent(binding, point, name, value)))
    return rows


def _model_parameters(
    binding: Binding, point: ServingPoint, x: np.ndarray, transfer: int
) -> list[tuple[str, str, float, np.ndarray]]:
    """(name, "model", value, tangent) of every model dimension: a binding value of the
    compiled model (the tangent is the value itself) and, disaggregated, of the KV transfer
    time.  Integer dimensions are taken as continuous: the smooth model's elasticity."""
    rows = []
    where = _argument_index(binding)
    for symbol, value in model_dimensions(binding).items():
        tangent = np.zeros_like(x)
        if symbol in where:
            tangent[where[symbol]] = value
        tangent[transfer] = _transfer_tangent(binding, point, symbol)
        rows.append((DIMENSION_NAMES[symbol], "model", value, tangent))
    return rows


def _regime(by_name: dict[str, dict[str, float]], binding: Binding) -> str:
    """Memory- or compute-bound decode: which of HBM bandwidth and the matmul peak moves TPOT
    more."""
    peak = "peak_tflops." + _matmul_dtype(binding)
    memory = abs(by_name.get("hbm_bandwidth_tb_s", {}).get("tpot_ms", 0.0))
    compute = abs(by_name.get(peak, {}).get("tpot_ms", 0.0))
    return "memory-bound" if memory >= compute else "compute-bound"


def _matmul_dtype(binding: Binding) -> str:
    hardware = binding.scenario.hardware
    peak = hardware.matmul_peak(binding.setting.weight_dtype)
    for name, value in hardware.peak_tflops.model_dump().items():
        if value is not None and hardware.peak_flops(name) == peak:
            return name
    return "bf16"


def _describe(shares: dict[str, float]) -> str:
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.0%}" for k, v in ranked if v >= 0.005)


def _reason(row, by_name, prediction, point, shares, regime, binding) -> str:
    """One line: where this elasticity comes from."""
    e = row.elasticities
    batch = prediction["decode_batch"]
    largest = max(abs(v) for v in e.values())
    step = f"a decode step of {batch:.1f} sequences is {_describe(shares)}"
    if largest == 0:
        if row.parameter in ("hbm_capacity_gb", "usable_memory_fraction"):
            fits = prediction["max_concurrency_fits"]
            if point.concurrency is not None and fits < point.concurrency:
                return (
                    f"0 between steps: the KV cache holds {fits:,} requests, fewer than the "
                    "clients; more memory admits whole requests only, an integer step"
                )
            return (
                f"no effect: the KV cache holds {fits:,} requests, more than run at once; "
                "memory matters only where it runs out"
            )
        if row.parameter.startswith(("link_", "scale_out_")) and binding.setting.tp == 1:
            return "no effect: tp 1 has no collectives"
        if row.kind == "engine":
            return "no effect: the engine's fitted step overhead is 0"
        if row.kind == "calibration":
            if row.parameter.startswith("allreduce") and binding.setting.tp == 1:
                return "no effect: tp 1 has no all-reduces"
            return "no effect: the coefficient times no kernel of this deployment's step"
        if row.kind == "model":
            return "no effect: the dimension enters no term of this deployment's step"
        return "no effect: the figure enters no term of this deployment's step"
    if row.parameter == "hbm_bandwidth_tb_s":
        return f"decode is {regime} at this batch: {step}"
    if row.parameter.startswith("peak_tflops."):
        return (
            f"decode is {regime} at this batch; prefill is compute-heavy (TTFT "
            f"{e['ttft_ms']:+.2f} against TPOT {e['tpot_ms']:+.2f}); {step}"
        )
    if row.parameter.startswith(("link_", "scale_out_")):
        return f"tp {binding.setting.tp}: every layer's all-reduces cross the link; {step}"
    if row.parameter == "isl":
        return f"longer prompts: more prefill per request and a longer context T; {step}"
    if row.parameter == "osl":
        return f"more output tokens per request: a longer context and more decode steps; {step}"
    if row.parameter in ("concurrency", "request_rate"):
        return f"more requests decode together (batch {batch:.1f}); {step}"
    if row.kind == "engine":
        return f"the engine's fixed cost per step; {step}"
    if row.kind == "calibration":
        family = row.parameter.split("[", 1)[0].split(".", 1)[0]
        role = FAMILY_ROLES.get(family, f"the {family} kernels")
        if row.parameter.startswith("efficiency."):
            role = EFFICIENCY_ROLES[row.parameter.split(".", 1)[1]]
        elif (
            family == "gemm"
            and "[bfloat16]" in row.parameter
            and binding.setting.weight_dtype != "bf16"
        ):
            role = "the LM head's bf16 matmul and the elementwise launches"
        return f"fitted term of {role}; {step}"
    if row.kind == "model":
        role = DIMENSION_ROLES.get(row.parameter, "a dimension of the model")
        return f"{role} (a count taken as continuous); {step}"
    return step


# --------------------------------------------------------------------------- inverse questions


class Constraint(NamedTuple):
    """A metric bound: ``metric`` ``op`` ``bound`` (``tpot_ms <= 20``)."""

    metric: str
    op: str
    bound: float

    def met(self, prediction: dict[str, Any]) -> bool:
        """Whether ``prediction`` meets it (no steady state: not met)."""
        value = prediction[self.metric]
        if not prediction["stable"] or value is None or not math.isfinite(value):
            return False
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


class Solution(NamedTuple):
    """The answer to an inverse question: ``value`` (None: none in the searched range, and
    ``why``), the bracket's unmet end, the prediction re-evaluated at ``value``, and the
    values searched with whether each met the constraint."""

    parameter: str
    goal: str  # "least" or "largest"
    constraint: Constraint
    value: float | None
    unmet: float | None
    prediction: dict[str, Any] | None
    why: str
    searched: list[tuple[float, float | None, bool]]  # (value, metric, met)


def solvable(binding: Binding, point: ServingPoint) -> list[str]:
    """The parameters :func:`solve` takes for this question: the hardware figures, the
    workload numbers, the GPUs per replica (``tp``; not with expert parallelism) and the
    GPU-hour price (``gpu_hour_usd``, with a cost constraint)."""
    loop = "concurrency" if point.closed else "request_rate"
    gpus = ["tp"] if binding.setting.ep == 1 else []
    return [*hardware_figures(binding.scenario.hardware), "isl", "osl", loop, *gpus, PRICE]


def tp_candidates(binding: Binding) -> list[int]:
    """The tensor-parallel degrees :func:`solve` tries: powers of two up to :data:`MAX_TP`
    that divide the model's query heads (as predict requires)."""
    heads = binding.scenario.model.n_heads
    return [2**i for i in range(MAX_TP.bit_length()) if heads % 2**i == 0]


def with_tp(binding: Binding, tp: int) -> Binding:
    """``binding``'s scenario and setting with ``tp`` GPUs per replica (engine and dtypes
    kept)."""
    scenario = binding.scenario.model_copy(update={"n_gpus": tp})
    return bind(scenario, replace(binding.setting, tp=tp))


def _solve_tp(binding: Binding, point: ServingPoint, constraint: Constraint) -> Solution:
    """The least GPUs per replica meeting ``constraint``: every candidate evaluated (few), so
    the answer is exact even where the metric is not monotone in tp."""
    values = tp_candidates(binding)
    found = predict([Question(with_tp(binding, tp), point) for tp in values])
    searched = [
        (float(tp), f[constraint.metric], constraint.met(f))
        for tp, f in zip(values, found, strict=True)
    ]
    met = [i for i, (*_, ok) in enumerate(searched) if ok]
    if not met:
        why = f"not met at any tp in {', '.join(map(str, values))}"
        return Solution("tp", "least", constraint, None, values[-1], None, why, searched)
    first = met[0]
    unmet = values[first - 1] if first else None
    why = (
        f"the least of tp {', '.join(map(str, values))} that meets it"
        if first
        else "met already at tp 1"
    )
    return Solution("tp", "least", constraint, values[first], unmet, found[first], why, searched)


def _solve_price(binding: Binding, point: ServingPoint, constraint: Constraint) -> Solution:
    """The largest GPU-hour price [USD] at which the cost per million output tokens is at
    most the bound: cost = price · gpus / (3600 · output tok/s) · 1e6 is linear in the price,
    so price* = bound · 3600 · output tok/s / (gpus · 1e6), re-evaluated by
    :func:`cost_per_million`."""
    if constraint.metric != "cost_usd_per_1m_tokens":
        raise ValueError(f"{PRICE} is solved under a cost_usd_per_1m_tokens<=X constraint")
    found = predict([Question(binding, point)])[0]
    if not found["stable"] or not found["output_tok_s"]:
        why = "the deployment has no steady state: no throughput to price"
        return Solution(PRICE, "largest", constraint, None, None, found, why, [])
    price = constraint.bound * 3600.0 * found["output_tok_s"] / (found["gpus"] * 1e6)
    cost = cost_per_million(found, price)
    check = {**found, "cost_usd_per_1m_tokens": cost}
    why = "cost per million output tokens is proportional to the GPU-hour price"
    return Solution(PRICE, "largest", constraint, price, None, check, why, [(price, cost, True)])


def questions_at(binding: Binding, point: ServingPoint, parameter: str, values) -> list[Question]:
    """The question with ``parameter`` (a workload number or a hardware figure) set to each
    of ``values``."""
    if parameter in WORKLOAD_PARAMETERS:
        cast = float if parameter == "request_rate" else int
        return [Question(binding, _point(point, parameter, cast(v))) for v in values]
    hardware = binding.scenario.hardware
    return [
        Question(rebind(binding, with_figure(hardware, parameter, float(v))), point) for v in values
    ]


def _point(point: ServingPoint, parameter: str, value) -> ServingPoint:
    return replace(point, **{parameter: value})


def solve(
    binding: Binding,
    point: ServingPoint,
    parameter: str,
    constraint: Constraint,
    *,
    max_tokens: int = 1_000_000,
    max_rate: float = 1e9,
) -> Solution:
    """The least hardware figure ``parameter`` (or the largest workload number) at which the
    deployment meets ``constraint``; a ValueError for a parameter it cannot move."""
    if parameter not in solvable(binding, point):
        known = ", ".join(solvable(binding, point))
        raise ValueError(f"unknown parameter {parameter!r} for this question (known: {known})")
    if parameter == PRICE:
        return _solve_price(binding, point, constraint)
    if constraint.metric == "cost_usd_per_1m_tokens":
        raise ValueError(f"a cost constraint solves for {PRICE}, not {parameter}")
    if parameter == "tp":
        return _solve_tp(binding, point, constraint)
    integer = parameter in ("isl", "osl", "concurrency")
    least = parameter not in WORKLOAD_PARAMETERS
    if least:
        current = hardware_figures(binding.scenario.hardware)[parameter]
        lo, hi = current / SOLVE_SPAN, current * SOLVE_SPAN
        if parameter == "usable_memory_fraction":
            hi = 1.0
    elif integer:
        lo, hi = 1, max_tokens
    else:
        lo, hi = point.request_rate / SOLVE_SPAN, max_rate
    searched: list[tuple[float, float | None, bool]] = []

    def evaluate(values):
        found = predict(questions_at(binding, point, parameter, values))
        rows = [
            (float(v), f[constraint.metric], constraint.met(f))
            for v, f in zip(values, found, strict=True)
        ]
        searched.extend(rows)
        return [met for *_, met in rows], found

    def grid(a, b, ends):
        if integer:
            points = np.unique(np.round(np.geomspace(a, b, SOLVE_POINTS)).astype(np.int64))
            points = points if ends else points[(points > a) & (points < b)]
            if not ends and len(points) == 0:
                return []
            return [int(p) for p in points]
        points = np.geomspace(a, b, SOLVE_POINTS if ends else SOLVE_POINTS + 2)
        return [float(p) for p in (points if ends else points[1:-1])]

    values = grid(lo, hi, True)
    met, _ = evaluate(values)
    # "least": met above the change, so the change is after the last unmet value;
    # "largest": met below it, so the change is after the last met value... of the first run.
    if least:
        if not met[-1]:
            return Solution(
                parameter,
                "least",
                constraint,
                None,
                values[-1],
                None,
                f"not met even at {values[-1]:.6g} ({SOLVE_SPAN:g}x the spec's)",
                searched,
            )
        if all(met):
            return Solution(
                parameter,
                "least",
                constraint,
                None,
                None,
                None,
                f"met across the whole range, down to {values[0]:.6g} "
                f"(1/{SOLVE_SPAN:g} of the spec's): no least value in it",
                searched,
            )
        last = max(i for i, m in enumerate(met) if not m)
        bad, good = values[last], values[last + 1]
    else:
        if not met[0]:
            return Solution(
                parameter,
                "largest",
                constraint,
                None,
                values[0],
                None,
                f"not met even at {parameter} {values[0]:.6g}",
                searched,
            )
        if all(met):
            return Solution(
                parameter,
                "largest",
                constraint,
                None,
                None,
                None,
                f"met across the whole range, up to {values[-1]:.6g}",
                searched,
            )
        first = min(i for i, m in enumerate(met) if not m)
        good, bad = values[first - 1], values[first]
    for _ in range(MAX_ROUNDS):
        if integer and abs(good - bad) <= 1:
            break
        if not integer and abs(good / bad - 1) <= SOLVE_TOLERANCE:
            break
        a, b = min(good, bad), max(good, bad)
        inner = grid(a, b, False)
        if not inner:
            break
        met, _ = evaluate(inner)
        ends = [a, *inner, b]
        flags = [not least, *met, least]  # a is met for "largest", b for "least"
        if least:
            last = max(i for i, m in enumerate(flags) if not m)
            bad, good = ends[last], ends[last + 1]
        else:
            first = min(i for i, m in enumerate(flags) if not m)
            good, bad = ends[first - 1], ends[first]
    check = predict(questions_at(binding, point, parameter, [good]))[0]
    if not constraint.met(check):  # the re-evaluation disagrees: say so, no number
        return Solution(
            parameter,
            "least" if least else "largest",
            constraint,
            None,
            bad,
            check,
            "the re-evaluation at the bracket's met end does not meet the constraint",
            searched,
        )
    unmet = predict(questions_at(binding, point, parameter, [bad]))[0]
    if unmet["stable"] and not constraint.met(unmet):
        low, high = sorted((bad, good))
        why = f"{constraint.metric} crosses {constraint.bound:g} between {low!r} and {high!r}"
    else:
        why = (
            f"the deployment has no steady state (KV cache or load) at {bad:.10g}; "
            "the constraint's edge is that feasibility boundary"
        )
    return Solution(
        parameter, "least" if least else "largest", constraint, good, bad, check, why, searched
    )
