"""The command lines: every scenario in configs/ runs, answers what the brute force answers and
meets its constraints; an infeasible one exits 3 with an explanation; a bad config exits 2;
bench_sweep prints its keys."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import optimise as cli

ROOT = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "experiments.optimise")
BENCH = (sys.executable, "-m", "experiments.bench_sweep")
SCENARIOS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
BEST_KEYS = {
    "tp",
    "batch",
    "weight_dtype",
    "kv_dtype",
    "objective",
    "tpot_ms",
    "ttft_ms",
    "throughput_tok_s_per_gpu",
    "memory_bytes_per_gpu",
}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _check_report(report: dict, status: int) -> None:
    assert {
        "best",
        "brute_force",
        "constraints",
        "optimiser_seconds",
        "brute_force_seconds",
    } <= set(report)
    brute = report["brute_force"]
    assert brute["evaluated"] > 0
    limits = report["constraints"]
    if report["best"] is None:
        assert status == cli.EXIT_INFEASIBLE
        assert brute["best"] is None
        explanation = report["explanation"]
        assert explanation["closest"]["violated"]
        assert explanation["fixes"]
        return
    assert status == 0
    best, other = report["best"], brute["best"]
    assert set(best) >= BEST_KEYS
    assert set(other) >= BEST_KEYS
    assert {k: best[k] for k in ("tp", "batch", "weight_dtype", "kv_dtype")} == {
        k: other[k] for k in ("tp", "batch", "weight_dtype", "kv_dtype")
    }
    assert math.isclose(best["objective"], other["objective"], rel_tol=1e-9)
    assert brute["agrees"] is True
    assert best["tpot_ms"] <= limits["tpot_ms_max"]
    assert best["ttft_ms"] <= limits["ttft_ms_max"]
    assert best["memory_bytes_per_gpu"] <= limits["memory_bytes_per_gpu_max"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_runs(name, tmp_path, capsys):
    args = [str(ROOT / "configs" / name), "--json", "--out", str(tmp_path), "--no-cache"]
    status = cli.main(args)
    report = json.loads(capsys.readouterr().out)
    _check_report(report, status)
    assert json.loads((tmp_path / "optimise.json").read_text())["best"] == report["best"]
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"throughput_vs_batch.png", "pareto.png"} <= pngs
    if report["best"] is not None:
        assert "roofline.png" in pngs
        assert report["runners_up"] and all(r["reason"] for r in report["runners_up"])


def test_there_is_an_infeasible_scenario():
    assert "infeasible_example.yaml" in SCENARIOS


def test_command_line_h100_70b_json(tmp_path):
    result = subprocess.run(
        [*CLI, "configs/h100_70b.yaml", "--json", "--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_report(json.loads(result.stdout), result.returncode)


def test_command_line_infeasible_exits_3_with_an_explanation(tmp_path):
    result = subprocess.run(
        [*CLI, "configs/infeasible_example.yaml", "--out", str(tmp_path), "--no-cache"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3
    assert "No feasible configuration" in result.stdout
    assert "would fit" in result.stdout


def test_command_line_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "h100_70b.yaml").read_text() + "surprise: 1\n")
    result = subprocess.run(
        [*CLI, str(bad), "--out", str(tmp_path), "--no-cache"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "surprise" in result.stderr


def test_bench_sweep_json_keys():
    result = subprocess.run(
        [*BENCH, "--json", "--contexts", "8", "--batch-max", "64", "--repeats", "1"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    out = json.loads(result.stdout)
    keys = {"configs_per_s_jax", "configs_per_s_numpy", "configs_per_s_python", "n_configs"}
    assert keys | {"devices"} <= set(out)
    assert out["n_configs"] == 4 * 4 * 2 * 8 * 64
    assert out["best"]["numpy_agrees"] is True
    assert out["optimiser"]["agree"] is True
