"""whatif --interval: the command around costmodel.search.uncertainty (its method is tested in
tests/test_serving_uncertainty.py)."""

from __future__ import annotations

import json

import pytest

from experiments import whatif as whatif_cli
from experiments._cli import OptionError

ROOFLINE = ("--model", "llama-3-8b", "--hardware", "h200", "--tp", "1")
ROOFLINE += ("--weight-dtype", "fp8", "--kv-dtype", "fp8", "--isl", "1024", "--osl", "256")
ROOFLINE += ("--concurrency", "32")
ENGINE = (*ROOFLINE, "--engine", "vllm")


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--sensitivity", "--slo", "tpot_ms<=5"], "--slo"),
        (["--interval", "0.9", "--slo", "output_tok_s_per_gpu>=5"], "--slo"),
        (["--interval", "0.9", "--slo", "tpot_ms<=5", "--slo", "tpot_ms<=6"], "--slo"),
        (["--interval", "1"], "--interval"),
        (["--interval", "0.2"], "--interval"),
        (["--interval", "x"], "--interval"),
        (["--interval", "0.9", "--plot", "/tmp/x.png"], "--plot"),
        (["--interval", "0.9", "--gpu-hour-usd", "3"], "--gpu-hour-usd"),
        (["--interval", "0.9", "--sensitivity"], "--sensitivity"),
    ],
)
def test_bad_interval_options(capsys, extra, option):
    with pytest.raises(SystemExit) as exit_:
        whatif_cli.parse_args([*ENGINE, *extra])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {option}") and err.count("\n") == 1


def test_roofline_question_has_no_interval():
    args = whatif_cli.parse_args([*ROOFLINE, "--interval", "0.9"])
    with pytest.raises(OptionError, match="engine calibration"):
        whatif_cli.answer(args)


@pytest.mark.slow
def test_interval_json_holds_the_calibrated_answer_and_the_roofline_apart(capsys):
    args = whatif_cli.parse_args(
        [*ENGINE, "--interval", "0.9", "--slo", "tpot_ms<=8", "--slo", "ttft_ms<=200", "--json"]
    )
    assert whatif_cli.answer(args) == 0
    data = json.loads(capsys.readouterr().out)
    question = data["question"]
    assert question["time_model"].startswith("engine calibration")
    assert data["roofline"]["time_model"] == "pure roofline"
    for metric in ("ttft_ms", "tpot_ms", "output_tok_s_per_gpu"):
        low, high = data["intervals"][metric]
        assert low <= question[metric] <= high
    assert data["slo"] == {"tpot_ms": 8.0, "ttft_ms": 200.0}
    assert 0 < data["probability_meeting_slo"] < 1
    assert data["level"] == 0.9 and data["draws"] > 0
