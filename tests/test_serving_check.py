"""The closed-form serving model against the discrete-event simulation over the grid of
:mod:`costmodel.validate.serving_check` (104 points: closed loops over concurrency, open loops
at shares of the replica's throughput, eight prompt/output lengths), and the mixed step's
limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from costmodel.config.bind import Setting, bind
from costmodel.config.load import load_scenario
from costmodel.model import symbols as sy

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05  # the bound on the mean TTFT and TPOT
MIN_POINTS_WITHIN = 100  # of the grid's 104 points, TTFT and TPOT both within 5%
ANY_POINT = 0.06  # no point's TPOT, nor TTFT where requests do not queue for KV, misses by more
KV_LATENCY_TOLERANCE = 0.10  # request latency where requests queue for KV space
EXACT = 1e-12  # the mixed step at its limits equals the phase steps (float round-off)


@pytest.fixture(scope="module")
def comparison():
    from costmodel import runtime
    from costmodel.validate import serving_check
    from experiments.check_serving import rows

    runtime.configure()
    scenario = load_scenario(ROOT / "configs" / "h100_8b.yaml")
    binding = bind(scenario, Setting(1, "bf16", "bf16"))
    grid = serving_check.points(binding)
    records = rows(serving_check.compare(binding, grid, requests=serving_check.REQUESTS))
    return records, serving_check.summary_of(records)


@pytest.mark.slow
def test_the_grid_has_at_least_100_points_within_5_percent(comparison):
    records, summary = comparison
    assert summary["points"] >= 100
    assert summary["within"] >= MIN_POINTS_WITHIN
    for r in records:
        assert abs(r["tpot_error"]) <= ANY_POINT, r
        if r["kv_limited"]:
            assert abs(r["latency_error"]) <= KV_LATENCY_TOLERANCE, r
        else:
            assert abs(r["ttft_error"]) <= ANY_POINT, r


@pytest.mark.slow
def test_the_grid_covers_both_loops_and_the_kv_limit(comparison):
    records, summary = comparison
    assert any(r["concurrency"] for r in records) and any(r["request_rate"] for r in records)
    assert summary["kv_limited"] > 0  # the queue for KV space is exercised too
    for r in records:  # percentiles are ordered
        for key in ("sim_ttft_ms", "sim_tpot_ms"):
            q = r[key]
            assert q["p50"] <= q["p90"] <= q["p99"]


@pytest.mark.parametrize(
    "config",
    # the engine's expression is large: substituting into it takes half a minute
    ["h100_70b.yaml", pytest.param("h100_70b_vllm.yaml", marks=pytest.mark.slow)],
)
def test_the_mixed_step_is_the_decode_step_and_the_prefill_step_at_its_ends(config):
    binding = bind(load_scenario(ROOT / "configs" / config), Setting(4, "fp8", "fp8"))
    mixed = binding.symbolic_mixed_step_time().xreplace(binding.values)
    base = {sy.q: 1, sy.t_sched: 0}
    decode = binding.step_time("decode").xreplace({sy.B: 8, sy.T: 3000})
    # subs, not xreplace: the unlaunched kernels' branches must not be evaluated at zero work
    only_decode = mixed.subs(base | {sy.n_d: 8, sy.T: 3000, sy.P: 0, sy.S: 100})
    prefill = binding.step_time("prefill").xreplace({sy.B: 4, sy.S: 1000})
    only_prefill = mixed.subs(base | {sy.n_d: 0, sy.P: 4000, sy.S: 1000, sy.T: 5})
    assert float(only_decode) == pytest.approx(float(decode), rel=EXACT)
    assert float(only_prefill) == pytest.approx(float(prefill), rel=EXACT)
    both = mixed.subs(base | {sy.n_d: 8, sy.T: 3000, sy.P: 4000, sy.S: 1000})
    assert float(only_decode) < float(both) < float(only_decode) + float(only_prefill)
