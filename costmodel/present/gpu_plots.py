"""Figure of one engine calibration: predicted against measured kernel latency, per family
(matplotlib, Agg).  Takes plain arrays; nothing is fitted or evaluated here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np

from costmodel.present.files import save_figure

TRAIN_COLOR = "0.55"
HELDOUT_COLOR = "tab:blue"
ROOFLINE_COLOR = "tab:red"
ROOFLINE_ALPHA = 0.12  # the pure roofline is context, drawn faint and underneath
DPI = 110


class Panel(NamedTuple):
    """One family's points: measured, calibrated and pure-roofline latencies [ms] per measured
    row, which rows were held out of the fit, and the held-out medians of |predicted / measured
    - 1| of the calibration and of the roofline [1] (None: no held-out rows)."""

    family: str
    measured_ms: np.ndarray
    predicted_ms: np.ndarray
    roofline_ms: np.ndarray
    heldout: np.ndarray
    heldout_median: float | None
    roofline_median: float | None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    """Axis limits [ms] covering every positive finite value of ``arrays``, with a margin."""
    values = np.concatenate(arrays)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return 1e-3, 1.0
    return float(values.min()) / 1.5, float(values.max()) * 1.5


def _draw(ax, panel: Panel) -> None:
    """Scatter one family on ``ax``: roofline (faint), train, held-out, and the y = x line."""
    if not len(panel.measured_ms):
        ax.text(0.5, 0.5, "not calibrated", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel.family, fontsize=9)
        return
    held = np.asarray(panel.heldout, dtype=bool)
    ax.scatter(
        panel.measured_ms[held],
        panel.roofline_ms[held],
        s=4,
        c=ROOFLINE_COLOR,
        alpha=ROOFLINE_ALPHA,
        linewidths=0,
        label="held-out, pure roofline",
    )
    ax.scatter(
        panel.measured_ms[~held],
        panel.predicted_ms[~held],
        s=4,
        c=TRAIN_COLOR,
        alpha=0.5,
        linewidths=0,
        label="train, calibrated",
    )
    ax.scatter(
        panel.measured_ms[held],
        panel.predicted_ms[held],
        s=6,
        c=HELDOUT_COLOR,
        alpha=0.7,
        linewidths=0,
        label="held-out, calibrated",
    )
    x_low, x_high = _limits(panel.measured_ms, panel.predicted_ms)
    y_low, y_high = _limits(panel.measured_ms, panel.predicted_ms, panel.roofline_ms[held])
    low, high = min(x_low, y_low), max(x_high, y_high)
    ax.loglog([low, high], [low, high], "k-", lw=0.8, label="predicted = measured")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_title(
        f"{panel.family}: held-out median {_percent(panel.heldout_median)} "
        f"(roofline {_percent(panel.roofline_median)})",
        fontsize=9,
    )
    ax.set_xlabel("measured latency [ms]", fontsize=8)
    ax.set_ylabel("predicted latency [ms]", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", markerscale=2)


def calibration_panels(calibration, spec) -> list[Panel]:
    """One panel per kernel family (:data:`costmodel.model.kernels.FAMILIES` order): the
    calibration's predictions and the pure roofline's on every measured row of ``spec``."""
    from costmodel.model import kernels
    from costmodel.validate.gpu_predict import measured_points

    panels = []
    for name in kernels.FAMILIES:
        points = measured_points(calibration, spec, name)
        fit = calibration.families.get(name)
        panels.append(
            Panel(
                family=name,
                measured_ms=points.measured_ms,
                predicted_ms=points.predicted_ms,
                roofline_ms=points.roofline_ms,
                heldout=points.heldout,
                heldout_median=fit.heldout.median if fit else None,
                roofline_median=fit.roofline_heldout.median if fit else None,
            )
        )
    return panels


def figure_title(calibration) -> str:
    """The figure's title: which GPU and engine."""
    return f"{calibration.hardware} / {calibration.engine}: predicted vs measured kernel latency"


def calibration_figure(panels: Sequence[Panel], path: str | Path, title: str) -> Path:
    """Write a 2 x 2 grid of log-log scatters, one panel per family (at most four), predicted
    against measured latency [ms], to ``path`` (PNG: reproducible bytes).  Returns the path."""
    if len(panels) > 4:
        raise ValueError(f"at most four panels, got {len(panels)}")
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw(ax, panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=DPI)
