"""The GPU section's check on our own timings: PyTorch kernels and whole steps timed by us on
one H200 (``costmodel/data/device_kernels/``), predicted by each engine's shipped calibration
and by the pure roofline.

The comparison takes most of a minute, so it is read from a recording: the ``--json`` output
of ``python -m experiments.check_device_kernels``, stored by
``python -m experiments.paper --record device_kernels`` as ``paper/data/device_kernels.json``.
Without it the paragraph says which command provides it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from costmodel.present.paper.latex import code, generated, tabular
from costmodel.present.paper.whatif import ENGINES, Recording, commands

DEVICE_KERNELS = "device_kernels"
TIMINGS = "costmodel/data/device_kernels/h200-2026-11-30.csv"  # relative: the JSON names it
RECORDINGS = {
    DEVICE_KERNELS: Recording(
        DEVICE_KERNELS, (("check", "check_device_kernels", (TIMINGS, "--json")),)
    ),
}
KERNEL_NAMES = {  # (family, dtype) -> the row's name: what PyTorch ran
    ("gemm", "bfloat16"): r"bf16 GEMM (\texttt{mm})",
    ("gemm", "fp8"): r"fp8 GEMM (\texttt{\_scaled\_mm})",
    ("context_attention", "bfloat16"): "prefill attention (SDPA)",
    ("generation_attention", "bfloat16"): "decode attention (SDPA)",
}
STEP_NAMES = {"decode": "whole decode steps", "prefill": "whole prefill steps"}


def _pct(share: float) -> str:
    return f"{100 * share:.1f}"


def _span(values: list[float], digits: int = 0) -> str:
    """Percentages, low to high (one number where they round alike)."""
    low, high = (f"{100 * v:.{digits}f}" for v in (min(values), max(values)))
    return f"{low}\\,\\%" if low == high else f"{low} to {high}\\,\\%"


def _inside(values: list[float]) -> str:
    low, high = _pct(min(values)), _pct(max(values))
    return f"{low} each" if low == high else f"{low}--{high}"


def _groups(data: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(family, dtype) -> source -> its agreement row; the named kinds first, in order."""
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in data["kernels"]:
        out.setdefault((row["family"], row["dtype"]), {})[row["source"]] = row
    order = list(KERNEL_NAMES)
    rank = {kind: order.index(kind) if kind in order else len(order) for kind in out}
    return dict(sorted(out.items(), key=lambda kv: (rank[kv[0]], kv[0])))


def _engines(data: Mapping[str, Any]) -> list[str]:
    sources = {row["source"] for row in data["kernels"]}
    return [e for e in ENGINES if e in sources]


def _table(data: Mapping[str, Any]) -> str:
    engines = _engines(data)
    rows = []
    for (family, dtype), by in _groups(data).items():
        name = KERNEL_NAMES.get((family, dtype), f"{dtype} {code(family)}")
        inside = [by[e]["inside"] for e in engines if e in by]
        rows.append(
            [
                f"{name}, {by['roofline']['rows']}",
                _pct(by["roofline"]["median_abs_rel_err"]),
                *(_pct(by[e]["median_abs_rel_err"]) if e in by else "--" for e in engines),
                _inside(inside) if inside else "",
            ]
        )
    counts = {p: sum(s["phase"] == p for s in data["steps"]) for p in STEP_NAMES}
    for phase, medians in data["step_median_abs_rel_err"].items():
        rows.append(
            [
                f"{STEP_NAMES[phase]}, {counts[phase]}",
                _pct(medians["roofline"]),
                *(_pct(medians[e]) if e in medians else "--" for e in engines),
                "",
            ]
        )
    level = f"{100 * data['level']:g}"
    return tabular(
        "l" + "r" * (1 + len(engines)) + "l",
        ["rows (PyTorch)", "roofline", *(ENGINES[e] for e in engines), rf"in {level}\,\%"],
        rows,
    )


def device_part(recorded: Mapping[str, Any] | None) -> str:
    """The paragraph on our own H200 timings and its table (tab:device)."""
    if recorded is None:
        return generated(
            r"\emph{Not yet recorded.} "
            + code(f"python -m experiments.paper --record {DEVICE_KERNELS}")
            + " stores the output of "
            + code(commands(RECORDINGS[DEVICE_KERNELS])[0])
            + f" as {code(f'paper/data/{DEVICE_KERNELS}.json')}, and this paragraph fills in.\n"
        )
    data = recorded["check"]
    engines = _engines(data)
    by = _groups(data)
    bf16 = by[("gemm", "bfloat16")]
    bf16_medians = [bf16[e]["median_abs_rel_err"] for e in engines if e in bf16]
    bf16_inside = [bf16[e]["inside"] for e in engines if e in bf16]
    steps = data["step_median_abs_rel_err"]
    fitted = [m[e] for m in steps.values() for e in engines if e in m]
    roofline = [m["roofline"] for m in steps.values()]
    signed = [
        statistics.median(s["predicted_ms"][name] / s["measured_ms"] - 1 for s in mine)
        for mine in ([s for s in data["steps"] if s["phase"] == p] for p in steps)
        for name in mine[0]["predicted_ms"]
    ]
    short = "fall short of" if max(signed) < 0 else "differ from"
    level = f"{data['level']:g}"
    text = (
        r"\paragraph{Our own timings.} "
        "We timed PyTorch's kernels on one H200 on 2026-11-30 (PyTorch 2.11, CUDA 13; "
        + code("costmodel/data/device_kernels/")
        + r"): bf16 \texttt{torch.mm} and fp8 \texttt{torch.\_scaled\_mm} GEMMs at the weight "
        "shapes of Llama-3-8B and of Llama-3-70B at tp 8, causal prefill and decode attention "
        "by scaled-dot-product attention (SDPA), and whole steps of a Llama-3-8B-shaped model "
        "in plain PyTorch. None was used for fitting (table~\\ref{tab:device}). On the bf16 "
        f"GEMMs, cuBLAS as in the engines, the fits' median errors are {_span(bf16_medians)} "
        f"and {_span(bf16_inside, 1)} of the rows lie inside their {level} intervals. The fits "
        "do not transfer to the other kernels, which are not the engines': the engines' fp8 "
        r"GEMMs are slower than a bare \texttt{\_scaled\_mm} on activations already quantised "
        "(timing the activations' quantisation kernel with it narrows the gap but leaves the "
        "fits above: the engines' own fp8 kernels differ too), and SDPA is "
        "not FlashAttention~3 or FlashInfer. The model's whole steps "
        f"{short} the timed ones by a median {_span(fitted)} with the engines' kernels "
        f"(PyTorch fuses less) and {_span(roofline)} under the pure roofline.\n"
        + r"\begin{table}[htbp]\centering\footnotesize\setlength{\tabcolsep}{4pt}" + "\n"
        + _table(data)
        + r"\caption{Our H200 timings (" + code(f"paper/data/{DEVICE_KERNELS}.json")
        + r"): median $|t_{\mathrm{pred}}/t_{\mathrm{meas}} - 1|$ (\%) per kind of row "
        + f"(count), and the share of rows inside the fits' {level} intervals."
        + r"}\label{tab:device}" + "\n"
        + r"\end{table}" + "\n"
    )  # fmt: skip
    return generated(text)
