"""The continuous-batching simulation (costmodel.validate.simulate) against invariants.

Each test states a property a correct engine simulation must have (exact step counts,
lock-step batches, Little's law, Poisson arrivals seeing time averages, KV admission, the
expected tokens per speculative step, prefix caching), with a named tolerance; none
re-implements the scheduler.  Step times are synthetic callables.
"""

from __future__ import annotations

import math

import pytest

from costmodel.validate.simulate import Scheduler, SimulationResult, Workload, simulate

EXACT = 1e-9  # relative: sums of the same floats, only rounding differs
LITTLE_TOL = 0.02
RESIDUAL_TOL = 0.05
SPECULATION_TOL = 0.03
PREFIX_TOL = 0.05
MEAN_LENGTH_TOL = 0.03

BIG_KV = 10**8


def constant(seconds: float):
    """A step time that ignores what the step carries."""
    return lambda decodes, context, prefill, prefill_seqs: seconds


def by_counts(decodes: int, context: float, prefill: int, prefill_seqs: float) -> float:
    """A step time that grows with the decodes, the prompt tokens and the whole prompts."""
    return 1e-3 + 2e-4 * decodes + 3e-6 * prefill + 1e-4 * prefill_seqs


def by_everything(decodes: int, context: float, prefill: int, prefill_seqs: float) -> float:
    """by_counts plus attention over the decode context."""
    return by_counts(decodes, context, prefill, prefill_seqs) + 1e-8 * decodes * context


def test_one_client_waits_whole_chunks_then_one_step_a_token():
    t = 0.01
    workload = Workload(isl=100, osl=20)
    result = simulate(
        constant(t),
        workload,
        Scheduler(token_budget=32, kv_capacity_tokens=BIG_KV),
        concurrency=1,
        requests=50,
    )
    chunks = math.ceil(100 / 32)
    for got in (result.ttft_mean_s, result.ttft_p50_s, result.ttft_p99_s):
        assert got == pytest.approx(chunks * t, rel=EXACT)
    for got in (result.tpot_mean_s, result.tpot_p90_s, result.tpot_p99_s):
        assert got == pytest.approx(t, rel=EXACT)
    assert result.latency_mean_s == pytest.approx((chunks + 19) * t, rel=EXACT)
    assert result.decode_batch_max == 1


def test_a_batch_that_fits_one_step_stays_in_lock_step():
    clients, isl = 8, 64
    workload = Workload(isl=isl, osl=30)
    result = simulate(
        by_counts,
        workload,
        Scheduler(token_budget=clients * isl, kv_capacity_tokens=BIG_KV),
        concurrency=clients,
        requests=400,
    )
    prefill_step = by_counts(0, 0.0, clients * isl, float(clients))
    decode_step = by_counts(clients, 0.0, 0, 0.0)
    assert result.ttft_p50_s == pytest.approx(prefill_step, rel=EXACT)
    assert result.ttft_p99_s == pytest.approx(prefill_step, rel=EXACT)
    assert result.tpot_mean_s == pytest.approx(decode_step, rel=EXACT)
    assert result.tpot_p99_s == pytest.approx(decode_step, rel=EXACT)
    assert result.decode_batch_max == clients


def test_closed_loop_obeys_littles_law():
    clients, osl = 24, 100
    workload = Workload(isl=200, osl=osl, spread=0.5)
    result = simulate(
        by_everything,
        workload,
        Scheduler(token_budget=512, kv_capacity_tokens=BIG_KV),
        concurrency=clients,
        requests=2000,
        seed=3,
    )
    in_system = result.requests_per_s * result.latency_mean_s
    assert in_system == pytest.approx(clients, rel=LITTLE_TOL)
    # Output lengths are drawn symmetrically about osl.
    tokens_per_request = result.output_tokens_per_s / result.requests_per_s
    assert tokens_per_request == pytest.approx(osl, rel=MEAN_LENGTH_TOL)


def test_poisson_arrivals_wait_half_a_step_then_the_prefill_chunks():
    # About ten requests in the system (rate x latency = 1/s x ~10 s): the engine is nearly
    # always mid-step when one arrives, yet the budget is ample and two arrivals in one step
    # rare (rate x t = 1%), so the wait is the residual step plus the prefill's chunks.
    t, isl, budget = 0.01, 1500, 1024
    workload = Workload(isl=isl, osl=1000)
    result = simulate(
        constant(t),
        workload,
        Scheduler(token_budget=budget, kv_capacity_tokens=BIG_KV),
        request_rate=1.0,
        requests=2000,
        seed=1,
    )
    expected = t / 2 + math.ceil(isl / budget) * t
    assert result.ttft_mean_s == pytest.approx(expected, rel=RESIDUAL_TOL)


def test_an_idle_engine_starts_a_step_the_moment_a_request_arrives():
    t, isl, budget = 0.01, 1500, 1024
    result = simulate(
        constant(t),
        Workload(isl=isl, osl=5),
        Scheduler(token_budget=budget, kv_capacity_tokens=BIG_KV),
        request_rate=0.01,
        requests=100,
        seed=2,
    )
    assert result.ttft_p99_s == pytest.approx(math.ceil(isl / budget) * t, rel=EXACT)
    assert result.ttft_p50_s == pytest.approx(math.ceil(isl / budget) * t, rel=EXACT)


def test_kv_capacity_limits_the_running_requests():
    # 64 + 64 tokens are 8 blocks of 16; the cache holds 16 blocks: two requests.
    workload = Workload(isl=64, osl=64)
    scheduler = Scheduler(token_budget=4096, kv_capacity_tokens=256, block_tokens=16)
    result = simulate(by_counts, workload, scheduler, concurrency=4, requests=200)
    assert result.decode_batch_max <= 2
    assert result.decode_batch_mean <= 2
    assert result.queued_fraction > 0
    # Each request queues for KV space while the other pair decodes to completion.
    assert result.ttft_mean_s > 63 * result.tpot_p50_s


def test_max_seqs_limits_the_running_requests():
    scheduler = Scheduler(token_budget=4096, kv_capacity_tokens=BIG_KV, max_seqs=3)
    result = simulate(by_counts, Workload(isl=64, osl=40), scheduler, concurrency=8, requests=200)
    assert result.decode_batch_max <= 3
    assert result.queued_fraction == 0  # waiting for a sequence slot, not for KV space


@pytest.mark.parametrize(("k", "a"), [(4, 0.7), (2, 0.5)])
def test_speculative_decoding_divides_tpot_by_the_expected_tokens_per_step(k, a):
    t = 0.01
    workload = Workload(isl=128, osl=512)
    scheduler = Scheduler(
        token_budget=4096, kv_capacity_tokens=BIG_KV, draft_tokens=k, acceptance=a
    )
    result = simulate(constant(t), workload, scheduler, concurrency=8, requests=400, seed=5)
    tokens_per_step = (1 - a ** (k + 1)) / (1 - a)
    assert result.tpot_mean_s == pytest.approx(t / tokens_per_step, rel=SPECULATION_TOL)


def test_the_draft_models_time_adds_to_every_decode_step():
    t, draft, k, a = 0.01, 0.004, 3, 0.6
    scheduler = Scheduler(
        token_budget=4096,
        kv_capacity_tokens=BIG_KV,
        draft_tokens=k,
        acceptance=a,
        draft_seconds=lambda decodes, context: draft,
    )
    result = simulate(
        constant(t), Workload(isl=128, osl=512), scheduler, concurrency=8, requests=400
    )
    tokens_per_step = (1 - a ** (k + 1)) / (1 - a)
    assert result.tpot_mean_s == pytest.approx((t + draft) / tokens_per_step, rel=SPECULATION_TOL)


def test_a_prefix_cache_hit_halves_the_prefill_work():
    isl = 256

    def run(hit: float) -> SimulationResult:
        return simulate(
            by_counts,
            Workload(isl=isl, osl=32, prefix_hit=hit),
            Scheduler(token_budget=512, kv_capacity_tokens=BIG_KV),
            concurrency=8,
            requests=2000,
        )

    half, full = run(0.5), run(0.0)
    prefilled = half.prefill_tokens_per_step_mean * half.steps
    assert prefilled == pytest.approx(half.requests_measured * isl / 2, rel=PREFIX_TOL)
    full_prefilled = full.prefill_tokens_per_step_mean * full.steps
    assert prefilled / full_prefilled == pytest.approx(0.5, rel=PREFIX_TOL)


def test_every_step_is_timed_once():
    # Decode-only stretches are advanced in one go; they must still call step_seconds per step.
    calls = []

    def counting(decodes, context, prefill, prefill_seqs):
        calls.append(decodes)
        return by_everything(decodes, context, prefill, prefill_seqs)

    result = simulate(
        counting,
        Workload(isl=300, osl=80, spread=0.5),
        Scheduler(token_budget=512, kv_capacity_tokens=BIG_KV),
        concurrency=12,
        requests=300,
        warmup=0.0,
    )
    assert result.steps == len(calls)
    assert result.decode_batch_mean == pytest.approx(sum(calls) / len(calls), rel=EXACT)


def test_advancing_decode_runs_at_once_matches_stepping_one_at_a_time():
    # Speculation that (practically) never accepts decodes one token a step, but is simulated
    # step by step; without speculation decode-only runs are advanced at once.
    workload = Workload(isl=300, osl=120, spread=0.5)
    kwargs = dict(request_rate=40.0, requests=400, seed=7)
    plain = simulate(by_everything, workload, Scheduler(4096, BIG_KV), **kwargs)
    stepped = simulate(
        by_everything,
        workload,
        Scheduler(4096, BIG_KV, draft_tokens=1, acceptance=1e-15),
        **kwargs,
    )
    for name, a, b in zip(plain._fields, plain, stepped, strict=True):
        assert a == pytest.approx(b, rel=EXACT), name


def test_the_same_seed_gives_the_same_result():
    workload = Workload(isl=100, osl=50, spread=0.5)
    scheduler = Scheduler(
        token_budget=256, kv_capacity_tokens=BIG_KV, draft_tokens=2, acceptance=0.5
    )
    first, again, other = (
        simulate(by_everything, workload, scheduler, request_rate=30.0, requests=200, seed=s)
        for s in (11, 11, 12)
    )
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(concurrency=4, request_rate=1.0), "exactly one"),
        (dict(), "exactly one"),
        (dict(concurrency=0), "concurrency"),
        (dict(request_rate=-1.0), "request_rate"),
        (dict(concurrency=2, warmup=1.0), "warmup"),
    ],
)
def test_bad_arrivals_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(constant(0.01), Workload(isl=10, osl=10), Scheduler(64, BIG_KV), **kwargs)


def test_a_request_that_never_fits_the_cache_raises():
    with pytest.raises(ValueError, match="never be admitted"):
        simulate(
            constant(0.01),
            Workload(isl=200, osl=100, spread=0.5),
            Scheduler(token_budget=512, kv_capacity_tokens=320),
            concurrency=1,
        )


@pytest.mark.parametrize(
    "build",
    [
        lambda: Scheduler(token_budget=3, kv_capacity_tokens=BIG_KV, draft_tokens=3),
        lambda: Scheduler(token_budget=64, kv_capacity_tokens=BIG_KV, acceptance=1.0),
        lambda: Scheduler(token_budget=64, kv_capacity_tokens=8),
        lambda: Workload(isl=0, osl=10),
        lambda: Workload(isl=10, osl=10, spread=1.0),
        lambda: Workload(isl=10, osl=10, prefix_hit=1.0),
    ],
)
def test_bad_settings_raise(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.inf, math.nan])
def test_a_step_without_a_positive_time_raises(seconds):
    with pytest.raises(ValueError, match="positive, finite"):
        simulate(
            constant(seconds),
            Workload(isl=10, osl=10),
            Scheduler(64, BIG_KV),
            concurrency=2,
            requests=10,
        )
