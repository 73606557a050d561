"""Discrete-event simulation of an LLM serving engine's continuous batching.

The engine runs in steps, the way vLLM v1, SGLang and TensorRT-LLM schedule: each step carries
every running sequence's decode plus as many prompt tokens (chunked prefill) as a token budget
allows.  The simulation checks a closed-form mean-value model of such an engine and gives the
percentiles a mean-value model cannot.  The time of one step comes from the caller
(``step_seconds``, from the kernel model); everything else is here.

Scheduler rules, applied at the start of every step (time ``t``):

1. Requests that have arrived by ``t`` (arrival time <= ``t``) join the waiting queue, first
   come first served.  Open loop: if nothing is running or waiting, time jumps to the next
   arrival.  Closed loop: each of the ``concurrency`` clients sends its first request at time 0
   and its next one the moment the previous one completes.
2. Every running sequence that has finished its prefill decodes, taking ``1 + k`` tokens of the
   step's ``token_budget`` (``k`` = draft tokens).  Should those not all fit (possible only with
   speculation), the earliest-admitted ones that fit decode and the rest skip the step.
3. The budget left goes, first come first served, to requests still prefilling: partially
   prefilled ones first, then waiting ones.  A waiting request is admitted only if the KV cache
   has free blocks for its whole length, ``ceil((isl + output length) / block_tokens)`` blocks
   (reserved at admission, freed at completion; no preemption; a prefix-cache hit still holds
   its blocks), and fewer than ``max_seqs`` sequences are running.  If the head of the queue
   cannot be admitted, no later request is (head-of-line blocking).  A request gets
   ``min(its remaining prompt tokens, budget left)`` tokens; admission stops when the budget is
   spent.  The prompt tokens a request computes are ``max(1, round(isl * (1 - prefix_hit)))``.
4. The step takes ``step_seconds(decodes, mean decode context, prefill tokens, prefill tokens /
   computed prompt tokens)`` seconds, where a decoding sequence's context is ``isl`` + the
   tokens it has generated so far (0 when nothing decodes), plus ``draft_seconds(decodes, mean
   decode context)`` when speculation is on (``k > 0``), a draft model is given and something
   decodes.
5. At the end of the step each decoding sequence gains one token, or with speculation
   ``1 + (number of leading accepted drafts)``, each draft accepted independently with
   probability ``acceptance`` until the first rejection (1 to ``k + 1`` tokens, capped at what it
   still needs).  A request whose prefill completes in the step emits its first token at the
   step's end (TTFT = step end - arrival) and decodes from the next step.  A request that has all
   its output tokens completes at the step's end and frees its blocks.
6. A request that could never fit the KV cache, and a budget too small for a single decode
   (``token_budget < 1 + k``), are errors (:class:`ValueError`), so every step makes progress.

Statistics cover the measured window: from the completion of the last warm-up request (the
earliest-completed ``warmup`` fraction of ``requests``) to the completion of the last one.

A run of steps that only decode, gain one token each and admit nothing is advanced without
touching the per-sequence arrays, so long decode phases cost one ``step_seconds`` call a step.

Library code: numpy only, no printing, no I/O; deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

StepSeconds = Callable[[int, float, int, float], float]
DraftSeconds = Callable[[int, float], float]


@dataclass(frozen=True)
class Workload:
    """Request shape: prompt tokens ``isl``, output tokens ``osl`` (the first included).

    Each request's output length is drawn uniformly from the integers in
    ``[round(osl * (1 - spread)), round(osl * (1 + spread))]`` (at least 1); ``spread`` 0 fixes it.
    ``prefix_hit`` is the fraction of each prompt found in the prefix cache (not computed).
    """

    isl: int
    osl: int
    spread: float = 0.0
    prefix_hit: float = 0.0

    def __post_init__(self) -> None:
        if self.isl < 1 or self.osl < 1:
            raise ValueError(f"isl and osl must be >= 1, got isl={self.isl}, osl={self.osl}")
        if not 0.0 <= self.spread < 1.0:
            raise ValueError(f"spread must be in [0, 1), got {self.spread}")
        if not 0.0 <= self.prefix_hit < 1.0:
            raise ValueError(f"prefix_hit must be in [0, 1), got {self.prefix_hit}")


@dataclass(frozen=True)
class Scheduler:
    """Engine limits: tokens per step, KV cache tokens, block size, running sequences, speculation.

    ``draft_tokens`` k and ``acceptance`` a describe speculative decoding (k = 0: off);
    ``draft_seconds(decode_seqs, decode_context)`` [s] is the draft model's time per step
    (None: free).
    """

    token_budget: int
    kv_capacity_tokens: int
    block_tokens: int = 16
    max_seqs: int = 1 << 30
    draft_tokens: int = 0
    acceptance: float = 0.0
    draft_seconds: DraftSeconds | None = None

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.max_seqs < 1 or self.draft_tokens < 0:
            raise ValueError(
                "block_tokens and max_seqs must be >= 1 and draft_tokens >= 0, got "
                f"{self.block_tokens}, {self.max_seqs}, {self.draft_tokens}"
            )
        if not 0.0 <= self.acceptance < 1.0:
            raise ValueError(f"acceptance must be in [0, 1), got {self.acceptance}")
        if self.token_budget < 1 + self.draft_tokens:
            raise ValueError(
                f"token_budget {self.token_budget} cannot hold one decode of "
                f"1 + {self.draft_tokens} tokens: no step could make progress"
            )
        if self.kv_capacity_tokens < self.block_tokens:
            raise ValueError(
                f"kv_capacity_tokens {self.kv_capacity_tokens} holds no block of "
                f"{self.block_tokens} tokens"
            )


class SimulationResult(NamedTuple):
    """Statistics over the measured (post-warm-up) requests and the steps of the window.

    TTFT, TPOT and latency [s]: mean and percentiles over requests (TPOT = (completion - first
    token) / (output tokens - 1), requests of one output token left out; NaN if none is left).
    Throughputs: output tokens and requests completed in the window / window length.  Step
    figures are per step over the window's steps; ``queued_fraction`` is the fraction of the
    window during which the head of the queue waited for KV blocks.
    """

    requests_measured: int
    window_s: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p50_s: float
    tpot_p90_s: float
    tpot_p99_s: float
    latency_mean_s: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    output_tokens_per_s: float
    requests_per_s: float
    decode_batch_mean: float
    decode_batch_max: int
    prefill_tokens_per_step_mean: float
    step_time_mean_s: float
    steps: int
    queued_fraction: float


def computed_prompt_tokens(workload: Workload) -> int:
    """Prompt tokens a request prefills [tokens]: those not found in the prefix cache, >= 1."""
    return max(1, round(workload.isl * (1.0 - workload.prefix_hit)))


def output_length_bounds(workload: Workload) -> tuple[int, int]:
    """Smallest and largest output length a request can draw [tokens], both >= 1."""
    low = max(1, round(workload.osl * (1.0 - workload.spread)))
    high = max(low, round(workload.osl * (1.0 + workload.spread)))
    return low, high


def blocks_for(tokens: int, block_tokens: int) -> int:
    """KV cache blocks [blocks] that hold ``tokens`` tokens."""
    return -(-tokens // block_tokens)


def summary(values: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, p50, p90 and p99 of ``values`` (in their units); NaN for no values."""
    if values.size == 0:
        return (math.nan,) * 4
    p50, p90, p99 = np.percentile(values, [50.0, 90.0, 99.0])
    return float(values.mean()), float(p50), float(p90), float(p99)


def _checked(seconds: float) -> float:
    if not 0.0 < seconds < math.inf:
        raise ValueError(f"a step must take a positive, finite time, got {seconds!r} s")
    return seconds


def _speculative_gains(rng: np.random.Generator, count: int, k: int, a: float) -> np.ndarray:
    """Tokens each of ``count`` sequences gains in one step: 1 + leading accepted drafts."""
    if k == 0 or a == 0.0:
        return np.ones(count, dtype=np.int64)
    accepted = rng.geometric(1.0 - a, size=count) - 1  # accepts before the first rejection
    return 1 + np.minimum(accepted, k)


class _Requests:
    """Per-request records, indexed by request id, grown as requests arrive."""

    def __init__(self, workload: Workload, scheduler: Scheduler, rng: np.random.Generator):
        self._rng = rng
        self._bounds = output_length_bounds(workload)
        self._isl = workload.isl
        self._block_tokens = scheduler.block_tokens
        self.arrival: list[float] = []
        self.out_len: list[int] = []
        self.blocks: list[int] = []
        self.first_token: list[float] = []
        self.done: list[float] = []

    def new(self, arrival: float) -> int:
        low, high = self._bounds
        out = low if low == high else int(self._rng.integers(low, high + 1))
        self.arrival.append(arrival)
        self.out_len.append(out)
        self.blocks.append(blocks_for(self._isl + out, self._block_tokens))
        self.first_token.append(math.nan)
        self.done.append(math.nan)
        return len(self.arrival) - 1


class _Window:
    """Step statistics accumulated over the measured window."""

    def __init__(self) -> None:
        self.steps = 0
        self.decodes = 0
        self.decode_max = 0
        self.prefill_tokens = 0
        self.step_time = 0.0
        self.queued_time = 0.0

    def add(self, steps: int, decodes: int, prefill: int, seconds: float, queued: bool) -> None:
        self.steps += steps
        self.decodes += decodes * steps
        self.decode_max = max(self.decode_max, decodes)
        self.prefill_tokens += prefill
        self.step_time += seconds
        if queued:
            self.queued_time += seconds


def _validate_run(
    workload: Workload,
    scheduler: Scheduler,
    concurrency: int | None,
    request_rate: float | None,
    requests: int,
    warmup: float,
) -> None:
    if (concurrency is None) == (request_rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) and request_rate (open)")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if request_rate is not None and not 0.0 < request_rate < math.inf:
        raise ValueError(f"request_rate must be positive and finite, got {request_rate}")
    if requests < 1 or not 0.0 <= warmup < 1.0 or int(warmup * requests) >= requests:
        raise ValueError(f"need requests >= 1 and warmup in [0, 1), got {requests}, {warmup}")
    longest = workload.isl + output_length_bounds(workload)[1]
    capacity = scheduler.kv_capacity_tokens // scheduler.block_tokens
    if blocks_for(longest, scheduler.block_tokens) > capacity:
        raise ValueError(
            f"a request of {workload.isl} + {longest - workload.isl} tokens needs "
            f"{blocks_for(longest, scheduler.block_tokens)} KV blocks of "
            f"{scheduler.block_tokens} tokens but the cache holds only {capacity}: "
            "it could never be admitted"
        )


def simulate(
    step_seconds: StepSeconds,
    workload: Workload,
    scheduler: Scheduler,
    *,
    concurrency: int | None = None,
    request_rate: float | None = None,
    requests: int = 2000,
    warmup: float = 0.2,
    seed: int = 0,
) -> SimulationResult:
    """Simulate continuous batching until ``requests`` requests complete; statistics in seconds.

    Closed loop with ``concurrency`` clients or open loop with Poisson arrivals at
    ``request_rate`` [requests/s] (exactly one).  The earliest-completed ``warmup`` fraction of
    the requests is left out of the statistics.  See the module docstring for the rules.
    """
    _validate_run(workload, scheduler, concurrency, request_rate, requests, warmup)
    arrival_rng, length_rng, accept_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    reqs = _Requests(workload, scheduler, length_rng)
    isl = workload.isl
    prompt = computed_prompt_tokens(workload)
    budget = scheduler.token_budget
    k, a = scheduler.draft_tokens, scheduler.acceptance
    per_decode = 1 + k
    draft = scheduler.draft_seconds if k > 0 else None
    deterministic = k == 0 or a == 0.0
    max_seqs = scheduler.max_seqs
    free_blocks = scheduler.kv_capacity_tokens // scheduler.block_tokens
    warm = int(warmup * requests)

    closed = concurrency is not None
    waiting: deque[int] = deque()
    mean_gap = math.inf if closed else 1.0 / request_rate
    next_arrival = math.inf  # open loop: the next Poisson arrival [s]
    if closed:
        waiting.extend(reqs.new(0.0) for _ in range(concurrency))
    else:
        next_arrival = float(arrival_rng.exponential(mean_gap))

    # Decoding sequences, in admission order: request id, context, tokens still to generate.
    ids = np.empty(0, dtype=np.int64)
    ctx = np.empty(0, dtype=np.int64)
    rem = np.empty(0, dtype=np.int64)
    prefilling: deque[list[int]] = deque()  # [request id, prompt tokens left], admitted
    admitted = 0  # running sequences: decoding + prefilling
    completed: list[int] = []
    window = _Window()
    measuring = warm == 0
    window_start = 0.0
    t = 0.0

    while len(completed) < requests:
        while next_arrival <= t:
            waiting.append(reqs.new(next_arrival))
            next_arrival += float(arrival_rng.exponential(mean_gap))
        if admitted == 0 and not waiting:
            t = next_arrival
            continue

        # Rule 2: decodes.  Rule 3: prefill chunks, continuing ones first, then admissions.
        n_dec = ids.size
        decodes = min(n_dec, budget // per_decode)
        left = budget - decodes * per_decode
        prefill = 0
        first_tokens: list[int] = []
        while prefilling and left > 0:
            head = prefilling[0]
            take = min(head[1], left)
            left -= take
            prefill += take
            if take < head[1]:
                head[1] -= take
                break
            prefilling.popleft()
            first_tokens.append(head[0])
        while waiting and left > 0 and admitted < max_seqs:
            rid = waiting[0]
            need = reqs.blocks[rid]
            if need > free_blocks:
                break
            waiting.popleft()
            free_blocks -= need
            admitted += 1
            take = min(prompt, left)
            left -= take
            prefill += take
            if take < prompt:
                prefilling.append([rid, prompt - take])
            else:
                first_tokens.append(rid)
        queued = bool(waiting) and reqs.blocks[waiting[0]] > free_blocks
        if decodes == 0 and prefill == 0:
            raise ValueError("no step can make progress: check token_budget and max_seqs")

        # Rule 4: the step's time.  A run of steps that only decode one token each (nothing to
        # prefill, nothing admissible until a completion or an arrival) is advanced at once.
        steps = 1
        if prefill == 0 and not prefilling and decodes == n_dec and deterministic:
            steps = int(rem.min())
        base = float(ctx[:decodes].mean()) if decodes else 0.0
        start = t
        if steps == 1:
            dt = step_seconds(decodes, base, prefill, prefill / prompt)
            if draft is not None and decodes:
                dt += draft(decodes, base)
            t += _checked(dt)
        else:
            for j in range(steps):
                context = base + j
                dt = step_seconds(decodes, context, 0, 0.0)
                if draft is not None:
                    dt += draft(decodes, context)
                t += _checked(dt)
                if t >= next_arrival:
                    steps = j + 1
                    break
        if measuring:
            window.add(steps, decodes, prefill, t - start, queued)

        # Rule 5: tokens, first tokens and completions at the step's end.
        finished: list[int] = []
        if decodes:
            if steps > 1:
                gains = steps
            else:
                gains = np.minimum(_speculative_gains(accept_rng, decodes, k, a), rem[:decodes])
            rem[:decodes] -= gains
            ctx[:decodes] += gains
            done = rem == 0
            if done.any():
                finished.extend(ids[done].tolist())
                keep = ~done
                ids, ctx, rem = ids[keep], ctx[keep], rem[keep]
        if first_tokens:
            new_ids, new_rem = [], []
            for rid in first_tokens:
                reqs.first_token[rid] = t
                if reqs.out_len[rid] == 1:
                    finished.append(rid)
                else:
                    new_ids.append(rid)
                    new_rem.append(reqs.out_len[rid] - 1)
            if new_ids:
                ids = np.concatenate((ids, np.array(new_ids, dtype=np.int64)))
                ctx = np.concatenate((ctx, np.full(len(new_ids), isl + 1, dtype=np.int64)))
                rem = np.concatenate((rem, np.array(new_rem, dtype=np.int64)))
        for rid in finished:
            reqs.done[rid] = t
            free_blocks += reqs.blocks[rid]
            admitted -= 1
            completed.append(rid)
            if closed:
                waiting.append(reqs.new(t))
        if not measuring and len(completed) >= warm:
            measuring = True
            window_start = t

    return _result(reqs, completed[warm:requests], window, window_start, t)


def _result(
    reqs: _Requests, measured: list[int], window: _Window, start: float, end: float
) -> SimulationResult:
    """Gather the statistics of the measured requests and the window's steps."""
    arrival = np.array(reqs.arrival)[measured]
    first = np.array(reqs.first_token)[measured]
    done = np.array(reqs.done)[measured]
    out = np.array(reqs.out_len)[measured]
    multi = out > 1
    tpot = (done[multi] - first[multi]) / (out[multi] - 1)
    span = end - start
    steps = max(window.steps, 1)
    return SimulationResult(
        len(measured),
        span,
        *summary(first - arrival),
        *summary(tpot),
        *summary(done - arrival),
        output_tokens_per_s=float(out.sum()) / span,
        requests_per_s=len(measured) / span,
        decode_batch_mean=window.decodes / steps,
        decode_batch_max=window.decode_max,
        prefill_tokens_per_step_mean=window.prefill_tokens / steps,
        step_time_mean_s=window.step_time / steps,
        steps=window.steps,
        queued_fraction=window.queued_time / span,
    )
