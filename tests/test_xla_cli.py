"""python -m experiments.validate_xla, run as a user would (in a child process: the experiment
sets its own device count before importing jax): the random cases and the fixed MoE ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from costmodel.validate import xla

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
    moe = [case for case in data["cases"] if case["kind"] in ("moe", "tp_moe")]
    assert len(data["cases"]) == 8 + len(moe) and len(moe) == len(xla.moe_cases())
    for case in data["cases"]:
        assert set(case) >= CASE_FIELDS
        assert case["dtype"] == "float32"
        assert case["flops_model"] == case["flops_xla"]
        sharded = case["kind"] in ("tp_decoder", "tp_moe")
        assert bool(case["collectives_xla"]) == sharded
        assert case["collectives_model"] == case["collectives_xla"]
        if sharded:
            assert case["dims"]["tp"] > 1
    # the MoE layers with data-parallel attention: a dispatch and a combine all-to-all each
    exchanged = [case for case in moe if case["form"] == "data-parallel attention"]
    assert exchanged
    for case in exchanged:
        assert [c["kind"] for c in case["collectives_xla"]] == ["all_to_all"] * 2
    summary = data["summary"]
    assert summary["all_passed"] and summary["max_flops_rel_error"] <= 1e-9
    assert summary["all_moe_flops_exact"] and summary["all_to_alls_equal"]
    assert summary["all_to_all_cases"] == len(exchanged)
    assert set(summary["per_kind"]) == {
        "decoder_prefill",
        "decoder_decode",
        "attention",
        "mlp",
        "mla_decode",
        "lm_head",
        "tp_decoder",
        "moe",
        "tp_moe",
    }
    assert figure.is_file() and figure.stat().st_size > 0
