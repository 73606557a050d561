"""Timing harness, microbenchmarks and the validate_timing CLI, on tiny sizes.

Nothing here asserts how fast anything runs: only that timings are positive and ordered (min
<= median), that repetition limits hold, and that the pieces fit together.
"""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from costmodel.config import catalogue
from costmodel.config.load import load_hardware
from costmodel.config.specs import Efficiency
from costmodel.model.calibration import Calibration
from costmodel.present.records import TimingReport
from costmodel.validate import calibrate, microbench, timing
from costmodel.validate.timing import DIMS, LayerCase, LayerDims, TimingPolicy
from experiments import validate_timing
from experiments._cli import run

TINY = TimingPolicy(warmup=1, min_reps=2, max_reps=4, budget_s=0.001)


def test_time_fn_returns_ordered_positive_times():
    result = timing.time_fn(lambda x: x * 2 + 1, (jnp.ones(16, jnp.float32),), TINY)
    assert 0 < result.min_s <= result.median_s
    assert 2 <= result.reps <= 4
    assert result.compile_s > 0


def test_repeat_calls_respects_its_bounds_with_a_fake_clock():
    ticks = count()
    clock = lambda: float(next(ticks))  # noqa: E731 - every call takes one "second"
    compiled = jax.jit(lambda x: x + 1).lower(jnp.zeros(2)).compile()
    policy = TimingPolicy(warmup=0, min_reps=3, max_reps=10, budget_s=5.5)
    samples = timing.repeat_calls(compiled, (jnp.zeros(2),), policy, clock)
    assert samples == [1.0] * 6  # stops once 6 s >= 5.5 s budget
    capped = timing.repeat_calls(compiled, (jnp.zeros(2),), policy._replace(max_reps=2), clock)
    assert len(capped) == 2


def test_time_program_feeds_donated_outputs_back():
    def step(x, cache):
        return x.sum(), cache.at[0].add(x.sum())

    args = (jnp.ones(4, jnp.float32), jnp.zeros((3, 4), jnp.float32))
    result = timing.time_program(step, args, donate=(1,), policy=TINY)
    assert result.reps >= 2 and result.min_s > 0


@pytest.mark.slow
def test_microbenchmarks_give_sane_numbers_on_tiny_sizes():
    point = microbench.time_matmul(8, 16, 32, jnp.float32, TINY)
    assert point.flops == 2 * 8 * 16 * 32
    assert point.flop_per_s > 0 and point.min_s <= point.median_s
    for kind in ("read", "gemv", "copy"):
        stream = microbench.time_stream(kind, 64 * 1024, jnp.float32, TINY)
        assert stream.kind == kind and stream.bytes_per_s > 0
        assert stream.bytes_moved >= stream.working_set_bytes > 0
    assert microbench.dispatch_overhead(TINY) > 0
    assert microbench.kernel_overhead((1, 3), TINY) >= 0


def test_cache_size_parsing_and_knee():
    assert microbench._parse_cache_size("32768K") == 32 * 2**20
    assert microbench._parse_cache_size("2M") == 2 * 2**20
    assert microbench._parse_cache_size("junk") is None
    found = microbench.os_cache_bytes()
    assert found is None or found > 0

    def curve(pairs):
        return [microbench.BandwidthPoint("read", s, s, 1.0, 1.0, bw) for s, bw in pairs]

    assert microbench.cache_knee(curve([(1, 100), (8, 100), (16, 90), (64, 20), (256, 20)])) == 16
    assert microbench.cache_knee(curve([(1, 20), (8, 21), (64, 20)])) is None


def test_default_sizes_degrade_by_backend():
    assert microbench.default_sizes("cpu") == microbench.CPU_SIZES
    assert microbench.default_sizes("gpu", quick=True) == microbench.GPU_QUICK_SIZES
    assert microbench.default_dtype("cpu") == jnp.float32
    assert microbench.default_dtype("cuda") == jnp.bfloat16


def test_grid_holds_enough_disjoint_heldout_shapes():
    grid = timing.timing_grid()
    train = {c.key for c in grid if c.split == "train"}
    heldout = [c for c in grid if c.split == "heldout"]
    assert len(heldout) >= 20
    assert not train & {c.key for c in heldout}
    assert {c.phase for c in heldout} == {"prefill", "decode"}
    assert {c.dims.name for c in heldout} - {c[0] for c in train}  # unseen widths
    quick = timing.timing_grid(quick=True)
    assert {c.split for c in quick} == {"train", "heldout"}


@pytest.mark.slow
def test_a_tiny_reference_layer_times_in_both_phases():
    dims = LayerDims("tiny", 64, 4, 2, 16, 128)
    for case in (
        LayerCase(dims, "decode", 2, 1, 16, "train"),
        LayerCase(dims, "prefill", 1, 8, 8, "train"),
    ):
        result = timing.time_layer(case, jnp.float32, TINY)
        assert result.min_s > 0
        record = timing.case_record(case, 4)
        assert record["d_model"] == 64 and record["split"] == "train"


def test_the_measured_cpu_spec_loads_as_calibrated():
    specs = sorted(catalogue.directory("hardware").glob("cpu-*.yaml"))
    assert specs, "no measured CPU spec in configs/hardware"
    for path in specs:
        hardware = load_hardware(path)
        assert hardware.efficiency.calibrated
        assert hardware.efficiency != Efficiency()


def _synthetic_data(tmp_path: Path) -> Path:
    """A measurements file whose times the calibrated model itself generated."""
    peaks = calibrate.Peaks(2e11, 3e10)
    truth = Calibration(0.6, 0.7, 2e-6, 1.5, None, 0.4, 0.7)
    grid = timing.timing_grid(quick=True)
    rows = [timing.case_record(c, 4) for c in grid]
    times = calibrate.predict(calibrate.make_cases(rows), peaks, truth)
    for row, value in zip(rows, times, strict=True):
        row |= {"min_s": float(value), "median_s": float(value), "reps": 5, "compile_s": 0.1}
    bandwidth = [
        {
            "kind": "read",
            "working_set_bytes": 2**20,
            "bytes_moved": 2**20,
            "min_s": 1e-4,
            "median_s": 1e-4,
            "bytes_per_s": 3e10,
        }
    ]
    matmul = {
        "m": 64,
        "k": 64,
        "n": 64,
        "flops": 524288.0,
        "min_s": 1e-5,
        "median_s": 1e-5,
        "flop_per_s": 2e11,
    }
    profile = {
        "device": timing.device_description(),
        "dtype": "float32",
        "peak_flops": peaks.flops,
        "stream_bandwidth_bytes_s": peaks.bandwidth,
        "cache_bandwidth_bytes_s": 1e11,
        "cache_bytes": None,
        "os_cache_bytes": None,
        "cache_knee_bytes": None,
        "dispatch_s": 5e-6,
        "kernel_s": 1e-6,
        "matmul": [matmul],
        "alt_dtype": "bfloat16",
        "alt_matmul": matmul,
        "memory_bytes": 2**30,
        "bandwidth": bandwidth,
    }
    data = {"device": profile["device"], "dtype": "float32", "profile": profile, "cases": rows}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    return path


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run(validate_timing.main, list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_refits_stored_data_and_prints_the_required_json(tmp_path: Path, capsys):
    data = _synthetic_data(tmp_path)
    out = tmp_path / "out"
    status, stdout, stderr = _cli(capsys, "--from-data", str(data), "--json", "--out", str(out))
    assert status == 0, stderr
    report = json.loads(stdout)
    assert {"device", "calibration", "train", "heldout", "roofline_only"} <= set(report)
    for key in ("train", "heldout", "roofline_only"):
        assert {"cases", "median_abs_rel_err", "p90_abs_rel_err"} <= set(report[key])
    assert report["heldout"]["median_abs_rel_err"] < 0.02  # the model's own times
    assert report["heldout"]["median_abs_rel_err"] < report["roofline_only"]["median_abs_rel_err"]
    assert (out / "predicted_vs_measured.png").stat().st_size > 0
    spec = load_hardware(out / "calibrated_spec.yaml")
    assert spec.efficiency.calibrated
    fitted = report["calibration"]["efficiency"]
    assert "parameters" not in report["calibration"]  # one format: the spec's Efficiency
    assert spec.efficiency.compute == pytest.approx(fitted["compute"], rel=1e-5)
    assert spec.efficiency.weight_relayout == pytest.approx(fitted["weight_relayout"], rel=1e-5)
    assert spec.efficiency.cache_bandwidth_tb_s is None  # no cache measured: the term is off
    assert TimingReport.from_json(report).heldout.cases == report["heldout"]["cases"]
    assert 0 <= report["regime"]["agree"] <= report["regime"]["cases"]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys):
    status, _, stderr = _cli(capsys, "--from-data", str(tmp_path / "missing.json"))
    assert status == 2
    assert stderr.strip().count("\n") == 0 and "no such file" in stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    status, _, stderr = _cli(capsys, "--from-data", str(bad))
    assert status == 2 and "malformed JSON" in stderr
    status, _, _ = _cli(capsys, "--steps", "0")
    assert status == 2


def test_dims_are_valid_reference_shapes():
    for dims in DIMS.values():
        assert dims.n_heads % dims.n_kv_heads == 0
        assert dims.head_dim % 2 == 0


def test_foreign_share_counts_other_processes_only():
    before = timing.CpuSnapshot(total=1000, busy=400, own=100)
    after = timing.CpuSnapshot(total=1200, busy=550, own=200)  # 150 busy ticks, 100 ours
    assert timing.foreign_share(before, after) == pytest.approx(50 / 200)
    assert timing.foreign_share(before, before) is None
    assert timing.foreign_share(None, after) is None
    snap = timing.cpu_snapshot()
    assert snap is None or (snap.total >= snap.busy >= 0 and snap.own >= 0)


def test_best_of_keeps_each_points_faster_run():
    def point(seconds):
        return microbench.MatmulPoint(8, 8, 8, 1024.0, seconds, seconds, 1024.0 / seconds)

    def stream(seconds):
        return microbench.BandwidthPoint("read", 64, 64.0, seconds, seconds, 64.0 / seconds)

    base = microbench.DeviceProfile(
        {},
        "float32",
        [point(2.0), point(1.0)],
        "bfloat16",
        point(3.0),
        [stream(1.0)],
        5e-6,
        1e-6,
        None,
        None,
    )
    other = base._replace(matmul=[point(1.0), point(4.0)], bandwidth=[stream(0.5)], kernel_s=2e-6)
    merged = microbench.best_of(base, other)
    assert [p.min_s for p in merged.matmul] == [1.0, 1.0]
    assert merged.bandwidth[0].min_s == 0.5
    assert merged.kernel_s == 1e-6
    assert merged.peak_flops == pytest.approx(1024.0)
