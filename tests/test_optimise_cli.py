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
from experiments._cli import run

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


SERVING_KEYS = {
    "tp",
    "weight_dtype",
    "kv_dtype",
    "token_budget",
    "draft_tokens",
    "concurrency",
    "objective",
    "ttft_ms",
    "tpot_ms",
    "output_tok_s_per_gpu",
    "kv_capacity_tokens",
    "max_concurrency_fits",
}


def _check_serving_report(report: dict, status: int) -> None:
    """A continuous-serving answer: the brute force's, within both SLOs, a reason per loser."""
    brute = report["brute_force"]
    limits = report["constraints"]
    assert brute["evaluated"] > 0
    if report["best"] is None:
        assert status == cli.EXIT_INFEASIBLE and brute["best"] is None
        return
    assert status == 0
    best, other = report["best"], brute["best"]
    assert set(best) >= SERVING_KEYS
    chosen = ("tp", "weight_dtype", "kv_dtype", "token_budget", "draft_tokens", "concurrency")
    assert {k: best[k] for k in chosen} == {k: other[k] for k in chosen}
    assert math.isclose(best["objective"], other["objective"], rel_tol=1e-9)
    assert brute["agrees"] is True
    assert best["tpot_ms"] <= limits["tpot_ms_max"]
    assert best["ttft_ms"] <= limits["ttft_ms_max"]
    assert 1 <= best["concurrency"] <= best["max_concurrency_fits"]
    assert report["runners_up"] and all(r["reason"] for r in report["runners_up"])


def _check_report(report: dict, status: int) -> None:
    if report.get("mode") == "continuous":
        _check_serving_report(report, status)
        return
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


# The fast tier runs the main job (continuous serving) and one static-batch scenario once;
# the rest are slow.
FAST_SCENARIOS = ("h100_70b.yaml", "h100_8b.yaml")


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_SCENARIOS else pytest.param(n, marks=pytest.mark.slow) for n in SCENARIOS],
)
def test_every_scenario_runs(name, tmp_path, capsys):
    args = [str(ROOT / "configs" / name), "--json", "--out", str(tmp_path), "--no-cache"]
    status = cli.main(args)
    report = json.loads(capsys.readouterr().out)
    _check_report(report, status)
    assert json.loads((tmp_path / "optimise.json").read_text())["best"] == report["best"]
    if report.get("mode") == "continuous":
        return
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"throughput_vs_batch.png", "pareto.png"} <= pngs
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    if report["best"] is not None:
        assert "roofline.png" in pngs
        assert report["runners_up"] and all(r["reason"] for r in report["runners_up"])


def test_there_is_an_infeasible_scenario():
    assert "infeasible_example.yaml" in SCENARIOS


@pytest.mark.slow
def test_command_line_h100_70b_json(tmp_path):
    """The module entry point in its own process (the runtime set up by experiments._cli)."""
    result = subprocess.run(
        [*CLI, "configs/h100_70b.yaml", "--json", "--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_report(json.loads(result.stdout), result.returncode)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m experiments.optimise ARGV`` in-process: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_:
        run(cli.main, argv)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.slow
def test_command_line_infeasible_exits_3_with_an_explanation(tmp_path, capsys):
    config = str(ROOT / "configs" / "infeasible_example.yaml")
    status, out, _ = _run([config, "--out", str(tmp_path), "--no-cache"], capsys)
    assert status == 3
    assert "No feasible configuration" in out
    assert "would fit" in out
    assert (tmp_path / "pareto.png").exists()


def _one_line_error(status: int, err: str, *needles: str) -> None:
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_command_line_bad_config_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "h100_70b.yaml").read_text() + "surprise: 1\n")
    status, _, err = _run([str(bad), "--out", str(tmp_path / "out"), "--no-cache"], capsys)
    _one_line_error(status, err, "surprise")
    assert not (tmp_path / "out").exists()


CONFIG = str(ROOT / "configs" / "h100_70b.yaml")


def test_out_pointing_at_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me\n")
    status, _, err = _run([CONFIG, "--out", str(target), "--no-cache"], capsys)
    _one_line_error(status, err, "--out", str(target))
    assert target.read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_out_in_an_unwritable_place_is_a_one_line_error(capsys):
    status, _, err = _run([CONFIG, "--out", "/proc/x/y", "--no-cache"], capsys)
    _one_line_error(status, err, "--out", "/proc/x/y")


def test_out_with_an_over_long_name_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "parent" / ("n" * 300)
    status, _, err = _run([CONFIG, "--out", str(out), "--no-cache"], capsys)
    _one_line_error(status, err, "--out")
    assert list(tmp_path.iterdir()) == []  # the parent it made is gone again


def test_default_results_in_a_read_only_directory_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.chdir("/proc")  # not writable, even by root
    status, _, err = _run([CONFIG, "--no-cache"], capsys)
    _one_line_error(status, err, "--out", "results/h100_70b")


def test_a_failed_run_leaves_nothing_and_prints_the_header_first(tmp_path, monkeypatch, capsys):
    def fail(scenario):
        raise RuntimeError("stopped for the test")

    from costmodel.search import optimise as opt
    from costmodel.search import serving_search

    monkeypatch.setattr(opt, "optimise", fail)
    monkeypatch.setattr(serving_search, "optimise", fail)
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(RuntimeError):
        cli.main([CONFIG, "--out", str(fresh), "--no-cache"])
    assert "h100_70b: llama-3-70b" in capsys.readouterr().out  # printed before the work
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        cli.main([CONFIG, "--out", str(existing), "--no-cache"])
    assert list(existing.iterdir()) == []


CACHE_SCRIPT = """
import sys
from costmodel import runtime
runtime.configure()
import jax, jax.numpy as jnp
with runtime.compilation_cache(sys.argv[1]) as directory:
    print(float(jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(5.0)).sum()))
print(directory)
"""


@pytest.mark.slow
def test_a_corrupted_compilation_cache_is_cleared_not_warned_about_forever(tmp_path):
    """Separate processes: JAX reads its persistent cache only when a process compiles."""

    def once() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", CACHE_SCRIPT, str(tmp_path / "cache")],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip

    first = once()
    directory = Path(first.stdout.split()[-1])
    assert directory.parent == tmp_path / "cache" and "jax-" in directory.name
    entries = [p for p in directory.rglob("*") if p.is_file()]
    assert entries
    for entry in entries:
        entry.write_bytes(b"not a compiled program")
    second = once()
    assert "cleared" in second.stderr and "Traceback" not in second.stderr
    third = once()
    assert "cache" not in third.stderr.lower(), third.stderr
    assert first.stdout.split()[0] == second.stdout.split()[0] == third.stdout.split()[0]


@pytest.mark.slow
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
