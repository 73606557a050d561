"""The integer certificate: the few batches that must contain a combination's best batch.

Step times are sums of max(linear, linear) in B plus linear terms, so TPOT, TTFT and memory are
piecewise linear in B, with breakpoints where a kernel's compute and memory times cross
(computed exactly from the expressions).  Between consecutive breakpoints every constraint is
linear, so it changes sign at most once (at a root found by linear interpolation), and every
objective is monotone (B / (aB + b), a + b/B, or linear).  Hence the best integer batch lies
among the integer neighbours (+-1) of the breakpoints, the constraint roots, the relaxed optimum
and the ends 1 and batch_max; all of them are evaluated exactly (float64), which makes the
answer the integer optimum, not a rounding of the relaxation.  An expression that is not
piecewise linear in B (a ceiling, or a calibrated hardware spec's smooth overlap of compute and
memory time) falls back to evaluating every batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from costmodel.search.problem import (
    CONSTRAINTS,
    ComboValues,
    Objective,
    Problem,
    ScenarioValues,
    evaluate,
    feasible,
    reaches,
    take,
)


def integer_neighbours(values: np.ndarray, batch_max: int) -> np.ndarray:
    """floor - 1, floor, ceil, ceil + 1 of each finite value, clipped to [1, batch_max]."""
    values = values[np.isfinite(values)]
    values = values[(values > -1) & (values < batch_max + 2)]
    near = np.concatenate(
        [np.floor(values) - 1, np.floor(values), np.ceil(values), np.ceil(values) + 1]
    )
    return np.unique(np.clip(near, 1, batch_max))


def _roots(model: Problem, table: ComboValues, scenario: ScenarioValues) -> np.ndarray:
    """The breakpoints of each combination (rows) as floats (inf/nan where undefined)."""
    n = len(table.tp)
    if model.roots is None or not n:
        return np.empty((n, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = model.roots(*table.columns(), *(np.full(n, v) for v in scenario))
    return np.stack([np.broadcast_to(np.asarray(r, dtype=float), (n,)) for r in raw], axis=1)


def candidates(
    model: Problem,
    table: ComboValues,
    scenario: ScenarioValues,
    batch_max: int,
    relaxed: Sequence[float],
) -> list[np.ndarray]:
    """Per combination (row of ``table``), the integer batches that certify its optimum."""
    n = len(table.tp)
    ends = np.array([1.0, float(batch_max)])
    if model.breakpoints is None:
        return [np.arange(1, batch_max + 1, dtype=np.float64) for _ in range(n)]
    roots = _roots(model, table, scenario)
    # Piece ends: breakpoints inside [1, batch_max] and the two ends, per combination.
    pieces = [
        np.unique(np.clip(np.concatenate([ends, r[np.isfinite(r)]]), 1.0, batch_max)) for r in roots
    ]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(pieces)]).astype(int)
    out = evaluate(model, np.concatenate(pieces), take(table, owner), scenario)
    result = []
    start = 0
    for i, p in enumerate(pieces):
        stop = start + len(p)
        crossings = [np.asarray(roots[i]), np.array([relaxed[i]])]
        for c in CONSTRAINTS:
            limit = getattr(scenario, c.limit)
            g = out[c.output][start:stop]
            lo, hi, glo, ghi = p[:-1], p[1:], g[:-1], g[1:]
            with np.errstate(divide="ignore", invalid="ignore"):
                q = lo + (limit - glo) * (hi - lo) / (ghi - glo)
            inside = (ghi != glo) & ((glo - limit) * (ghi - limit) <= 0)
            crossings.append(q[inside])
        near = integer_neighbours(np.concatenate(crossings), batch_max)
        result.append(np.unique(np.concatenate([near, ends])))
        start = stop
    return result


def first_reaching(
    model: Problem,
    combo: ComboValues,
    scenario: ScenarioValues,
    cands: np.ndarray,
    objective: Objective,
    threshold: float,
) -> int | None:
    """Smallest feasible batch of one combination whose objective reaches ``threshold``.

    Between consecutive candidates the objective is monotone and feasibility constant (module
    doc), so each gap is settled by its two inner ends and, rarely, a bisection.
    """
    cand = np.sort(cands)
    inner = [(lo + 1, hi - 1) for lo, hi in itertools.pairwise(cand) if hi - lo > 1]
    probe = np.concatenate([cand, np.array([b for pair in inner for b in pair], dtype=float)])
    out = evaluate(model, probe, combo, scenario)
    ok = feasible(out)

    def good(j: int) -> bool:
        return bool(ok[j]) and reaches(
            float(out[objective.output][j]), threshold, objective.maximise
        )

    def good_at(batch: float) -> bool:
        single = evaluate(model, np.array([batch]), combo, scenario)
        value = float(single[objective.output][0])
        return bool(feasible(single)[0]) and reaches(value, threshold, objective.maximise)

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
