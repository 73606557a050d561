"""The README's Python API example runs as written and binds a calibration whole."""

from __future__ import annotations

import json
import re

import numpy as np
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.bind import Setting, bind
from costmodel.config.load import load_hardware, load_scenario
from costmodel.model import symbols as sy
from tests.helpers import ROOT

EXACT = 1e-12  # float64 JAX against exact SymPy at a point [relative]


def _api_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs_and_gives_the_bound_step_time(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(_api_example(), "README.md", "exec"), namespace)
    times = np.asarray(namespace["decode"](np.arange(1.0, 257.0), 4096.0)["time"])
    assert np.all(np.diff(times) > 0)  # a bigger batch never takes less time
    exact = namespace["time"].xreplace({sy.B: sp.Integer(64), sy.T: sp.Integer(4096)})
    assert np.isclose(times[63], float(exact), rtol=EXACT, atol=0)
    deepseek = namespace["deepseek"]
    # the count the example states: what transformers builds for DeepSeek-V3's config.json
    assert namespace["count"].xreplace(deepseek.dims() | {sy.ep: 1}) == 671_026_404_352


def test_a_binding_carries_the_calibration_it_was_made_with():
    """On the calibrated CPU spec every calibration symbol is bound (none left free) and the
    terms change the time; without the calibration it is the pure roofline."""
    scenario = load_scenario(ROOT / "configs" / "h100_8b.yaml")
    scenario = scenario.model_copy(
        update={"hardware": load_hardware(catalogue.path("hardware", "cpu-epyc-2core"))}
    )
    calibrated = bind(scenario, Setting(), calibrated=True)
    pure = bind(scenario, Setting(), calibrated=False)
    assert any(calibrated.time_model) and not any(pure.time_model)
    point = {sy.B: sp.Integer(4), sy.T: sp.Integer(1024)}
    times = {}
    for name, binding in (("calibrated", calibrated), ("pure", pure)):
        expr = binding.step_time("decode")
        assert expr.free_symbols <= {sy.B, sy.T}, name
        times[name] = float(expr.xreplace(point))
    assert times["calibrated"] > times["pure"] > 0


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}"


def test_the_gpu_held_out_table_is_the_shipped_calibrations():
    """Every row of the README's GPU table gives the catalogue's held-out errors (rounded as
    printed), so a refit that is not copied into the README fails here."""
    from costmodel.config.load import load_engine_calibration

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| ([\w.-]+) \| (vllm|trtllm|sglang) \| (.+) \|$", readme, re.M)
    assert len(rows) == len(catalogue.engine_pairs())
    for hardware, engine, cells in rows:
        fits = load_engine_calibration(catalogue.engine_path(hardware, engine)).families
        gemm, *others = cells.split(" | ")
        median, p90 = re.match(r"([\d.]+) / ([\d.]+) \(", gemm).groups()
        assert (median, p90) == (
            _percent(fits["gemm"].heldout.median),
            _percent(fits["gemm"].heldout.p90),
        )
        for family, cell in zip(
            ("context_attention", "generation_attention", "allreduce"), others, strict=True
        ):
            assert cell.split(" (")[0] == _percent(fits[family].heldout.median), (hardware, family)


# The README's table of our H200 timings: row label -> what the recording names it.
DEVICE_ROWS = {
    "bf16 GEMM": ("gemm", "bfloat16"),
    "fp8 GEMM": ("gemm", "fp8"),
    "prefill attention": ("context_attention", "bfloat16"),
    "decode attention": ("generation_attention", "bfloat16"),
    "whole decode steps": "decode",
    "whole prefill steps": "prefill",
}
DEVICE_SOURCES = ("roofline", "vllm", "sglang", "trtllm")  # the table's columns, in order


def test_the_device_timing_table_is_the_papers_recording():
    """The README's medians of our H200 timings are the paper's recording of
    check_device_kernels (rounded as printed), so the two cannot drift apart."""
    check = json.loads((ROOT / "paper/data/device_kernels.json").read_text())["check"]
    kernels = {(k["family"], k["dtype"], k["source"]): k for k in check["kernels"]}
    readme = (ROOT / "README.md").read_text()
    found = 0
    for label, key in DEVICE_ROWS.items():
        row = re.search(rf"^\| {label}[^|]*, (\d+) \| (.+) \|$", readme, re.M)
        assert row is not None, label
        cells = [c.strip().removesuffix("%").strip() for c in row.group(2).split("|")[:4]]
        if isinstance(key, str):
            medians = check["step_median_abs_rel_err"][key]
            expected = [_percent(medians[s]) for s in DEVICE_SOURCES]
        else:
            rows = {kernels[(*key, s)]["rows"] for s in DEVICE_SOURCES}
            assert rows == {int(row.group(1))}, label
            expected = [_percent(kernels[(*key, s)]["median_abs_rel_err"]) for s in DEVICE_SOURCES]
        assert cells == expected, label
        found += 1
    assert found == len(DEVICE_ROWS)
