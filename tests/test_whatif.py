"""What-if: exact elasticities against predict's finite differences, inverse questions verified
by re-evaluation, and the command line's bad input."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from costmodel.search import whatif
from costmodel.search.predict import Question, predict
from experiments import predict as predict_cli
from experiments import whatif as whatif_cli
from experiments._cli import OptionError
from tests.helpers import WHATIF_QUESTION

QUESTION = list(WHATIF_QUESTION)
LOOP = ["--concurrency", "32"]
H100_FIGURES = (
    "peak_tflops.fp32",
    "peak_tflops.bf16",
    "peak_tflops.fp16",
    "peak_tflops.fp8",
    "peak_tflops.int8",
    "hbm_bandwidth_tb_s",
    "hbm_capacity_gb",
    "link_bandwidth_gb_s",
    "link_latency_us",
    "scale_out_bandwidth_gb_s",
    "scale_out_latency_us",
    "usable_memory_fraction",
)
LLAMA_DIMENSIONS = (
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "ffn_dim",
    "vocab_size",
)
FD_STEP = 1e-4  # the acceptance check's relative step of a spec figure
# predict finds the steady state by 40 halvings of the decode batch's bracket (to 9e-13 of
# it, compile/serving.py's BISECTION_STEPS), so a difference over 2e-4 of a figure resolves
# the derivative (with the former 26 halvings it carried up to ~1e-4 of noise).
# The acceptance question (Llama-3-8B on one H100, concurrency 32) with and without vLLM's
# kernels; then tp 2 (the link figures move) and an open loop.
CASES = (
    "roofline",
    pytest.param("vllm", marks=pytest.mark.slow),
    pytest.param("tp2", marks=pytest.mark.slow),
    pytest.param("open", marks=pytest.mark.slow),
)
EXTRA = {
    "roofline": (),
    "vllm": ("--engine", "vllm"),
    "tp2": ("--tp", "2"),
    "open": ("--request-rate", "10"),
}


def bound(extra: tuple[str, ...] = ()):
    loop = [] if "--request-rate" in extra else LOOP
    args = predict_cli.parse_args([*QUESTION, *loop, *extra])
    inputs, binding = predict_cli.question_binding(args.question)
    return inputs, binding, predict_cli.serving_point(inputs)


_SENSITIVITY: dict = {}


def sensitivity(case):
    """The question's elasticities and predict's central differences for every figure."""
    if case not in _SENSITIVITY:
        _, binding, point = bound(EXTRA[case])
        result = whatif.sensitivity(binding, point)
        figures = whatif.hardware_figures(binding.scenario.hardware)
        questions = [
            Question(
                whatif.rebind(
                    binding,
                    whatif.with_figure(binding.scenario.hardware, name, value * (1 + s)),
                ),
                point,
            )
            for name, value in figures.items()
            for s in (FD_STEP, -FD_STEP)
        ]
        answers = predict(questions)
        differences = {}
        for i, name in enumerate(figures):
            up, down = answers[2 * i], answers[2 * i + 1]
            differences[name] = {
                m: (math.log(up[m]) - math.log(down[m]))
                / (math.log1p(FD_STEP) - math.log1p(-FD_STEP))
                for m in ("ttft_ms", "tpot_ms", "output_tok_s_per_gpu")
            }
        _SENSITIVITY[case] = (result, differences)
    return _SENSITIVITY[case]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("figure", H100_FIGURES)
def test_elasticities_agree_with_predict(case, figure):
    result, differences = sensitivity(case)
    row = next(r for r in result.elasticities if r.parameter == figure)
    for metric, difference in differences[figure].items():
        exact = row.elasticities[metric]
        if difference == 0:
            assert exact == 0, (metric, exact)  # no effect: exactly 0, not noise
        else:
            assert exact == pytest.approx(difference, rel=1e-4), metric
    assert row.elasticities["cost_usd_per_1m_tokens"] == -row.elasticities["output_tok_s_per_gpu"]
    moves = figure in ("peak_tflops.bf16", "hbm_bandwidth_tb_s")
    moves |= case == "tp2" and figure in ("link_bandwidth_gb_s", "link_latency_us")
    sign = 1 if figure == "link_latency_us" else -1  # more latency is slower, more else faster
    assert (sign * row.elasticities["tpot_ms"] > 0) == moves
    assert sign * row.elasticities["tpot_ms"] >= 0


def test_elasticities_name_every_figure_and_rank():
    result, _ = sensitivity("roofline")
    names = [r.parameter for r in result.elasticities]
    expected = [*H100_FIGURES, "isl", "osl", "concurrency", *LLAMA_DIMENSIONS]
    assert sorted(names) == sorted(expected)
    assert not [r for r in result.elasticities if r.kind == "calibration"]  # pure roofline
    largest = [max(abs(v) for v in r.elasticities.values()) for r in result.elasticities]
    assert largest == sorted(largest, reverse=True)
    by = {r.parameter: r for r in result.elasticities}
    # Decode of 32 sequences of Llama-3-8B on an H100 reads more than it computes.
    assert result.regime == "memory-bound"
    assert by["hbm_bandwidth_tb_s"].reason.startswith("decode is memory-bound")
    assert by["link_bandwidth_gb_s"].reason == "no effect: tp 1 has no collectives"
    # Output per GPU is throughput x osl: its osl elasticity is 1 + throughput's.
    assert 0 < by["osl"].elasticities["output_tok_s_per_gpu"] < 1


def test_model_dimensions_agree_with_predict():
    """Each dimension scaled by 1 +/- 1e-4 in the binding's values (the compiled model takes
    it as a continuous number): predict's central differences match to 1e-4 (or 1e-7, the
    steady state's bisection noise over the step, near 0)."""
    result, _ = sensitivity("roofline")
    _, binding, point = bound()
    rows = {r.parameter: r for r in result.elasticities if r.kind == "model"}
    assert sorted(rows) == sorted(LLAMA_DIMENSIONS)
    dims = whatif.model_dimensions(binding)
    answers = predict(
        [
            Question(whatif.with_value(binding, symbol, value * (1 + s)), point)
            for symbol, value in dims.items()
            for s in (FD_STEP, -FD_STEP)
        ]
    )
    span = math.log1p(FD_STEP) - math.log1p(-FD_STEP)
    for i, symbol in enumerate(dims):
        row = rows[whatif.DIMENSION_NAMES[symbol]]
        up, down = answers[2 * i], answers[2 * i + 1]
        for metric in ("ttft_ms", "tpot_ms", "output_tok_s_per_gpu"):
            difference = (math.log(up[metric]) - math.log(down[metric])) / span
            assert row.elasticities[metric] == pytest.approx(difference, rel=1e-4, abs=1e-7)
        assert row.elasticities["tpot_ms"] > 0  # a larger model is slower
    # Every layer's kernels scale with the layer count, the LM head's not: just below 1.
    assert 0.9 < rows["n_layers"].elasticities["tpot_ms"] < 1


@pytest.mark.slow
def test_workload_elasticities_agree_with_predict():
    """isl, osl and concurrency are integers in predict; a central difference of +/- 1 over
    them matches the exact elasticity to the difference's own O(1/n^2) error."""
    result, _ = sensitivity("roofline")
    _, binding, point = bound()
    from dataclasses import replace

    by = {r.parameter: r.elasticities for r in result.elasticities}
    for name, n in (("isl", point.isl), ("concurrency", point.concurrency)):
        up, down = predict([Question(binding, replace(point, **{name: n + d})) for d in (1, -1)])
        for metric in ("ttft_ms", "tpot_ms"):
            difference = (math.log(up[metric]) - math.log(down[metric])) / (
                math.log(n + 1) - math.log(n - 1)
            )
            assert by[name][metric] == pytest.approx(difference, rel=2e-3, abs=1e-4)


def _tpot_at(tmp_path, binding, figure, value, engine=None):
    """predict's own answer (through its command line's question) on a YAML spec with
    ``figure`` set to ``value``."""
    spec = whatif.with_figure(binding.scenario.hardware, figure, value)
    path = tmp_path / f"hw-{value!r}.yaml"
    path.write_text(yaml.safe_dump(json.loads(spec.model_dump_json(exclude_none=True))))
    argv = [a if a != "h100-sxm" else str(path) for a in [*QUESTION, *LOOP]]
    args = predict_cli.parse_args(argv + (["--engine", engine] if engine else []))
    return predict_cli.answers([predict_cli.question_binding(args.question)])[0]


def test_solve_least_bandwidth_meets_tpot_exactly(tmp_path):
    _, binding, point = bound()
    target = 5.0
    solution = whatif.solve(
        binding, point, "hbm_bandwidth_tb_s", whatif.Constraint("tpot_ms", "<=", target)
    )
    value = solution.value
    assert value is not None and solution.goal == "least"
    at = _tpot_at(tmp_path, binding, "hbm_bandwidth_tb_s", value)
    assert at["tpot_ms"] <= target
    assert at["tpot_ms"] == pytest.approx(target, rel=1e-6)
    for above in (1 + 1e-6, 1.01, 1.5, 10.0):
        assert _tpot_at(tmp_path, binding, "hbm_bandwidth_tb_s", value * above)["tpot_ms"] <= target
    assert _tpot_at(tmp_path, binding, "hbm_bandwidth_tb_s", value * (1 - 1e-6))["tpot_ms"] > target


def test_solve_says_when_nothing_in_range_meets():
    _, binding, point = bound()
    solution = whatif.solve(
        binding, point, "hbm_bandwidth_tb_s", whatif.Constraint("tpot_ms", "<=", 0.001)
    )
    assert solution.value is None and "not met" in solution.why
    everywhere = whatif.solve(
        binding, point, "link_bandwidth_gb_s", whatif.Constraint("tpot_ms", "<=", 100.0)
    )
    assert everywhere.value is None and "met across the whole range" in everywhere.why


def test_solve_largest_concurrency():
    _, binding, point = bound()
    constraint = whatif.Constraint("tpot_ms", "<=", 10.0)
    solution = whatif.solve(binding, point, "concurrency", constraint, max_tokens=4096)
    c = int(solution.value)
    from dataclasses import replace

    met, unmet = predict([Question(binding, replace(point, concurrency=n)) for n in (c, c + 1)])
    assert met["tpot_ms"] <= 10.0 < unmet["tpot_ms"]


@pytest.mark.slow
def test_solve_capacity_is_the_feasibility_edge():
    """Least HBM capacity for any TPOT: where one request's KV cache (and the weights) stop
    fitting; just below it there is no steady state."""
    _, binding, point = bound()
    solution = whatif.solve(
        binding, point, "hbm_capacity_gb", whatif.Constraint("tpot_ms", "<=", 100.0)
    )
    assert solution.value is not None and "no steady state" in solution.why
    below = whatif.rebind(
        binding,
        whatif.with_figure(binding.scenario.hardware, "hbm_capacity_gb", solution.unmet),
    )
    assert not predict([Question(below, point)])[0]["stable"]


def test_cli_json(capsys):
    args = whatif_cli.parse_args(
        [*QUESTION, *LOOP, "--solve", "hbm_bandwidth_tb_s", "--subject-to", "tpot_ms<=5", "--json"]
    )
    assert whatif_cli.answer(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["solution"] == pytest.approx(6.2259466, rel=1e-6)
    assert data["at_solution"]["tpot_ms"] == pytest.approx(5.0, rel=1e-6)
    assert data["question"]["tpot_ms"] == pytest.approx(7.7204, rel=1e-4)


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        ([], "--sensitivity"),
        (["--solve", "hbm_bandwidth_tb_s"], "--subject-to"),
        (["--sensitivity", "--subject-to", "tpot_ms<=5"], "--subject-to"),
        (["--solve", "isl", "--subject-to", "tpot_ms>=5"], "--subject-to"),
        (["--solve", "isl", "--subject-to", "tpot_ms<=-1"], "--subject-to"),
        (["--solve", "isl", "--subject-to", "latency<=1"], "--subject-to"),
        (["--sensitivity", "--gpu-hour-usd", "0"], "--gpu-hour-usd"),
        (["--sensitivity", "--plot", "/tmp/x.txt"], "--plot"),
        (["--sensitivity", "--input", "q.csv"], "--input"),
        (["--sensitivity", "--solve", "isl"], "--solve"),
    ],
)
def test_bad_options(capsys, extra, option):
    with pytest.raises(SystemExit) as exit_:
        whatif_cli.parse_args([*QUESTION, *LOOP, *extra])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {option}") and err.count("\n") == 1


def test_bad_question_and_parameter(capsys):
    with pytest.raises(SystemExit):
        whatif_cli.parse_args(["--sensitivity", *QUESTION])
    assert capsys.readouterr().err.startswith("error: --concurrency")
    args = whatif_cli.parse_args(
        [*QUESTION, *LOOP, "--solve", "hbm_speed", "--subject-to", "tpot_ms<=5"]
    )
    with pytest.raises(OptionError, match="unknown parameter 'hbm_speed'"):
        whatif_cli.answer(args)
    args = whatif_cli.parse_args(
        [*QUESTION, *LOOP, "--solve", "request_rate", "--subject-to", "tpot_ms<=5"]
    )
    with pytest.raises(OptionError, match="unknown parameter 'request_rate'"):
        whatif_cli.answer(args)


def test_cli_sensitivity_json_and_tornado(capsys, tmp_path):
    figure = tmp_path / "tornado.png"
    args = whatif_cli.parse_args(
        [*QUESTION, *LOOP, "--sensitivity", "--json", "--plot", str(figure)]
    )
    assert whatif_cli.answer(args) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["parameter"]: r for r in data["elasticities"]}
    assert rows["hbm_bandwidth_tb_s"]["tpot_ms"] == pytest.approx(-0.76219, abs=1e-5)
    assert rows["link_latency_us"]["tpot_ms"] == 0
    assert data["cost_usd_per_1m_tokens"] == pytest.approx(
        2.0 / 3600 / data["question"]["output_tok_s"] * 1e6
    )
    assert figure.stat().st_size > 0


def test_solve_least_gpus_per_replica():
    """The least tp meeting TPOT <= 4 ms is 4: predict (through its own command-line path)
    gives tp 2 above the bound and tp 4 within it."""
    _, binding, point = bound()
    solution = whatif.solve(binding, point, "tp", whatif.Constraint("tpot_ms", "<=", 4.0))
    assert solution.value == 4 and solution.unmet == 2
    by_tp = {}
    for tp in ("2", "4"):
        _, other, at = bound(("--tp", tp))
        by_tp[tp] = predict([Question(other, at)])[0]["tpot_ms"]
    assert by_tp["2"] > 4.0 >= by_tp["4"]
    assert solution.prediction["tpot_ms"] == pytest.approx(by_tp["4"], rel=1e-12)
    assert [v for v, *_ in solution.searched] == [1, 2, 4, 8, 16, 32]  # 32 heads


def test_solve_largest_price_meets_the_cost_exactly():
    _, binding, point = bound()
    bound_usd = 0.25
    constraint = whatif.Constraint("cost_usd_per_1m_tokens", "<=", bound_usd)
    solution = whatif.solve(binding, point, "gpu_hour_usd", constraint)
    base = predict([Question(binding, point)])[0]
    assert whatif.cost_per_million(base, solution.value) == pytest.approx(bound_usd, rel=1e-12)
    assert whatif.cost_per_million(base, solution.value * (1 + 1e-9)) > bound_usd
    with pytest.raises(ValueError, match="solves for gpu_hour_usd"):
        whatif.solve(binding, point, "hbm_bandwidth_tb_s", constraint)
