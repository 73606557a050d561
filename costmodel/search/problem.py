"""A scenario's optimisation problem: the cost model as SymPy expressions of the batch, a
combination's values and the scenario's numbers, compiled once, and exact evaluation of
(combination, batch) points.

**Problem.**  Choose a combination c = (tp, weight dtype, KV dtype) from the scenario's search
space (tp among ``search.tp``, at most ``n_gpus`` and dividing the query heads) and an integer
batch 1 <= B <= ``search.batch_max`` to optimise the objective subject to

* memory(B) <= usable memory per GPU: weights + KV cache for B x (prompt + output) tokens +
  the workspace of prefilling the whole batch (:func:`costmodel.model.memory.memory_per_gpu`);
* TPOT(B) <= ``slo.tpot_ms``: one decode step at full context, T = prompt + output tokens, the
  worst case over a request (conservative by at most one token of context);
* TTFT(B) <= ``slo.ttft_ms``: one prefill step of the whole batch of prompts.

Objectives (``scenario.objective``):

* ``throughput_per_gpu`` (maximise) = B / (tp x TPOT) [output tokens/s per GPU];
* ``cost_per_million_tokens`` (minimise) = price x tp x (TTFT + N_out x TPOT) / (3600 x B x N_out)
  x 10^6 [USD per 10^6 output tokens]: the GPU time a replica spends on a batch of requests, from
  prefill to the last token, per output token;
* ``latency`` (minimise) = TTFT + N_out x TPOT [s]: a request's time from arrival to last token.

Step times come from :meth:`costmodel.config.bind.Binding.step_time`, i.e. under the hardware
spec's own time model (the pure roofline unless the spec is calibrated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import sympy as sp

from costmodel.compile import sweep
from costmodel.config.bind import Binding, Setting, bind
from costmodel.config.specs import Scenario, exact
from costmodel.model import engine as engines
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.piecewise import breakpoints


class Objective(NamedTuple):
    """An objective: the compiled output it reads, its direction and unit."""

    output: str
    maximise: bool
    unit: str


OBJECTIVES = {
    "throughput_per_gpu": Objective("throughput_per_gpu", True, "tok/s/GPU"),
    "cost_per_million_tokens": Objective("cost_per_mtok", False, "USD/1M tok"),
    "latency": Objective("latency_s", False, "s"),
}
TIE_RTOL = 1e-12  # objectives this close (relative) are ties, resolved by grid order


class ComboValues(NamedTuple):
    """Symbol values a combination sets: tp [GPUs], bytes per weight and KV element [bytes],
    weight-matmul peak [FLOP/s], and (with an engine) the values of the engine model's
    dtype-dependent coefficients, in :attr:`Problem.terms` order.  Fields are floats, or arrays
    (one entry per row); ``terms`` a tuple of them."""

    tp: Any
    b_w: Any
    b_kv: Any
    peak_matmul: Any
    terms: tuple = ()

    def columns(self) -> list:
        """The values in argument order (the terms flattened after the four symbols)."""
        return [self.tp, self.b_w, self.b_kv, self.peak_matmul, *self.terms]

    def map(self, fn) -> ComboValues:
        """``fn`` applied to every value (the terms' included)."""
        return ComboValues(*(fn(v) for v in self[:4]), tuple(fn(v) for v in self.terms))


class ScenarioValues(NamedTuple):
    """The scenario's numbers: prompt and output tokens, GPU-hour price [USD], TPOT and TTFT
    limits [s], usable memory per GPU [bytes]."""

    prompt_tokens: float
    output_tokens: float
    gpu_hour_usd: float
    tpot_max_s: float
    ttft_max_s: float
    memory_max_bytes: float


COMBO_SYMBOLS = ComboValues(sy.tp, sy.b_w, sy.b_kv, sy.peak_matmul)
SCENARIO_SYMBOLS = ScenarioValues(
    sy.N_prompt, sy.N_out, sy.c_gpu, sy.tpot_max, sy.ttft_max, sy.M_max
)
# The compiled model's arguments, in order, without an engine; with one, its dtype-dependent
# coefficients follow the combination's four symbols (see args()).
ARGS = (sy.B, *COMBO_SYMBOLS.columns(), *SCENARIO_SYMBOLS)


def args(terms: Sequence[sp.Symbol] = ()) -> tuple[sp.Symbol, ...]:
    """The compiled model's arguments with the engine coefficients ``terms``."""
    return (sy.B, *COMBO_SYMBOLS.columns(), *terms, *SCENARIO_SYMBOLS)


class Constraint(NamedTuple):
    """A constraint: its name, the compiled output it limits, the ScenarioValues field holding
    the limit, and its label in reports.  The output ``<name>_slack`` is <= 0 when met."""

    name: str
    output: str
    limit: str
    label: str


CONSTRAINTS = (
    Constraint("tpot", "tpot_s", "tpot_max_s", "TPOT SLO"),
    Constraint("ttft", "ttft_s", "ttft_max_s", "TTFT SLO"),
    Constraint("memory", "memory", "memory_max_bytes", "memory"),
)
CONSTRAINT_LABEL = {c.name: c.label for c in CONSTRAINTS}


class Combo(NamedTuple):
    """One categorical choice: tensor-parallel degree, weight dtype, KV-cache dtype."""

    tp: int
    weight_dtype: str
    kv_dtype: str

    @property
    def setting(self) -> Setting:
        """The same choice as a :class:`costmodel.config.bind.Setting`."""
        return Setting(self.tp, self.weight_dtype, self.kv_dtype)


class Problem(NamedTuple):
    """A scenario's cost model as SymPy expressions of :data:`ARGS`, compiled once.

    ``exprs``: tpot_s and ttft_s [s], memory, weights, kv_cache and workspace [bytes],
    throughput_per_gpu [tok/s/GPU], cost_per_mtok [USD], latency_s [s], and the slacks
    tpot_slack, ttft_slack, memory_slack (value - limit; <= 0 when met).  ``breakpoints``: the
    batches where a kernel's roofline switches regime (as expressions of the other arguments),
    or None when the times are not piecewise linear in B (see
    :mod:`costmodel.search.certificate`).  ``roots``: NumPy function of ARGS[1:] giving the
    breakpoints (None without any).
    """

    exprs: dict[str, sp.Expr]
    breakpoints: tuple[sp.Expr, ...] | None
    sweep: sweep.Sweep
    roots: Callable | None
    terms: tuple[sp.Symbol, ...] = ()  # engine coefficients each combination sets


def combo_terms(scenario: Scenario) -> tuple[sp.Symbol, ...]:
    """The engine coefficients that depend on the combination (weight and KV dtypes), in a
    fixed order; none without an engine."""
    if scenario.kernels is None or scenario.engine is None:
        return ()
    return engines.dtype_terms().all


def _invariant_binding(scenario: Scenario) -> Binding:
    """The scenario bound at its first setting with the combination symbols (and the engine's
    dtype-dependent coefficients) left free: the values no combination changes (model shape,
    activations, hardware) and the time model."""
    first = combos(scenario)[0].setting if combos(scenario) else Setting()
    binding = bind(scenario, first, calibrated=True)
    free = set(COMBO_SYMBOLS.columns()) | set(combo_terms(scenario))
    values = {k: v for k, v in binding.values.items() if k not in free}
    # the static batch's experts are stored and multiplied as the other weights
    values |= {sy.b_we: sy.b_w, sy.peak_expert: sy.peak_matmul}
    return binding._replace(values=values)


def _step_time(binding: Binding, phase: phases.Phase, workload: dict) -> sp.Expr:
    """One step of ``phase`` under the binding's time model (or engine), its values and
    ``workload`` (:func:`costmodel.model.phase.workload`, which carries the phase rule)
    substituted in one pass: every pass rebuilds (and re-simplifies) each kernel's Max, the
    bulk of the build."""
    return binding.symbolic_step_time(phase).xreplace(binding.values | workload)


def model_exprs(scenario: Scenario) -> dict[str, sp.Expr]:
    """The problem's expressions (see :class:`Problem`) for ``scenario``: symbolic in the batch,
    the combination symbols and the scenario symbols."""
    binding = _invariant_binding(scenario)
    prompt, context = sy.N_prompt, sy.N_prompt + sy.N_out
    decode = phases.workload("decode", batch=sy.B, prompt=prompt, context=context)
    prefill = phases.workload("prefill", batch=sy.B, prompt=prompt, context=context)
    tpot = _step_time(binding, "decode", decode)
    ttft = _step_time(binding, "prefill", prefill)
    # KV cache for the whole request; the workspace is the prefill's.
    weights, kv_cache, workspace = (m.xreplace(prefill) for m in binding.memory(context))
    memory = weights + kv_cache + workspace
    n_out = sy.N_out
    latency = ttft + n_out * tpot
    return {
        "tpot_s": tpot,
        "ttft_s": ttft,
        "memory": memory,
        "weights": weights,
        "kv_cache": kv_cache,
        "workspace": workspace,
        "throughput_per_gpu": sy.B / (sy.tp * tpot),
        "cost_per_mtok": sy.c_gpu * sy.tp * latency / (3600 * sy.B * n_out) * 10**6,
        "latency_s": latency,
        "tpot_slack": tpot - sy.tpot_max,
        "ttft_slack": ttft - sy.ttft_max,
        "memory_slack": memory - sy.M_max,
    }


def problem_key(scenario: Scenario) -> tuple:
    """What the compiled problem depends on: scenarios equal here share one compilation (they
    may differ in workload, SLOs, search space, objective and price)."""
    return (
        scenario.model,
        scenario.hardware,
        scenario.activation_dtype,
        scenario.attention_impl,
        scenario.mla_absorb,
        scenario.engine,
        None if scenario.kernels is None else scenario.kernels.model_dump_json(),
    )


_PROBLEMS: dict[tuple, Problem] = {}
_PROBLEMS_MAX = 32  # compiled problems kept per process


def problem(scenario: Scenario) -> Problem:
    """The compiled problem of ``scenario``, built on first use and cached by
    :func:`problem_key`."""
    key = problem_key(scenario)
    found = _PROBLEMS.get(key)
    if found is None:
        exprs = model_exprs(scenario)
        terms = combo_terms(scenario)
        arguments = args(terms)
        compiled = sweep.compile_sweep(exprs, arguments)
        points = breakpoints([exprs["tpot_s"], exprs["ttft_s"], exprs["memory"]], sy.B)
        roots = None
        if points:  # evaluated once per combination: NumPy, no compilation to wait for
            roots = sp.lambdify(arguments[1:], list(points), modules="numpy", cse=True)
        found = Problem(exprs, points, compiled, roots, terms)
        if len(_PROBLEMS) >= _PROBLEMS_MAX:
            _PROBLEMS.pop(next(iter(_PROBLEMS)))
        _PROBLEMS[key] = found
    return found


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


def combo_values(scenario: Scenario, combo: Combo) -> ComboValues:
    """The combination's symbol values, as :func:`costmodel.config.bind.bind` gives them."""
    values = bind(scenario, combo.setting).values
    fixed = (float(values[s]) for s in COMBO_SYMBOLS.columns())
    return ComboValues(*fixed, tuple(float(values[s]) for s in combo_terms(scenario)))


def combo_table(scenario: Scenario, combo_list: Sequence[Combo]) -> ComboValues:
    """:func:`combo_values` of several combinations, each value an array (one per combo)."""
    rows = {c: combo_values(scenario, c).columns() for c in dict.fromkeys(combo_list)}
    width = 4 + len(combo_terms(scenario))
    columns = [np.array([rows[c][i] for c in combo_list], dtype=np.float64) for i in range(width)]
    return ComboValues(*columns[:4], tuple(columns[4:]))


def take(table: ComboValues, index) -> ComboValues:
    """Rows ``index`` (an integer array or a slice) of a combination table."""
    return table.map(lambda column: np.asarray(column)[index])


def scenario_values(scenario: Scenario) -> ScenarioValues:
    """The scenario's numbers (limits in seconds and bytes)."""
    return ScenarioValues(
        prompt_tokens=float(scenario.workload.prompt_tokens),
        output_tokens=float(scenario.workload.output_tokens),
        gpu_hour_usd=float(exact(scenario.gpu_hour_usd)),
        tpot_max_s=float(exact(scenario.slo.tpot_ms) / 1000),
        ttft_max_s=float(exact(scenario.slo.ttft_ms) / 1000),
        memory_max_bytes=float(scenario.hardware.usable_memory),
    )


EVAL_BLOCK = 512  # candidates per call of the compiled model: one shape, one compilation


def evaluate(
    model: Problem, batch: np.ndarray, combo: ComboValues, scenario: ScenarioValues
) -> dict[str, np.ndarray]:
    """Every output at ``batch[i]`` with combination values row i of ``combo`` (fields of
    length n, or scalars for one combination)."""
    batch = np.asarray(batch, dtype=np.float64).reshape(-1)
    n = len(batch)
    # The JAX boundary: columns in ARGS order, built by field name.
    columns = [batch] + [
        np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)) for value in combo.columns()
    ]
    rows = np.stack(columns, axis=1) if n else np.ones((0, len(columns)))
    scalars = [np.float64(getattr(scenario, f)) for f in ScenarioValues._fields]
    parts: list[dict] = []
    for start in range(0, max(n, 1), EVAL_BLOCK):
        block = rows[start : start + EVAL_BLOCK]
        if len(block) < EVAL_BLOCK:  # pad with copies of the first row
            fill = block[:1] if len(block) else np.ones((1, rows.shape[1]))
            block = np.concatenate([block, np.repeat(fill, EVAL_BLOCK - len(block), 0)])
        out = model.sweep.function(*block.T, *scalars)
        parts.append({k: np.asarray(v) for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def feasible(out: dict[str, np.ndarray]) -> np.ndarray:
    """Whether every constraint is met, per evaluated row."""
    return np.all([out[f"{c.name}_slack"] <= 0 for c in CONSTRAINTS], axis=0)


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


_POINT_OUTPUTS = Point._fields[3:-1]  # the outputs a Point copies by name


def points(
    combo_list: Sequence[Combo], batches: Sequence[int], out: dict, objective: str
) -> list[Point]:
    """Points from evaluated outputs (row i is ``combo_list[i]`` at ``batches[i]``)."""
    key = OBJECTIVES[objective].output
    result = []
    for i, (combo, batch) in enumerate(zip(combo_list, batches, strict=True)):
        violated = tuple(c.name for c in CONSTRAINTS if not out[f"{c.name}_slack"][i] <= 0)
        numbers = {k: float(out[k][i]) for k in _POINT_OUTPUTS}
        result.append(Point(combo, int(batch), float(out[key][i]), **numbers, violated=violated))
    return result


def evaluate_points(scenario: Scenario, configurations: Sequence[tuple[Combo, int]]) -> list[Point]:
    """Exact evaluation of (combination, batch) pairs."""
    if not configurations:
        return []
    combo_list = [c for c, _ in configurations]
    batches = [b for _, b in configurations]
    out = evaluate(
        problem(scenario),
        np.array(batches, dtype=np.float64),
        combo_table(scenario, combo_list),
        scenario_values(scenario),
    )
    return points(combo_list, batches, out, scenario.objective)


def reaches(value: float, threshold: float, maximise: bool) -> bool:
    """Whether ``value`` is at least as good as ``threshold``."""
    return value >= threshold if maximise else value <= threshold


def tie_threshold(best: float, maximise: bool) -> float:
    """The worst objective still tied with ``best`` (within :data:`TIE_RTOL`)."""
    return best - TIE_RTOL * abs(best) if maximise else best + TIE_RTOL * abs(best)


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
