"""The optimiser on the serving model: the deployment and the concurrency that serve best.

For a scenario in ``continuous`` serving mode it chooses the tensor-parallel degree, the weight
and KV-cache dtypes, the step's token budget, the draft length (when speculation is allowed)
and the closed-loop concurrency c of each replica, to maximise output throughput per GPU (or
minimise the cost per million output tokens, or the request latency) subject to the TTFT and
TPOT SLOs (mean values of the steady state) and to the weights fitting beside a KV cache.

How: in the serving model's steady state (:mod:`costmodel.model.serving`) more concurrency
means more decoding sequences, so longer steps and more waiting: TTFT and TPOT rise with c,
and throughput rises with c until the KV cache is full, then stays (the extra requests only
queue).  So for each combination the largest c meeting both SLOs is found by bisection over
the integers (:func:`largest_feasible`), and the best c is the smaller of it and the requests
that fit (throughput and cost objectives; c = 1 for latency).  Throughput need not keep rising
all the way: once a step is compute-bound its time grows in proportion to the batch, and the
attention of the longer batch and (Mixture-of-Experts) the imbalance of more routed rows can
make it fall slightly before the SLO stops it.  So the objective is also sampled on a geometric
grid below that limit and the peak located by bisection on its discrete slope
(:func:`peak_concurrency`, exact when the objective is unimodal in c).  The verifier
(:func:`brute_force`) evaluates every combination at every c from 1 to ``concurrency_max``
and takes the best, ties within :data:`~costmodel.search.problem.TIE_RTOL` going to the first in
grid order, as the optimiser does; the tests hold the two equal.

**A probability of meeting the SLOs** (``slo.probability`` p, engine-calibrated scenarios
only): a point is feasible only if, besides its central prediction meeting both SLOs, the
share of :data:`~costmodel.search.uncertainty.SEARCH_DRAWS` Monte-Carlo draws of the engine
calibration's posterior meeting both (:func:`costmodel.search.uncertainty.meet_probabilities`)
is at least p.  The draws are the same at every concurrency (a fixed seed: common random
numbers), and each draw's TTFT and TPOT rise with c, so that share falls with c and the
largest feasible c is still found by the same bisection; the share is computed only for points
whose central prediction already meets the SLOs (the cheap deterministic check narrows them
first), and the objective's peak search below that limit needs none (every c there is
feasible).  The verifier computes it for every centrally feasible point of its grid.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from costmodel.config.bind import Binding, ServingPoint, Setting, bind
from costmodel.config.specs import Scenario
from costmodel.search import predict as predictions
from costmodel.search import uncertainty
from costmodel.search.problem import TIE_RTOL


class Choice(NamedTuple):
    """One categorical choice: tensor-parallel degree, dtypes, token budget, draft tokens, and
    prefill/decode replicas (0, 0: aggregated serving on one replica)."""

    tp: int
    weight_dtype: str
    kv_dtype: str
    token_budget: int
    draft_tokens: int
    prefill_replicas: int = 0
    decode_replicas: int = 0
    ep: int = 1
    attention_dp: bool = False
    expert_dtype: str | None = None

    @property
    def gpus(self) -> int:
        """GPUs one deployment of this choice takes."""
        return self.tp * max(1, self.prefill_replicas + self.decode_replicas)

    @property
    def setting(self) -> Setting:
        """The binding's part of the choice."""
        return Setting(
            self.tp,
            self.weight_dtype,
            self.kv_dtype,
            ep=self.ep,
            attention_dp=self.attention_dp,
            expert_dtype=self.expert_dtype,
        )


class Operating(NamedTuple):
    """A choice at a concurrency, with the serving model's answer there."""

    choice: Choice
    concurrency: int
    answer: dict[str, Any]
    objective: float
    feasible: bool
    violated: tuple[str, ...]


def choices(scenario: Scenario) -> list[Choice]:
    """Every categorical choice in grid order (tp, weight dtype, KV dtype, budget, drafts,
    then aggregated before each disaggregated deployment; for Mixture-of-Experts models each
    expert-parallel layout and expert format last), those that fit in ``n_gpus`` and whose
    ep divides tp (data-parallel attention: ep == tp)."""
    search, serving = scenario.search, scenario.serving
    budgets = serving.token_budgets or [None]
    layouts = [(0, 0)] + [tuple(pair) for pair in serving.disaggregation]
    moe = scenario.model.moe is not None
    eps = search.ep if moe else [1]
    dps = search.attention_dp if moe else [False]
    experts = (search.expert_dtypes or [None]) if moe else [None]
    out = []
    for tp, w, kv, budget, k, (x, y), ep, dp, e in itertools.product(
        search.tp,
        search.weight_dtypes,
        search.kv_dtypes,
        budgets,
        serving.speculation.draft_tokens,
        layouts,
        eps,
        dps,
        experts,
    ):
        if tp % ep or (dp and ep != tp):
            continue
        # a model with experts names its experts' format (the weights' unless chosen apart)
        choice = Choice(tp, w, kv, budget or 0, k, x, y, ep, dp, (e or w) if moe else None)
        if choice.gpus <= scenario.n_gpus:
            out.append(choice)
    return list(dict.fromkeys(out))


def _bindings(scenario: Scenario, choice_list: Sequence[Choice]) -> dict[Setting, Binding]:
    return {c.setting: bind(scenario, c.setting) for c in dict.fromkeys(choice_list)}


def _point(scenario: Scenario, choice: Choice, concurrency: int) -> ServingPoint:
    spec = scenario.serving.speculation
    return ServingPoint(
        scenario.workload.prompt_tokens,
        scenario.workload.output_tokens,
        concurrency=concurrency,
        token_budget=choice.token_budget or None,
        prefix_hit=scenario.serving.prefix_hit,
        draft_tokens=choice.draft_tokens,
        acceptance=spec.acceptance if choice.draft_tokens else 0.0,
        draft_cost=spec.draft_cost if choice.draft_tokens else 0.0,
        prefill_replicas=choice.prefill_replicas,
        decode_replicas=choice.decode_replicas,
    )


OBJECTIVE_KEY = {
    "throughput_per_gpu": ("output_tok_s_per_gpu", True),
    "cost_per_million_tokens": ("cost_per_mtok_usd", False),
    "latency": ("request_latency_s", False),
}


def require_chance(scenario: Scenario) -> None:
    """:class:`~costmodel.search.uncertainty.NoCalibrationError` when ``slo.probability`` is
    set on a scenario without an engine calibration (no posterior to draw from)."""
    if scenario.slo.probability is not None and (
        scenario.engine is None or scenario.kernels is None
    ):
        raise uncertainty.NoCalibrationError(
            f"slo.probability needs an engine calibration: {scenario.name} has "
            + (f"no calibration for {scenario.engine}" if scenario.engine else "no engine")
            + " (the pure roofline has no posterior)"
        )


def evaluate(
    scenario: Scenario,
    pairs: Sequence[tuple[Choice, int]],
    bindings: dict[Setting, Binding] | None = None,
    *,
    chance: bool = True,
) -> list[Operating]:
    """The serving model at every (choice, concurrency) pair, with objective and SLO checks;
    with ``slo.probability`` set and ``chance``, the centrally feasible points' probability of
    meeting the SLOs (``slo_probability`` in the answer) must reach it ("probability")."""
    if bindings is None:
        bindings = _bindings(scenario, [c for c, _ in pairs])
    questions = [
        predictions.Question(bindings[c.setting], _point(scenario, c, n)) for c, n in pairs
    ]
    answers = predictions.predict(questions) if questions else []
    key, _ = OBJECTIVE_KEY[scenario.objective]
    tpot_max, ttft_max = scenario.slo.tpot_ms, scenario.slo.ttft_ms
    out = []
    for (choice, n), answer in zip(pairs, answers, strict=True):
        rate = answer["output_tok_s_per_gpu"]
        answer["cost_per_mtok_usd"] = (
            scenario.gpu_hour_usd / 3600 / rate * 1e6 if rate > 0 else math.inf
        )
        violated = []
        if not answer["max_concurrency_fits"] >= 1:
            violated.append("memory")  # nothing runs: its times say nothing more
        else:
            if not answer["ttft_ms"] <= ttft_max:
                violated.append("ttft")
            if not answer["tpot_ms"] <= tpot_max:
                violated.append("tpot")
        out.append(Operating(choice, n, answer, answer[key], not violated, tuple(violated)))
    if scenario.slo.probability is not None and chance:
        out = _with_chance(scenario, out, questions)
    return out


def _with_chance(
    scenario: Scenario, points: list[Operating], questions: Sequence[predictions.Question]
) -> list[Operating]:
    """``points`` with each centrally feasible one's P(meet SLO) computed and checked."""
    require_chance(scenario)
    slo = {"ttft_ms": scenario.slo.ttft_ms, "tpot_ms": scenario.slo.tpot_ms}
    wanted = [i for i, p in enumerate(points) if p.feasible]
    shares = uncertainty.meet_probabilities([questions[i] for i in wanted], slo)
    out = list(points)
    for i, share in zip(wanted, shares, strict=True):
        p = points[i]
        p.answer["slo_probability"] = float(share)
        if not share >= scenario.slo.probability:
            out[i] = p._replace(feasible=False, violated=("probability",))
    return out


def _better(a: float, b: float, maximise: bool) -> bool:
    """``a`` beats ``b`` by more than the tie tolerance."""
    if maximise:
        return a > b + TIE_RTOL * abs(b)
    return a < b - TIE_RTOL * abs(b)


def best_of(points: Sequence[Operating], maximise: bool) -> Operating | None:
    """The best feasible point, ties to the first in the given order."""
    best = None
    for p in points:
        if p.feasible and (best is None or _better(p.objective, best.objective, maximise)):
            best = p
    return best


class ChoiceResult(NamedTuple):
    """The optimum of one choice (None if no concurrency is feasible), what stops its
    concurrency ("ttft", "tpot", "memory", "kv_capacity", "concurrency_max", "objective"),
    and the choice at concurrency 1."""

    choice: Choice
    best: Operating | None
    limit: str
    first: Operating


class ServingOptimum(NamedTuple):
    """The optimiser's answer and every choice's."""

    best: Operating | None
    choices: tuple[ChoiceResult, ...]
    objective: str
    maximise: bool
    evaluations: int
    seconds: float


def largest_feasible(scenario: Scenario, bindings, choice_list: Sequence[Choice]) -> list[int]:
    """For every choice, the largest concurrency in [1, concurrency_max] meeting both SLOs and
    memory (0 if concurrency 1 does not): integer bisection, all choices in one call a round."""
    top = scenario.serving.concurrency_max
    lo = np.zeros(len(choice_list), dtype=np.int64)  # known feasible (0: none yet)
    hi = np.full(len(choice_list), top + 1, dtype=np.int64)  # known infeasible
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        active = np.nonzero(hi - lo > 1)[0]
        pts = evaluate(scenario, [(choice_list[i], int(mid[i])) for i in active], bindings)
        for i, p in zip(active, pts, strict=True):
            if p.feasible:
                lo[i] = mid[i]
            else:
                hi[i] = mid[i]
    return [int(x) for x in lo]


PEAK_GRID = 16  # geometric samples of the objective below a choice's largest concurrency


def peak_concurrency(
    scenario: Scenario, bindings, choice_list: Sequence[Choice], limits: Sequence[int]
) -> tuple[list[int], int]:
    """For every choice, the concurrency in [1, limit] with the best objective (ties to the
    smallest), and the evaluations spent: the objective on a geometric grid, then bisection on
    its discrete slope between the best sample's neighbours (every choice in one call a round;
    the objective is taken to be unimodal in c).  A choice whose objective still improves from
    limit - 1 to limit has its peak at the limit (unimodality) and is searched no further."""
    _, maximise = OBJECTIVE_KEY[scenario.objective]
    ends = evaluate(
        scenario,
        [(c, n) for c, top in zip(choice_list, limits, strict=True) for n in (top - 1, top)],
        bindings,
        chance=False,  # every c up to the limit is feasible: only the objective is wanted
    )
    rising = [
        _better(b.objective, a.objective, maximise)
        for a, b in zip(ends[::2], ends[1::2], strict=True)
    ]
    falling = [i for i, up in enumerate(rising) if not up]
    peaks = list(limits)
    if falling:
        found, spent = _peaks(
            scenario, bindings, [choice_list[i] for i in falling], [limits[i] for i in falling]
        )
        for i, n in zip(falling, found, strict=True):
            peaks[i] = n
        return peaks, len(ends) + spent
    return peaks, len(ends)


def _peaks(
    scenario: Scenario, bindings, choice_list: Sequence[Choice], limits: Sequence[int]
) -> tuple[list[int], int]:
    """:func:`peak_concurrency`'s search: the geometric grid, then slope bisection."""
    _, maximise = OBJECTIVE_KEY[scenario.objective]
    grids = [
        sorted({round(float(x)) for x in np.geomspace(1, top, PEAK_GRID)} | {top}) for top in limits
    ]
    pts = evaluate(
        scenario,
        [(c, n) for c, g in zip(choice_list, grids, strict=True) for n in g],
        bindings,
        chance=False,
    )
    evaluations = len(pts)
    it = iter(pts)
    lo, hi, best = [], [], []
    for grid in grids:
        values = [next(it).objective for _ in grid]
        j = 0
        for i, v in enumerate(values):
            if _better(v, values[j], maximise):
                j = i
        lo.append(grid[max(j - 1, 0)])
        hi.append(grid[min(j + 1, len(grid) - 1)])
        best.append((values[j], grid[j]))
    lo, hi = np.array(lo), np.array(hi)
    while np.any(hi - lo > 1):
        active = np.nonzero(hi - lo > 1)[0]
        mid = (lo + hi) // 2
        pairs = [(choice_list[i], int(n)) for i in active for n in (mid[i], mid[i] + 1)]
        pts = evaluate(scenario, pairs, bindings, chance=False)
        evaluations += len(pts)
        for k, i in enumerate(active):
            here, after = pts[2 * k], pts[2 * k + 1]
            if _better(after.objective, here.objective, maximise):
                lo[i] = mid[i] + 1
            else:
                hi[i] = mid[i]
            for p in (here, after):
                value, n = best[i]
                if _better(p.objective, value, maximise) or (
                    not _better(value, p.objective, maximise) and p.concurrency < n
                ):
                    best[i] = (p.objective, p.concurrency)
    return [n for _, n in best], evaluations


def optimise(scenario: Scenario) -> ServingOptimum:
    """The best choice and concurrency of a continuous-serving scenario (see module doc)."""
    start = time.perf_counter()
    require_chance(scenario)
    _, maximise = OBJECTIVE_KEY[scenario.objective]
    choice_list = choices(scenario)
    bindings = _bindings(scenario, choice_list)
    firsts = evaluate(scenario, [(c, 1) for c in choice_list], bindings)
    fits = [p.answer["max_concurrency_fits"] for p in firsts]
    evaluations = len(firsts)
    largest = largest_feasible(scenario, bindings, choice_list)
    evaluations += sum(
        math.ceil(math.log2(scenario.serving.concurrency_max + 1)) for _ in choice_list
    )
    picks = []
    for top, fit in zip(largest, fits, strict=True):
        if top < 1:
            picks.append(None)
        elif scenario.objective == "latency":
            picks.append(1)
        else:
            picks.append(min(top, max(fit, 1)))
    searched = [i for i, n in enumerate(picks) if n is not None and n > 1]
    if searched and scenario.objective != "latency":
        peaks, spent = peak_concurrency(
            scenario, bindings, [choice_list[i] for i in searched], [picks[i] for i in searched]
        )
        evaluations += spent
        for i, n in zip(searched, peaks, strict=True):
            picks[i] = n
    wanted = [(c, n) for c, n in zip(choice_list, picks, strict=True) if n is not None]
    # What stops each choice: the SLO broken one above its largest feasible concurrency, unless
    # the KV cache or concurrency_max stops it first (all such points in one evaluation).
    top_max = scenario.serving.concurrency_max
    probes = [
        (c, top + 1)
        for c, top, fit in zip(choice_list, largest, fits, strict=True)
        if top >= 1 and scenario.objective != "latency" and fit > top and top < top_max
    ]
    done = evaluate(scenario, wanted + probes, bindings)
    chosen, above = iter(done[: len(wanted)]), {p.choice: p for p in done[len(wanted) :]}
    results = []
    for choice, pick, top, fit, first in zip(
        choice_list, picks, largest, fits, firsts, strict=True
    ):
        best = next(chosen) if pick is not None else None
        limit = _limit(scenario, top, fit, first, above.get(choice))
        results.append(ChoiceResult(choice, best, limit, first))
    best = best_of([r.best for r in results if r.best is not None], maximise)
    return ServingOptimum(
        best,
        tuple(results),
        scenario.objective,
        maximise,
        evaluations + len(wanted) + len(probes),
        time.perf_counter() - start,
    )


def _limit(
    scenario: Scenario, top: int, fit: int, first: Operating, above: Operating | None
) -> str:
    """What stops a choice's concurrency growing (``above``: the choice one past its largest
    feasible concurrency, when neither the KV cache nor concurrency_max stops it)."""
    if top < 1:
        return first.violated[0] if first.violated else "infeasible"
    if scenario.objective == "latency":
        return "objective"
    if fit <= top:
        return "kv_capacity"
    if top >= scenario.serving.concurrency_max or above is None:
        return "concurrency_max"
    return above.violated[0] if above.violated else "objective"


class ServingBruteForce(NamedTuple):
    """Every choice at every concurrency: the best point, configurations evaluated and feasible,
    wall time [s]."""

    best: Operating | None
    evaluated: int
    feasible: int
    seconds: float


def brute_force(scenario: Scenario) -> ServingBruteForce:
    """The verifier: every choice at concurrency 1..concurrency_max, the best feasible one."""
    start = time.perf_counter()
    require_chance(scenario)
    _, maximise = OBJECTIVE_KEY[scenario.objective]
    choice_list = choices(scenario)
    bindings = _bindings(scenario, choice_list)
    top = scenario.serving.concurrency_max
    # A choice whose weights leave no room for one request's KV cache is infeasible at every
    # concurrency (nothing runs): it is counted, not evaluated once per concurrency.
    firsts = evaluate(scenario, [(c, 1) for c in choice_list], bindings)
    runnable = [p.choice for p in firsts if p.answer["max_concurrency_fits"] >= 1]
    pairs = [(c, n) for c in runnable for n in range(1, top + 1)]
    points = evaluate(scenario, pairs, bindings)
    best = best_of(points, maximise)
    count = sum(p.feasible for p in points)
    return ServingBruteForce(best, len(choice_list) * top, count, time.perf_counter() - start)


def operating_record(point: Operating | None) -> dict[str, Any] | None:
    """A JSON-ready record of a choice at a concurrency."""
    if point is None:
        return None
    record = {**point.choice._asdict(), "concurrency": point.concurrency, **point.answer}
    record["objective"] = point.objective
    # JSON has no infinity: a time the model cannot give (an unstable loop) is null.
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


UNITS = {
    "throughput_per_gpu": "output tok/s per GPU",
    "cost_per_million_tokens": "USD per 1M output tokens",
    "latency": "s per request",
}
AGREE_RTOL = 1e-9  # optimiser and verifier objectives this close (relative) agree

REASONS = {
    "ttft": "TTFT SLO",
    "tpot": "TPOT SLO",
    "probability": "probability of meeting the SLOs below slo.probability",
    "memory": "weights leave no room for a KV cache",
    "kv_capacity": "KV cache full (more concurrency only queues)",
    "concurrency_max": "serving.concurrency_max",
    "objective": "objective",
    "infeasible": "infeasible",
}


def _reason(result: ChoiceResult, best: Operating | None, maximise: bool) -> str:
    """Why a choice lost to ``best``."""
    if result.best is None:
        broken = ", ".join(REASONS[v] for v in result.first.violated) or "infeasible"
        return f"infeasible at concurrency 1: {broken}"
    stop = REASONS[result.limit]
    if best is not None and result.best.choice == best.choice:
        return "chosen"
    if best is not None and not _better(best.objective, result.best.objective, maximise):
        return f"tie, later in grid order (stopped by {stop})"
    return f"worse objective at concurrency {result.best.concurrency} (stopped by {stop})"


def _with_replicas(scenario: Scenario, record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    replicas = scenario.n_gpus // record["gpus"]
    return record | {
        "replicas": replicas,
        "output_tok_s_total": record["output_tok_s"] * replicas,
    }


def report(scenario: Scenario, optimum: ServingOptimum, brute: ServingBruteForce) -> dict:
    """The JSON-ready report of a continuous-serving optimisation (see experiments.optimise)."""
    best = optimum.best
    agrees = (best is None) == (brute.best is None) and (
        best is None
        or (
            math.isclose(best.objective, brute.best.objective, rel_tol=AGREE_RTOL)
            and best.choice == brute.best.choice
            and best.concurrency == brute.best.concurrency
        )
    )
    closest = None
    if best is None:
        firsts = sorted(optimum.choices, key=lambda r: len(r.first.violated))
        closest = operating_record(firsts[0].first) | {"violated": list(firsts[0].first.violated)}
    serving = scenario.serving
    return {
        "mode": "continuous",
        "scenario": {
            "name": scenario.name,
            "model": scenario.model.name,
            "experts": scenario.model.moe is not None,
            "hardware": scenario.hardware.name,
            "n_gpus": scenario.n_gpus,
            "engine": scenario.engine,
            "prompt_tokens": scenario.workload.prompt_tokens,
            "output_tokens": scenario.workload.output_tokens,
            "serving": serving.model_dump(),
            "search": scenario.search.model_dump(),
        },
        "objective": {
            "name": scenario.objective,
            "maximise": optimum.maximise,
            "unit": UNITS[scenario.objective],
        },
        "constraints": {
            "tpot_ms_max": scenario.slo.tpot_ms,
            "ttft_ms_max": scenario.slo.ttft_ms,
            "probability_min": scenario.slo.probability,
        },
        "best": _with_replicas(scenario, operating_record(best)),
        "brute_force": {
            "best": _with_replicas(scenario, operating_record(brute.best)),
            "evaluated": brute.evaluated,
            "feasible": brute.feasible,
            "agrees": bool(agrees),
        },
        "optimiser": {"choices": len(optimum.choices), "evaluations": optimum.evaluations},
        "optimiser_seconds": optimum.seconds,
        "brute_force_seconds": brute.seconds,
        "runners_up": [
            {
                **r.choice._asdict(),
                "best": operating_record(r.best),
                "limit": r.limit,
                "reason": _reason(r, best, optimum.maximise),
            }
            for r in optimum.choices
            if best is None or r.best is None or r.best.choice != best.choice
        ],
        "explanation": {"closest": closest},
    }
