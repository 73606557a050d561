"""The optimiser: tensor-parallel degree, weight and KV-cache formats and batch for a scenario.

The problem (constraints, objectives) is :mod:`costmodel.search.problem`'s.  Every categorical
combination is enumerated (at most a few hundred), and for each:

1. *Relaxation* (:mod:`costmodel.search.relaxation`): SLSQP in log B with JAX derivatives.
   Combinations infeasible at batch 1 are not relaxed (the certificate still covers them).
2. *Certificate* (:mod:`costmodel.search.certificate`): the best integer batch lies among a few
   candidates (breakpoint and constraint-root neighbours, the relaxed optimum, the ends); all
   are evaluated exactly, which makes the answer the integer optimum, not a rounding.
3. *Choice*: the best combination wins; configurations within a relative
   :data:`~costmodel.search.problem.TIE_RTOL` of the best objective are ties, resolved to the
   first in grid order (tp, weight dtype, KV dtype in the scenario's order, then batch), exactly
   as the brute-force verifier (:mod:`costmodel.search.verifier`) resolves them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from costmodel.config.specs import Scenario
from costmodel.search.certificate import candidates, first_reaching
from costmodel.search.problem import (
    OBJECTIVES,
    Combo,
    ComboValues,
    Point,
    Problem,
    ScenarioValues,
    combo_table,
    combos,
    evaluate,
    feasible,
    points,
    problem,
    reaches,
    scenario_values,
    take,
    tie_threshold,
)
from costmodel.search.relaxation import Relaxed, relax


class ComboResult(NamedTuple):
    """The certified optimum of one combination and why it stops where it does.

    ``best`` is None when no batch is feasible; ``limit`` names what stops the batch growing
    ("memory", "tpot", "ttft", "batch_max", "objective", or "infeasible"); ``first`` is batch 1,
    evaluated.
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


class _Search(NamedTuple):
    """What every step of one optimisation shares."""

    model: Problem
    combo_list: list[Combo]
    table: ComboValues
    scenario: ScenarioValues
    objective: str


def _evaluate_at(search: _Search, batches: Sequence[int | None]) -> dict[int, Point]:
    """Points of combination i at ``batches[i]``, for the non-None entries, keyed by i."""
    pairs = [(i, b) for i, b in enumerate(batches) if b is not None]
    if not pairs:
        return {}
    index = np.array([i for i, _ in pairs])
    batch = np.array([b for _, b in pairs], dtype=float)
    out = evaluate(search.model, batch, take(search.table, index), search.scenario)
    found = points(
        [search.combo_list[i] for i in index], [b for _, b in pairs], out, search.objective
    )
    return dict(zip(index.tolist(), found, strict=True))


def _best_batches(search: _Search, cands: list[np.ndarray]) -> list[int | None]:
    """Per combination, its best feasible candidate batch (None if none is feasible)."""
    objective = OBJECTIVES[search.objective]
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(cands)]).astype(int)
    out = evaluate(search.model, np.concatenate(cands), take(search.table, owner), search.scenario)
    worst = -np.inf if objective.maximise else np.inf
    score = np.where(feasible(out), out[objective.output], worst)
    best: list[int | None] = []
    start = 0
    for c in cands:
        s = score[start : start + len(c)]
        j = int(np.argmax(s) if objective.maximise else np.argmin(s))
        best.append(int(c[j]) if np.isfinite(s[j]) else None)
        start += len(c)
    return best


def _limits(search: _Search, best_batch: list[int | None], batch_max: int) -> list[str]:
    """What stops each combination's batch: the constraint broken one batch further, the
    batch ceiling, or the objective itself (a larger batch is feasible but worse)."""
    after = _evaluate_at(
        search, [b + 1 if b is not None and b < batch_max else None for b in best_batch]
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


def _choose(
    search: _Search, best_points: dict[int, Point], cands: list[np.ndarray]
) -> Point | None:
    """The first configuration in grid order within TIE_RTOL of the best objective."""
    if not best_points:
        return None
    objective = OBJECTIVES[search.objective]
    values = [p.objective for p in best_points.values()]
    threshold = tie_threshold(
        max(values) if objective.maximise else min(values), objective.maximise
    )
    for i in sorted(best_points):
        if not reaches(best_points[i].objective, threshold, objective.maximise):
            continue
        combo = take(search.table, i)
        batch = first_reaching(search.model, combo, search.scenario, cands[i], objective, threshold)
        if batch is not None:
            return _evaluate_at(search, [batch if j == i else None for j in range(i + 1)])[i]
    return None


def _rounded(batch: float) -> set[int]:
    return {math.floor(batch), math.ceil(batch)}


def optimise(scenario: Scenario) -> Optimum:
    """Choose combination and batch for ``scenario`` (see the module doc for the method)."""
    started = time.perf_counter()
    objective = OBJECTIVES[scenario.objective]
    batch_max = scenario.search.batch_max
    combo_list = combos(scenario)
    if not combo_list:  # every tp excluded: nothing to search
        return Optimum(None, (), scenario.objective, objective.maximise, 0, 0.0)
    search = _Search(
        problem(scenario),
        combo_list,
        combo_table(scenario, combo_list),
        scenario_values(scenario),
        scenario.objective,
    )
    # Batch 1 of every combination: the relaxation starts there.
    firsts = _evaluate_at(search, [1] * len(combo_list))
    evaluations = len(combo_list)
    relaxed: list[Relaxed | None] = []
    for i in range(len(combo_list)):
        r = None
        if firsts[i].feasible:
            r = relax(search.model, take(search.table, i), search.scenario, objective, batch_max)
            evaluations += r.evaluations
        relaxed.append(r)

    cands = candidates(
        search.model,
        search.table,
        search.scenario,
        batch_max,
        [r.batch if r else 1.0 for r in relaxed],
    )
    evaluations += sum(len(c) for c in cands)
    best_batch = _best_batches(search, cands)
    best_points = _evaluate_at(search, best_batch)
    chosen = _choose(search, best_points, cands)
    limits = _limits(search, best_batch, batch_max)
    results = []
    for i, combo in enumerate(combo_list):
        r, point = relaxed[i], best_points.get(i)
        exact_relaxation = bool(r and point and point.batch in _rounded(r.batch))
        results.append(
            ComboResult(combo, point, limits[i], firsts[i], r, exact_relaxation, len(cands[i]))
        )
    return Optimum(
        chosen,
        tuple(results),
        scenario.objective,
        objective.maximise,
        evaluations,
        time.perf_counter() - started,
    )
