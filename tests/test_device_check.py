"""Our GPU timings against the calibration: the committed file, its reader and the command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from costmodel.config.specs import ConfigError
from costmodel.validate import device_check, gpu_fit

# What experiments.time_gpu_kernels timed on the H200 (SOURCE.md's table).
COMMITTED_ROWS = {
    "gemm": 224,
    "context_attention": 22,
    "generation_attention": 40,
    "decode_step": 6,
    "prefill_step": 8,
    "copy": 1,
    "peak": 1,
}


def test_committed_timings_are_whole_and_positive():
    rows = device_check.read_measured(device_check.DEFAULT_TIMINGS)
    counts = {f: sum(r.family == f for r in rows) for f in COMMITTED_ROWS}
    assert counts == COMMITTED_ROWS
    for r in rows:
        assert r.measured_ms > 0
        if r.family in gpu_fit.SHAPE_COLUMNS:
            assert set(r.shape) == set(gpu_fit.SHAPE_COLUMNS[r.family])


@pytest.mark.parametrize(
    ("cell", "column"),
    [("0", "m"), ("-3", "n"), ("x", "k"), ("", "measured_ms"), ("inf", "measured_ms")],
)
def test_bad_row_names_file_row_and_column(tmp_path, cell, column):
    row = {
        "family": "gemm",
        "dtype": "bfloat16",
        "m": "4",
        "n": "8",
        "k": "16",
        "measured_ms": "0.1",
    }
    row[column] = cell
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    with pytest.raises(ConfigError, match=f"row 1: {column}"):
        device_check.read_measured(path)


@pytest.mark.slow
def test_command_reports_every_group_and_step():
    """The command's JSON: every (family, dtype) of the file under the roofline and each
    calibration that fitted it; shares in [0, 1]; each decode and prefill step beside every
    source."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.check_device_kernels", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(done.stdout)
    sources = {(k["family"], k["dtype"], k["source"]) for k in data["kernels"]}
    for family, dtype in {("gemm", "bfloat16"), ("gemm", "fp8"), ("context_attention", "bfloat16")}:
        assert {(family, dtype, s) for s in ("roofline", *device_check.ENGINES)} <= sources
    for k in data["kernels"]:
        assert k["rows"] > 0 and k["median_abs_rel_err"] <= k["p90_abs_rel_err"]
        assert (k["inside"] is None) == (k["source"] == "roofline")
        assert k["inside"] is None or 0 <= k["inside"] <= 1
    steps = COMMITTED_ROWS["decode_step"] + COMMITTED_ROWS["prefill_step"]
    assert len(data["steps"]) == steps
    assert set(data["step_median_abs_rel_err"]) == {"decode", "prefill"}
    for step in data["steps"]:
        assert set(step["predicted_ms"]) == {"roofline", *device_check.ENGINES}
        assert all(np.isfinite(v) and v > 0 for v in step["predicted_ms"].values())


def test_fp8_linear_run_times_each_fp8_gemm_shape_with_its_quantisation():
    """The fp8 linear file: the bare fp8 GEMM and the quantise-then-GEMM layer at the same
    112 shapes, in one run, read as the fp8 GEMM fit's rows."""
    path = device_check.DEFAULT_TIMINGS.with_name("h200-2026-11-30-fp8-linear.csv")
    rows = device_check.read_measured(path)
    shapes = {
        kind: {tuple(r.shape.values()) for r in rows if (r.family, r.dtype) == kind}
        for kind in (("gemm", "fp8"), ("gemm_quant", "fp8"))
    }
    assert len(shapes["gemm", "fp8"]) == 112
    assert shapes["gemm", "fp8"] == shapes["gemm_quant", "fp8"]
    assert device_check.CALIBRATED_AS["gemm_quant"] == "gemm"
