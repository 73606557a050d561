"""whatif --crossover: where two choices' metrics cross, found on the full model and checked
against predict; the static model's closed form against a bisection of its own; bad input.
The fast tier shares one search (fp8 against int4 over concurrency, some 3 s with its closed
form); a hardware figure's search (every grid point a binding) and the command line's runs
are slow."""

from __future__ import annotations

import json

import pytest
import sympy as sp

from costmodel.search import crossover_search as cs
from costmodel.search.predict import Question, predict
from experiments import predict as predict_cli
from experiments import whatif as whatif_cli
from experiments._cli import OptionError
from tests.helpers import WHATIF_QUESTION

QUESTION = [*WHATIF_QUESTION, "--concurrency", "32"]
FP8_INT4 = ["--crossover", "weight_dtype=fp8", "weight_dtype=int4"]
REAL_AGREEMENT = 1e-6  # |A - B| / A at a real parameter's crossing (bracket 1e-9 wide)
STATIC_NEAR_FULL = 0.05  # the static mean step's crossing within 5 % of the full model's
BISECTION_RTOL = 1e-10  # a float bisection of the static expressions, relative


def question(*extra: str) -> Question:
    args = predict_cli.parse_args([*QUESTION, *extra])
    inputs, binding = predict_cli.question_binding(args.question)
    return Question(binding, predict_cli.serving_point(inputs))


_FOUND: dict = {}


def fp8_int4(parameter="concurrency", metric="tpot_ms"):
    key = (parameter, metric)
    if key not in _FOUND:
        a, b = question("--weight-dtype", "fp8"), question("--weight-dtype", "int4")
        _FOUND[key] = (a, b, cs.find_crossovers(a, b, parameter, metric))
    return _FOUND[key]


def at(q: Question, parameter: str, value) -> dict:
    from costmodel.search import whatif

    return predict(whatif.questions_at(q.binding, q.point, parameter, [value]))[0]


@pytest.mark.parametrize(
    "metric", ["tpot_ms", pytest.param("output_tok_s_per_gpu", marks=pytest.mark.slow)]
)
def test_integer_crossover_is_where_predict_flips(metric):
    """int4 (less to read) is faster at few clients, fp8 (twice the matmul peak) at many: the
    order flips between n - 1 and n, and the metrics meet inside that step (their gap at
    either end is less than the two metrics' change over it)."""
    a, b, found = fp8_int4("concurrency", metric)
    assert len(found.crossings) == 1 and found.why is None
    c = found.crossings[0]
    assert (c.kind, c.below, c.above, c.verified) == ("equal", "b", "a", True)
    n = int(c.value)
    assert (c.low, c.high) == (n - 1, n)
    sign = 1 if metric == "tpot_ms" else -1  # lower is better, or higher
    before = [at(q, "concurrency", n - 1)[metric] for q in (a, b)]
    after = [at(q, "concurrency", n)[metric] for q in (a, b)]
    assert sign * (before[0] - before[1]) > 0  # B (int4) better below
    assert sign * (after[0] - after[1]) < 0  # A (fp8) better from n on
    change = abs(after[0] - before[0]) + abs(after[1] - before[1])
    assert abs(after[0] - after[1]) < change and abs(before[0] - before[1]) < change
    assert 20 < n < 60


def test_closed_form_agrees_with_bisection():
    """The static mean step's crossing in closed form (a rational SymPy solved exactly): a
    float bisection of the same two expressions finds it, and it lies near the full model's."""
    a, b, found = fp8_int4()
    assert found.closed_form_why is None and len(found.closed_forms) == 1
    form = found.closed_forms[0]
    assert form.exact and form.width == 0 and isinstance(form.expression, sp.Rational)
    assert (form.below, form.above) == ("b", "a")
    c = sp.Symbol("concurrency", positive=True)
    exprs = [cs.static_metric(q.binding, q.point, "concurrency", "tpot_ms", c) for q in (a, b)]
    difference = sp.lambdify(c, exprs[0] - exprs[1], "mpmath")
    lo, hi = 1.0, 4096.0
    assert difference(lo) > 0 > difference(hi)
    while hi - lo > BISECTION_RTOL * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if difference(mid) > 0 else (lo, mid)
    assert form.value == pytest.approx((lo + hi) / 2, rel=BISECTION_RTOL)
    assert exprs[0].xreplace({c: form.expression}) == exprs[1].xreplace({c: form.expression})
    full = found.crossings[0].value
    assert form.value == pytest.approx(full, rel=STATIC_NEAR_FULL)


@pytest.mark.slow
def test_real_crossover_meets_and_flips():
    """Over HBM bandwidth the crossing is a real number: there A and B's TPOT agree to 1e-6
    and the order flips across it; the static model's closed form lies near it."""
    a, b, found = fp8_int4("hbm_bandwidth_tb_s")
    assert len(found.crossings) == 1
    c = found.crossings[0]
    assert c.kind == "equal" and c.verified
    assert c.high - c.low <= cs.CROSSOVER_RTOL * c.high
    there = [at(q, "hbm_bandwidth_tb_s", c.value)["tpot_ms"] for q in (a, b)]
    assert there[0] == pytest.approx(there[1], rel=REAL_AGREEMENT)
    for factor, better in ((1 - 1e-6, "b"), (1 + 1e-6, "a")):
        tpot = [at(q, "hbm_bandwidth_tb_s", c.value * factor)["tpot_ms"] for q in (a, b)]
        assert (tpot[0] < tpot[1]) == (better == "a")
    # The static mean step is proportional to the figure where the figure enters: a closed
    # form, near the full model's crossing.
    (form,) = found.closed_forms
    assert form.exact and (form.below, form.above) == (c.below, c.above)
    assert form.value == pytest.approx(c.value, rel=STATIC_NEAR_FULL)


def test_no_crossover_says_which_is_better():
    a, b = question("--weight-dtype", "fp8"), question("--weight-dtype", "int4")
    found = cs.find_crossovers(a, b, "concurrency", "tpot_ms", 1, 16)
    assert found.crossings == [] and found.why.startswith("B is better throughout")
    assert found.closed_forms is None
    with pytest.raises(ValueError, match="unknown parameter"):
        cs.find_crossovers(a, b, "request_rate")


@pytest.mark.slow
def test_cli_json_and_plot(capsys, tmp_path):
    figure = tmp_path / "crossover.png"
    args = whatif_cli.parse_args(
        [*QUESTION, *FP8_INT4, "--over", "concurrency", "--json", "--plot", str(figure)]
    )
    assert whatif_cli.answer(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["a"]["inputs"]["weight_dtype"] == "fp8"
    assert data["b"]["inputs"]["weight_dtype"] == "int4"
    assert (data["metric"], data["better"]) == ("tpot_ms", "lower")
    (c,) = data["crossovers"]
    assert (c["below"], c["above"], c["kind"]) == ("B", "A", "equal")
    (form,) = data["closed_form"]
    assert sp.Rational(form["expression"]) == sp.nsimplify(form["expression"])
    assert float(sp.Rational(form["expression"])) == pytest.approx(form["value"])
    assert data["question"]["tpot_ms"] == pytest.approx(7.7204, rel=1e-4)
    assert figure.stat().st_size > 0


@pytest.mark.slow
def test_cli_text_prints_the_closed_form(capsys):
    args = whatif_cli.parse_args([*QUESTION, *FP8_INT4, "--over", "concurrency"])
    assert whatif_cli.answer(args) == 0
    out = capsys.readouterr().out
    assert "crossover at concurrency = " in out and "B better below, A above" in out
    assert "concurrency* = " in out and "(exact)" in out


@pytest.mark.slow
def test_disaggregation_and_capacity_steps():
    """Disaggregated against aggregated serving has no closed form (the static model has one
    replica); a KV-cache format flips the order where the requests that fit step."""
    args = whatif_cli.parse_args(
        [
            *QUESTION,
            "--crossover",
            "prefill_replicas=1,decode_replicas=1",
            "prefill_replicas=0",
            "--over",
            "concurrency",
            "--metric",
            "output_tok_s_per_gpu",
        ]
    )
    data, _, _ = whatif_cli._crossover(args, *_bound(args))
    assert data["closed_form"] is None and "serving layout" in data["closed_form_why"]
    assert data["a"]["inputs"]["prefill_replicas"] == 1
    assert data["b"]["inputs"]["decode_replicas"] == 0
    a, b = question("--kv-dtype", "fp8"), question("--kv-dtype", "bf16")
    found = cs.find_crossovers(a, b, "isl", "tpot_ms")
    assert [c.kind for c in found.crossings] == ["capacity"]


def _bound(args):
    inputs, binding = predict_cli.question_binding(args.question)
    return inputs, binding, predict_cli.serving_point(inputs)


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (FP8_INT4, "--over"),
        (["--sensitivity", "--over", "isl"], "--over"),
        (["--sensitivity", "--metric", "tpot_ms"], "--metric"),
        (["--sensitivity", "--range", "1,2"], "--range"),
        ([*FP8_INT4, "--over", "isl", "--metric", "latency"], "--metric"),
        ([*FP8_INT4, "--over", "isl", "--range", "5,1"], "--range"),
        ([*FP8_INT4, "--over", "isl", "--range", "1"], "--range"),
        ([*FP8_INT4, "--over", "isl", "--gpu-hour-usd", "2"], "--gpu-hour-usd"),
        (["--crossover", "weight_dtype=fp9", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "tp=0", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "tp", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "colour=red", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "tp=2,tp=4", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "tp=2", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "isl=10", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "concurrency=4", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "prefill_replicas=1", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "tp=2", "--over", "isl"], "--crossover"),
        (["--crossover", "tp=2", "tp=4", "--solve", "isl"], "--solve"),
    ],
)
def test_bad_options(capsys, extra, option):
    with pytest.raises(SystemExit) as exit_:
        whatif_cli.parse_args([*QUESTION, *extra])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {option}") and err.count("\n") == 1


def test_bad_parameter_and_binding():
    args = whatif_cli.parse_args([*QUESTION, *FP8_INT4, "--over", "hbm_speed"])
    with pytest.raises(OptionError, match="unknown parameter 'hbm_speed'") as err:
        whatif_cli.answer(args)
    assert err.value.option == "--over"
    args = whatif_cli.parse_args([*QUESTION, *FP8_INT4, "--over", "isl", "--range", "2.2,2.9"])
    with pytest.raises(OptionError, match="fewer than two whole values") as err:
        whatif_cli.answer(args)
    # ep needs a model with experts: predict's own check, blamed on the choice.
    args = whatif_cli.parse_args([*QUESTION, "--crossover", "ep=2,tp=2", "tp=2", "--over", "isl"])
    with pytest.raises(OptionError) as err:
        whatif_cli.answer(args)
    assert err.value.option == "--crossover" and "ep=2,tp=2" in str(err.value)
