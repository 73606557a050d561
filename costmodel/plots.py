"""Figures (matplotlib, Agg backend): the roofline with a scenario's kernels placed on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

PHASE_STYLE = {"prefill": ("tab:orange", "s"), "decode": ("tab:blue", "o")}


def roofline_figure(report: dict[str, Any], path: str | Path) -> Path:
    """Write a log-log roofline: both ceilings per compute dtype and every kernel of the report.

    Kernels sit at (intensity, achieved FLOP/s = FLOPs / modelled time).  Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bandwidth = report["hbm_bandwidth_bytes_s"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    intensities = np.logspace(-1, 5, 400)
    for dtype, peak in report["peak_flops"].items():
        label = f"{dtype} roof" + (" (vector)" if dtype == "fp32" else "")
        ax.loglog(intensities, np.minimum(peak, bandwidth * intensities), lw=1.2, label=label)
    for phase, (color, marker) in PHASE_STYLE.items():
        points = [
            (op["intensity_flop_per_byte"], op["flops"] / op["time_s"])
            for op in report["ops"][phase]
            if op["intensity_flop_per_byte"] and op["flops"] > 0 and op["time_s"] > 0
        ]
        if points:
            x, y = zip(*points, strict=True)
            ax.scatter(x, y, c=color, marker=marker, s=22, label=f"{phase} kernels", zorder=3)
    ridge = report["ridge_point_flop_per_byte"]
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.annotate(f"bf16 ridge {ridge:.0f} FLOP/B", (ridge, bandwidth * ridge / 30), fontsize=8)
    ax.set_xlabel("arithmetic intensity [FLOP/byte]")
    ax.set_ylabel("attainable [FLOP/s]")
    ax.set_title(
        f"{report['model']} on {report['hardware']}: batch {report['batch']}, "
        f"context {report['context']}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
