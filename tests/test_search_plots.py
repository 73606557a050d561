"""The optimiser's figures: distinct colours, a y-range set by the feasible parts, both SLOs and
a note for an infeasible scenario on the Pareto plot, and the same bytes on every run."""

from __future__ import annotations

import io

import matplotlib.colors as mcolors
import numpy as np

from costmodel.present import plots

BATCH = np.arange(1.0, 101.0)
MIN_HUE_GAP = 0.05  # hues of two lines at least this far apart on the colour wheel [turns]


def _curve(tp: int, weight: str, kv: str, slope: float, fits_until: int) -> dict:
    ok = fits_until >= BATCH
    return {
        "tp": tp,
        "weight_dtype": weight,
        "kv_dtype": kv,
        "batch": BATCH,
        "throughput_per_gpu": slope * BATCH**2,  # grows fast past the feasible part
        "tpot_s": 1e-3 * BATCH,
        "ttft_s": 1e-2 * BATCH,
        "memory": 1e9 * BATCH,
        "memory_ok": np.ones_like(ok),
        "tpot_ok": ok,
        "ttft_ok": np.ones_like(ok),
    }


CURVES = [
    _curve(1, w, k, s, 20)
    for (w, k), s in zip(
        [("bf16", "bf16"), ("bf16", "fp8"), ("fp8", "bf16"), ("fp8", "fp8")],
        [1, 2, 3, 4],
        strict=True,
    )
]
CHOSEN = {"tp": 1, "batch": 20, "throughput_tok_s_per_gpu": 4 * 20.0**2, "tpot_ms": 20.0}


def test_throughput_lines_have_distinct_hues():
    fig = plots.throughput_batch_plot(CURVES, CHOSEN)
    solid = [line for line in fig.axes[0].get_lines() if line.get_label().count("/") == 1]
    hues = [mcolors.rgb_to_hsv(mcolors.to_rgb(line.get_color()))[0] for line in solid]
    assert len(hues) == 4
    gaps = [abs(a - b) for i, a in enumerate(hues) for b in hues[i + 1 :]]
    assert min(min(g, 1 - g) for g in gaps) >= MIN_HUE_GAP


def test_throughput_y_range_follows_the_feasible_parts():
    fig = plots.throughput_batch_plot(CURVES, CHOSEN)
    bottom, top = fig.axes[0].get_ylim()
    feasible_top = 4 * 20.0**2
    assert top == plots.Y_HEADROOM * feasible_top  # not the infeasible 4 x 100^2
    assert CHOSEN["throughput_tok_s_per_gpu"] > bottom + 0.2 * (top - bottom)


def _pareto(**kwargs):
    tpot = np.array([1.0, 2.0, 3.0])
    thr = np.array([10.0, 30.0, 20.0])
    args = dict(tpot_ms=tpot, throughput=thr, tp=np.array([1, 1, 2]), front=np.array([0, 1]))
    return plots.pareto_plot(**(args | kwargs), chosen=None, tpot_limit_ms=5.0, title="t")


def test_pareto_draws_both_slos():
    broken = (np.array([1.5, 2.5]), np.array([40.0, 50.0]))
    labels = _pareto(ttft_limit_ms=700.0, ttft_broken=broken).axes[0].get_legend_handles_labels()
    text = " ".join(labels[1])
    assert "TPOT SLO 5 ms" in text and "TTFT SLO broken (> 700 ms)" in text
    met = " ".join(_pareto(ttft_limit_ms=700.0).axes[0].get_legend_handles_labels()[1])
    assert "TTFT SLO 700 ms (met)" in met


def test_pareto_of_an_infeasible_scenario_says_so():
    empty = np.empty(0)
    fig = _pareto(tpot_ms=empty, throughput=empty, tp=empty, front=np.empty(0, dtype=int))
    assert [t.get_text() for t in fig.axes[0].texts] == [plots.NOTHING_FEASIBLE]
    fig.savefig(io.BytesIO(), format="png")  # it draws (no log axis without data)
    assert not [t.get_text() for t in _pareto().axes[0].texts]


def test_figures_are_byte_for_byte_reproducible(tmp_path):
    a = plots.throughput_batch_figure(CURVES, CHOSEN, tmp_path / "a.png")
    b = plots.throughput_batch_figure(CURVES, CHOSEN, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    assert b"Software" not in a.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporaries
