"""The measured serving runs: the committed data, the split, and the shipped step overheads
(they must be what the fit gives on the training rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodel.config.load import load_scenario, step_overheads
from costmodel.validate import serving_data as sd

ROOT = Path(__file__).resolve().parent.parent
REFIT_ATOL_S = 2e-6  # the bounded scalar fit's tolerance is 1e-6 s
SHARE_HELD_OUT = (0.25, 0.42)  # a third of the runs, give or take the hash


def test_the_committed_runs_are_the_documented_244():
    runs = sd.runs()
    assert len(runs) == 244
    assert {(r.hardware, r.engine) for r in runs} == {
        ("h100-sxm", "trtllm"),
        ("h200", "sglang"),
        ("h200", "vllm"),
    }
    assert all(r.ttft_ms > 0 and r.tpot_ms > 0 and r.concurrency >= 1 for r in runs)
    source = (sd.data_path().parent / "SOURCE.md").read_text()
    assert "095f58a51c4ca8e61b66ec108d86f223f8d559ce" in source and "Apache-2.0" in source
    assert (sd.data_path().parent / "LICENSE").is_file()


def test_the_split_holds_out_about_a_third_of_every_engine():
    runs = sd.runs()
    for engine in {r.engine for r in runs}:
        mine = [r for r in runs if r.engine == engine]
        share = sum(sd.held_out(r) for r in mine) / len(mine)
        assert SHARE_HELD_OUT[0] <= share <= SHARE_HELD_OUT[1], engine


def test_an_engine_scenario_carries_its_fitted_step_overhead():
    fitted = step_overheads().seconds
    assert set(fitted) == {"trtllm", "sglang", "vllm"}
    scenario = load_scenario(ROOT / "configs" / "h100_70b_vllm.yaml")
    assert scenario.step_overhead_s == fitted["vllm"]
    assert load_scenario(ROOT / "configs" / "h100_70b.yaml").step_overhead_s == 0.0


@pytest.mark.slow
def test_the_shipped_overheads_are_what_the_fit_gives():
    from costmodel import runtime

    runtime.configure()
    train = [r for r in sd.runs() if not sd.held_out(r)]
    refit = sd.fit_overheads(train)
    shipped = json.loads((ROOT / "costmodel/catalogue/serving/step_overhead.json").read_text())
    for engine, seconds in shipped["seconds"].items():
        assert refit[engine] == pytest.approx(seconds, abs=REFIT_ATOL_S), engine


@pytest.mark.slow
def test_interval_coverage_counts_runs_inside_their_intervals():
    """Runs whose 'measured' times are the calibrated prediction itself lie inside its 0.9
    interval; runs measured 100 times slower lie outside."""
    chosen = [r for r in sd.runs() if r.engine == "trtllm" and r.tp == 1][:4]
    answers = sd.predict_runs(chosen, engine=True)
    same = [
        r._replace(ttft_ms=a["ttft_ms"], tpot_ms=a["tpot_ms"])
        for r, a in zip(chosen, answers, strict=True)
    ]
    slow = [r._replace(ttft_ms=100 * r.ttft_ms, tpot_ms=100 * r.tpot_ms) for r in same]
    assert sd.interval_coverage(same, 0.9, draws=128) == {"ttft_ms": 1, "tpot_ms": 1, "both": 1}
    assert sd.interval_coverage(slow, 0.9, draws=128) == {"ttft_ms": 0, "tpot_ms": 0, "both": 0}
