"""The roofline command (``experiments.roofline``) and its report (``costmodel.present.report``).

In-process: ``run(report, argv, parse=parse_args)`` is what ``python -m experiments.roofline``
runs; its exit status arrives as SystemExit.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.bind import Setting, bind
from costmodel.config.load import load_scenario
from costmodel.model import dtypes
from costmodel.model import symbols as sy
from costmodel.present import report as report_module
from costmodel.present.report import roofline_report
from experiments import _cli, roofline
from experiments._cli import MAX_TOKENS, run
from tests.helpers import ROOT

H100_70B = str(ROOT / "configs/h100_70b.yaml")
LLAMA3_8B_PARAMS = 8_030_261_248  # Meta's Llama-3-8B checkpoint, counted tensor by tensor
REL = 1e-12  # two exact evaluations of one quantity, each rounded to float once

# Llama-3-8B's published config.json fields (meta-llama/Meta-Llama-3-8B).
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
}


def scenario_yaml(directory: Path, model: str, hardware: str = "h100-sxm", n_gpus: int = 8):
    """A scenario file in ``directory`` for ``model`` (a catalogue name or a path)."""
    path = directory / "scenario.yaml"
    path.write_text(
        f"model: {model}\nhardware: {hardware}\nn_gpus: {n_gpus}\n"
        "workload: {prompt_tokens: 512, output_tokens: 128}\n"
        "slo: {tpot_ms: 50, ttft_ms: 2000}\n"
        "search: {tp: [1], group_size: 32}\n"  # 32 divides every catalogue model's widths
    )
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command run in-process."""
    with pytest.raises(SystemExit) as exit_info:
        run(roofline.report, list(args), parse=roofline.parse_args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_line_error(err: str, option: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {option}: "), err
    return lines[0]


# --------------------------------------------------------------------------- parameter counts


def test_mla_model_without_nominal_params_uses_the_exact_count(tmp_path, capsys):
    path = scenario_yaml(tmp_path, "deepseek-v3-mla")
    status, out, err = cli(capsys, str(path), "--json")
    assert (status, err) == (0, "")
    report = json.loads(out)
    params = report["decode_table_weights_only_params"]
    assert params["source"] == "exact"
    # Batch 1 is memory-bound: every weight read once at 2 bytes, at the datasheet bandwidth.
    bandwidth = report["hbm_bandwidth_bytes_s"]
    first = report["decode_table_weights_only"][0]
    assert first["latency_ms"] == pytest.approx(2 * params["params"] / bandwidth * 1e3, rel=REL)


def test_hugging_face_llama_config_counts_llama3_8b_exactly(tmp_path, capsys):
    model_dir = tmp_path / "llama-3-8b"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    path = scenario_yaml(tmp_path, "llama-3-8b/config.json", n_gpus=2)
    status, out, err = cli(capsys, str(path), "--json")
    assert (status, err) == (0, "")
    params = json.loads(out)["decode_table_weights_only_params"]
    assert params == {"params": LLAMA3_8B_PARAMS, "source": "exact", "bytes_per_param": 2}


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("tp", "reason"),
    [("3", "does not divide"), ("1000000", "exceeds"), ("16", "n_gpus 8")],
)
def test_tp_must_divide_the_heads_and_fit_the_gpus(capsys, tp, reason):
    status, out, err = cli(capsys, H100_70B, "--tp", tp)
    assert status == 2
    assert reason in one_line_error(err, "--tp")
    assert out == ""


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--batch", "0"),
        ("--batch", str(MAX_TOKENS + 1)),
        ("--context", "0"),
        ("--context", "1e9"),
        ("--context", str(2**40)),
        ("--tp", "-2"),
        ("--weight-dtype", "fp7"),
    ],
)
def test_out_of_range_options_are_one_line_naming_the_option(capsys, option, value):
    status, out, err = cli(capsys, H100_70B, option, value)
    assert status == 2
    one_line_error(err, option)
    assert out == ""


def test_bad_plot_paths_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the report was computed before --plot was checked")

    monkeypatch.setattr(report_module, "roofline_report", must_not_run)
    (tmp_path / "file.txt").write_text("")
    bad = [
        tmp_path,  # a directory
        tmp_path / "plot",  # no suffix
        tmp_path / "plot.xyz",  # no such image format
        tmp_path / "missing" / "plot.png",  # no such directory
        tmp_path / "file.txt" / "plot.png",  # a file where a directory should be
        tmp_path / ("x" * 300 + ".png"),  # a name longer than the file system takes
        Path("/proc/plot.png"),  # a directory nobody can write in
    ]
    for path in bad:
        status, out, err = cli(capsys, H100_70B, "--plot", str(path))
        assert status == 2, path
        one_line_error(err, "--plot")
        assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_dtype_choices_are_the_models(capsys):
    assert roofline.WEIGHT_DTYPES == dtypes.WEIGHT_DTYPES
    assert roofline.KV_DTYPES == dtypes.KV_DTYPES


# --------------------------------------------------------------------------- the report


def test_header_comes_before_the_slow_work(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "roofline_report", interrupted)
    monkeypatch.setattr(_cli, "exit_now", lambda status: None)  # keep pytest's process
    handler = signal.getsignal(signal.SIGINT)
    try:
        status, out, err = cli(capsys, H100_70B)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert status == 130
    assert out.splitlines()[0].startswith("llama-3-70b on h100-sxm")
    assert err == "interrupted\n"


def test_human_report_one_time_unit_per_column_and_says_it_does_not_fit(capsys, tmp_path):
    plot = tmp_path / "roofline.png"
    status, out, err = cli(capsys, H100_70B, "--plot", str(plot))
    assert (status, err) == (0, "")
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["roofline.png"]  # no temporary left over
    assert "time µs" in out and "total ms" in out
    assert "e-0" not in out  # no 9.78e-09 s beside 20 ms
    assert re.search(r"\d s\b", out) is None  # no unit inside a cell
    assert "does not fit in memory: needs 142 GB per GPU, 70.3 GB more than the 72 GB" in out


@pytest.mark.parametrize(("tp", "fits"), [(1, False), (8, True)])
def test_memory_total_and_fit(tp, fits):
    scenario = load_scenario(H100_70B)
    report = roofline_report(scenario, setting=Setting(tp=tp))
    memory = report["memory_bytes_per_gpu"]
    parts = memory["weights"] + memory["kv_cache"] + memory["workspace"]
    assert memory["total"] == pytest.approx(parts, rel=REL)
    assert memory["usable"] == 72e9  # 80 GB x 0.9
    assert report["fits_in_memory"] is fits
    assert report["memory_excess_bytes_per_gpu"] == pytest.approx(
        max(memory["total"] - memory["usable"], 0), rel=REL
    )


def test_calibrated_report_times_are_the_bindings(tmp_path):
    """On the calibrated CPU spec, the report's decode step and decode table are the step time
    of ``bind(scenario, setting)`` (calibration terms and values together)."""
    scenario = load_scenario(scenario_yaml(tmp_path, "llama-3-8b", "cpu-epyc-2core", n_gpus=1))
    assert scenario.hardware.efficiency.calibrated
    setting = Setting(weight_dtype="int8")
    batch, context = 8, 1000
    report = roofline_report(scenario, batch=batch, context=context, setting=setting)
    binding = bind(scenario, setting)
    assert binding.time_model.overlap and binding.time_model.cache
    step = binding.step_time("decode")
    expected = float(step.xreplace({sy.B: sp.Integer(batch), sy.T: sp.Integer(context)}))
    assert report["summary"]["decode"]["time_s"] == pytest.approx(expected, rel=REL)
    row = next(row for row in report["decode_table"] if row["batch"] == batch)
    assert row["latency_ms"] == pytest.approx(expected * 1e3, rel=REL)


def test_report_catalogue_models_all_answer(capsys, tmp_path):
    """Every catalogue model gets a weights-only table (nominal or exact count)."""
    for name in catalogue.names("models"):
        scenario = load_scenario(scenario_yaml(tmp_path, name))
        source = "nominal" if scenario.model.nominal_params is not None else "exact"
        params, found = report_module.weights_only_params(scenario)
        assert found == source and params > 0


# --------------------------------------------------------------------------- --help


def test_help_imports_nothing_heavy():
    """``--help`` answers before anything heavy (SymPy, JAX, matplotlib) is imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "experiments.roofline", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "usage: python -m experiments.roofline" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    heavy_packages = {"jax", "jaxlib", "sympy", "matplotlib", "scipy", "pydantic", "numpy"}
    heavy = {name for name in imported if name.split(".")[0] in heavy_packages}
    assert heavy == set()
