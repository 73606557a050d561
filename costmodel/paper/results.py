"""The paper's sections that report the experiments: the XLA cross-check, the optimiser's
choice, and the timing validation.

Each section is rendered from the JSON its experiment printed with ``--json``, recorded under
``paper/data/`` by ``python -m experiments.paper --record NAME`` (measured timings are noisy,
so the paper reads a recorded run, never a fresh one).  Without a recording the section says
that the result is not yet available and which command provides it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, NamedTuple

from costmodel.paper.latex import code, generated, si, sig, tabular


class Experiment(NamedTuple):
    """An experiment whose recorded ``--json`` output the paper reports."""

    name: str  # key, and the file paper/data/<name>.json
    module: str  # experiments/<module>.py
    args: tuple[str, ...]  # command-line arguments after the module, --json included
    issue: int  # the issue that builds it


EXPERIMENTS = {
    "validate_xla": Experiment("validate_xla", "validate_xla", ("--json",), 3),
    "optimise_h100_70b": Experiment(
        "optimise_h100_70b", "optimise", ("configs/h100_70b.yaml", "--json"), 4
    ),
    "validate_timing": Experiment("validate_timing", "validate_timing", ("--json",), 6),
}


def command(experiment: Experiment) -> str:
    """The shell command that produces the experiment's JSON."""
    return " ".join(["python -m experiments." + experiment.module, *experiment.args])


def not_available(experiment: Experiment) -> str:
    """The paragraph a section shows until its experiment's result is recorded."""
    return generated(
        r"\emph{Not yet available.} "
        + f"This section reports {code('python -m experiments.' + experiment.module)} "
        + f"(issue~{experiment.issue}); no recorded result of it exists yet under "
        + code("paper/data/")
        + ". When the experiment has landed, "
        + code(f"python -m experiments.paper --record {experiment.name}")
        + " records its output and this section fills in.\n"
    )


def recorded_from(experiment: Experiment) -> str:
    """The sentence naming the recording a section is rendered from."""
    return (
        f"Recorded output of {code(command(experiment))}, stored as "
        + code(f"paper/data/{experiment.name}.json")
        + "."
    )


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def xla_section(data: Mapping[str, Any] | None) -> str:
    """Model against XLA's cost analysis, per case kind: FLOPs, bytes, collectives."""
    experiment = EXPERIMENTS["validate_xla"]
    if data is None:
        return not_available(experiment)
    cases = data["cases"]
    kinds = sorted({case["kind"] for case in cases})
    rows = []
    for kind in kinds:
        group = [case for case in cases if case["kind"] == kind]
        flops_err = max(_rel(c["flops_model"], c["flops_xla"]) for c in group)
        inside = sum(1 for c in group if c["bytes_fused"] <= c["bytes_xla"] <= c["bytes_unfused"])
        exact = sum(1 for c in group if c["bytes_model"] == c["bytes_xla"])
        sharded = [c for c in group if c.get("collectives_model") or c.get("collectives_xla")]
        equal = sum(1 for c in sharded if _same_collectives(c))
        rows.append(
            (
                code(kind),
                str(len(group)),
                "0" if flops_err == 0 else f"${sig(flops_err, 2)}$",
                f"{exact}/{len(group)}",
                f"{inside}/{len(group)}",
                f"{equal}/{len(sharded)}" if sharded else "--",
            )
        )
    degrees = sorted({c["dims"]["tp"] for c in cases if "tp" in c.get("dims", {})})
    table = tabular(
        "lrrrrr",
        [
            "kind",
            "cases",
            "max FLOPs rel.\\ err.",
            "bytes equal",
            r"bytes in [fused, unfused]",
            "collectives equal",
        ],
        rows,
    )
    text = (
        f"{recorded_from(experiment)} {len(cases)} cases over {len(kinds)} kinds"
        + (", tensor-parallel degrees " + ", ".join(str(d) for d in degrees) if degrees else "")
        + ".\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + table
        + r"\caption{The symbolic model against XLA's cost analysis of compiled reference "
        r"layers (float32 on CPU), per kind of case.}\label{tab:xla}" + "\n" + r"\end{table}" + "\n"
    )
    return generated(text)


def _same_collectives(case: Mapping[str, Any]) -> bool:
    def key(items):
        return sorted((c["kind"], c["payload_bytes"]) for c in items)

    return key(case.get("collectives_model", [])) == key(case.get("collectives_xla", []))


def optimiser_section(data: Mapping[str, Any] | None) -> str:
    """The optimiser's choice for the scenario, checked against the exhaustive sweep."""
    experiment = EXPERIMENTS["optimise_h100_70b"]
    if data is None:
        return not_available(experiment)
    best = data.get("best")
    brute = data.get("brute_force", {})
    if best is None:
        return generated(
            recorded_from(experiment) + " The optimiser found no feasible configuration.\n"
        )
    rows = [
        ("tensor-parallel degree", str(best["tp"])),
        ("batch", str(best["batch"])),
        ("weights / KV cache", f"{best['weight_dtype']} / {best['kv_dtype']}"),
        ("TPOT", f"${sig(best['tpot_ms'])}$ ms"),
        ("TTFT", f"${sig(best['ttft_ms'])}$ ms"),
        ("throughput per GPU", f"${sig(best['throughput_tok_s_per_gpu'])}$ tok/s"),
        ("memory per GPU", f"${si(_memory_total(best['memory_bytes_per_gpu']), 'B')}$"),
    ]
    table = tabular("lr", ["", "chosen"], rows)
    same = brute.get("best") is not None and all(
        brute["best"].get(key) == best.get(key)
        for key in ("tp", "batch", "weight_dtype", "kv_dtype")
    )
    text = (
        recorded_from(experiment)
        + " The exhaustive sweep of the same space ("
        + f"${sig(float(brute.get('evaluated', 0)))}$ configurations) "
        + ("chose the same configuration." if same else "chose a different configuration.")
        + "\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + table
        + r"\caption{The optimiser's choice for the scenario.}\label{tab:optimiser}"
        + "\n"
        + r"\end{table}"
        + "\n"
    )
    return generated(text)


def _memory_total(memory: Any) -> float:
    if isinstance(memory, Mapping):
        return float(memory.get("total", sum(v for v in memory.values() if v is not None)))
    return float(memory)


def timing_section(data: Mapping[str, Any] | None) -> str:
    """Calibrated and uncalibrated model against measured times on held-out shapes."""
    experiment = EXPERIMENTS["validate_timing"]
    if data is None:
        return not_available(experiment)
    rows = []
    for split, label in (
        ("train", "calibrated, training shapes"),
        ("heldout", "calibrated, held-out shapes"),
        ("roofline_only", "pure roofline, held-out shapes"),
    ):
        part = data[split]
        cases = part["cases"]
        count = cases if isinstance(cases, int) else len(cases)
        rows.append(
            (
                label,
                str(count),
                f"{100 * part['median_abs_rel_err']:.1f}",
                f"{100 * part['p90_abs_rel_err']:.1f}",
            )
        )
    table = tabular("lrrr", ["model", "shapes", r"median $|$err$|$ \%", r"p90 $|$err$|$ \%"], rows)
    device = data.get("device")
    device_text = device if isinstance(device, str) else _describe(device)
    text = (
        recorded_from(experiment)
        + f" Device: {device_text}.\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + table
        + r"\caption{Predicted against measured times of compiled reference layers.}"
        r"\label{tab:timing}" + "\n" + r"\end{table}" + "\n"
    )
    return generated(text)


def _describe(device: Any) -> str:
    if isinstance(device, Mapping):
        parts = [str(device[key]) for key in sorted(device) if isinstance(device[key], str)]
        return _escape("; ".join(parts))
    return _escape(str(device))


def _escape(text: str) -> str:
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char if char != "\\" else r"\textbackslash{}")
    return text


def median(values: list[float]) -> float:
    """Median of a non-empty list (helper for sections that summarise raw cases)."""
    return statistics.median(values)
