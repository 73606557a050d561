"""Figures (matplotlib, Agg backend): the roofline with a scenario's kernels placed on it, and
the optimiser's figures.  matplotlib is imported when a figure is drawn, not at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from costmodel.present.files import save_figure

PHASE_STYLE = {"prefill": ("tab:orange", "s"), "decode": ("tab:blue", "o")}


def _mark_chosen(ax, x: float, y: float) -> None:
    """The optimiser's chosen configuration as a gold star."""
    ax.plot(x, y, marker="*", ms=16, color="gold", mec="black", ls="none", zorder=5, label="chosen")


def roofline_figure(report: dict[str, Any], path: str | Path) -> Path:
    """Write a log-log roofline: both ceilings per compute dtype and every kernel of the report.

    Kernels sit at (intensity, achieved FLOP/s = FLOPs / modelled time).  Returns the path.
    """
    import matplotlib.pyplot as plt

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
    return save_figure(fig, path, dpi=130)


# --------------------------------------------------------------------------- the optimiser

CONSTRAINT_MARKERS = {
    "memory": ("x", "memory"),
    "tpot": ("|", "TPOT SLO"),
    "ttft": ("_", "TTFT SLO"),
}
# Distinct hues (matplotlib's tab10, not tab20's pale/dark pairs of one hue); beyond ten lines
# the hues repeat with a dash-dot line.
LINE_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
Y_HEADROOM = 1.15  # the y-range reaches this multiple of the largest feasible value
DPI = 110  # resolution of the optimiser's figures [dots per inch]


def _save(fig, path: str | Path) -> Path:
    """Save deterministically and atomically at the optimiser's resolution, then close."""
    return save_figure(fig, path, dpi=DPI)


def _first_false(ok: np.ndarray) -> int | None:
    """Index of the first False in a boolean array, or None."""
    bad = np.flatnonzero(~np.asarray(ok, dtype=bool))
    return int(bad[0]) if bad.size else None


def line_style(index: int) -> tuple[str, str]:
    """(colour, line style) of the ``index``-th line: distinct hues first."""
    return LINE_COLOURS[index % len(LINE_COLOURS)], "-" if index < len(LINE_COLOURS) else "-."


def feasible_ylim(curves: list[dict[str, Any]], chosen: dict[str, Any] | None) -> float | None:
    """Top of the throughput axis: headroom above the largest feasible throughput (and the
    chosen point); None when nothing is feasible (let matplotlib choose)."""
    tops = [
        float(np.max(c["throughput_per_gpu"][ok]))
        for c in curves
        if (ok := c["memory_ok"] & c["tpot_ok"] & c["ttft_ok"]).any()
    ]
    if chosen is not None:
        tops.append(float(chosen["throughput_tok_s_per_gpu"]))
    return Y_HEADROOM * max(tops) if tops else None


def throughput_batch_figure(
    curves: list[dict[str, Any]], chosen: dict[str, Any] | None, path: str | Path, title: str = ""
) -> Path:
    """Write :func:`throughput_batch_plot` to ``path`` (PNG); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(throughput_batch_plot(curves, chosen, title), path)


def throughput_batch_plot(
    curves: list[dict[str, Any]], chosen: dict[str, Any] | None, title: str = ""
):
    """Throughput per GPU against batch, one panel per tp, one line per (weight, KV) dtype.

    Solid where every constraint holds, dotted where one fails; a marker where each constraint
    first fails (x memory, | TPOT SLO, _ TTFT SLO); a star at the chosen configuration.  The
    y-range is set by the feasible parts (infeasible continuations may leave it).  ``curves``
    come from :func:`costmodel.search.records.batch_curves`.
    """
    import matplotlib.pyplot as plt

    tps = sorted({c["tp"] for c in curves})
    panels = max(len(tps), 1)
    width = 3.6 * panels + 1.6
    fig, axes = plt.subplots(1, panels, figsize=(width, 4.2), sharey=True, squeeze=False)
    # Fixed margins (tight_layout costs a full draw): room for the legend on the right.
    fig.subplots_adjust(left=0.9 / width, right=1 - 1.6 / width, bottom=0.13, top=0.86, wspace=0.08)
    dtypes = sorted({(c["weight_dtype"], c["kv_dtype"]) for c in curves})
    styles = {d: line_style(i) for i, d in enumerate(dtypes)}
    for ax, tp in zip(axes[0], tps, strict=False):
        marks: dict[str, list] = {name: [] for name in CONSTRAINT_MARKERS}
        for c in (c for c in curves if c["tp"] == tp):
            key = (c["weight_dtype"], c["kv_dtype"])
            colour, ls = styles[key]
            ok = c["memory_ok"] & c["tpot_ok"] & c["ttft_ok"]
            x, y = c["batch"], c["throughput_per_gpu"]
            ax.plot(
                x, np.where(ok, y, np.nan), color=colour, lw=1.4, ls=ls, label=f"{key[0]}/{key[1]}"
            )
            ax.plot(x, np.where(ok, np.nan, y), color=colour, lw=0.8, ls=":", alpha=0.6)
            for name in CONSTRAINT_MARKERS:
                i = _first_false(c[f"{name}_ok"])
                if i is not None:
                    marks[name].append((x[i], y[i], colour))
        for name, points in marks.items():  # one scatter per constraint: fewer artists
            if points:
                mx, my, mc = zip(*points, strict=True)
                marker = CONSTRAINT_MARKERS[name][0]
                ax.scatter(mx, my, marker=marker, c=list(mc), s=64, linewidths=1.5, zorder=4)
        if chosen is not None and chosen["tp"] == tp:
            _mark_chosen(ax, chosen["batch"], chosen["throughput_tok_s_per_gpu"])
        ax.set_xscale("log")
        ax.set_title(f"tp {tp}", fontsize=10)
        ax.set_xlabel("batch [sequences]")
        ax.grid(True, which="both", alpha=0.25)
    top = feasible_ylim(curves, chosen)
    if top is not None:
        axes[0][0].set_ylim(0, top)
    axes[0][0].set_ylabel("decode throughput [tok/s per GPU]")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for marker, label in CONSTRAINT_MARKERS.values():
        handles.append(plt.Line2D([], [], marker=marker, color="grey", ls="none", ms=8, mew=1.5))
        labels.append(f"{label} first fails")
    handles.append(plt.Line2D([], [], color="grey", ls=":"))
    labels.append("infeasible")
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle(title or "throughput against batch", fontsize=10)
    return fig


NOTHING_FEASIBLE = "no configuration meets every constraint"


def pareto_figure(path: str | Path, *args, **kwargs) -> Path:
    """Write :func:`pareto_plot` (same arguments after ``path``) to ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(pareto_plot(*args, **kwargs), path)


def pareto_plot(
    tpot_ms: np.ndarray,
    throughput: np.ndarray,
    tp: np.ndarray,
    front: np.ndarray,
    chosen: dict[str, Any] | None,
    tpot_limit_ms: float | None = None,
    title: str = "",
    *,
    ttft_limit_ms: float | None = None,
    ttft_broken: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Feasible configurations in (TPOT, throughput per GPU), coloured by tp, with the Pareto
    frontier (no configuration is both faster per token and higher in throughput).

    Both SLOs are drawn: the TPOT limit as a vertical line, the TTFT limit as the configurations
    that fit in memory and meet the TPOT SLO but break it (``ttft_broken``: their TPOT [ms] and
    throughput), in grey.  With no feasible configuration the figure says so.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.92)
    for degree in sorted(set(tp.tolist())):
        sel = tp == degree
        ax.scatter(tpot_ms[sel], throughput[sel], s=5, alpha=0.35, label=f"tp {degree}")
    if ttft_broken is not None and len(ttft_broken[0]):
        label = "TTFT SLO broken" + (f" (> {ttft_limit_ms:g} ms)" if ttft_limit_ms else "")
        ax.scatter(*ttft_broken, s=5, c="lightgrey", marker="x", label=label, zorder=1)
    elif ttft_limit_ms is not None:  # met everywhere: say so in the legend
        ax.plot(
            [],
            [],
            ls="none",
            marker="x",
            c="lightgrey",
            label=f"TTFT SLO {ttft_limit_ms:g} ms (met)",
        )
    if len(front):
        ax.step(
            tpot_ms[front],
            throughput[front],
            where="post",
            color="black",
            lw=1.5,
            label="Pareto frontier",
        )
    if chosen is not None:
        _mark_chosen(ax, chosen["tpot_ms"], chosen["throughput_tok_s_per_gpu"])
    if tpot_limit_ms is not None:
        ax.axvline(
            tpot_limit_ms, color="red", ls="--", lw=1, label=f"TPOT SLO {tpot_limit_ms:g} ms"
        )
    if not len(tpot_ms):
        ax.text(
            0.5,
            0.5,
            NOTHING_FEASIBLE,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
            color="darkred",
        )
    if len(tpot_ms) or (ttft_broken is not None and len(ttft_broken[0])):
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("TPOT at full context [ms]")
    ax.set_ylabel("decode throughput [tok/s per GPU]")
    ax.set_title(
        title or "latency-throughput Pareto frontier (feasible configurations)", fontsize=10
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def operating_point_figure(
    records: list[dict[str, Any]],
    step: dict[str, float],
    ceilings: dict[str, float],
    bandwidth: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """The roofline (one ceiling per compute peak) with the chosen decode step on it: each
    kernel at (intensity, FLOPs / time) and the whole step at (total FLOPs / total bytes,
    total FLOPs / step time).  ``records`` and ``step`` are a phase's ``ops`` and ``summary``
    from :func:`costmodel.present.report.roofline_report` (times under the spec's time model)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.1, top=0.93)
    intensities = np.logspace(-1, 5, 400)
    for name, peak in ceilings.items():
        ax.loglog(
            intensities, np.minimum(peak, bandwidth * intensities), lw=1.2, label=f"{name} roof"
        )
        ridge = peak / bandwidth
        ax.axvline(ridge, color="grey", ls=":", lw=0.8)
    points = [
        (r["intensity_flop_per_byte"], r["flops"] / r["time_s"], r["name"])
        for r in records
        if r["intensity_flop_per_byte"] and r["flops"] > 0 and r["time_s"] > 0
    ]
    if points:
        x, y, _ = zip(*points, strict=True)
        ax.scatter(x, y, c="tab:blue", s=22, label="decode kernels", zorder=3)
    ax.scatter(
        [step["flops"] / step["bytes"]],
        [step["flops"] / step["time_s"]],
        marker="*",
        s=260,
        c="gold",
        edgecolors="black",
        zorder=4,
        label="whole decode step (chosen)",
    )
    ax.set_xlabel("arithmetic intensity [FLOP/byte]")
    ax.set_ylabel("attained [FLOP/s]")
    ax.set_title(title or "chosen operating point", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


# --------------------------------------------------------------------------- the XLA check

KIND_MARKERS = {
    "decoder_prefill": "s",
    "decoder_decode": "o",
    "attention": "^",
    "mlp": "D",
    "mla_decode": "P",
    "lm_head": "*",
    "tp_decoder": "X",
    "moe": "v",
    "tp_moe": "h",
}


def validation_figure(records: list[dict[str, Any]], path) -> Any:
    """Write a two-panel log-log PNG, one point per case: model FLOPs against XLA FLOPs, and
    XLA bytes against the model's per-kernel bytes with the [fused, unfused] range drawn as a
    bar.  Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    for kind, marker in KIND_MARKERS.items():
        chosen = [r for r in records if r["kind"] == kind]
        if not chosen:
            continue
        left.scatter(
            [r["flops_xla"] for r in chosen],
            [r["flops_model"] for r in chosen],
            marker=marker,
            s=26,
            label=kind,
            zorder=3,
        )
        xla_bytes = [r["bytes_xla"] for r in chosen]
        right.scatter(
            xla_bytes, [r["bytes_model"] for r in chosen], marker=marker, s=26, label=kind, zorder=3
        )
        right.vlines(
            xla_bytes,
            [r["bytes_fused"] for r in chosen],
            [r["bytes_unfused"] for r in chosen],
            lw=0.8,
            alpha=0.5,
        )
    for ax, what in ((left, "FLOPs"), (right, "bytes")):
        values = [r[f"{what.lower()}_xla"] for r in records if r[f"{what.lower()}_xla"] > 0]
        low, high = min(values) / 2, max(values) * 2
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="model = XLA")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"XLA cost_analysis {what} (float32, CPU)")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    left.set_ylabel("model FLOPs (XLA convention)")
    left.set_title("FLOPs: one point per case")
    right.set_ylabel("model bytes (per-kernel); bar: fused to unfused")
    right.set_title("bytes accessed")
    left.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)
