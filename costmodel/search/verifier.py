"""The verifier: an exhaustive :mod:`costmodel.compile.sweep` of the optimiser's search space."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from costmodel.compile import sweep
from costmodel.config.specs import Scenario
from costmodel.model import engine as engines
from costmodel.model import symbols as sy
from costmodel.search.problem import (
    CONSTRAINTS,
    OBJECTIVES,
    SCENARIO_SYMBOLS,
    TIE_RTOL,
    Combo,
    Point,
    combo_terms,
    combo_values,
    combos,
    evaluate_points,
    problem,
    scenario_values,
)

AGREE_RTOL = 1e-9  # optimiser and verifier objectives this close (relative) agree


class BruteForce(NamedTuple):
    """The exhaustive answer: best point (None if infeasible), configurations evaluated and
    feasible, wall time [s]."""

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
    numbers = scenario_values(scenario)
    terms = combo_terms(scenario)
    # The engine's attention coefficients follow the KV dtype, the others the weight dtype.
    kv_terms = set(engines.dtype_terms().kv)
    by_kv = [i for i, s in enumerate(terms) if s in kv_terms]
    by_weight = [i for i, s in enumerate(terms) if s not in kv_terms]
    weight_table = {}
    for w in weights:
        v = combo_values(scenario, Combo(1, w, kvs[0]))
        weight_table[w] = {sy.b_w: v.b_w, sy.peak_matmul: v.peak_matmul}
        weight_table[w] |= {terms[i]: v.terms[i] for i in by_weight}
    kv_table = {}
    for k in kvs:
        v = combo_values(scenario, Combo(1, weights[0], k))
        kv_table[k] = {sy.b_kv: v.b_kv} | {terms[i]: v.terms[i] for i in by_kv}
    return sweep.grid(
        *(sweep.fixed(s, v) for s, v in zip(SCENARIO_SYMBOLS, numbers, strict=True)),
        sweep.numeric_axis(sy.tp, tps, "tp"),
        sweep.table_axis("weight_dtype", weight_table),
        sweep.table_axis("kv_dtype", kv_table),
        sweep.numeric_axis(sy.B, np.arange(1, scenario.search.batch_max + 1), "batch"),
    )


def brute_force(scenario: Scenario, **sweep_options) -> BruteForce:
    """Evaluate every configuration of the search space and keep the best feasible one.

    Ties within TIE_RTOL go to the first configuration in grid order.  ``sweep_options`` go to
    :func:`costmodel.compile.sweep.best` (chunk_size, devices, progress).
    """
    started = time.perf_counter()
    if not combos(scenario):
        return BruteForce(None, 0, 0, time.perf_counter() - started)
    objective = OBJECTIVES[scenario.objective]
    space = search_grid(scenario)
    found = sweep.best(
        problem(scenario).sweep,
        space,
        objective.output,
        constraints=tuple(f"{c.name}_slack" for c in CONSTRAINTS),
        maximise=objective.maximise,
        rtol=TIE_RTOL,
        **sweep_options,
    )
    point = None
    if found.index is not None:
        labels = space.point(found.index)
        combo = Combo(int(float(labels["tp"])), labels["weight_dtype"], labels["kv_dtype"])
        point = evaluate_points(scenario, [(combo, int(float(labels["batch"])))])[0]
    return BruteForce(point, found.evaluated, found.feasible, time.perf_counter() - started)


def agree(a: Point | None, b: Point | None) -> bool:
    """Same configuration and objective within AGREE_RTOL relative, or both None."""
    if a is None or b is None:
        return a is None and b is None
    same = (a.combo, a.batch) == (b.combo, b.batch)
    return same and math.isclose(a.objective, b.objective, rel_tol=AGREE_RTOL)
