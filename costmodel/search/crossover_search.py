"""Where two serving choices cross: the value of one parameter at which their metric agrees.

Two deployments A and B (two :class:`~costmodel.search.predict.Question`\\ s that differ in
their setting or serving layout: weight format, tp, KV format, disaggregation, ...) are
compared on one metric (TPOT, TTFT or output throughput per GPU) over one parameter: a
workload number (concurrency, request rate, isl, osl) or a hardware figure of the spec.

:func:`find_crossovers` works on the full model, predict's own answers:

1. a geometric grid of :data:`GRID_POINTS` values over the range is predicted for A and B in
   one batched call; the difference of their scores (the metric, or minus it where higher is
   better; no steady state scores +inf) changes sign between neighbours at each crossing;
2. each bracket is narrowed by repeated sections (:data:`REFINE_POINTS` inner values per
   round, one batched call each: bisection's answer in fewer calls) to the exact integer at
   which the order flips (isl, osl, concurrency) or to a relative width of
   :data:`CROSSOVER_RTOL` (a real parameter);
3. both ends of the final bracket are re-evaluated with :func:`predict` and must show the
   flipped order; a crossing where one side stops having a steady state (KV cache or load)
   is reported as a feasibility edge, and one where the requests a KV cache holds step (an
   integer of the model: the metric jumps) as a capacity step, not a meeting of the metrics.

:func:`closed_form` adds the crossing of a simpler model in closed form where SymPy finds one
(:func:`costmodel.model.crossover.crossover`): for two pure-roofline deployments with the same
serving layout in a closed loop, over concurrency, isl, osl or a hardware figure, the static
mean step
(:func:`static_metric`: c = concurrency sequences decoding at context T = isl + osl/2 and the
prompts of the c/osl requests that finish each step; its time for TPOT, gpus x step / c
GPU-seconds per output token for throughput per GPU).  It takes every client as decoding and
every step as the mean one, where the full model solves how many decode and mixes steps with
and without prefill, so its crossing is near the full model's (a few per cent), not on it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict
from typing import Any, Literal, NamedTuple

import numpy as np
import sympy as sp

from costmodel.config.bind import Binding, ServingPoint
from costmodel.model import symbols as sy
from costmodel.model.crossover import NoCrossoverError, crossover
from costmodel.search import whatif
from costmodel.search.predict import Question, predict, structure_key

METRICS = ("tpot_ms", "ttft_ms", "output_tok_s_per_gpu")
DEFAULT_METRIC = "tpot_ms"
HIGHER_IS_BETTER = {"tpot_ms": False, "ttft_ms": False, "output_tok_s_per_gpu": True}
INTEGER_PARAMETERS = ("isl", "osl", "concurrency")
GRID_POINTS = 65  # values of the first grid over the range (one batched prediction of A and B)
REFINE_POINTS = 30  # inner values per narrowing round
CROSSOVER_RTOL = 1e-9  # relative width of a real parameter's final bracket
MAX_ROUNDS = 40
DEFAULT_CONCURRENCY = (1, 4096)  # closed-loop clients searched when no range is given
DEFAULT_TOKENS = (1, 131072)  # isl or osl searched when no range is given
RATE_SPAN = 1e3  # a request rate: from the question's / SPAN to its x SPAN
FIGURE_SPAN = 10.0  # a hardware figure: from the spec's / SPAN to its x SPAN
STATIC_DIGITS = 30  # precision of the static model's signs on the grid [digits]
STATIC_METRICS = ("tpot_ms", "output_tok_s_per_gpu")
STATIC_MODEL = (
    "static mean step: c = concurrency sequences decoding at context isl + osl/2 and the "
    "prompts of the c/osl requests that finish each step"
)

Which = Literal["a", "b"]


class Crossing(NamedTuple):
    """One change of order: A and B's metric at the final bracket's ends (``low`` < ``high``;
    integers: consecutive), the estimate ``value`` (a real parameter: the bracket's midpoint;
    an integer: ``high``, the first value with the new order), which is better below and
    above, and whether the metrics meet (``kind`` "equal"), the requests one side's KV cache
    holds step there and its metric jumps past the other's ("capacity"), or one side stops
    having a steady state there ("feasibility")."""

    value: float
    low: float
    high: float
    kind: str
    below: Which
    above: Which
    at_low: tuple[float | None, float | None]  # (A's metric, B's metric) at ``low``
    at_high: tuple[float | None, float | None]
    relative_gap: float | None  # |A - B| / max(|A|, |B|) at ``value`` (None: a side unstable)
    verified: bool  # predict, re-run at both ends, shows the flipped order


class ClosedForm(NamedTuple):
    """A crossing of the static model (see the module's docstring): SymPy's root when it
    checked exactly (``exact``), else a bracket's midpoint within ``width``."""

    expression: sp.Expr
    value: float
    exact: bool
    width: float
    below: Which
    above: Which


class CrossoverAnswer(NamedTuple):
    """Every crossing of A and B's ``metric`` over ``parameter`` in [lo, hi] (empty: ``why``
    says which is better throughout), the points searched, and the static model's closed
    forms (None: ``closed_form_why`` says why there are none)."""

    parameter: str
    metric: str
    lo: float
    hi: float
    crossings: list[Crossing]
    why: str | None
    searched: list[tuple[float, float | None, float | None]]  # (value, A's, B's metric)
    closed_forms: list[ClosedForm] | None
    closed_form_model: str | None
    closed_form_why: str | None


# --------------------------------------------------------------------------- parameters


def parameters(question: Question) -> list[str]:
    """The parameters a crossover may run over for this question: isl, osl, the loop's
    number and every hardware figure of the spec."""
    return whatif.solvable(question.binding, question.point)


def current_value(question: Question, parameter: str) -> float:
    """The question's own value of ``parameter``."""
    if parameter in whatif.WORKLOAD_PARAMETERS:
        return float(getattr(question.point, parameter))
    return whatif.hardware_figures(question.binding.scenario.hardware)[parameter]


def default_range(question: Question, parameter: str) -> tuple[float, float]:
    """Where to search when no range is given (see the constants)."""
    if parameter == "concurrency":
        return DEFAULT_CONCURRENCY
    if parameter in ("isl", "osl"):
        return DEFAULT_TOKENS
    value = current_value(question, parameter)
    span = RATE_SPAN if parameter == "request_rate" else FIGURE_SPAN
    hi = value * span
    if parameter == "usable_memory_fraction":
        hi = 1.0
    return value / span, hi


def _score(prediction: dict[str, Any], metric: str) -> float:
    """Lower is better: the metric (or minus it), +inf without a steady state."""
    value = prediction[metric]
    if not prediction["stable"] or value is None or not math.isfinite(value):
        return math.inf
    return -value if HIGHER_IS_BETTER[metric] else value


def _sign(score_a: float, score_b: float) -> float:
    """-1: A better, +1: B better, 0: equal, NaN: neither has a steady state."""
    if math.isinf(score_a) and math.isinf(score_b):
        return math.nan
    return float(np.sign(score_a - score_b))


def _metric(prediction: dict[str, Any], metric: str) -> float | None:
    value = prediction[metric]
    if not prediction["stable"] or value is None or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------- the full model


def find_crossovers(
    a: Question,
    b: Question,
    parameter: str,
    metric: str = DEFAULT_METRIC,
    lo: float | None = None,
    hi: float | None = None,
) -> CrossoverAnswer:
    """Every value of ``parameter`` in [lo, hi] (default :func:`default_range` of ``a``) where
    A and B's ``metric`` change order, on the full model (see the module's docstring); a
    ValueError for a parameter or metric it does not know, or an empty range."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    for side in (a, b):
        if parameter not in parameters(side):
            known = ", ".join(parameters(side))
            raise ValueError(f"unknown parameter {parameter!r} for this question (known: {known})")
    default = default_range(a, parameter)
    lo = default[0] if lo is None else lo
    hi = default[1] if hi is None else hi
    integer = parameter in INTEGER_PARAMETERS
    if integer:
        lo, hi = math.ceil(lo), math.floor(hi)
    if not (0 < lo < hi):
        raise ValueError(f"need 0 < lo < hi, got [{lo!r}, {hi!r}]")
    searched: list[tuple[float, float | None, float | None]] = []

    def evaluate(values) -> list[float]:
        questions = [
            *whatif.questions_at(a.binding, a.point, parameter, values),
            *whatif.questions_at(b.binding, b.point, parameter, values),
        ]
        found = predict(questions)
        n = len(values)
        signs = []
        for v, pa, pb in zip(values, found[:n], found[n:], strict=True):
            searched.append((float(v), _metric(pa, metric), _metric(pb, metric)))
            signs.append(_sign(_score(pa, metric), _score(pb, metric)))
        return signs

    values = _grid(lo, hi, GRID_POINTS, integer, ends=True)
    signs = evaluate(values)
    brackets = _flips(values, signs)
    crossings = [
        _narrow(a, b, parameter, metric, low, high, s_low, integer, evaluate)
        for (low, s_low), (high, _) in brackets
    ]
    why = None
    if not crossings:
        why = _no_crossing(values, signs, lo, hi)
    model, forms, forms_why = closed_form(a, b, parameter, metric, lo, hi)
    searched.sort()
    return CrossoverAnswer(
        parameter, metric, lo, hi, crossings, why, searched, forms, model, forms_why
    )


def _grid(lo, hi, count: int, integer: bool, *, ends: bool) -> list:
    """``count`` geometric values over [lo, hi] (integers: rounded, unique; without ``ends``
    only the inner ones)."""
    points = np.geomspace(lo, hi, count if ends else count + 2)
    if integer:
        unique = np.unique(np.round(points).astype(np.int64))
        if not ends:
            unique = unique[(unique > lo) & (unique < hi)]
        return [int(p) for p in unique]
    return [float(p) for p in (points if ends else points[1:-1])]


def _flips(values, signs) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Neighbouring (value, sign) pairs of opposite, non-zero signs (ties and points where
    neither side has a steady state skipped)."""
    kept = [(v, s) for v, s in zip(values, signs, strict=True) if s in (-1.0, 1.0)]
    return [(p, q) for p, q in itertools.pairwise(kept) if p[1] != q[1]]


def _no_crossing(values, signs, lo, hi) -> str:
    """Why there is no crossing: one is better (or they tie) throughout."""
    defined = {s for s in signs if not math.isnan(s)}
    where = f"over [{lo:.6g}, {hi:.6g}]"
    if not defined:
        return f"neither has a steady state anywhere {where}"
    if defined <= {0.0}:
        return f"A and B are equal throughout {where}"
    if defined <= {-1.0, 0.0}:
        return f"A is better throughout {where} (no change of order)"
    if defined <= {1.0, 0.0}:
        return f"B is better throughout {where} (no change of order)"
    return f"the order changes only through ties {where}"


def _narrow(a, b, parameter, metric, low, high, s_low, integer, evaluate) -> Crossing:
    """Narrow one bracket to the flip (see the module's docstring) and verify it."""
    for _ in range(MAX_ROUNDS):
        if integer and high - low <= 1:
            break
        if not integer and (high - low) <= CROSSOVER_RTOL * high:
            break
        inner = (
            _grid(low, high, REFINE_POINTS, True, ends=False)
            if integer
            else [float(v) for v in np.linspace(low, high, REFINE_POINTS + 2)[1:-1]]
        )
        if not inner:
            break
        signs = evaluate(inner)
        if 0.0 in signs:  # an exact tie: the metrics meet there
            tie = inner[signs.index(0.0)]
            low = high = tie
            break
        ends = [(low, s_low), *zip(inner, signs, strict=True), (high, -s_low)]
        kept = [(v, s) for v, s in ends if not math.isnan(s)]
        flip = next(i for i in range(len(kept) - 1) if kept[i][1] != kept[i + 1][1])
        low, high = kept[flip][0], kept[flip + 1][0]
    return _verify(a, b, parameter, metric, low, high, s_low, integer)


def _verify(a, b, parameter, metric, low, high, s_low, integer) -> Crossing:
    """Re-evaluate A and B at the bracket's ends (and a real bracket's midpoint)."""
    value = high if integer else (low + high) / 2
    values = [low, high, value]
    found = predict(
        [
            *whatif.questions_at(a.binding, a.point, parameter, values),
            *whatif.questions_at(b.binding, b.point, parameter, values),
        ]
    )
    pa, pb = found[:3], found[3:]
    signs = [_sign(_score(x, metric), _score(y, metric)) for x, y in zip(pa, pb, strict=True)]
    below: Which = "a" if s_low < 0 else "b"
    above: Which = "b" if below == "a" else "a"
    verified = (low == high and signs[0] == 0.0) or (signs[0] == s_low and signs[1] == -s_low)
    metrics = [(_metric(x, metric), _metric(y, metric)) for x, y in zip(pa, pb, strict=True)]
    feasible = all(m is not None for pair in metrics[:2] for m in pair)
    kind = "equal"
    if not feasible:
        kind = "feasibility"
    elif any(_capacity_step(side[0], side[1]) for side in (pa, pb)):
        kind = "capacity"
    gap = None
    if all(m is not None for m in metrics[2]):
        ma, mb = metrics[2]
        gap = abs(ma - mb) / max(abs(ma), abs(mb))
    return Crossing(
        float(value),
        float(low),
        float(high),
        kind,
        below,
        above,
        metrics[0],
        metrics[1],
        gap,
        bool(verified),
    )


def _capacity_step(low: dict[str, Any], high: dict[str, Any]) -> bool:
    """Whether the requests the KV cache holds change across a bracket where they bind (fewer
    than the clients): an integer step of the model, where the metrics jump."""
    fits = (low["max_concurrency_fits"], high["max_concurrency_fits"])
    if fits[0] == fits[1]:
        return False
    clients = low["decode_batch"] if math.isfinite(low["decode_batch"]) else 0.0
    return min(fits) <= max(clients, high["decode_batch"]) + 1


# --------------------------------------------------------------------------- closed form

PURE_ROOFLINE_ONLY = (
    "closed forms are given for the pure roofline only (no engine, no fitted terms)"
)


def _is_pure(binding: Binding) -> bool:
    return binding.engine is None and not any(binding.time_model)


def _layout(point: ServingPoint) -> dict[str, Any]:
    """The serving point without its workload numbers (what must match for the static model)."""
    fields = asdict(point)
    for name in whatif.WORKLOAD_PARAMETERS:
        fields.pop(name)
    return fields


def static_metric(
    binding: Binding, point: ServingPoint, parameter: str, metric: str, variable: sp.Symbol
) -> sp.Expr | None:
    """The static model's ``metric`` as an exact expression of ``variable`` (the parameter),
    everything else substituted; lower is better: the mean step's time [s] for TPOT,
    GPU-seconds per output token (gpus x step / c) for throughput per GPU.  The mean step
    (:meth:`Binding.symbolic_mixed_step_time`) carries c = concurrency decoding sequences at
    context T = isl + osl/2 and the prompts of the c/osl requests that finish each step,
    P = c x isl x (1 - prefix hit) / osl tokens of prompts S = isl long.  A hardware figure
    enters through the binding values proportional to it (:func:`figure_values`).  None for
    TTFT, an open loop, speculative decoding or a figure that moves no value in proportion
    (no such static model)."""
    if metric not in STATIC_METRICS or point.concurrency is None or point.draft_tokens:
        return None
    values = dict(binding.values)
    if parameter not in INTEGER_PARAMETERS:
        if parameter not in whatif.hardware_figures(binding.scenario.hardware):
            return None
        moved = figure_values(binding, parameter)
        if not moved:
            return None
        current = sp.Rational(repr(whatif.hardware_figures(binding.scenario.hardware)[parameter]))
        values |= {symbol: values[symbol] * variable / current for symbol in moved}
    numbers = {
        "concurrency": sp.Integer(point.concurrency),
        "isl": sp.Integer(point.isl),
        "osl": sp.Integer(point.osl),
    }
    numbers[parameter] = variable
    c, isl, osl = numbers["concurrency"], numbers["isl"], numbers["osl"]
    hit = sp.Rational(repr(point.prefix_hit))
    mean_step = {
        sy.n_d: c,
        sy.P: c * isl * (1 - hit) / osl,
        sy.S: isl,
        sy.T: isl + osl / 2,
        sy.q: sp.Integer(1),
        sy.t_sched: sp.Rational(repr(binding.step_overhead())),
    }
    step = _mixed_step(binding).xreplace(values | mean_step)
    return step if metric == "tpot_ms" else sp.Integer(binding.setting.tp) * step / c


def figure_values(binding: Binding, parameter: str) -> list[sp.Symbol] | None:
    """The binding values hardware figure ``parameter`` moves, each in proportion to it (the
    spec rebound with the figure doubled doubles them exactly); None if one it moves is not
    in proportion."""
    figure = whatif.hardware_figures(binding.scenario.hardware)[parameter]
    doubled = whatif.rebind(
        binding, whatif.with_figure(binding.scenario.hardware, parameter, 2 * figure)
    )
    moved = []
    for symbol, value in binding.values.items():
        other = doubled.values[symbol]
        if other == value:
            continue
        if sp.simplify(other - 2 * value) != 0:
            return None
        moved.append(symbol)
    return moved


_MIXED: dict[tuple, sp.Expr] = {}


def _mixed_step(binding: Binding) -> sp.Expr:
    """The binding's mixed step time before values (built once per structure)."""
    key = structure_key(binding)
    if key not in _MIXED:
        _MIXED[key] = binding.symbolic_mixed_step_time()
    return _MIXED[key]


def _static_sign(difference: sp.Expr, variable: sp.Symbol, value) -> float:
    """The sign of the static difference at ``value`` (NaN where it is not a real number)."""
    number = difference.xreplace({variable: sp.Rational(value)}).evalf(STATIC_DIGITS)
    return float(sp.sign(number)) if number.is_real else math.nan


def closed_form(
    a: Question, b: Question, parameter: str, metric: str, lo: float, hi: float
) -> tuple[str | None, list[ClosedForm] | None, str | None]:
    """(the static model, its crossings in [lo, hi], why there are none): every sign change
    of the static difference on a grid, solved by :func:`costmodel.model.crossover.crossover`."""
    if not (_is_pure(a.binding) and _is_pure(b.binding)):
        return None, None, PURE_ROOFLINE_ONLY
    if _layout(a.point) != _layout(b.point) or a.point.disaggregated:
        return (
            None,
            None,
            (
                "the static model has one aggregated replica: A and B must differ in their "
                "setting (tp, formats) only, not in their serving layout"
            ),
        )
    variable = sp.Symbol(parameter, positive=True)
    exprs = [static_metric(q.binding, q.point, parameter, metric, variable) for q in (a, b)]
    if exprs[0] is None or exprs[1] is None:
        if metric not in STATIC_METRICS:
            return (
                None,
                None,
                ("TTFT has no static model: it is the wait for a step's prefill budget as well"),
            )
        return (
            None,
            None,
            (
                f"{parameter} is not a variable of the static mean step (a closed loop without "
                "speculative decoding, over concurrency, isl or osl)"
            ),
        )
    what = "step time [s]" if metric == "tpot_ms" else "GPU-seconds per output token"
    model = f"{STATIC_MODEL}: {what}"
    difference = exprs[0] - exprs[1]
    grid = _grid(lo, hi, GRID_POINTS, parameter in INTEGER_PARAMETERS, ends=True)
    signs = [_static_sign(difference, variable, v) for v in grid]
    forms = []
    for (low, _), (high, _) in _flips(grid, signs):
        try:
            found = crossover(exprs[0], exprs[1], variable, low, high)
        except NoCrossoverError:
            continue
        forms.append(
            ClosedForm(
                found.point,
                float(found.point),
                found.exact,
                float(found.width),
                found.below,
                found.above,
            )
        )
    if not forms:
        return model, None, f"the static model's {metric} of A and B do not cross in the range"
    return model, forms, None
