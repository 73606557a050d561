"""The paper's figures from the model (matplotlib, Agg backend, PNG).

Each function writes one figure to the path it is given and returns the path.  Curves are the
model's expressions compiled to JAX (:mod:`costmodel.compile.codegen`) and evaluated over a grid;
the marked points are the closed forms of :mod:`costmodel.model.derivations` at the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from costmodel.compile.codegen import compile_exprs
from costmodel.config.bind import Setting
from costmodel.config.specs import Scenario
from costmodel.model import derivations as dv
from costmodel.model import symbols as sy
from costmodel.model.layers import model_ops
from costmodel.model.roofline import n_params, seed_decode_time, step_time
from costmodel.present.files import save_figure
from costmodel.present.paper.latex import num
from costmodel.present.paper.model import BATCHES, pure_roofline, ridge_batch_of, values_of
from costmodel.present.plots import roofline_figure
from costmodel.present.report import roofline_report

DPI = 160
DTYPE_COLOURS = {"bf16": "tab:blue", "fp8": "tab:orange", "int8": "tab:green", "int4": "tab:red"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    return save_figure(fig, path, dpi=DPI)


def roofline_plot(scenario: Scenario, path: str | Path, batch: int = 64) -> Path:
    """The roofline with every kernel of the scenario's model at ``batch`` (pure roofline)."""
    report = roofline_report(pure_roofline(scenario), batch=batch)
    return roofline_figure(report, path)


def decode_batch_plot(scenario: Scenario, path: str | Path) -> Path:
    """Decode throughput against batch per weight dtype (full model, tp 1, the default
    context), the seed's weights-only line, and each dtype's weights-only ridge batch."""
    path = Path(path)
    batches = np.unique(np.round(np.geomspace(1, 1024, 60)))
    context = scenario.workload.default_context
    kind = scenario.model.attention_kind
    op_list = model_ops(kind, "decode", tied_embeddings=scenario.model.tie_word_embeddings)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for dtype in ("bf16", "fp8", "int8", "int4"):
        values = values_of(scenario, Setting(weight_dtype=dtype))
        time = step_time(op_list).xreplace(values)
        latency = compile_exprs({"t": time}, [sy.B, sy.S, sy.T])(batches, 1.0, context)["t"]
        colour = DTYPE_COLOURS[dtype]
        ax.loglog(batches, batches / np.asarray(latency), color=colour, label=f"{dtype} weights")
        ridge = ridge_batch_of(scenario.hardware, dtype, scenario.search.group_size)
        ax.axvline(ridge, color=colour, ls=":", lw=1)
    seed_values = values_of(scenario) | {n_params: scenario.model.nominal_params or 0}
    seed = compile_exprs({"t": seed_decode_time().xreplace(seed_values)}, [sy.B])(batches)["t"]
    ax.loglog(batches, batches / np.asarray(seed), color="k", ls="--", lw=1, label="weights only")
    ax.set_xlabel("batch B [sequences]")
    ax.set_ylabel("decode throughput [tokens/s]")
    ax.set_title(
        f"{scenario.model.name} on {scenario.hardware.name}, tp 1, context {context}; "
        "dotted: weights-only $B^*$",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def kv_traffic_plot(scenario: Scenario, path: str | Path, batches: Sequence[int] = BATCHES) -> Path:
    """Bytes of one decode step against context: weights and KV cache per batch, crossovers."""
    path = Path(path)
    result = dv.kv_weight_crossover(scenario.model.attention_kind)
    values = values_of(scenario)
    contexts = np.geomspace(64, 2**21, 200)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    weights = compile_exprs(
        {"kv": result.kv_bytes.xreplace(values), "w": result.weight_bytes.xreplace(values)},
        [sy.B, sy.T],
    )
    for i, batch in enumerate(batches):
        colour = f"C{i}"
        curves = weights(float(batch), contexts)
        ax.loglog(contexts, curves["kv"], color=colour, label=f"KV cache, B = {batch}")
        ax.loglog(contexts, curves["w"], color=colour, ls="--", lw=1)
        crossing = num(result.context, values | {sy.B: batch})
        ax.plot(
            [crossing],
            [num(result.kv_bytes, values | {sy.B: batch, sy.T: crossing})],
            "o",
            color=colour,
        )
    ax.plot([], [], "k--", lw=1, label="weights")
    ax.set_xlabel("context T [tokens]")
    ax.set_ylabel("bytes per decode step")
    ax.set_title(f"{scenario.model.name}, bf16 weights and KV cache, tp 1", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def tensor_parallel_plot(
    scenario: Scenario, path: str | Path, batches: Sequence[int] = (1, 64)
) -> Path:
    """Per-layer decode time and its all-reduce part against tp, with the crossover degree."""
    path = Path(path)
    result = dv.tensor_parallel(scenario.model.attention_kind)
    values = {k: v for k, v in values_of(scenario).items() if k != sy.tp}
    context = scenario.workload.default_context
    degrees = np.arange(1, 17, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, batch in enumerate(batches):
        point = values | {sy.B: batch, sy.T: context}
        payload = num(result.payload, point)
        exprs = {
            "layer": result.layer_time.xreplace(point),
            "comm": result.communication_time.xreplace(point | {dv.payload: payload}),
        }
        curves = compile_exprs(exprs, [sy.tp])(degrees)
        colour = f"C{i}"
        ax.plot(
            degrees,
            np.asarray(curves["layer"]) * 1e6,
            color=colour,
            marker="o",
            ms=3,
            label=f"layer, B = {batch}",
        )
        ax.plot(
            degrees,
            np.asarray(curves["comm"]) * 1e6,
            color=colour,
            ls="--",
            label=f"all-reduces, B = {batch}",
        )
        aggregates = {
            dv.sharded_bytes: num(result.sharded, point),
            dv.replicated_bytes: num(result.replicated, point),
            dv.payload: payload,
        }
        ax.axvline(num(result.crossover, point | aggregates), color=colour, ls=":", lw=1)
    ax.set_xlabel("tensor-parallel degree tp")
    ax.set_ylabel("per-layer decode time [µs]")
    ax.set_title(
        f"{scenario.model.name} on {scenario.hardware.name}, context {context}; dotted: crossover",
        fontsize=9,
    )
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def model_vs_measured_plot(
    pairs: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Log-log scatter of model against reference values per series, with the diagonal."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    low, high = np.inf, 0.0
    for i, label in enumerate(sorted(pairs)):
        x, y = (np.asarray(v, dtype=float) for v in pairs[label])
        keep = (x > 0) & (y > 0)
        if not keep.any():
            continue
        ax.loglog(x[keep], y[keep], "o", ms=3.5, color=f"C{i}", label=label, alpha=0.8)
        low = min(low, x[keep].min(), y[keep].min())
        high = max(high, x[keep].max(), y[keep].max())
    if high > 0:
        ax.loglog([low, high], [low, high], "k:", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    return _save(fig, path)


def result_figures(recorded: dict, directory: str | Path) -> list[Path]:
    """Figures of the recorded experiment results that exist (none yet without recordings)."""
    return []


def gpu_calibration_plot(hardware: str, engine: str, path: str | Path) -> Path:
    """Predicted against measured latency of every measured kernel of the shipped calibration
    of ``engine`` on ``hardware``, one panel per family: the figure of ``python -m
    experiments.calibrate_gpu --plot`` (:func:`costmodel.present.gpu_plots.calibration_figure`),
    from the catalogue's coefficients and the committed measurements; nothing is fitted."""
    from costmodel.config import catalogue
    from costmodel.config.load import load_engine_calibration, load_hardware
    from costmodel.present.gpu_plots import calibration_figure, calibration_panels, figure_title

    path = Path(path)
    calibration = load_engine_calibration(catalogue.engine_path(hardware, engine))
    spec = load_hardware(catalogue.path("hardware", hardware))
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = calibration_panels(calibration, spec)
    return calibration_figure(panels, path, figure_title(calibration))
