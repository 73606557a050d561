"""The optimiser: tensor-parallel degree, weight and KV-cache formats and batch for a scenario.

**Problem.**  Choose a combination c = (tp, weight dtype, KV dtype) from the scenario's search
space (tp among ``search.tp``, at most ``n_gpus`` and dividing the query heads) and an integer
batch 1 <= B <= ``search.batch_max`` to optimise the objective subject to

* memory(B) <= usable memory per GPU: weights + KV cache for B x (prompt + output) tokens +
  the workspace of prefilling the whole batch (:func:`costmodel.model.memory.memory_per_gpu`);
* TPOT(B) <= ``slo.tpot_ms``: one decode step at full context, T = prompt + output tokens, the
  worst case over a request (conservative by at most one token of context);
* TTFT(B) <= ``slo.ttft_ms``: one prefill step of the whole batch of prompts, S = T = prompt.

Objectives (``scenario.objective``):

* ``throughput_per_gpu`` (maximise) = B / (tp x TPOT) [output tokens/s per GPU];
* ``cost_per_million_tokens`` (minimise) = price x tp x (TTFT + N_out x TPOT) / (3600 x B x N_out)
  x 10^6 [USD per 10^6 output tokens]: the GPU time a replica spends on a batch of requests, from
  prefill to the last token, per output token;
* ``latency`` (minimise) = TTFT + N_out x TPOT [s]: a request's time from arrival to last token.

**Method.**  Every categorical combination is enumerated (at most a few hundred), and for each:

1. *Relaxation.*  SciPy's SLSQP solves the continuous problem in u = log B (bounds 0 ..
   log batch_max; loss = log of the objective, constraints 1 - value / limit >= 0), with the
   derivatives of the loss and of the three constraints from JAX's automatic differentiation of
   the compiled SymPy expressions (``jax.jacfwd``: one variable, four outputs, one forward
   pass).  The roofline's max has kinks; JAX gives the active branch's derivative and SLSQP
   copes.  Combinations infeasible at batch 1 are not relaxed (the certificate still covers
   them).
2. *Certificate.*  Step times are sums of max(linear, linear) in B plus linear terms, so TPOT,
   TTFT and memory are piecewise linear in B, with breakpoints where a kernel's compute and
   memory times cross (computed exactly from the expressions).  Between consecutive breakpoints
   every constraint is linear, so it changes sign at most once (at a root found by linear
   interpolation), and every objective is monotone (B / (aB + b), a + b/B, or linear).  Hence
   the best integer batch lies among the integer neighbours (+-1) of the breakpoints, the
   constraint roots, the relaxed optimum and the ends 1 and batch_max; all of them are
   evaluated exactly (float64), which makes the answer the integer optimum, not a rounding of
   the relaxation.  An expression that is not piecewise linear in B (a ceiling, or a
   calibrated hardware spec's smooth overlap of compute and memory time) falls back to
   evaluating every batch.
3. *Choice.*  The best combination wins; configurations within a relative 1e-12 of the best
   objective are ties, resolved to the first in grid order (tp, weight dtype, KV dtype in the
   scenario's order, then batch), exactly as the brute-force verifier resolves them.

:func:`brute_force` is the verifier: an exhaustive :mod:`costmodel.compile.sweep` of the same grid.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import sympy as sp

from costmodel.compile import sweep
from costmodel.config.bind import Setting, scenario_ops, substitution
from costmodel.config.specs import SLO, HardwareSpec, ModelSpec, Scenario, Workload, exact
from costmodel.model import symbols as sy
from costmodel.model.dtypes import KV_DTYPES, WEIGHT_DTYPES, bytes_per_element
from costmodel.model.memory import memory_per_gpu
from costmodel.model.roofline import compute_time, memory_time, step_time

# Scenario numbers enter the compiled model as arguments, so one compilation serves every
# scenario of the same model, hardware and numerics (hypothesis tests run hundreds).
prompt = sp.Symbol("N_prompt", integer=True, positive=True)  # prompt tokens per request [tokens]
n_out = sp.Symbol("N_out", integer=True, positive=True)  # output tokens per request [tokens]
gpu_price = sp.Symbol("c_gpu", positive=True)  # price of one GPU-hour [USD]
tpot_max = sp.Symbol("tpot_max", positive=True)  # TPOT limit [s]
ttft_max = sp.Symbol("ttft_max", positive=True)  # TTFT limit [s]
memory_max = sp.Symbol("M_max", positive=True)  # usable memory per GPU [bytes]

COMBO_SYMBOLS = (sy.tp, sy.b_w, sy.b_kv, sy.peak_matmul)
SCENARIO_SYMBOLS = (prompt, n_out, gpu_price, tpot_max, ttft_max, memory_max)
ARGS = (sy.B, *COMBO_SYMBOLS, *SCENARIO_SYMBOLS)

CONSTRAINTS = ("tpot", "ttft", "memory")  # slack outputs "<name>_slack" <= 0 when met
CONSTRAINT_LABEL = {"tpot": "TPOT SLO", "ttft": "TTFT SLO", "memory": "memory"}
OBJECTIVES = {  # name -> (output, maximise, unit)
    "throughput_per_gpu": ("throughput_per_gpu", True, "tok/s/GPU"),
    "cost_per_million_tokens": ("cost_per_mtok", False, "USD/1M tok"),
    "latency": ("latency_s", False, "s"),
}
TIE_RTOL = 1e-12  # objectives this close (relative) are ties, resolved by grid order
_NONSMOOTH = (sp.Piecewise, sp.floor, sp.ceiling, sp.Abs, sp.Heaviside, sp.Mod, sp.sign)


# --------------------------------------------------------------------------- the model


class Combo(NamedTuple):
    """One categorical choice: tensor-parallel degree, weight dtype, KV-cache dtype."""

    tp: int
    weight_dtype: str
    kv_dtype: str


class ScenarioModel(NamedTuple):
    """A scenario's cost model as SymPy expressions of :data:`ARGS`, compiled once.

    ``exprs``: tpot_s and ttft_s [s], memory, weights, kv_cache and workspace [bytes],
    throughput_per_gpu [tok/s/GPU], cost_per_mtok [USD], latency_s [s], and the slacks
    tpot_slack, ttft_slack, memory_slack (value - limit; <= 0 when met).  ``breakpoints``: the
    batches where a kernel's roofline switches regime (as expressions of the other arguments),
    or None when the times are not piecewise linear in B.
    """

    exprs: dict[str, sp.Expr]
    breakpoints: tuple[sp.Expr, ...] | None
    sweep: sweep.Sweep
    roots: Any  # NumPy function of ARGS[1:] giving the breakpoints, or None
    relaxation: Any  # jitted (u, params, objective index) -> loss, dloss, cons, dcons


def _constant_values(scenario: Scenario) -> dict:
    """Values of every symbol that no combination changes (shape, hardware, activations)."""
    values = substitution(scenario, Setting(), calibrated=True)
    return {k: v for k, v in values.items() if k not in COMBO_SYMBOLS}


def _is_piecewise_linear(expr: sp.Expr, var: sp.Symbol) -> bool:
    """True if ``expr`` is built from terms linear in ``var`` with +, constant factors, Max, Min."""
    if var not in expr.free_symbols:
        return True
    if expr == var:
        return True
    if isinstance(expr, sp.Add | sp.Max | sp.Min):
        return all(_is_piecewise_linear(a, var) for a in expr.args)
    if isinstance(expr, sp.Mul):
        varying = [a for a in expr.args if var in a.free_symbols]
        return len(varying) == 1 and _is_piecewise_linear(varying[0], var)
    return False


def _breakpoints(exprs: Sequence[sp.Expr], var: sp.Symbol) -> tuple[sp.Expr, ...] | None:
    """Values of ``var`` where two arguments of a Max/Min containing it are equal.

    None when some expression is not piecewise linear in ``var`` or nests such a Max.
    """
    roots: list[sp.Expr] = []
    for expr in exprs:
        if not _is_piecewise_linear(expr, var):
            return None
        if any(var in a.free_symbols for a in expr.atoms(*_NONSMOOTH)):
            return None
        for m in expr.atoms(sp.Max, sp.Min):
            if var not in m.free_symbols:
                continue
            if any(var in inner.free_symbols for a in m.args for inner in a.atoms(sp.Max, sp.Min)):
                return None
            for i, a in enumerate(m.args):
                for b in m.args[i + 1 :]:
                    difference = a - b
                    slope = sp.diff(difference, var)
                    if slope == 0:
                        continue
                    roots.append(-difference.xreplace({var: sp.Integer(0)}) / slope)
    unique = list(dict.fromkeys(roots))
    return tuple(unique)


@functools.lru_cache(maxsize=32)
def _model(
    model: ModelSpec,
    hardware: HardwareSpec,
    activation_dtype: str,
    attention_impl: str,
    mla_absorb: bool,
) -> ScenarioModel:
    scenario = Scenario(
        name="",
        model=model,
        hardware=hardware,
        n_gpus=1,
        activation_dtype=activation_dtype,
        attention_impl=attention_impl,
        mla_absorb=mla_absorb,
        workload=Workload(prompt_tokens=1, output_tokens=1),
        slo=SLO(tpot_ms=1.0, ttft_ms=1.0),
    )
    constants = _constant_values(scenario)
    time_model = hardware.time_model()  # the pure roofline unless the spec is calibrated
    decode = step_time(scenario_ops(scenario, "decode"), time_model)
    prefill = step_time(scenario_ops(scenario, "prefill"), time_model)
    mem = memory_per_gpu(
        scenario.model.attention_kind, scenario.model.tie_word_embeddings, prompt + n_out
    )
    decode_values = constants | {sy.S: sp.Integer(1), sy.T: prompt + n_out}
    prefill_values = constants | {sy.S: prompt, sy.T: prompt}
    tpot = decode.xreplace(decode_values)
    ttft = prefill.xreplace(prefill_values)
    weights, kv_cache, workspace = (m.xreplace(prefill_values) for m in mem)
    memory = weights + kv_cache + workspace
    exprs = {
        "tpot_s": tpot,
        "ttft_s": ttft,
        "memory": memory,
        "weights": weights,
        "kv_cache": kv_cache,
        "workspace": workspace,
        "throughput_per_gpu": sy.B / (sy.tp * tpot),
        "cost_per_mtok": gpu_price * sy.tp * (ttft + n_out * tpot) / (3600 * sy.B * n_out) * 10**6,
        "latency_s": ttft + n_out * tpot,
        "tpot_slack": tpot - tpot_max,
        "ttft_slack": ttft - ttft_max,
        "memory_slack": memory - memory_max,
    }
    compiled = sweep.compile_sweep(exprs, ARGS)
    breakpoints = _breakpoints([tpot, ttft, memory], sy.B)
    roots = None
    if breakpoints:  # evaluated once per combination: NumPy, no compilation to wait for
        roots = sp.lambdify(ARGS[1:], list(breakpoints), modules="numpy", cse=True)
    return ScenarioModel(exprs, breakpoints, compiled, roots, _relaxation_fn(compiled))


def scenario_model(scenario: Scenario) -> ScenarioModel:
    """The compiled cost model of a scenario.  Cached: scenarios that differ only in workload,
    SLOs, search space, objective or price share one compilation."""
    return _model(
        scenario.model,
        scenario.hardware,
        scenario.activation_dtype,
        scenario.attention_impl,
        scenario.mla_absorb,
    )


# --------------------------------------------------------------------------- numbers in, out


def combos(scenario: Scenario) -> list[Combo]:
    """The search space's categorical combinations in grid order (duplicates dropped; tp
    degrees above n_gpus or not dividing the query heads left out)."""
    tps = [
        t
        for t in dict.fromkeys(scenario.search.tp)
        if t <= scenario.n_gpus and scenario.model.n_heads % t == 0
    ]
    return [
        Combo(t, w, k)
        for t in tps
        for w in dict.fromkeys(scenario.search.weight_dtypes)
        for k in dict.fromkeys(scenario.search.kv_dtypes)
    ]


def combo_values(scenario: Scenario, combo: Combo) -> np.ndarray:
    """(tp, b_w, b_kv, P_mm) of a combination, as ``report.substitution`` gives them."""
    values = substitution(
        scenario, Setting(combo.tp, combo.weight_dtype, combo.kv_dtype), calibrated=True
    )
    return np.array([float(values[s]) for s in COMBO_SYMBOLS], dtype=np.float64)


def scenario_values(scenario: Scenario) -> np.ndarray:
    """(prompt, output tokens, GPU-hour price, TPOT limit [s], TTFT limit [s], usable memory)."""
    return np.array(
        [
            scenario.workload.prompt_tokens,
            scenario.workload.output_tokens,
            float(exact(scenario.gpu_hour_usd)),
            float(exact(scenario.slo.tpot_ms) / 1000),
            float(exact(scenario.slo.ttft_ms) / 1000),
            float(scenario.hardware.usable_memory),
        ],
        dtype=np.float64,
    )


EVAL_BLOCK = 512  # candidates per call of the compiled model: one shape, one compilation


def _padded_calls(function, rows: np.ndarray, tail: Sequence[float]) -> dict[str, np.ndarray]:
    """Call ``function(*rows.T, *tail)`` on fixed-size blocks of rows and concatenate."""
    n = len(rows)
    parts: list[dict] = []
    scalars = [np.float64(v) for v in tail]
    for start in range(0, max(n, 1), EVAL_BLOCK):
        block = rows[start : start + EVAL_BLOCK]
        if len(block) < EVAL_BLOCK:  # pad with copies of the first row
            fill = block[:1] if len(block) else np.ones((1, rows.shape[1]))
            block = np.concatenate([block, np.repeat(fill, EVAL_BLOCK - len(block), 0)])
        out = function(*block.T, *scalars)
        parts.append({k: np.asarray(v) for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def evaluate(
    model: ScenarioModel, batch: np.ndarray, params: np.ndarray, scenario_vals: np.ndarray
) -> dict[str, np.ndarray]:
    """Every output at ``batch[i]`` with combination values ``params[i]`` (shape (n, 4))."""
    batch = np.asarray(batch, dtype=np.float64).reshape(-1, 1)
    rows = np.concatenate([batch, np.asarray(params, dtype=np.float64).reshape(-1, 4)], axis=1)
    return _padded_calls(model.sweep.function, rows, scenario_vals)


class Point(NamedTuple):
    """One configuration, exactly evaluated.  Times [s], memory [bytes], throughput [tok/s/GPU]."""

    combo: Combo
    batch: int
    objective: float
    tpot_s: float
    ttft_s: float
    memory: float
    weights: float
    kv_cache: float
    workspace: float
    throughput_per_gpu: float
    cost_per_mtok: float
    latency_s: float
    violated: tuple[str, ...]  # constraints broken: "tpot", "ttft", "memory"

    @property
    def feasible(self) -> bool:
        """Whether every constraint is met."""
        return not self.violated


def _points(
    combo_list: Sequence[Combo], batches: Sequence[int], out: dict, objective: str
) -> list[Point]:
    key = OBJECTIVES[objective][0]
    points = []
    for i, (combo, batch) in enumerate(zip(combo_list, batches, strict=True)):
        violated = tuple(c for c in CONSTRAINTS if not out[f"{c}_slack"][i] <= 0)
        points.append(
            Point(
                combo,
                int(batch),
                float(out[key][i]),
                *(
                    float(out[k][i])
                    for k in (
                        "tpot_s",
                        "ttft_s",
                        "memory",
                        "weights",
                        "kv_cache",
                        "workspace",
                        "throughput_per_gpu",
                        "cost_per_mtok",
                        "latency_s",
                    )
                ),
                violated,
            )
        )
    return points


def evaluate_points(scenario: Scenario, configurations: Sequence[tuple[Combo, int]]) -> list[Point]:
    """Exact evaluation of (combination, batch) pairs."""
    if not configurations:
        return []
    model = scenario_model(scenario)
    combo_list = [c for c, _ in configurations]
    batches = [b for _, b in configurations]
    table = {c: combo_values(scenario, c) for c in dict.fromkeys(combo_list)}
    params = np.stack([table[c] for c in combo_list])
    out = evaluate(model, np.array(batches, dtype=np.float64), params, scenario_values(scenario))
    return _points(combo_list, batches, out, scenario.objective)


def _reaches(value: float, threshold: float, maximise: bool) -> bool:
    return value >= threshold if maximise else value <= threshold


def _threshold(best: float, maximise: bool) -> float:
    return best - TIE_RTOL * abs(best) if maximise else best + TIE_RTOL * abs(best)


# --------------------------------------------------------------------------- relaxation


def _relaxation_fn(compiled: sweep.Sweep):
    """Jitted relaxation terms at u = log B and their derivatives in u.

    Returns (values, derivatives), each [loss, c_tpot, c_ttft, c_memory]: the loss is the log
    of the objective (negated when maximised), a constraint is 1 - value / limit (>= 0 when
    met).  One variable, four outputs: forward mode (``jax.jacfwd``) gives every gradient in
    one pass.
    """

    def terms(u, params, scen, which):
        out = compiled.function(jnp.exp(u), *params, *scen)
        loss = (
            -jnp.log(out["throughput_per_gpu"]),
            jnp.log(out["cost_per_mtok"]),
            jnp.log(out["latency_s"]),
        )[which]
        values = jnp.stack([out["tpot_s"], out["ttft_s"], out["memory"]])
        return jnp.concatenate([loss[None], 1.0 - values / scen[3:6]])

    @functools.partial(jax.jit, static_argnums=3)
    def relaxation(u, params, scen, which):
        return terms(u, params, scen, which), jax.jacfwd(terms)(u, params, scen, which)

    return relaxation


class Relaxed(NamedTuple):
    """SLSQP's answer for one combination: continuous batch, success flag, iterations."""

    batch: float
    success: bool
    iterations: int
    evaluations: int


def relax(
    model: ScenarioModel,
    params: np.ndarray,
    scenario_vals: np.ndarray,
    objective: str,
    batch_max: int,
) -> Relaxed:
    """Solve the continuous relaxation of one combination with SciPy SLSQP and JAX gradients."""
    if batch_max <= 1:  # nothing to relax
        return Relaxed(1.0, True, 0, 0)
    which = list(OBJECTIVES).index(objective)
    params_j = jnp.asarray(params)
    scen_j = jnp.asarray(scenario_vals)
    cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def at(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = float(u[0])
        if key not in cache:
            values, slopes = model.relaxation(jnp.float64(key), params_j, scen_j, which)
            cache[key] = (np.asarray(values), np.asarray(slopes))
        return cache[key]

    result = scipy.optimize.minimize(
        lambda u: float(at(u)[0][0]),
        x0=np.zeros(1),
        jac=lambda u: at(u)[1][:1],
        method="SLSQP",
        bounds=[(0.0, math.log(batch_max))],
        constraints=[
            {"type": "ineq", "fun": lambda u: at(u)[0][1:], "jac": lambda u: at(u)[1][1:, None]}
        ],
        options={"maxiter": 100, "ftol": 1e-12},
    )
    calls = len(cache)
    batch = float(np.clip(math.exp(float(result.x[0])), 1.0, batch_max))
    return Relaxed(batch, bool(result.success), int(result.nit), calls)


# --------------------------------------------------------------------------- certificate


def _integer_neighbours(values: np.ndarray, batch_max: int) -> np.ndarray:
    """floor - 1, floor, ceil, ceil + 1 of each finite value, clipped to [1, batch_max]."""
    values = values[np.isfinite(values)]
    values = values[(values > -1) & (values < batch_max + 2)]
    near = np.concatenate(
        [np.floor(values) - 1, np.floor(values), np.ceil(values), np.ceil(values) + 1]
    )
    return np.unique(np.clip(near, 1, batch_max))


def _candidates(
    model: ScenarioModel,
    params: np.ndarray,
    scenario_vals: np.ndarray,
    batch_max: int,
    relaxed: Sequence[float],
) -> list[np.ndarray]:
    """Per combination, the integer batches that certify its optimum (see the module doc)."""
    n = len(params)
    ends = np.array([1.0, float(batch_max)])
    if model.breakpoints is None:
        return [np.arange(1, batch_max + 1, dtype=np.float64) for _ in range(n)]
    if model.roots is not None and n:
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = model.roots(*params.T, *(np.full(n, v) for v in scenario_vals))
        roots = np.stack([np.broadcast_to(np.asarray(r, dtype=float), (n,)) for r in raw], axis=1)
    else:
        roots = np.empty((n, 0))
    # Piece ends: breakpoints inside [1, batch_max] and the two ends, per combination.
    pieces = [
        np.unique(np.clip(np.concatenate([ends, r[np.isfinite(r)]]), 1.0, batch_max)) for r in roots
    ]
    flat_b = np.concatenate(pieces) if pieces else np.empty(0)
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(pieces)]) if pieces else []
    out = evaluate(model, flat_b, params[np.asarray(owner, dtype=int)], scenario_vals)
    limits = scenario_vals[3:6]
    result = []
    start = 0
    for i, p in enumerate(pieces):
        stop = start + len(p)
        crossings = [np.asarray(roots[i]), np.array([relaxed[i]])]
        for name, limit in zip(("tpot_s", "ttft_s", "memory"), limits, strict=True):
            g = out[name][start:stop]
            lo, hi, glo, ghi = p[:-1], p[1:], g[:-1], g[1:]
            with np.errstate(divide="ignore", invalid="ignore"):
                q = lo + (limit - glo) * (hi - lo) / (ghi - glo)
            inside = (ghi != glo) & ((glo - limit) * (ghi - limit) <= 0)
            crossings.append(q[inside])
        near = _integer_neighbours(np.concatenate(crossings), batch_max)
        result.append(np.unique(np.concatenate([near, ends])))
        start = stop
    return result


class ComboResult(NamedTuple):
    """The certified optimum of one combination and why it stops where it does.

    ``best`` is None when no batch is feasible; ``limit`` names what stops the batch growing
    ("memory", "tpot", "ttft", "batch_max" or "objective"); ``first`` is batch 1, evaluated.
    """

    combo: Combo
    best: Point | None
    limit: str
    first: Point
    relaxed: Relaxed | None
    relaxation_exact: bool
    candidates: int


class Optimum(NamedTuple):
    """The optimiser's answer: the best point (None if infeasible) and every combination's."""

    best: Point | None
    combos: tuple[ComboResult, ...]
    objective: str
    maximise: bool
    evaluations: int  # exact evaluations plus relaxation evaluations
    seconds: float


def _first_reaching(
    model: ScenarioModel,
    params: np.ndarray,
    scenario_vals: np.ndarray,
    candidates: np.ndarray,
    key: str,
    threshold: float,
    maximise: bool,
) -> int | None:
    """Smallest feasible batch whose objective reaches ``threshold``, for one combination.

    Between consecutive candidates the objective is monotone and feasibility constant (module
    doc), so each gap is settled by its two inner ends and, rarely, a bisection.
    """
    cand = np.sort(candidates)
    inner = [(lo + 1, hi - 1) for lo, hi in itertools.pairwise(cand) if hi - lo > 1]
    probe = np.concatenate([cand, np.array([b for pair in inner for b in pair], dtype=float)])
    out = evaluate(model, probe, np.repeat(params[None], len(probe), 0), scenario_vals)

    def good(j: int) -> bool:
        feasible = all(out[f"{c}_slack"][j] <= 0 for c in CONSTRAINTS)
        return feasible and _reaches(float(out[key][j]), threshold, maximise)

    def good_at(batch: float) -> bool:
        single = evaluate(model, np.array([batch]), params[None], scenario_vals)
        feasible = all(single[f"{c}_slack"][0] <= 0 for c in CONSTRAINTS)
        return feasible and _reaches(float(single[key][0]), threshold, maximise)

    gaps = {int(lo) - 1: k for k, (lo, _) in enumerate(inner)}  # gap after candidate value
    for j, batch in enumerate(cand):
        if good(j):
            return int(batch)
        k = gaps.get(int(batch))
        if k is None:
            continue
        lo_j, hi_j = len(cand) + 2 * k, len(cand) + 2 * k + 1
        lo, hi = inner[k]
        if good(lo_j):
            return int(lo)
        if good(hi_j):  # monotone in the gap: bisect for the first batch reaching it
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if good_at(mid):
                    hi = mid
                else:
                    lo = mid
            return int(hi)
    return None


def optimise(scenario: Scenario) -> Optimum:
    """Choose combination and batch for ``scenario`` (see the module doc for the method)."""
    started = time.perf_counter()
    model = scenario_model(scenario)
    key, maximise, _ = OBJECTIVES[scenario.objective]
    batch_max = scenario.search.batch_max
    combo_list = combos(scenario)
    if not combo_list:  # every tp excluded: nothing to search
        return Optimum(None, (), scenario.objective, maximise, 0, time.perf_counter() - started)
    params = np.stack([combo_values(scenario, c) for c in combo_list])
    scen = scenario_values(scenario)
    evaluations = 0

    # Batch 1 of every combination: the relaxation starts there.
    first_out = evaluate(model, np.ones(len(combo_list)), params, scen)
    firsts = _points(combo_list, [1] * len(combo_list), first_out, scenario.objective)
    evaluations += len(combo_list)

    relaxed: list[Relaxed | None] = []
    for i, point in enumerate(firsts):
        if point.feasible:
            r = relax(model, params[i], scen, scenario.objective, batch_max)
            evaluations += r.evaluations
            relaxed.append(r)
        else:
            relaxed.append(None)

    cands = _candidates(model, params, scen, batch_max, [r.batch if r else 1.0 for r in relaxed])
    flat = np.concatenate(cands)
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(cands)])
    out = evaluate(model, flat, params[owner], scen)
    evaluations += len(flat)
    feasible = np.all([out[f"{c}_slack"] <= 0 for c in CONSTRAINTS], axis=0)
    score = np.where(feasible, out[key], -np.inf if maximise else np.inf)

    best_batch: list[int | None] = []
    start = 0
    for c in cands:
        stop = start + len(c)
        s = score[start:stop]
        j = int(np.argmax(s) if maximise else np.argmin(s))
        best_batch.append(int(c[j]) if np.isfinite(s[j]) else None)
        start = stop

    best_points = dict(
        zip(
            [i for i, b in enumerate(best_batch) if b is not None],
            _evaluate_at(model, scenario, combo_list, params, scen, best_batch),
            strict=True,
        )
    )
    # Ties: the first configuration in grid order within TIE_RTOL of the best objective.
    chosen: Point | None = None
    if best_points:
        values = [p.objective for p in best_points.values()]
        top = max(values) if maximise else min(values)
        threshold = _threshold(top, maximise)
        for i in sorted(best_points):
            if not _reaches(best_points[i].objective, threshold, maximise):
                continue
            batch = _first_reaching(model, params[i], scen, cands[i], key, threshold, maximise)
            if batch is not None:
                chosen = _evaluate_at(
                    model, scenario, [combo_list[i]], params[i : i + 1], scen, [batch]
                )[0]
                break

    limits = _limits(model, scenario, combo_list, params, scen, best_batch, best_points)
    results = []
    for i, combo in enumerate(combo_list):
        r = relaxed[i]
        point = best_points.get(i)
        exact_relaxation = bool(
            r is not None and point is not None and point.batch in _rounded(r.batch)
        )
        results.append(
            ComboResult(combo, point, limits[i], firsts[i], r, exact_relaxation, len(cands[i]))
        )
    return Optimum(
        chosen,
        tuple(results),
        scenario.objective,
        maximise,
        evaluations,
        time.perf_counter() - started,
    )


def _rounded(batch: float) -> set[int]:
    return {math.floor(batch), math.ceil(batch)}


def _evaluate_at(model, scenario, combo_list, params, scen, batches) -> list[Point]:
    """Points for the non-None entries of ``batches`` (parallel to ``combo_list``)."""
    pairs = [(i, b) for i, b in enumerate(batches) if b is not None]
    if not pairs:
        return []
    index = np.array([i for i, _ in pairs])
    out = evaluate(model, np.array([b for _, b in pairs], dtype=float), params[index], scen)
    return _points([combo_list[i] for i in index], [b for _, b in pairs], out, scenario.objective)


def _limits(model, scenario, combo_list, params, scen, best_batch, best_points) -> list[str]:
    """What stops each combination's batch: the constraint broken one batch further, the
    batch ceiling, or the objective itself (a larger batch is feasible but worse)."""
    batch_max = scenario.search.batch_max
    nxt = [b + 1 if b is not None and b < batch_max else None for b in best_batch]
    after = dict(
        zip(
            [i for i, b in enumerate(nxt) if b is not None],
            _evaluate_at(model, scenario, combo_list, params, scen, nxt),
            strict=True,
        )
    )
    limits = []
    for i, b in enumerate(best_batch):
        if b is None:
            limits.append("infeasible")
        elif b >= batch_max:
            limits.append("batch_max")
        elif after[i].violated:
            limits.append(after[i].violated[0])
        else:
            limits.append("objective")
    return limits


# --------------------------------------------------------------------------- verifier


class BruteForce(NamedTuple):
    """The exhaustive answer: best point (None if infeasible), configurations evaluated."""

    best: Point | None
    evaluated: int
    feasible: int
    seconds: float


def search_grid(scenario: Scenario) -> sweep.Grid:
    """The optimiser's search space as a sweep grid: scenario numbers fixed, then tp, weight
    dtype, KV dtype and batch 1..batch_max (the grid order that breaks ties)."""
    combo_list = combos(scenario)
    tps = list(dict.fromkeys(c.tp for c in combo_list))
    weights = list(dict.fromkeys(c.weight_dtype for c in combo_list))
    kvs = list(dict.fromkeys(c.kv_dtype for c in combo_list))
    scen = scenario_values(scenario)

    def values(weight: str, kv: str, tp: int = 1) -> dict:
        v = combo_values(scenario, Combo(tp, weight, kv))
        return dict(zip(COMBO_SYMBOLS, v, strict=True))

    return sweep.grid(
        *(sweep.fixed(s, v) for s, v in zip(SCENARIO_SYMBOLS, scen, strict=True)),
        sweep.numeric_axis(sy.tp, tps, "tp"),
        sweep.table_axis(
            "weight_dtype",
            {w: {s: values(w, kvs[0])[s] for s in (sy.b_w, sy.peak_matmul)} for w in weights},
        ),
        sweep.table_axis("kv_dtype", {k: {sy.b_kv: values(weights[0], k)[sy.b_kv]} for k in kvs}),
        sweep.numeric_axis(sy.B, np.arange(1, scenario.search.batch_max + 1), "batch"),
    )


def brute_force(scenario: Scenario, **sweep_options) -> BruteForce:
    """Evaluate every configuration of the search space and keep the best feasible one.

    Ties within TIE_RTOL go to the first configuration in grid order.  ``sweep_options`` go to
    :func:`costmodel.compile.sweep.best` (chunk_size, devices, progress).
    """
    started = time.perf_counter()
    model = scenario_model(scenario)
    key, maximise, _ = OBJECTIVES[scenario.objective]
    if not combos(scenario):
        return BruteForce(None, 0, 0, time.perf_counter() - started)
    space = search_grid(scenario)
    found = sweep.best(
        model.sweep,
        space,
        key,
        constraints=tuple(f"{c}_slack" for c in CONSTRAINTS),
        maximise=maximise,
        rtol=TIE_RTOL,
        **sweep_options,
    )
    point = None
    if found.index is not None:
        labels = space.point(found.index)
        combo = Combo(int(float(labels["tp"])), labels["weight_dtype"], labels["kv_dtype"])
        point = evaluate_points(scenario, [(combo, int(float(labels["batch"])))])[0]
    return BruteForce(point, found.evaluated, found.feasible, time.perf_counter() - started)


# --------------------------------------------------------------------------- infeasibility


def _violation(point: Point, scen: np.ndarray) -> float:
    """The worst ratio of value to limit over the three constraints (<= 1 when feasible)."""
    return max(point.tpot_s / scen[3], point.ttft_s / scen[4], point.memory / scen[5])


def explain_infeasible(scenario: Scenario, optimum: Optimum) -> dict[str, Any]:
    """Why nothing is feasible: the closest configuration and what it breaks, and the smallest
    change that would make batch 1 feasible (more GPUs for a larger tp, or lighter formats).

    Batch 1 is the most favourable batch for every constraint (all grow with the batch).
    """
    scen = scenario_values(scenario)
    firsts = [r.first for r in optimum.combos]
    explanation: dict[str, Any] = {"closest": None, "fixes": []}
    if firsts:
        closest = min(firsts, key=lambda p: _violation(p, scen))
        explanation["closest"] = {
            **point_record(closest),
            "violated": [CONSTRAINT_LABEL[c] for c in closest.violated],
            "worst_ratio_to_limit": _violation(closest, scen),
        }
    # Beyond the search space: every tp dividing the heads, every format.
    heads = scenario.model.n_heads
    weight_order = list(dict.fromkeys([*scenario.search.weight_dtypes, *WEIGHT_DTYPES]))
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
        explanation["fixes"].append(
            {
                "change": "tp",
                "tp": p.combo.tp,
                "gpus_needed": p.combo.tp,
                "weight_dtype": p.combo.weight_dtype,
                "kv_dtype": p.combo.kv_dtype,
                "text": f"tp {p.combo.tp} ({p.combo.tp} GPUs) with {p.combo.weight_dtype} "
                f"weights and {p.combo.kv_dtype} KV cache would fit at batch 1",
            }
        )
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
        explanation["fixes"].append(
            {
                "change": "quantisation",
                "tp": p.combo.tp,
                "weight_dtype": p.combo.weight_dtype,
                "kv_dtype": p.combo.kv_dtype,
                "text": f"{p.combo.weight_dtype} weights and {p.combo.kv_dtype} KV cache at "
                f"tp {p.combo.tp} would fit at batch 1",
            }
        )
    if not fits:
        best = min(points, key=lambda p: _violation(p, scen))
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


# --------------------------------------------------------------------------- records


def point_record(point: Point) -> dict[str, Any]:
    """A JSON-ready record of a point (times in ms, memory in bytes)."""
    return {
        "tp": point.combo.tp,
        "batch": point.batch,
        "weight_dtype": point.combo.weight_dtype,
        "kv_dtype": point.combo.kv_dtype,
        "objective": point.objective,
        "tpot_ms": point.tpot_s * 1e3,
        "ttft_ms": point.ttft_s * 1e3,
        "latency_ms": point.latency_s * 1e3,
        "throughput_tok_s_per_gpu": point.throughput_per_gpu,
        "cost_per_million_tokens_usd": point.cost_per_mtok,
        "memory_bytes_per_gpu": point.memory,
        "memory_breakdown_bytes": {
            "weights": point.weights,
            "kv_cache": point.kv_cache,
            "workspace": point.workspace,
        },
        "feasible": point.feasible,
    }


class OperatingPoint(NamedTuple):
    """Roofline facts of a decode step: compute and memory time sums [s], the batch at which
    they are equal (None if they never cross), and which dominates."""

    compute_s: float
    memory_s: float
    ridge_batch: float | None
    regime: str


def operating_point(scenario: Scenario, point: Point) -> OperatingPoint:
    """Decode regime at ``point`` and the ridge batch of its combination: the batch where the
    summed compute time of the non-communication kernels equals their summed memory time."""
    ops = [op for op in scenario_ops(scenario, "decode") if op.unit != "collective"]
    values = substitution(
        scenario,
        Setting(point.combo.tp, point.combo.weight_dtype, point.combo.kv_dtype),
        calibrated=True,
    )
    context = scenario.workload.prompt_tokens + scenario.workload.output_tokens
    values |= {sy.S: sp.Integer(1), sy.T: sp.Integer(context)}
    compute = sum((op.repeat * compute_time(op) for op in ops), sp.Integer(0)).xreplace(values)
    memory = sum((op.repeat * memory_time(op) for op in ops), sp.Integer(0)).xreplace(values)
    difference = sp.expand(compute - memory)
    slope = sp.diff(difference, sy.B)
    ridge = None
    if slope != 0:
        root = -difference.xreplace({sy.B: sp.Integer(0)}) / slope
        ridge = float(root) if root > 0 else None
    at = {sy.B: sp.Integer(point.batch)}
    c, m = float(compute.xreplace(at)), float(memory.xreplace(at))
    return OperatingPoint(c, m, ridge, "compute-bound" if c > m else "memory-bound")


# --------------------------------------------------------------------------- the report


def _loss_text(point: Point, best: Point, objective: str) -> str:
    _, maximise, unit = OBJECTIVES[objective]
    change = (point.objective - best.objective) / best.objective
    word = "lower" if maximise else "higher"
    return (
        f"objective: {point.objective:.4g} vs {best.objective:.4g} {unit} "
        f"({abs(change):.1%} {word})"
    )


def _limit_text(result: ComboResult, scen: np.ndarray) -> str:
    if result.limit == "infeasible":
        first = result.first
        parts = []
        for c in first.violated:
            value, limit = {
                "tpot": (first.tpot_s * 1e3, scen[3] * 1e3),
                "ttft": (first.ttft_s * 1e3, scen[4] * 1e3),
                "memory": (first.memory / 1e9, scen[5] / 1e9),
            }[c]
            unit = "GB" if c == "memory" else "ms"
            parts.append(f"{CONSTRAINT_LABEL[c]} ({value:.4g} > {limit:.4g} {unit})")
        return "infeasible even at batch 1: " + ", ".join(parts)
    if result.limit == "objective":
        return "larger batches are feasible but worse"
    if result.limit == "batch_max":
        return "batch at search.batch_max"
    return f"batch capped by {CONSTRAINT_LABEL[result.limit]}"


def combo_record(result: ComboResult, best: Point | None, scenario: Scenario) -> dict[str, Any]:
    """One combination's outcome: its best batch and why it lost (or won)."""
    scen = scenario_values(scenario)
    record: dict[str, Any] = {
        "tp": result.combo.tp,
        "weight_dtype": result.combo.weight_dtype,
        "kv_dtype": result.combo.kv_dtype,
        "feasible": result.best is not None,
        "limit": result.limit,
        "limit_text": _limit_text(result, scen),
        "relaxed_batch": result.relaxed.batch if result.relaxed else None,
        "relaxation_exact": result.relaxation_exact,
        "certificate_candidates": result.candidates,
        "best": point_record(result.best) if result.best else None,
    }
    if result.best is None:
        record["lost_because"] = "infeasible"
        record["reason"] = record["limit_text"]
    elif best is not None and result.best == best:
        record["lost_because"] = None
        record["reason"] = "chosen"
    elif best is not None:
        record["lost_because"] = "objective"
        record["reason"] = (
            f"{_loss_text(result.best, best, scenario.objective)}; " + (record["limit_text"])
        )
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
            "tp": [c for c in dict.fromkeys(c.tp for c in combos(scenario))],
            "tp_listed": list(scenario.search.tp),
            "weight_dtypes": list(scenario.search.weight_dtypes),
            "kv_dtypes": list(scenario.search.kv_dtypes),
            "batch_max": scenario.search.batch_max,
        },
        "objective": scenario.objective,
        "gpu_hour_usd": scenario.gpu_hour_usd,
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
    scen = scenario_values(scenario)
    _, maximise, unit = OBJECTIVES[scenario.objective]
    best = optimum.best
    feasible = sorted(
        (r for r in optimum.combos if r.best is not None),
        key=lambda r: -r.best.objective if maximise else r.best.objective,
    )
    infeasible = [r for r in optimum.combos if r.best is None]
    report: dict[str, Any] = {
        "scenario": scenario_record(scenario),
        "objective": {"name": scenario.objective, "maximise": maximise, "unit": unit},
        "constraints": {
            "tpot_ms_max": scen[3] * 1e3,
            "ttft_ms_max": scen[4] * 1e3,
            "memory_bytes_per_gpu_max": scen[5],
            "tpot_context_tokens": scenario.workload.prompt_tokens
            + scenario.workload.output_tokens,
        },
        "best": best_record(scenario, best) if best else None,
        "combinations": [combo_record(r, best, scenario) for r in feasible + infeasible],
        "optimiser": {
            "method": "SLSQP relaxation in log(batch) with jax.jacfwd gradients, then an "
            "exact certificate over breakpoint and constraint-root neighbours",
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


def agree(a: Point | None, b: Point | None) -> bool:
    """Same configuration and objective within 1e-9 relative, or both None (infeasible)."""
    if a is None or b is None:
        return a is None and b is None
    same = (a.combo, a.batch) == (b.combo, b.batch)
    return same and math.isclose(a.objective, b.objective, rel_tol=1e-9)


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
    model = scenario_model(scenario)
    params = np.stack([combo_values(scenario, c) for c in combo_list])
    n = len(batches)
    out = evaluate(
        model, np.tile(batches, len(combo_list)), np.repeat(params, n, 0), scenario_values(scenario)
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
                **{f"{c}_ok": part[f"{c}_slack"] <= 0 for c in CONSTRAINTS},
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
