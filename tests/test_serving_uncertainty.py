"""Prediction intervals of serving predictions (costmodel.search.uncertainty) and the optimiser's
probability SLO.

The fast tests exercise the pieces that need no compilation (the draws, the summaries, the
errors, the spec field); the slow ones solve the compiled serving model: predict unchanged by
the latency factors, a degenerate posterior collapsing onto predict's answer, intervals that
hold the central prediction and widen with the level, the SLO probability's monotonicity and
limits, reproducibility, and the optimiser's probability SLO against the brute force.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import yaml

from costmodel.config.bind import ServingPoint, Setting, bind
from costmodel.config.load import load_scenario, serving_scenario
from costmodel.config.specs import ConfigError
from costmodel.model import engine as engines
from costmodel.model import kernels
from costmodel.search import serving_search
from costmodel.search import uncertainty as unc
from costmodel.search.predict import Question, predict
from costmodel.validate.gpu_uncertainty import Posterior
from experiments import optimise as optimise_cli
from tests.helpers import ROOT

CHANCE_CONFIG = ROOT / "configs" / "h100_8b_vllm_chance.yaml"
# predict's answers recorded at commit fd011cb, before the latency factors entered the engine
# step: the factors (bound to 1) may only reorder the compiled sum, a few ulps at most.
UNCHANGED_RTOL = 1e-14
BEFORE = {
    ("llama-3-8b", "vllm", 1, "bf16", "bf16", 1024, 256, 32): {
        "ttft_ms": 27.123990568161318,
        "tpot_ms": 9.986708726333605,
        "output_tok_s_per_gpu": 3182.923224279312,
        "decode_batch": 31.66275945502275,
    },
    ("llama-3-70b", "vllm", 4, "fp8", "bf16", 1024, 256, 64): {
        "ttft_ms": 85.47492617455579,
        "tpot_ms": 29.203183797617005,
        "output_tok_s_per_gpu": 543.7923583782854,
        "decode_batch": 63.273740442382405,
    },
    ("llama-3-8b", "trtllm", 2, "fp8", "fp8", 2048, 128, 16): {
        "ttft_ms": 26.292230242162127,
        "tpot_ms": 7.231497719431164,
        "output_tok_s_per_gpu": 1083.9506658260673,
        "decode_batch": 15.554695617545804,
    },
}
# The question the intervals are checked on: Llama-3-8B on one H100 SXM under vLLM.
ISL, OSL, CONCURRENCY = 1024, 256, 32


def question(model="llama-3-8b", engine="vllm", tp=1, weights="bf16", kv="bf16", **point):
    """A serving question on h100-sxm (defaults: the intervals' question)."""
    scenario = serving_scenario(
        model,
        "h100-sxm",
        engine=engine,
        tp=tp,
        weight_dtype=weights,
        kv_dtype=kv,
        source=ROOT / "configs" / "question.yaml",
        fields={},
    )
    isl, osl = point.pop("isl", ISL), point.pop("osl", OSL)
    point.setdefault("concurrency", CONCURRENCY)
    return Question(bind(scenario, Setting(tp, weights, kv)), ServingPoint(isl, osl, **point))


def degenerate(binding) -> dict:
    """A posterior of every fit ``binding`` uses with no width: zero covariance, zero
    residuals."""
    out = {}
    for family, dtype in unc.fit_draws(binding):
        p = len(kernels.family(family).params)
        out[(family, dtype)] = Posterior(np.zeros(p), np.zeros((p, p)), p, np.zeros(8), 0.0)
    return out


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "often"])
def test_a_bad_slo_probability_is_a_config_error_naming_the_field(tmp_path, bad):
    config = yaml.safe_load(CHANCE_CONFIG.read_text())
    config["slo"]["probability"] = bad
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"slo\.probability") as err:
        load_scenario(path)
    assert "\n" not in str(err.value)


def test_the_probability_slo_loads_and_is_optional():
    assert load_scenario(CHANCE_CONFIG).slo.probability == 0.95
    assert load_scenario(ROOT / "configs" / "h100_8b.yaml").slo.probability is None


def test_a_probability_slo_without_an_engine_calibration_is_refused(tmp_path):
    config = yaml.safe_load(CHANCE_CONFIG.read_text())
    del config["engine"]
    path = tmp_path / "roofline.yaml"
    path.write_text(yaml.safe_dump(config))
    scenario = load_scenario(path)
    with pytest.raises(ConfigError, match=r"slo\.probability: needs an engine calibration"):
        optimise_cli._check_probability(str(path), scenario)
    with pytest.raises(unc.NoCalibrationError, match="engine calibration"):
        serving_search.require_chance(scenario)


def test_a_roofline_question_has_no_interval():
    roofline = question(engine=None)
    with pytest.raises(unc.NoCalibrationError, match="pure roofline"):
        unc.serving_interval(roofline)
    calibrated = question()
    uncalibrated = calibrated._replace(binding=bind(calibrated.binding.scenario, calibrated=False))
    with pytest.raises(unc.NoCalibrationError):
        unc.serving_interval(uncalibrated)


def test_every_latency_factor_is_bound_to_exactly_one():
    values = question().binding.values
    for family in engines.MEASURED_FAMILIES:
        assert values[engines.latency_factor(family)] == 1
        assert float(values[engines.latency_factor(family)]) == 1.0


def test_the_lm_heads_bf16_gemm_is_drawn_with_the_bf16_gemm_fit():
    # bf16 weights: one draw of the bf16 GEMM fit sets both the weights' GEMM and the LM head
    fits = unc.fit_draws(question().binding)
    gemm = fits[("gemm", "bfloat16")]
    assert set(gemm.factors) == {"gemm", "gemm_bf16"}
    drawn = {s for s, _ in gemm.symbols}
    params = kernels.family("gemm").params
    assert {p.symbol for p in params} | {engines.bf16_symbol(p.symbol) for p in params} <= drawn
    assert engines.t_elem in drawn
    # fp8 weights: the weights' GEMM from the fp8 fit, the LM head from the bf16 fit's own draw
    fits = unc.fit_draws(question(weights="fp8").binding)
    assert fits[("gemm", "fp8")].factors == ("gemm",)
    assert fits[("gemm", "bfloat16")].factors == ("gemm_bf16",)
    assert {s for s, _ in fits[("gemm", "bfloat16")].symbols} == {
        engines.bf16_symbol(p.symbol) for p in params
    } | {engines.t_elem}


def test_a_degenerate_posterior_draws_the_fitted_coefficients_exactly():
    fam = kernels.family("gemm")
    p = len(fam.params)
    fitted = [(param.lower or 0.0) + 1e-6 * (i + 1) for i, param in enumerate(fam.params)]
    zero = Posterior(np.zeros(p), np.zeros((p, p)), p, np.zeros(5), 0.0)
    z = np.random.default_rng(0).standard_normal((64, p))
    assert np.array_equal(unc.coefficient_draws("gemm", fitted, zero, z), np.tile(fitted, (64, 1)))
    assert np.array_equal(unc.residual_factors(zero, np.zeros(64)), np.ones(64))
    assert unc.fit_sd(None, "gemm", "bfloat16", zero) == 0.0  # no covariance: no width
    wide = zero._replace(covariance=np.eye(p))
    drawn = unc.coefficient_draws("gemm", fitted, wide, z)
    for i, param in enumerate(fam.params):  # a bounded coefficient stays above its bound
        if param.lower is not None:
            assert np.all(drawn[:, i] > param.lower)


def test_intervals_widen_with_the_level_and_the_probability_is_monotone():
    rng = np.random.default_rng(1)
    samples = np.exp(rng.normal(size=4096))
    widths = [np.subtract(*unc.interval(samples, lv)[::-1]) for lv in (0.5, 0.8, 0.9, 0.99)]
    assert all(a < b for a, b in itertools.pairwise(widths))
    assert unc.interval(np.append(samples, np.inf), 0.9)[1] < np.inf  # one infinite draw
    metrics = {"ttft_ms": samples[None], "tpot_ms": samples[None], "stable": np.ones((1, 4096))}
    shares = [float(unc.meet_share(metrics, {"tpot_ms": x})[0]) for x in np.geomspace(0.01, 100)]
    assert shares == sorted(shares) and shares[0] == 0 and shares[-1] == 1
    with pytest.raises(ValueError, match="level"):
        unc.interval(samples, 1.0)
    with pytest.raises(ValueError, match="SLO"):
        unc.meet_share(metrics, {"e2e_ms": 1.0})


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_predict_is_unchanged_by_the_latency_factors():
    keys = list(BEFORE)
    questions = [
        question(model, engine, tp, w, kv, isl=isl, osl=osl, concurrency=c)
        for model, engine, tp, w, kv, isl, osl, c in keys
    ]
    for key, answer in zip(keys, predict(questions), strict=True):
        for metric, before in BEFORE[key].items():
            assert answer[metric] == pytest.approx(before, rel=UNCHANGED_RTOL, abs=0), (key, metric)


@pytest.fixture(scope="module")
def drawn():
    """The intervals' question, its draws (default count and seed) and its interval."""
    q = question()
    metrics, _ = unc.draw_metrics(q)
    return q, metrics, unc.serving_interval(q, slo={"ttft_ms": 40.0, "tpot_ms": 11.0})


@pytest.mark.slow
@pytest.mark.parametrize("coefficients", unc.COEFFICIENTS)
def test_a_degenerate_posterior_collapses_onto_predicts_answer(coefficients):
    q = question()
    found = unc.serving_interval(
        q, 0.9, draws=64, posteriors=degenerate(q.binding), coefficients=coefficients
    )
    for metric, (low, high) in found.intervals.items():
        assert low == high == found.central[metric], metric
    assert found.central["time_model"].startswith("engine calibration")
    assert found.roofline["time_model"] == "pure roofline"


@pytest.mark.slow
def test_the_interval_holds_the_central_prediction_and_widens_with_the_level(drawn):
    q, metrics, found = drawn
    assert found.central == predict([q])[0]
    assert found.roofline["ttft_ms"] != found.central["ttft_ms"]  # apart, not mixed in
    assert found.draws == unc.DRAWS and found.stable == 1.0
    for metric, (low, high) in found.intervals.items():
        assert low < found.central[metric] < high, metric
        widths = [np.subtract(*unc.interval(metrics[metric][0], lv)[::-1]) for lv in (0.5, 0.9)]
        assert widths[0] < widths[1] <= high - low + 1e-12 * high
    assert unc.interval(metrics["tpot_ms"][0], 0.9) == found.intervals["tpot_ms"]


@pytest.mark.slow
def test_the_slo_probability_is_monotone_and_certain_far_from_the_prediction(drawn):
    _, metrics, found = drawn
    assert 0 < found.probability < 1
    tpot = found.central["tpot_ms"]
    limits = tpot * np.geomspace(0.5, 2.0, 41)
    shares = [float(unc.meet_share(metrics, {"tpot_ms": x})[0]) for x in limits]
    assert shares == sorted(shares)
    assert shares[0] == 0.0 and shares[-1] == 1.0
    ttft = found.central["ttft_ms"]
    both = [
        float(unc.meet_share(metrics, {"ttft_ms": ttft * f, "tpot_ms": tpot * f})[0])
        for f in (0.5, 1.0, 2.0)
    ]
    assert both[0] == 0.0 < both[1] < both[2] == 1.0


@pytest.mark.slow
def test_the_draws_are_reproducible_under_the_seed(drawn):
    q, _, found = drawn
    again = unc.serving_interval(q, slo={"ttft_ms": 40.0, "tpot_ms": 11.0})
    assert again == found
    other = unc.serving_interval(q, slo={"ttft_ms": 40.0, "tpot_ms": 11.0}, seed=unc.SEED + 1)
    assert other.intervals != found.intervals
    assert all(math.isfinite(x) for pair in found.intervals.values() for x in pair)
    with pytest.raises(ValueError, match="coefficients"):
        unc.serving_interval(q, coefficients="exact")


@pytest.mark.slow
def test_the_optimiser_meets_the_slo_with_the_stated_probability_as_brute_force_does():
    scenario = load_scenario(CHANCE_CONFIG)
    p = scenario.slo.probability
    found = serving_search.optimise(scenario).best
    brute = serving_search.brute_force(scenario).best
    assert found is not None and brute is not None
    assert found.choice == brute.choice and found.concurrency == brute.concurrency
    assert found.answer["slo_probability"] >= p
    # the probability binds: without it the central prediction alone allows more concurrency
    central = scenario.model_copy(
        update={"slo": scenario.slo.model_copy(update={"probability": None})}
    )
    assert serving_search.optimise(central).best.concurrency > found.concurrency
    # and one client more misses it (or breaks the SLO outright)
    (above,) = serving_search.evaluate(scenario, [(found.choice, found.concurrency + 1)])
    assert not above.feasible
