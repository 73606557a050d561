"""Figure of a timing validation: predicted against measured layer time (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from costmodel.present.files import save_figure
from costmodel.validate.calibrate import Validation


def predicted_vs_measured_figure(
    validation: Validation, records: list[dict], path: str | Path, title: str = ""
) -> Path:
    """Write a log-log scatter of predicted against measured time, one point per case.

    Filled markers: calibrated model (training cases grey, held-out coloured by phase); open
    markers: the pure roofline on held-out cases.  Dotted lines mark +-25 %.  Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    measured = validation.measured * 1e3
    fig, ax = plt.subplots(figsize=(6.5, 6))
    train = validation.train
    heldout = ~train
    phases = np.array([r["phase"] for r in records])
    ax.scatter(
        measured[train],
        validation.predicted[train] * 1e3,
        s=14,
        c="0.6",
        label="train (calibrated)",
    )
    for phase, color in (("decode", "tab:blue"), ("prefill", "tab:orange")):
        mask = heldout & (phases == phase)
        ax.scatter(
            measured[mask],
            validation.predicted[mask] * 1e3,
            s=22,
            c=color,
            label=f"held-out {phase} (calibrated)",
        )
        ax.scatter(
            measured[mask],
            validation.predicted_roofline[mask] * 1e3,
            s=22,
            facecolors="none",
            edgecolors=color,
            label=f"held-out {phase} (pure roofline)",
        )
    low = min(measured.min(), validation.predicted_roofline.min() * 1e3) / 1.5
    high = max(measured.max(), validation.predicted.max() * 1e3) * 1.5
    line = np.array([low, high])
    ax.loglog(line, line, "k-", lw=0.8)
    ax.loglog(line, line * 1.25, "k:", lw=0.6)
    ax.loglog(line, line / 1.25, "k:", lw=0.6)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("measured layer time [ms]")
    ax.set_ylabel("predicted layer time [ms]")
    ax.set_title(title or "per-kernel cost model against measured time")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)
