"""Serving under continuous batching: the steady state of one engine replica, in closed form.

An engine (vLLM, SGLang, TensorRT-LLM) runs *steps*.  Each step carries every running sequence
that is decoding (q = 1 + k tokens each, k draft tokens under speculative decoding) and, in the
rest of the step's token budget N_b, chunks of prompts being prefilled, first come first served.
A request's first token comes out of the step that finishes its prompt; every later step it
takes part in gives it tau tokens on average.

**A mixed step** (:func:`mixed_step_time`) prices n_d decoding sequences at mean context T and
P prompt tokens of prompts S long together: every kernel whose work scales with tokens (GEMMs,
norms, activations, RoPE, cache writes, all-reduces, the embedding) runs once over
q·n_d + P tokens; decode attention over n_d sequences of T cached tokens; prefill attention
over P/S whole prompts of S tokens; the LM head over the q·n_d + P/S positions whose logits are
sampled.  With P = 0 it is the decode step, with n_d = 0 and P = B·S the prefill step of B
prompts (the tests check both).

**The steady state** (mean values; :func:`closed_loop` and :func:`open_loop`).  A request
needs D = (osl - 1)/tau decode steps after its first token.  With n_d sequences decoding, the
replica admits m = n_d/D prompts per step (as many as finish; Little's law over the decode
phase).  A step's prompts arrive at random: the number G that reach one step is Poisson with
mean m (requests desynchronise once their lengths or arrival times differ), so the mean step
time is the Poisson mixture sum_g p_g(m) t(n_d, min(g·S, B_p)) with B_p = N_b - q·n_d the
budget left to prefill.  A prompt is finished by the step that carries it together with the
G others of its step (size-biased: 1 + G), plus an M/D/1 wait when the prefill load
rho = m·S/B_p nears the budget.  TPOT is the mean step time per token, tbar/tau; TTFT the
prefill step, the wait and (open loop) the rest of the step running when the request arrives,
tbar2/(2 tbar).  In a closed loop of c clients a sequence sees the prompts of the c - 1 others;
c = n_d + X·TTFT with X = n_d/(D·tbar) fixes n_d (a monotone equation; one root).  In an open
loop at rate lambda, n_d = lambda·D·tbar.  Where the closed form departs from an engine, the
module says so next to the term.

Every function returns SymPy expressions; the step time enters as a function of (n_d, P) that
the caller builds (:func:`mixed_step_time` with values substituted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import sympy as sp

from costmodel.model import symbols as sy

# Prompts per step weighed exactly in the Poisson mixture; the tail (G >= EXACT_TERMS) is one
# step at its conditional mean, where a step's time is close to linear in its prefill tokens.
EXACT_TERMS = 4

# CUDA-graph and allocator memory an engine keeps outside its KV cache [bytes]: vLLM reports
# graph capture at a few hundred MiB for dense models on Hopper; 1 GiB is a round upper figure.
GRAPH_RESERVE_BYTES = sp.Integer(2**30)


def _max(*args) -> sp.Expr:
    """Max left unevaluated: SymPy's simplification of nested Max/Min of these symbolic
    workload terms costs seconds and changes no value."""
    return sp.Max(*args, evaluate=False)


def _min(*args) -> sp.Expr:
    """Min left unevaluated (see :func:`_max`)."""
    return sp.Min(*args, evaluate=False)


class StepParts(NamedTuple):
    """A step's time split by what its work scales with (SymPy, values may be substituted).

    ``tokens``: kernels over every token of the step, a function of B (tokens, S = 1);
    ``decode_attention``: attention of B sequences with S new tokens each over T cached;
    ``prefill_attention``: causal attention of B prompts of S tokens (T = S);
    ``head``: the LM head and its logits gather, a function of B (positions sampled)."""

    tokens: sp.Expr
    decode_attention: sp.Expr
    prefill_attention: sp.Expr
    head: sp.Expr


def mixed_step_time(parts: StepParts, *, per_query_attention: bool = False) -> sp.Expr:
    """Time of one step carrying ``n_d`` decoding sequences (q tokens each, context T) and
    ``P`` prompt tokens of prompts ``S`` long, plus the engine's fixed ``t_sched`` [s].

    ``per_query_attention``: the decode attention kernel takes one query token per sequence (a
    measured paged-decode kernel), so q > 1 query tokens are priced as q·n_d sequences (an
    over-estimate of its KV reads for speculative verification); otherwise it takes S = q."""
    B, S, T = sy.B, sy.S, sy.T
    n, P, q = sy.n_d, sy.P, sy.q
    # A measured kernel's features take logarithms of its shape, fitted from one sequence up:
    # less than one sequence's work is priced as that share of one sequence's kernel, and a
    # kernel with nothing to do is not launched.
    tokens = parts.tokens.xreplace({B: sp.Max(q * n + P, 1), S: 1})
    if per_query_attention:
        decode = _share(parts.decode_attention, q * n, {S: 1})
    else:
        decode = _share(parts.decode_attention, n, {S: q})
    prefill = _share(parts.prefill_attention, P / S, {T: S})
    head = _share(parts.head, q * n + P / S, {S: 1})
    return (
        tokens
        + _launched(n, decode)
        + _launched(P, prefill)
        + _launched(q * n + P, head)
        + sy.t_sched
    )


def _share(time: sp.Expr, sequences, fixed: dict) -> sp.Expr:
    """``time`` of ``sequences`` sequences (a function of B), at least one: a fraction of a
    sequence costs that fraction of one [s]."""
    one = time.xreplace({sy.B: 1} | fixed)
    return sp.Piecewise(
        (sequences * one, sequences < 1), (time.xreplace({sy.B: sequences} | fixed), True)
    )


def _launched(work, time) -> sp.Expr:
    """``time`` when there is ``work`` to do, else 0 [s]."""
    return sp.Piecewise((sp.Integer(0), sp.Eq(work, 0)), (time, True))


def tokens_per_step(k=sy.k_draft, a=sy.a_accept) -> sp.Expr:
    """Expected tokens a decoding sequence gains per step with k draft tokens each accepted
    independently with probability a < 1: (1 - a^(k+1)) / (1 - a) [tokens] (1 without drafts)."""
    return sp.Piecewise((k + 1, sp.Eq(a, 1)), ((1 - a ** (k + 1)) / (1 - a), True))


def prefill_tokens(prompt=sy.N_prompt, hit=sy.h_prefix) -> sp.Expr:
    """Prompt tokens computed per request when a share ``hit`` is found in the prefix cache
    (its KV is kept and reused; at least one token is always computed) [tokens]."""
    return _max(1, prompt * (1 - hit))


def decode_context(prompt=sy.N_prompt, output=sy.N_out) -> sp.Expr:
    """Mean context of a decoding sequence: the prompt and half the output [tokens]."""
    return prompt + output / 2


def saturation() -> sp.Expr:
    """Decoding sequences at which the prompts admitted fill the prefill budget (load 1):
    N_b / (S/D + q) [sequences]."""
    return sy.N_budget / (prefill_tokens() / decode_steps() + sy.q)


def decode_steps(output=sy.N_out, tau=None) -> sp.Expr:
    """Steps a request decodes for after its first token: (osl - 1)/tau [steps]."""
    tau = tokens_per_step() if tau is None else tau
    return (output - 1) / tau


def poisson(g: int, mean) -> sp.Expr:
    """Probability of exactly ``g`` arrivals when ``mean`` are expected [1]."""
    return sp.exp(-mean) * mean**g / sp.factorial(g)


def poisson_tail(mean, start: int = EXACT_TERMS) -> tuple[sp.Expr, sp.Expr]:
    """P(G >= start) and E[G | G >= start] for G Poisson with ``mean`` (the conditional mean
    at least ``start``; ``start`` when the tail is empty to float64)."""
    head = [poisson(g, mean) for g in range(start)]
    mass = 1 - sum(head)
    first = mean - sum(g * p for g, p in enumerate(head))
    tiny = sp.Float(1e-300)
    return mass, _max(start, first / sp.Max(mass, tiny))


class Mixture(NamedTuple):
    """Moments of the step time over the prompts a step carries: mean, mean square [s, s^2],
    and the size-biased step (the one that carries a given prompt) [s]."""

    mean: sp.Expr
    mean_square: sp.Expr
    carrying: sp.Expr


def mixture(step: Callable[[sp.Expr], sp.Expr], mean, prompt, budget) -> Mixture:
    """Mean and mean square of ``step(P)`` when G ~ Poisson(``mean``) prompts of ``prompt``
    tokens reach a step and at most ``budget`` prompt tokens fit; and the mean time of the step
    that carries a given prompt together with G others."""
    mass, conditional = poisson_tail(mean)

    def at(prompts):
        return step(_min(prompts * prompt, budget))

    exact = [(poisson(g, mean), at(g)) for g in range(EXACT_TERMS)]
    tail = at(conditional)
    # Prompt tokens beyond the budget are not lost: they spill into later steps.  The steps
    # that carry them would have carried nothing, so a share spill/budget of the empty steps
    # runs at the full budget instead (work is conserved: the mean prefill per step is
    # mean·prompt however the budget cuts it).
    carried = sum(p * _min(g * prompt, budget) for g, (p, _) in enumerate(exact))
    carried += mass * _min(conditional * prompt, budget)
    spilled = (mean * prompt - carried) / budget
    empty, full = at(0), step(budget)
    mean_t = sum(p * t for p, t in exact) + mass * tail + spilled * (full - empty)
    square = sum(p * t**2 for p, t in exact) + mass * tail**2 + spilled * (full**2 - empty**2)
    carrying = sum(p * at(g + 1) for g, (p, _) in enumerate(exact)) + mass * at(conditional + 1)
    return Mixture(mean_t, square, carrying)


def prefill_wait(mean, prompt, budget, full_step) -> sp.Expr:
    """Mean wait for earlier prompts' chunks (M/D/1 in steps of ``full_step`` seconds): load
    rho = mean·prompt/budget, service prompt/budget steps, wait rho·s/(2(1 - rho)) steps [s].
    Infinite load (rho >= 1) is the caller's to refuse."""
    service = prompt / budget
    rho = mean * service
    return rho * service / (2 * (1 - rho)) * full_step


def chunk_steps(prompt, budget) -> sp.Expr:
    """Steps a prompt alone needs when it is longer than the prefill budget: prompt/budget
    (at least 1) [steps]; the extra ones run at the full budget."""
    return _max(1, prompt / budget)


class Steady(NamedTuple):
    """The steady state as expressions of n_d and the workload: decode steps D, admissions per
    step m, step-time moments seen by a decoding sequence, prefill budget B_p, load rho, TTFT and
    TPOT [s], request throughput X [requests/s] and requests in flight [requests]."""

    decode_steps: sp.Expr
    admitted: sp.Expr
    mixture: Mixture
    budget: sp.Expr
    load: sp.Expr
    ttft: sp.Expr
    tpot: sp.Expr
    throughput: sp.Expr
    in_flight: sp.Expr


def steady_state(step: Callable[[sp.Expr, sp.Expr], sp.Expr], *, closed: bool) -> Steady:
    """The steady state with ``sy.n_d`` sequences decoding, for a step time ``step(n, P)`` [s]
    (n decoding sequences, P prompt tokens) that already includes the draft model's cost.

    ``closed``: a closed loop of ``sy.c_conc`` clients (arrivals at step ends; a sequence sees
    the c - 1 others' prompts); else an open loop at ``sy.lam`` (Poisson arrivals: the rest of
    the running step is waited for)."""
    n = sy.n_d
    prompt = prefill_tokens()
    tau = tokens_per_step()
    steps = decode_steps(tau=tau)
    admitted = n / steps
    # A given request shares its steps with the others: in a closed loop the c - 1 other
    # clients' requests (a share (c - 1)/c of the mean), in an open loop all of them (Poisson
    # arrivals see time averages).  While it decodes it is one of the decoding sequences.
    share = (sy.c_conc - 1) / sy.c_conc if closed else sp.Integer(1)
    others, seen = n * share, admitted * share
    budget = sy.N_budget - sy.q * n
    mix = mixture(lambda p: step(1 + others, p), seen, prompt, budget)
    first = mixture(lambda p: step(others, p), seen, prompt, budget).carrying
    full = step(others, budget)
    chunks = (chunk_steps(prompt, budget) - 1) * full
    wait = prefill_wait(seen, prompt, budget, full)  # the others' prompts, not its own
    ttft = first + chunks + wait
    if not closed:
        # A Poisson arrival first waits out the step running (its mean residual, tbar2/2tbar),
        # stretched as in an M/G/1 queue by the share of time spent prefilling earlier prompts:
        # rho_t = (admissions per second) x (a prompt's extra step time).
        extra = (step(others, _min(prompt, budget)) - step(others, 0)) * chunk_steps(prompt, budget)
        busy = admitted / mix.mean * extra
        ttft = ttft + mix.mean_square / (2 * mix.mean) / (1 - busy)
    # The time a request spends decoding: its steps at the mean step time, plus (open loop) the
    # prompts that arrived while its own prompt waited and ran.  Those are prefilled in the
    # steps right after its first token, each step gathering more arrivals in turn (a branching
    # process with mean busy per step): lambda·TTFT/(1 - busy) prompts of extra time each.
    decoding = steps * mix.mean
    if not closed:
        decoding = decoding + admitted / mix.mean * ttft / (1 - busy) * extra
    tpot = decoding / (steps * tau)
    throughput = n / decoding
    return Steady(
        steps,
        admitted,
        mix,
        budget,
        admitted * prompt / budget,
        ttft,
        tpot,
        throughput,
        n + throughput * ttft,
    )


def disaggregated_state(step: Callable[[sp.Expr, sp.Expr], sp.Expr], *, closed: bool) -> Steady:
    """The steady state of a disaggregated deployment: ``sy.x_pre`` replicas that only
    prefill and ``sy.y_dec`` that only decode, with ``sy.n_d`` sequences decoding on each
    decode replica; a request's KV cache moves between them in ``sy.t_xfer`` seconds.

    Decode steps carry no prompts, so TPOT is the plain decode step per token.  A prefill
    replica serves prompts one after another (an M/D/1 queue: arrivals X/x_p, service the
    prefill step of one prompt, chunked when longer than the budget); TTFT is its wait, its
    service and the transfer.  ``sy.c_conc`` (closed) and ``sy.lam`` (open) count requests of
    the whole deployment."""
    n = sy.n_d
    prompt = prefill_tokens()
    tau = tokens_per_step()
    steps = decode_steps(tau=tau)
    share = (sy.c_conc - 1) / sy.c_conc if closed else sp.Integer(1)
    decode = step(1 + n * share, 0)
    budget = sy.N_budget
    service = step(0, _min(prompt, budget)) * chunk_steps(prompt, budget)
    throughput = sy.y_dec * n / (steps * decode)
    load = throughput / sy.x_pre * service
    wait = sp.Piecewise((load * service / (2 * (1 - load)), load < 1), (sp.oo, True))
    ttft = wait + service + sy.t_xfer
    mix = Mixture(decode, decode**2, service)
    return Steady(
        steps,
        n / steps,
        mix,
        budget,
        load,
        ttft,
        decode / tau,
        throughput,
        sy.y_dec * n + throughput * ttft,
    )


def kv_capacity_tokens(weights, workspace, per_token_bytes, usable) -> sp.Expr:
    """KV-cache tokens one GPU holds as an engine allocates it: the usable memory (a fraction
    of capacity) less the weights, the activation workspace of a full step and the CUDA-graph
    reserve, divided by the bytes one token's keys and values take on the GPU [tokens]."""
    return (usable - weights - workspace - GRAPH_RESERVE_BYTES) / per_token_bytes


def fitting_requests(capacity_tokens, request_tokens, block_tokens) -> sp.Expr:
    """Requests whose whole KV (prompt + output, in pages of ``block_tokens``) fit at once:
    floor(capacity blocks / blocks per request) [requests]."""
    blocks = sp.floor(capacity_tokens / block_tokens)
    return sp.floor(blocks / sp.ceiling(request_tokens / block_tokens))
