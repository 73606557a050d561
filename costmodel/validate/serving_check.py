"""The closed-form serving model against the discrete-event simulation of the same engine.

Both take their step times from the same kernel model (a binding's
:meth:`~costmodel.config.bind.Binding.symbolic_mixed_step_time`, evaluated with NumPy for the
simulation) and the same scheduler (token budget, paged KV admission, KV capacity); the
closed form gives mean values (:mod:`costmodel.model.serving`), the simulation means and
percentiles (:mod:`costmodel.validate.simulate`).  The grid: closed loops over concurrency,
open loops at rates that are fixed shares of what the closed form says the replica carries at
its largest concurrency, over prompt and output lengths.  Output lengths are drawn uniformly
within ``SPREAD`` of their mean in the simulation (identical requests that start together stay
in lock-step cohorts, a transient the steady state does not describe).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import sympy as sp

from costmodel.config.bind import Binding, ServingPoint
from costmodel.model import symbols as sy
from costmodel.search import predict as predictions
from costmodel.validate import simulate

SPREAD = 0.5  # output lengths uniform in [osl/2, 3 osl/2] in the simulation
TOLERANCE = 0.05  # the closed form's mean TTFT and TPOT within 5% of the simulation's
REQUESTS = 1000  # requests simulated per point (at least 8 x concurrency in a closed loop)
WARMUP = 0.2  # share of the earliest-completed requests left out of the statistics
WARMUP_COHORTS = 2  # a closed loop leaves out at least its first 2 x concurrency requests

# Prompt and output lengths of the grid (chat, summarisation, generation, long context).
LENGTHS = (
    (128, 512),
    (256, 2048),
    (512, 256),
    (1024, 128),
    (1024, 1024),
    (2048, 256),
    (4096, 512),
    (8000, 200),
)
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_SHARES = (0.1, 0.25, 0.4, 0.55)  # of the closed form's throughput at the top concurrency


class Comparison(NamedTuple):
    """One grid point: its serving point, the closed form's answer and the simulation's."""

    point: ServingPoint
    closed_form: dict[str, Any]
    simulated: simulate.SimulationResult

    @property
    def ttft_error(self) -> float:
        """Closed form / simulation - 1 for the mean TTFT [1]."""
        return self.closed_form["ttft_ms"] / 1e3 / self.simulated.ttft_mean_s - 1

    @property
    def tpot_error(self) -> float:
        """Closed form / simulation - 1 for the mean TPOT [1]."""
        return self.closed_form["tpot_ms"] / 1e3 / self.simulated.tpot_mean_s - 1

    @property
    def latency_error(self) -> float:
        """Closed form / simulation - 1 for the mean request latency [1]."""
        return self.closed_form["request_latency_s"] / self.simulated.latency_mean_s - 1

    @property
    def kv_limited(self) -> bool:
        """More requests in flight than the KV cache holds: the rest queue for space."""
        fits = self.closed_form["max_concurrency_fits"]
        return self.point.concurrency is not None and self.point.concurrency > fits


def summary_of(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many points agree within :data:`TOLERANCE`: TTFT and TPOT both, except that where
    the concurrency exceeds the KV capacity (TTFT is then mostly the wait for KV space, the
    difference of two large times) the request latency is held to it instead of TTFT."""

    def ok(r):
        first = r["latency_error"] if r["kv_limited"] else r["ttft_error"]
        return abs(first) <= TOLERANCE and abs(r["tpot_error"]) <= TOLERANCE

    limited = [r for r in records if r["kv_limited"]]
    return {
        "points": len(records),
        "within": sum(ok(r) for r in records),
        "ttft_max_abs": max(abs(r["ttft_error"]) for r in records if not r["kv_limited"]),
        "tpot_max_abs": max(abs(r["tpot_error"]) for r in records),
        "kv_limited": len(limited),
        "kv_latency_max_abs": max((abs(r["latency_error"]) for r in limited), default=0.0),
        "tolerance": TOLERANCE,
    }


def step_function(binding: Binding) -> Callable[[int, float, int, float], float]:
    """The binding's mixed step time as the simulation calls it: (decoding sequences, their
    mean context, prefill tokens, prefill prompts) -> seconds, evaluated with NumPy."""
    expr = binding.symbolic_mixed_step_time().xreplace(binding.values)
    overhead = binding.step_overhead()
    fn = sp.lambdify([sy.n_d, sy.P, sy.S, sy.T, sy.q, sy.t_sched], expr, modules="numpy")

    @functools.lru_cache(maxsize=1 << 20)
    def cached(decoding: int, context: int, prefill: int, prompt: float) -> float:
        return float(fn(decoding, prefill, prompt, context, 1, overhead))

    def seconds(decoding: int, context: float, prefill: int, prompts: float) -> float:
        # The mean context is rounded to a whole token (an attention time changes by a few
        # parts per million), so that the simulation's many decode steps share evaluations.
        prompt = round(prefill / prompts, 6) if prompts > 0 else 1.0
        return cached(decoding, max(1, round(context)) if decoding else 1, prefill, prompt)

    return seconds


def points(binding: Binding) -> list[ServingPoint]:
    """The grid: every length pair at every concurrency, and at every rate share."""
    out = [ServingPoint(i, o, concurrency=c) for i, o in LENGTHS for c in CONCURRENCY]
    tops = [ServingPoint(i, o, concurrency=CONCURRENCY[-1]) for i, o in LENGTHS]
    answers = predictions.predict([predictions.Question(binding, p) for p in tops])
    for (i, o), answer in zip(LENGTHS, answers, strict=True):
        carried = answer["request_throughput_rps"]
        out += [ServingPoint(i, o, request_rate=share * carried) for share in RATE_SHARES]
    return out


def compare(
    binding: Binding, grid: Sequence[ServingPoint], *, requests: int = REQUESTS, seed: int = 0
) -> list[Comparison]:
    """The closed form and the simulation at every point of ``grid``."""
    answers = predictions.predict([predictions.Question(binding, p) for p in grid])
    step = step_function(binding)
    profile = binding.profile()
    out = []
    for point, answer in zip(grid, answers, strict=True):
        tokens, _ = predictions.capacity(binding, point)
        scheduler = simulate.Scheduler(
            token_budget=point.token_budget or profile.token_budget,
            kv_capacity_tokens=tokens,
            block_tokens=point.block_tokens or profile.block_tokens,
        )
        workload = simulate.Workload(point.isl, point.osl, spread=SPREAD)
        # A closed loop starts with all its clients at once; the first WARMUP_COHORTS waves
        # of requests are that transient, not the steady state, and are left out.
        total = max(requests, 4 * WARMUP_COHORTS * (point.concurrency or 0))
        warmup = max(WARMUP, WARMUP_COHORTS * (point.concurrency or 0) / total)
        result = simulate.simulate(
            step,
            workload,
            scheduler,
            concurrency=point.concurrency,
            request_rate=point.request_rate,
            requests=total,
            warmup=warmup,
            seed=seed,
        )
        out.append(Comparison(point, answer, result))
    return out
