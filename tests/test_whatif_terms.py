"""What-if elasticities under an engine (slow: the engine's compilation and some 350 bindings)
against central finite differences of predict: each fitted coefficient scaled in the
calibration and the scenario bound again; each model dimension scaled in the binding's values
(the compiled model taking it as a continuous number).  The pure roofline's model dimensions
are checked in test_whatif.py."""

from __future__ import annotations

import math

import pytest

from costmodel.search import whatif
from costmodel.search.predict import Question, predict
from experiments import predict as predict_cli
from tests.helpers import WHATIF_QUESTION

QUESTION = [*WHATIF_QUESTION, "--concurrency", "32"]
FD_STEP = 1e-4  # relative step of the central differences (the acceptance check's)
RTOL = 1e-4  # exact against central difference, relative
# predict's steady state is bisected to ~1e-12 of its bracket: over a step of 2e-4 that is
# ~1e-8 of noise in a difference of logs, the floor for elasticities near 0.
ATOL = 1e-7
DIFFERENCED = ("ttft_ms", "tpot_ms", "output_tok_s_per_gpu")


def bound(extra=()):
    args = predict_cli.parse_args([*QUESTION, *extra])
    inputs, binding = predict_cli.question_binding(args.question)
    return binding, predict_cli.serving_point(inputs)


def log_difference(up, down) -> dict[str, float]:
    """Central difference of log(metric) over log(1 +/- FD_STEP)."""
    span = math.log1p(FD_STEP) - math.log1p(-FD_STEP)
    return {m: (math.log(up[m]) - math.log(down[m])) / span for m in DIFFERENCED}


def agree(row, difference) -> None:
    for metric, value in difference.items():
        exact = row.elasticities[metric]
        assert exact == pytest.approx(value, rel=RTOL, abs=ATOL), (row.parameter, metric)


@pytest.mark.slow
def test_engine_coefficients_agree_with_predict():
    """Every fitted coefficient the vLLM deployment binds, scaled in the calibration by
    1 +/- 1e-4 and bound again: predict's central differences match the exact elasticities."""
    binding, point = bound(("--engine", "vllm"))
    result = whatif.sensitivity(binding, point)
    rows = {r.parameter: r for r in result.elasticities if r.kind == "calibration"}
    found = whatif.calibrated_symbols(binding)
    assert sorted(rows) == sorted(str(c) for c in found)
    calibration = binding.scenario.kernels
    questions = [
        Question(
            whatif.rebind_calibration(
                binding, whatif.scaled_coefficient(calibration, coefficient, 1 + s)
            ),
            point,
        )
        for coefficient in found
        for s in (FD_STEP, -FD_STEP)
    ]
    answers = predict(questions)
    moving = 0
    for i, coefficient in enumerate(found):
        row = rows[str(coefficient)]
        difference = log_difference(answers[2 * i], answers[2 * i + 1])
        agree(row, difference)
        moving += any(v for v in row.elasticities.values())
    assert moving > 20
    # The bf16 GEMM's coefficients time the weight matmuls: they matter most at bf16 weights.
    gemm = [r for r in rows.values() if r.parameter.startswith("gemm[bfloat16].")]
    assert max(abs(r.elasticities["tpot_ms"]) for r in gemm) > 0.5
    # tp 1: the all-reduce's coefficients time nothing.
    for name, row in rows.items():
        if name.startswith("allreduce"):
            assert all(v == 0 for v in row.elasticities.values())
            assert row.reason == "no effect: tp 1 has no all-reduces"


@pytest.mark.slow
def test_model_dimensions_under_an_engine():
    """Dimensions through the engine's kernels: the binding's value scaled by 1 +/- 1e-4."""
    binding, point = bound(("--engine", "vllm"))
    result = whatif.sensitivity(binding, point)
    rows = {r.parameter: r for r in result.elasticities if r.kind == "model"}
    dims = whatif.model_dimensions(binding)
    questions = [
        Question(whatif.with_value(binding, symbol, value * (1 + s)), point)
        for symbol, value in dims.items()
        for s in (FD_STEP, -FD_STEP)
    ]
    answers = predict(questions)
    for i, symbol in enumerate(dims):
        agree(rows[whatif.DIMENSION_NAMES[symbol]], log_difference(*answers[2 * i : 2 * i + 2]))


@pytest.mark.slow
def test_calibrated_roofline_terms_agree_with_predict():
    """A spec with a fitted efficiency (the 2-core EPYC's): each term scaled in the spec by
    1 +/- 1e-4 and rebound."""
    args = predict_cli.parse_args(
        [
            *QUESTION[:2],
            "--hardware",
            "cpu-epyc-2core",
            *QUESTION[4:11],
            "128",
            "--osl",
            "32",
            "--concurrency",
            "2",
        ]
    )
    inputs, binding = predict_cli.question_binding(args.question)
    point = predict_cli.serving_point(inputs)
    result = whatif.sensitivity(binding, point)
    rows = {r.parameter: r for r in result.elasticities if r.kind == "calibration"}
    terms = whatif.efficiency_terms(binding.scenario.hardware)
    assert sorted(rows) == sorted(terms) and len(terms) == 8
    hardware = binding.scenario.hardware
    answers = predict(
        [
            Question(whatif.rebind(binding, whatif.with_figure(hardware, name, v * (1 + s))), point)
            for name, v in terms.items()
            for s in (FD_STEP, -FD_STEP)
        ]
    )
    for i, name in enumerate(terms):
        agree(rows[name], log_difference(answers[2 * i], answers[2 * i + 1]))
    assert rows["efficiency.memory"].reason.startswith("fitted term of the calibrated roofline")
