"""The serving model compiled: steady states of many configurations in one jitted call.

:mod:`costmodel.model.serving` writes the steady state as SymPy expressions of the decoding
sequences n_d, the workload and the step time.  Here the step time is compiled once
(:meth:`costmodel.config.bind.Binding.symbolic_mixed_step_time`, every model, hardware and
engine value an argument, so one compilation serves every row of the same structure), the
equations are compiled with the step times they need as arguments (each a sample of the one
step function at its own prefill tokens, evaluated together along a stacked axis), and n_d is
found by bisection: the requests in flight (closed loop) and the request throughput (open loop)
both increase with n_d.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import sympy as sp

from costmodel.compile.codegen import compile_exprs
from costmodel.model import serving
from costmodel.model import symbols as sy

BISECTION_STEPS = 40  # halvings of the bracket on n_d: to 9.1e-13 of the concurrency, so that
#                     central differences of predict (steps of 1e-4) resolve its derivatives

# The workload and scheduler values every row gives (besides the model's, hardware's and
# engine's, which come from the binding).
WORKLOAD = (
    sy.N_prompt,
    sy.N_out,
    sy.N_budget,
    sy.h_prefix,
    sy.k_draft,
    sy.a_accept,
    sy.f_draft,
    sy.t_sched,
    sy.x_pre,
    sy.y_dec,
    sy.t_xfer,
)
# Symbols the step function takes besides the binding's values.
STEP_ARGS = (sy.n_d, sy.P, sy.S, sy.T, sy.q, sy.t_sched)


class Equations(NamedTuple):
    """The steady state's equations with step times as arguments: ``outputs`` (named
    expressions), ``samples`` (symbol of each step time, with its prefill tokens) and the
    symbol of the draft model's time per step.  A sample is (symbol, decoding sequences, prefill
    tokens)."""

    outputs: dict[str, sp.Expr]
    samples: tuple[tuple[sp.Symbol, sp.Expr, sp.Expr], ...]
    draft: sp.Symbol


Loop = tuple[bool, bool]  # (closed loop, disaggregated)
LOOPS: tuple[Loop, ...] = ((True, False), (False, False), (True, True), (False, True))


@lru_cache(maxsize=4)
def equations(loop: Loop) -> Equations:
    """The steady state (:func:`costmodel.model.serving.steady_state`, or
    :func:`~costmodel.model.serving.disaggregated_state`) of a closed or open ``loop`` with each
    step time it needs replaced by a symbol of its own (a sample at the step's decoding
    sequences and prefill tokens) plus the draft model's time."""
    closed, split = loop
    found: dict[tuple[sp.Expr, sp.Expr], sp.Symbol] = {}
    draft = sy.t_draft

    def step(n, prefill):
        if (n, prefill) not in found:
            found[(n, prefill)] = sp.Symbol(f"t_sample_{len(found)}", positive=True)
        return found[(n, prefill)] + draft

    state = serving.disaggregated_state if split else serving.steady_state
    steady = state(step, closed=closed)
    outputs = {
        "ttft_s": steady.ttft,
        "tpot_s": steady.tpot,
        "throughput_rps": steady.throughput,
        "in_flight": steady.in_flight,
        "load": steady.load,
        "step_s": steady.mixture.mean,
        "budget": steady.budget,
    }
    return Equations(outputs, tuple((s, n, p) for (n, p), s in found.items()), draft)


def arrival_symbol(closed: bool) -> sp.Symbol:
    """The closed loop's concurrency or the open loop's request rate."""
    return sy.c_conc if closed else sy.lam


class ServingFunctions(NamedTuple):
    """The compiled step time of one structure; ``values``: the binding's symbols it takes
    after :data:`STEP_ARGS`, in order."""

    values: tuple[sp.Symbol, ...]
    step: Callable


class LoopFunctions(NamedTuple):
    """The compiled equations of one loop (the same for every structure): the samples'
    decoding sequences and prefill tokens, and the outputs from the samples' step times."""

    loads: Callable
    equations: Callable


def compile_serving(step_time: sp.Expr) -> ServingFunctions:
    """Compile ``step_time``, a mixed step's time symbolic in :data:`STEP_ARGS` and the
    binding's values (which become arguments)."""
    values = tuple(sorted(step_time.free_symbols - set(STEP_ARGS), key=lambda s: s.name))
    return ServingFunctions(values, compile_exprs({"t": step_time}, (*STEP_ARGS, *values)))


@lru_cache(maxsize=1)
def workload_functions() -> Callable:
    """The workload's derived quantities compiled (:mod:`costmodel.model.serving`'s
    expressions): the prompt tokens computed, the mean decode context, and the decoding
    sequences at which the prefill budget saturates."""
    exprs = {
        "prompt": serving.prefill_tokens(),
        "context": serving.decode_context(),
        "saturation": serving.saturation(),
    }
    return compile_exprs(exprs, (*WORKLOAD, sy.q))


@lru_cache(maxsize=len(LOOPS))
def loop_functions(loop: Loop) -> LoopFunctions:
    """The equations of ``loop`` compiled (once per process)."""
    eq = equations(loop)
    base = (sy.n_d, *WORKLOAD, sy.q, arrival_symbol(loop[0]))
    where = {f"{s.name}_n": n for s, n, _ in eq.samples}
    where |= {f"{s.name}_p": p for s, _, p in eq.samples}
    sample_args = tuple(s for s, _, _ in eq.samples)
    return LoopFunctions(
        compile_exprs(where, base),
        compile_exprs(eq.outputs, (*base, *sample_args, eq.draft)),
    )


def _state(fns: ServingFunctions, loop: Loop, n, workload, arrival, values) -> dict:
    """Outputs of the equations at ``n`` decoding sequences (arrays broadcast over rows)."""
    q = workload[sy.k_draft] + 1
    base = (n, *(workload[s] for s in WORKLOAD), q, arrival)
    compiled = loop_functions(loop)
    loads = compiled.loads(*base)
    eq = equations(loop)
    quantities = derived(workload)
    prompt, context = quantities["prompt"], quantities["context"]
    t_sched = workload[sy.t_sched]

    # Every sample, and one plain decode step for the draft's cost, in one call of the step
    # function along a leading axis (one copy of it in the compiled program, not one each).
    shape = jnp.broadcast_shapes(jnp.shape(n), jnp.shape(q))
    decoding = [loads[f"{s.name}_n"] for s, _, _ in eq.samples] + [n]
    prefill = [loads[f"{s.name}_p"] for s, _, _ in eq.samples] + [0.0]
    tokens = [q] * len(eq.samples) + [1.0]

    def stacked(columns):
        return jnp.stack(
            [jnp.broadcast_to(jnp.asarray(c, dtype=jnp.float64), shape) for c in columns]
        )

    times = fns.step(
        stacked(decoding), stacked(prefill), prompt, context, stacked(tokens), t_sched, *values
    )["t"]
    draft = workload[sy.k_draft] * workload[sy.f_draft] * (times[-1] - t_sched)
    return compiled.equations(*base, *times[:-1], draft)


def derived(workload: Mapping[sp.Symbol, jax.Array]) -> dict:
    """:func:`workload_functions` at ``workload`` (arrays broadcast over rows)."""
    return workload_functions()(*(workload[s] for s in WORKLOAD), workload[sy.k_draft] + 1)


def solver(fns: ServingFunctions, loop: Loop) -> Callable:
    """:func:`solve` for ``fns`` and one loop, jitted (arrays of rows in, arrays out)."""
    key = (id(fns), loop)
    if key not in _SOLVERS:

        def run(workload, arrival, limit, values):
            return solve(
                fns, loop, dict(zip(WORKLOAD, workload, strict=True)), arrival, limit, values
            )

        _SOLVERS[key] = (fns, jax.jit(run))
    jitted = _SOLVERS[key][1]
    return lambda workload, *rest: jitted(tuple(workload[s] for s in WORKLOAD), *rest)


_SOLVERS: dict = {}


def solve(
    fns: ServingFunctions,
    loop: Loop,
    workload: Mapping[sp.Symbol, jax.Array],
    arrival: jax.Array,
    limit: jax.Array,
    values: Sequence[jax.Array],
) -> dict:
    """The steady state of every row: n_d by bisection, then the outputs there.

    Closed loop: ``arrival`` clients, of which ``limit`` (the requests whose KV fits, on each
    decode replica) run; the rest wait, adding (c - limit)/X to TTFT.  Open loop: ``arrival``
    requests/s; a rate the deployment cannot carry within its prefill budget or its KV
    capacity gives infinite times (``stable`` False)."""
    closed, split = loop
    if split:
        top = limit.astype(jnp.float64)
        limit = limit * workload[sy.y_dec]
    else:
        top = jnp.minimum(limit, derived(workload)["saturation"] * (1 - 1e-9))
    running = jnp.minimum(arrival, limit) if closed else arrival
    if closed:  # fewer decode than in flight: the bracket's top is the running clients
        top = jnp.minimum(top, running)

    def excess(n):
        out = _state(fns, loop, n, workload, running, values)
        return out["in_flight"] - running if closed else out["throughput_rps"] - arrival

    def halve(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        above = excess(mid) > 0
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (jnp.zeros_like(top), top))
    n = (lo + hi) / 2
    out = _state(fns, loop, n, workload, running, values)
    if closed:
        stable = limit >= 1
        queued = jnp.maximum(arrival - limit, 0) / out["throughput_rps"]
        out["ttft_s"] = out["ttft_s"] + queued
    else:
        stable = (excess(top) >= 0) & (out["in_flight"] <= limit)
        out["throughput_rps"] = arrival + 0 * out["throughput_rps"]  # carried: X is the rate
    out = {k: jnp.where(stable, v, jnp.inf) for k, v in out.items()}
    out["decode_batch"] = jnp.where(stable, n, jnp.inf)
    out["stable"] = stable
    return out
