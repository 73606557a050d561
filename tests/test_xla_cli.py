"""python -m experiments.validate_xla, run as a user would (in a child process: the experiment
sets its own device count before importing jax)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE_FIELDS = {
    "name",
    "kind",
    "dims",
    "dtype",
    "flops_model",
    "flops_xla",
    "bytes_model",
    "bytes_xla",
    "bytes_fused",
    "bytes_unfused",
    "collectives_model",
    "collectives_xla",
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.validate_xla", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("bad", [["--cases", "0"], ["--cases", "x"], ["--seed", "1.5"]])
def test_bad_input_is_one_line_and_status_2(bad):
    result = _run(*bad)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr


@pytest.mark.slow
def test_json_output(tmp_path):
    figure = tmp_path / "validate.png"
    result = _run("--json", "--cases", "8", "--seed", "5", "--figure", str(figure))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert set(data) == {"cases", "summary"}
    assert len(data["cases"]) == 8
    for case in data["cases"]:
        assert set(case) >= CASE_FIELDS
        assert case["dtype"] == "float32"
        assert case["flops_model"] == case["flops_xla"]
        sharded = case["kind"] == "tp_decoder"
        assert bool(case["collectives_xla"]) == sharded
        assert case["collectives_model"] == case["collectives_xla"]
        if sharded:
            assert case["dims"]["tp"] > 1
    summary = data["summary"]
    assert summary["all_passed"] and summary["max_flops_rel_error"] <= 1e-9
    assert set(summary["per_kind"]) == {
        "decoder_prefill",
        "decoder_decode",
        "attention",
        "mlp",
        "mla_decode",
        "lm_head",
        "tp_decoder",
    }
    assert figure.is_file() and figure.stat().st_size > 0
