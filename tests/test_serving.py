"""The continuous-batching serving model: its closed-form pieces (SymPy), the steady state's
predictions (:func:`costmodel.search.predict.predict`) and the optimiser on it
(:mod:`costmodel.search.serving_search`).

Exact values come only from independent sources: textbook identities (a geometric sum, the
Poisson distribution's total mass and mean, work conservation for a step time affine in its
prompt tokens, Little's law), hand arithmetic on trivial cases, and the binding's own prefill
and decode steps where the steady state reduces to one of them.  Everything else is an
invariant: monotone in the load, stable or not, equal to the brute force.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
import yaml
from hypothesis import given
from hypothesis import strategies as st

from costmodel.config.bind import ServingPoint, Setting, bind
from costmodel.config.load import load_scenario
from costmodel.model import serving
from costmodel.model import symbols as sy
from costmodel.search import serving_search
from costmodel.search.predict import Question, predict
from tests.helpers import ROOT

FLOAT_TOL = 1e-12  # sums of a few float64 Poisson terms (round-off only)
WORK_TOL = 1e-12  # work conservation of the mixture, in float64 (round-off only)
MONOTONE_RTOL = 1e-12  # a step "down" this small (relative) is the bisection's round-off
PLATEAU_RTOL = 1e-9  # throughput above the KV limit equals the throughput at it
LITTLE_RTOL = 1e-6  # c = X · latency, n_d found by bisection to 6e-14 of c
RATE_RTOL = 1e-9  # an open loop that is stable carries exactly its rate
STEP_RTOL = 1e-9  # the steady state at one client is one prefill / one decode step
AGREE_RTOL = 1e-9  # optimiser and brute force objectives agree

ISL, OSL = 1024, 256  # the request the predictions ask about (configs/h100_8b.yaml's)
CONCURRENCIES = list(range(1, 513))
# Llama-3-8B spends ~2 x 8.0e9 FLOP per prompt token and an H100 SXM peaks at ~989 TFLOP/s
# (bf16, dense), so one replica prefills at most ~6.2e4 tokens/s: ~60 prompts/s of 1024
# tokens.  Twice that cannot be carried by any step schedule.
UNCARRIABLE_RATE = 120.0
RATES = [0.1, 1.0, 5.0, 10.0, 20.0]  # carried rates [requests/s], increasing


def rational(f: Fraction) -> sp.Rational:
    return sp.Rational(f.numerator, f.denominator)


acceptances = st.fractions(min_value=0, max_value=Fraction(99, 100), max_denominator=1000)


# --- tokens_per_step -------------------------------------------------------------------------


@pytest.mark.parametrize("a", [sp.Integer(0), sp.Rational(1, 3), sp.Rational(4, 5)])
def test_no_drafts_give_one_token_per_step(a):
    assert serving.tokens_per_step(0, a) == 1


@pytest.mark.parametrize("k", range(7))
def test_drafts_never_accepted_give_one_token_per_step(k):
    assert serving.tokens_per_step(k, sp.Integer(0)) == 1


@pytest.mark.parametrize("k", range(1, 7))
@pytest.mark.parametrize(
    "a", [sp.Rational(1, 2), sp.Rational(1, 3), sp.Rational(2, 7), sp.Rational(9, 10)]
)
def test_tokens_per_step_is_the_partial_geometric_sum(k, a):
    # token i of the drafts is kept when the first i are all accepted: E = sum_{i<=k} a^i
    assert serving.tokens_per_step(k, a) == sum(a**i for i in range(k + 1))


@pytest.mark.parametrize("k", range(7))
def test_drafts_always_accepted_give_every_token(k):
    assert serving.tokens_per_step(k, sp.Integer(1)) == k + 1


@given(k=st.integers(0, 12), a=acceptances)
def test_tokens_per_step_grows_with_the_drafts(k, a):
    a = rational(a)
    fewer, more = serving.tokens_per_step(k, a), serving.tokens_per_step(k + 1, a)
    assert more > fewer if a > 0 else more == fewer


@given(k=st.integers(0, 12), a=acceptances, b=acceptances)
def test_tokens_per_step_grows_with_the_acceptance(k, a, b):
    lo, hi = sorted((rational(a), rational(b)))
    low, high = serving.tokens_per_step(k, lo), serving.tokens_per_step(k, hi)
    assert high > low if k >= 1 and hi > lo else high == low


# --- the Poisson mixture ---------------------------------------------------------------------

MEANS = [0.01, 0.5, 1.0, 3.0, 7.5, 20.0]


@pytest.mark.parametrize("m", MEANS)
def test_poisson_head_and_tail_hold_all_the_mass_and_the_mean(m):
    head = [serving.poisson(g, m) for g in range(serving.EXACT_TERMS)]
    mass, conditional = serving.poisson_tail(m)
    assert float(sum(head) + mass) == pytest.approx(1.0, abs=FLOAT_TOL)
    mean = sum(g * p for g, p in enumerate(head)) + mass * conditional
    assert float(mean) == pytest.approx(m, rel=FLOAT_TOL, abs=FLOAT_TOL)
    assert float(conditional) >= serving.EXACT_TERMS  # the tail starts there


T0, SLOPE = sp.Rational(1, 100), sp.Rational(1, 10**5)  # step time t0 + s·P [s, s/token]
PROMPT = 512  # tokens per prompt in the mixture tests


def affine(prefill):
    return T0 + SLOPE * prefill


@pytest.mark.parametrize("m", [0.01, 0.5, 2.0, 6.0])
def test_without_a_budget_cap_the_mixture_conserves_work(m):
    mix = serving.mixture(affine, m, PROMPT, 10**12)
    assert float(mix.mean) == pytest.approx(float(T0 + SLOPE * m * PROMPT), rel=WORK_TOL)
    # the step carrying a given prompt carries it and, on average, m others
    assert float(mix.carrying) == pytest.approx(float(T0 + SLOPE * PROMPT * (1 + m)), rel=WORK_TOL)
    assert float(mix.mean_square) >= float(mix.mean) ** 2 * (1 - WORK_TOL)  # Jensen


@pytest.mark.parametrize("m", [0.01, 0.5, 2.0, 6.0])
@pytest.mark.parametrize("budget", [1500, 600])
def test_the_budget_cap_spills_prompt_tokens_without_losing_them(m, budget):
    mix = serving.mixture(affine, m, PROMPT, budget)
    assert float(mix.mean) == pytest.approx(float(T0 + SLOPE * m * PROMPT), rel=WORK_TOL)
    # the carrying step holds at most a full budget, at least the prompt's own share of it
    assert float(affine(min(PROMPT, budget))) * (1 - WORK_TOL) <= float(mix.carrying)
    assert float(mix.carrying) <= float(affine(budget)) * (1 + WORK_TOL)


# --- KV pages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "request_tokens", "block", "fits"),
    [
        (1000, 100, 16, 8),  # 62 blocks, 7 blocks a request
        (1600, 100, 4, 16),  # 400 blocks, 25 a request: no page is wasted
        (1000, 100, 1, 10),  # one-token pages: tokens / request tokens
        (99, 100, 1, 0),  # not even one request
    ],
)
def test_fitting_requests_count_whole_pages(capacity, request_tokens, block, fits):
    assert serving.fitting_requests(sp.Integer(capacity), request_tokens, block) == fits


# --- the steady state, symbolically ----------------------------------------------------------

STEP = sp.Rational(1, 100)  # a constant step time [s]
WORKLOAD = {
    sy.N_prompt: ISL,
    sy.N_out: OSL,
    sy.N_budget: 8192,
    sy.h_prefix: 0,
    sy.k_draft: 0,
    sy.a_accept: 0,
    sy.q: 1,
}


@pytest.mark.parametrize("closed", [True, False])
@pytest.mark.parametrize("n", [sp.Rational(1, 2), sp.Integer(3), sp.Integer(40)])
def test_a_constant_step_is_every_token_s_time(closed, n):
    steady = serving.steady_state(lambda _n, _p: STEP, closed=closed)
    where = WORKLOAD | {sy.n_d: n, sy.c_conc: 64, sy.lam: 1}
    assert steady.mixture.mean.subs(where) == STEP
    assert steady.tpot.subs(where) == STEP  # (open loop: prompts add no time to a step)


def test_one_client_with_a_constant_step_waits_one_step_for_its_first_token():
    # One client: its prompt runs alone (TTFT = t), then osl - 1 decode steps of t, so a
    # request takes osl·t; the decode phase holds n_d = (osl - 1)/osl of it on average.
    steady = serving.steady_state(lambda _n, _p: STEP, closed=True)
    where = WORKLOAD | {sy.c_conc: 1, sy.n_d: sp.Rational(OSL - 1, OSL)}
    assert steady.tpot.subs(where) == STEP
    assert steady.throughput.subs(where) == 1 / (OSL * STEP)
    assert steady.ttft.subs(where) == STEP
    assert steady.in_flight.subs(where) == 1


# --- predictions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario_8b():
    return load_scenario(ROOT / "configs" / "h100_8b.yaml")


@pytest.fixture(scope="module")
def roofline(scenario_8b):
    return bind(scenario_8b, Setting(1, "bf16", "bf16"))


@pytest.fixture(scope="module")
def by_concurrency(roofline):
    answers = predict(
        [Question(roofline, ServingPoint(ISL, OSL, concurrency=c)) for c in CONCURRENCIES]
    )
    return {k: np.array([a[k] for a in answers]) for k in answers[0]}


def non_decreasing(values) -> bool:
    return bool(np.all(np.diff(values) >= -MONOTONE_RTOL * np.abs(values[:-1])))


def test_ttft_and_tpot_grow_with_the_concurrency(by_concurrency):
    assert by_concurrency["stable"].all()
    assert non_decreasing(by_concurrency["ttft_ms"])
    assert non_decreasing(by_concurrency["tpot_ms"])
    assert by_concurrency["ttft_ms"][-1] > by_concurrency["ttft_ms"][0]
    assert by_concurrency["tpot_ms"][-1] > by_concurrency["tpot_ms"][0]


def test_throughput_grows_until_the_kv_cache_is_full_then_stays(by_concurrency):
    fits = int(by_concurrency["max_concurrency_fits"][0])
    assert 1 < fits < CONCURRENCIES[-1]  # the sweep crosses the KV limit
    rate = by_concurrency["output_tok_s"]
    assert non_decreasing(rate[:fits])
    assert rate[fits - 1] > rate[0]
    np.testing.assert_allclose(rate[fits - 1 :], rate[fits - 1], rtol=PLATEAU_RTOL)


def test_littles_law_holds_at_every_concurrency(by_concurrency):
    # every client is either waiting for its request or being served: c = X · latency
    product = by_concurrency["request_throughput_rps"] * by_concurrency["request_latency_s"]
    np.testing.assert_allclose(product, CONCURRENCIES, rtol=LITTLE_RTOL)


def test_one_client_decodes_at_the_decode_step_of_one_sequence(roofline):
    (answer,) = predict([Question(roofline, ServingPoint(ISL, OSL, concurrency=1))])
    # its mean context over the decode phase: the prompt and half the output
    decode = roofline.step_time("decode").xreplace({sy.B: 1, sy.T: ISL + OSL // 2})
    assert answer["tpot_ms"] == pytest.approx(float(decode) * 1e3, rel=STEP_RTOL)


def test_one_client_waits_one_prefill_step_for_its_first_token(roofline):
    isl, osl = 8000, 16
    (answer,) = predict([Question(roofline, ServingPoint(isl, osl, concurrency=1))])
    prefill = roofline.step_time("prefill").xreplace({sy.B: 1, sy.S: isl})
    assert answer["ttft_ms"] == pytest.approx(float(prefill) * 1e3, rel=STEP_RTOL)


def test_an_open_loop_slows_with_the_rate_and_refuses_what_it_cannot_carry(roofline):
    rates = [*RATES, UNCARRIABLE_RATE]
    answers = predict([Question(roofline, ServingPoint(ISL, OSL, request_rate=r)) for r in rates])
    carried, refused = answers[:-1], answers[-1]
    assert all(a["stable"] for a in carried)
    for key in ("ttft_ms", "tpot_ms"):
        values = [a[key] for a in carried]
        assert all(math.isfinite(v) for v in values)
        assert all(lo < hi for lo, hi in itertools.pairwise(values)), key
    for rate, answer in zip(RATES, carried, strict=True):
        assert answer["request_throughput_rps"] == pytest.approx(rate, rel=RATE_RTOL)
    assert refused["stable"] is False
    assert math.isinf(refused["ttft_ms"]) and math.isinf(refused["tpot_ms"])


def test_throughput_per_gpu_times_tp_is_the_replicas(scenario_8b, roofline):
    two = bind(scenario_8b, Setting(2, "bf16", "bf16"))
    questions = [
        Question(b, ServingPoint(ISL, OSL, concurrency=c)) for b in (roofline, two) for c in (1, 64)
    ]
    for q, answer in zip(questions, predict(questions), strict=True):
        assert answer["output_tok_s_per_gpu"] * q.binding.setting.tp == answer["output_tok_s"]


# --- KV capacity -----------------------------------------------------------------------------

BUDGET = 8192  # the default token budget (vLLM's)


def test_heavier_weights_leave_fewer_kv_tokens(scenario_8b):
    bf16 = bind(scenario_8b, Setting(1, "bf16", "bf16")).kv_capacity_tokens(BUDGET)
    fp8 = bind(scenario_8b, Setting(1, "fp8", "bf16")).kv_capacity_tokens(BUDGET)
    assert 0 < bf16 < fp8


def test_more_tensor_parallelism_holds_more_than_proportionally_more_kv():
    scenario = load_scenario(ROOT / "configs" / "h100_70b.yaml")
    four = bind(scenario, Setting(4, "bf16", "bf16")).kv_capacity_tokens(BUDGET)
    eight = bind(scenario, Setting(8, "bf16", "bf16")).kv_capacity_tokens(BUDGET)
    # each GPU keeps half as many bytes of a token and has more memory free of weights
    assert 0 < 2 * four < eight


def test_fp8_kv_holds_twice_the_tokens_of_bf16_kv(scenario_8b):
    bf16 = bind(scenario_8b, Setting(1, "bf16", "bf16")).kv_capacity_tokens(BUDGET)
    fp8 = bind(scenario_8b, Setting(1, "bf16", "fp8")).kv_capacity_tokens(BUDGET)
    assert abs(fp8 - 2 * bf16) <= 1  # each is floored to whole tokens


# --- scheduling choices ----------------------------------------------------------------------


def test_scheduling_choices_move_the_times_the_right_way(roofline):
    k, a = 3, 0.8
    points = {
        "plain": ServingPoint(ISL, OSL, concurrency=1),
        "speculative": ServingPoint(ISL, OSL, concurrency=1, draft_tokens=k, acceptance=a),
        "rejected": ServingPoint(
            ISL, OSL, concurrency=1, draft_tokens=k, acceptance=0.0, draft_cost=0.05
        ),
        "busy": ServingPoint(ISL, OSL, concurrency=16),
        "cached": ServingPoint(ISL, OSL, concurrency=16, prefix_hit=0.5),
        "small budget": ServingPoint(8000, OSL, concurrency=16, token_budget=2048),
        "large budget": ServingPoint(8000, OSL, concurrency=16, token_budget=16384),
    }
    answers = dict(
        zip(points, predict([Question(roofline, p) for p in points.values()]), strict=True)
    )
    assert all(a["stable"] for a in answers.values())
    plain, spec = answers["plain"]["tpot_ms"], answers["speculative"]["tpot_ms"]
    tau = float(serving.tokens_per_step(k, sp.Rational(4, 5)))
    # more tokens per step, but each step is heavier: the speed-up is at most tau
    assert 1 < plain / spec <= tau
    assert answers["rejected"]["tpot_ms"] > plain
    assert answers["cached"]["ttft_ms"] < answers["busy"]["ttft_ms"]
    assert answers["cached"]["tpot_ms"] <= answers["busy"]["tpot_ms"]
    assert answers["large budget"]["ttft_ms"] < answers["small budget"]["ttft_ms"]


# --- the optimiser ---------------------------------------------------------------------------


def small_scenario(directory, objective: str, disaggregation=(), **slo):
    config = yaml.safe_load((ROOT / "configs" / "h100_70b.yaml").read_text())
    config["serving"] = {
        "mode": "continuous",
        "concurrency_max": 64,
        "disaggregation": [list(pair) for pair in disaggregation],
    }
    config["search"] |= {"tp": [2, 4], "weight_dtypes": ["fp8", "int4"], "kv_dtypes": ["fp8"]}
    config["objective"] = objective
    config["slo"] |= slo
    path = directory / f"{objective}_{len(slo)}_{len(disaggregation)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_scenario(path)


@pytest.mark.parametrize("objective", list(serving_search.OBJECTIVE_KEY))
def test_the_optimiser_finds_the_brute_force_optimum(tmp_path, objective):
    scenario = small_scenario(tmp_path, objective)
    found = serving_search.optimise(scenario).best
    brute = serving_search.brute_force(scenario).best
    assert found is not None and brute is not None
    assert found.choice == brute.choice
    assert found.concurrency == brute.concurrency
    assert found.objective == pytest.approx(brute.objective, rel=AGREE_RTOL)


def test_disaggregated_choices_are_weighed_and_agree_with_brute_force(tmp_path):
    # A TTFT SLO tight enough that prefill beside long decodes misses it, so that separating
    # prefill from decode can win; either way the optimiser must equal the brute force.
    scenario = small_scenario(tmp_path, "throughput_per_gpu", disaggregation=[(1, 1)])
    choices = serving_search.choices(scenario)
    assert any(c.prefill_replicas for c in choices)
    assert all(c.gpus <= scenario.n_gpus for c in choices)
    found = serving_search.optimise(scenario).best
    brute = serving_search.brute_force(scenario).best
    assert found.choice == brute.choice and found.concurrency == brute.concurrency
    assert found.objective == pytest.approx(brute.objective, rel=AGREE_RTOL)


def test_an_infeasible_scenario_has_no_optimum(tmp_path):
    scenario = small_scenario(tmp_path, "throughput_per_gpu", ttft_ms=0.001)
    assert serving_search.optimise(scenario).best is None
    assert serving_search.brute_force(scenario).best is None
