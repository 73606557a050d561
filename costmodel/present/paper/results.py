"""The paper's sections that report the experiments: the XLA cross-check, the optimiser's
choice, and the timing validation.

Each section is rendered from the JSON its experiment printed with ``--json``, recorded under
``paper/data/`` by ``python -m experiments.paper --record NAME`` (measured timings are noisy,
so the paper reads a recorded run, never a fresh one), and read only through its typed schema
(:mod:`costmodel.present.records`).  Without a recording the section says
that the result is not yet available and which command provides it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple

from costmodel.model.calibration import Calibration
from costmodel.present.paper.latex import code, count, generated, si, sig, tabular
from costmodel.present.records import (
    Combination,
    OptimiseReport,
    TimingReport,
    XlaCase,
    XlaReport,
)

TIMING_DATA = "data/timing/cpu-2026-11-24.json"  # the one copy of the measured layer times


class Experiment(NamedTuple):
    """An experiment whose recorded ``--json`` output the paper reports."""

    name: str  # key, and the file paper/data/<name>.json
    module: str  # experiments/<module>.py
    args: tuple[str, ...]  # command-line arguments after the module, --json included
    schema: type  # the record its JSON is read as (costmodel.present.records)
    figures: tuple[tuple[str, str], ...] = ()  # (dotted key of a path in its JSON, figure)
    failing_exit: int | None = None  # exit status that still comes with a full JSON report


EXPERIMENTS = {
    "validate_xla": Experiment(
        "validate_xla",
        "validate_xla",
        ("--json",),
        XlaReport,
        figures=(("summary.figure", "xla_model_vs_xla.png"),),
        failing_exit=1,  # a check failed: the report says which
    ),
    "optimise_h100_70b": Experiment(
        "optimise_h100_70b",
        "optimise",
        ("configs/h100_70b_static.yaml", "--json"),
        OptimiseReport,
        figures=(("files.throughput_vs_batch", "optimiser_throughput.png"),),
        failing_exit=3,  # infeasible: an answer, with its explanation
    ),
    "validate_timing": Experiment(
        "validate_timing",
        "validate_timing",
        # the committed measurements, refitted: the recording is reproducible
        ("--from-data", TIMING_DATA, "--json"),
        TimingReport,
        figures=(("files.plot", "timing_predicted_vs_measured.png"),),
    ),
}
OPTIMISER_FIGURE = "optimiser_throughput.png"
TIMING_FIGURE = "timing_predicted_vs_measured.png"
XLA_FIGURE = "xla_model_vs_xla.png"


def figure(path: str, width: str, caption: str, label: str) -> str:
    """A LaTeX figure environment: ``path`` at ``width``, with its caption and label."""
    return (
        r"\begin{figure}[htbp]\centering" + "\n"
        + rf"\includegraphics[width={width}]{{{path}}}" + "\n"
        + rf"\caption{{{caption}}}\label{{{label}}}" + "\n"
        + r"\end{figure}" + "\n"
    )  # fmt: skip


def lookup(data: Mapping[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``."""
    for key in dotted.split("."):
        data = data[key]
    return data


def command(experiment: Experiment) -> str:
    """The shell command that produces the experiment's JSON."""
    return " ".join(["python -m experiments." + experiment.module, *experiment.args])


def not_available(experiment: Experiment) -> str:
    """The paragraph a section shows until its experiment's result is recorded."""
    return generated(
        r"\emph{Not yet available.} "
        + f"This section reports {code('python -m experiments.' + experiment.module)} "
        + "; no recorded result of it exists yet under "
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


MOE_KINDS = frozenset({"moe", "tp_moe"})  # the fixed MoE cases beside the random ones


def xla_section(data: XlaReport | None) -> str:
    """Model against XLA's cost analysis, per case kind: FLOPs, bytes, collectives; and the
    textbook FLOPs count against the XLA-convention count for the scenario's model."""
    experiment = EXPERIMENTS["validate_xla"]
    if data is None:
        return not_available(experiment)
    cases = data.cases
    summary = data.summary
    rows = []
    for kind in sorted({case.kind for case in cases}):
        group = [case for case in cases if case.kind == kind]
        flops_err = max(_rel(c.flops_model, c.flops_xla) for c in group)
        transcendentals = sum(1 for c in group if c.transcendentals_model == c.transcendentals_xla)
        exact = [c for c in group if c.bytes_check == "exact"]
        bounded = [c for c in group if c.bytes_check != "exact"]
        if exact and not bounded:
            equal = sum(1 for c in exact if c.bytes_model == c.bytes_xla)
            where = f"equal {equal}/{len(exact)}"
        else:
            inside = sum(1 for c in bounded if _inside(c))
            positions = [c.bytes_position for c in bounded if c.bytes_position is not None]
            where = f"inside {inside}/{len(bounded)}"
            if positions:
                where += f", at ${sig(min(positions), 2)}$--${sig(max(positions), 2)}$"
        sharded = [c for c in group if c.collectives_model or c.collectives_xla]
        collectives = sum(1 for c in sharded if _same_collectives(c))
        rows.append(
            (
                code(kind),
                str(len(group)),
                "0" if flops_err == 0 else f"${sig(flops_err, 2)}$",
                f"{transcendentals}/{len(group)}",
                where,
                f"{collectives}/{len(sharded)}" if sharded else "--",
            )
        )
    table = tabular(
        "lrrrll",
        ["kind", "cases", "FLOPs rel.\\ err.", "transc.\\ equal", "bytes", "collectives"],
        rows,
    )
    degrees = ", ".join(
        f"{tp} ({n} cases)" for tp, n in sorted(summary.per_tp.items(), key=_int_key)
    )
    verdict = "every check passed" if summary.all_passed else "some checks failed"
    fixed = [case for case in cases if case.kind in MOE_KINDS]
    shapes = f" {len(cases) - len(fixed)} random shapes (seed {summary.seed})"
    if fixed:
        shapes += (
            f" and {len(fixed)} fixed Mixture-of-Experts layers (balanced routing; sharded ones "
            "with data-parallel attention and all-to-alls, or experts split inside their "
            "group and one all-reduce)"
        )
    text = (
        recorded_from(experiment)
        + shapes
        + " in "
        + f"{summary.dtype} on the CPU"
        + (f"; tensor-parallel degrees {degrees}" if degrees else "")
        + (
            f"; in {summary.tp_above_kv_heads} sharded cases the degree exceeds the number "
            "of KV heads, which are then replicated"
            if summary.tp_above_kv_heads
            else ""
        )
        + f": {verdict} (table~\\ref{{tab:xla}}). For layers the bytes column gives where "
        + "XLA's bytes fall between the model's fused (0) and unfused (1) traffic.\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + table
        + r"\caption{The symbolic model against XLA's cost analysis of the compiled reference "
        r"layers, per kind of case: largest relative FLOPs error, transcendentals equal, bytes "
        r"equal (single kernels) or inside the model's fused and unfused bounds (layers), "
        r"collectives equal in kind and payload (sharded layers).}\label{tab:xla}"
        + "\n"
        + r"\end{table}"
        + "\n"
    )
    gaps = summary.textbook_gap
    if gaps:
        gap_rows = [
            (
                code(g.model),
                str(g.batch),
                count(g.context),
                f"${si(g.textbook_flops)}$",
                f"${si(g.xla_convention_flops)}$",
                f"${si(g.attention_flops)}$",
                f"${g.gap_percent:+.1f}$",
            )
            for g in gaps
        ]
        text += (
            "\nThe textbook count, two FLOPs per parameter per token, leaves out the attention "
            "products and the elementwise work that the XLA convention counts; "
            "table~\\ref{tab:textbook} gives the gap for decode.\n\n"
            + r"\begin{table}[htbp]\centering\small"
            + "\n"
            + tabular(
                "lrrrrrr",
                ["model", "$B$", "$T$", "textbook", "XLA convention", "attention", r"gap \%"],
                gap_rows,
            )
            + r"\caption{Decode FLOPs per step: $2 N_p B$ against the model's XLA-convention "
            r"count (attention products included).}\label{tab:textbook}"
            + "\n"
            + r"\end{table}"
            + "\n"
        )
    text += "\n" + figure(
        XLA_FIGURE,
        r"0.7\linewidth",
        "The experiment's own figure: the model against XLA, one point per case.",
        "fig:xla",
    )
    return generated(text)


def _int_key(item: tuple[str, Any]) -> int:
    return int(item[0])


def _inside(case: XlaCase) -> bool:
    """XLA's bytes lie within the model's fused and unfused bounds."""
    if case.bytes_fused is None or case.bytes_unfused is None:
        return False
    return case.bytes_fused <= case.bytes_xla <= case.bytes_unfused


def _same_collectives(case: XlaCase) -> bool:
    def key(items):
        return sorted((c.kind, c.payload_bytes) for c in items)

    return key(case.collectives_model) == key(case.collectives_xla)


def optimiser_section(data: OptimiseReport | None) -> str:
    """The optimiser's choice for the scenario, why it won, and the exhaustive check."""
    experiment = EXPERIMENTS["optimise_h100_70b"]
    if data is None:
        return not_available(experiment)
    best = data.best
    if best is None:
        explanation = _escape(str(data.explanation or ""))
        return generated(
            recorded_from(experiment) + f" No configuration is feasible: {explanation}\n"
        )
    memory = best.memory_breakdown_bytes or {}
    rows = [
        ("tensor-parallel degree", str(best.tp)),
        ("batch per replica", str(best.batch)),
        ("weights / KV cache", f"{best.weight_dtype} / {best.kv_dtype}"),
        ("time per output token", f"${sig(best.tpot_ms)}$ ms"),
        ("time to first token", f"${sig(best.ttft_ms)}$ ms"),
        ("decode throughput per GPU", f"${sig(best.throughput_tok_s_per_gpu)}$ tok/s"),
    ]
    if best.replicas is not None:
        rows.append(("replicas (GPUs used)", f"{best.replicas} ({best.gpus_used})"))
    rows.append(("memory per GPU", f"${si(best.memory_bytes_per_gpu, 'B')}$"))
    for part in sorted(memory):
        label = _escape(part.replace("kv_cache", "KV cache"))
        rows.append((rf"\quad {label}", f"${si(memory[part], 'B')}$"))
    constraints = data.constraints
    limits = Counter(c.limit for c in data.combinations)
    chosen = next(
        (
            c
            for c in data.combinations
            if c.best is not None
            and (c.best.tp, c.best.weight_dtype, c.best.kv_dtype)
            == (best.tp, best.weight_dtype, best.kv_dtype)
        ),
        None,
    )
    why = []
    if chosen is not None:
        why.append(
            f"For the chosen degree and formats {_limit_phrase(chosen)}"
            + (
                f" (the continuous relaxation's optimum is $B = {sig(chosen.relaxed_batch)}$)."
                if chosen.relaxed_batch
                else "."
            )
        )
    if best.regime and best.decode_memory_s is not None and best.decode_compute_s is not None:
        why.append(
            f"At that batch decode is {best.regime}: "
            f"${sig(1e3 * best.decode_compute_s)}$ ms of arithmetic against "
            f"${sig(1e3 * best.decode_memory_s)}$ ms of memory traffic per step"
            + (
                ", so the formats that move the fewest bytes win."
                if best.regime == "memory-bound"
                else "."
            )
        )
    if limits:
        counted = "; ".join(
            f"{LIMIT_NAMES.get(k, _escape(k))}: {n}" for k, n in sorted(limits.items())
        )
        why.append(
            f"What limits each of the {sum(limits.values())} combinations of degree and "
            f"formats at its best batch---{counted}."
        )
    runner_rows = [
        (
            str(r.tp),
            f"{r.weight_dtype}/{r.kv_dtype}",
            str(r.best.batch) if r.best else "--",
            f"${sig(r.best.objective)}$" if r.best else "--",
            _escape(r.reason if r.reason is not None else r.limit_text),
        )
        for r in data.runners_up[:6]
    ]
    brute = data.brute_force_best
    same = brute is not None and (brute.tp, brute.batch, brute.weight_dtype, brute.kv_dtype) == (
        best.tp,
        best.batch,
        best.weight_dtype,
        best.kv_dtype,
    )
    verdict = "chose the same configuration" if same else "chose a different configuration"
    text = (
        recorded_from(experiment)
        + " The scenario allows $\\mathit{tp} \\le "
        + str(max(data.search_tp or (best.tp,)))
        + "$, a time per output token of at most "
        + f"${sig(constraints.tpot_ms_max)}$ ms, a time to first token of at "
        + f"most ${sig(constraints.ttft_ms_max)}$ ms and "
        + f"${si(constraints.memory_bytes_per_gpu_max, 'B')}$ per GPU. "
        + "The exhaustive sweep of the same space ("
        + f"{count(data.brute_force_evaluated)} configurations) "
        + f"{verdict} (table~\\ref{{tab:optimiser}}).\n\n"
        + " ".join(why)
        + "\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + tabular("lr", ["", "chosen"], rows)
        + r"\caption{The optimiser's choice for the scenario (per-kernel model of the "
        r"catalogued hardware).}\label{tab:optimiser}"
        + "\n"
        + r"\end{table}"
        + "\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + tabular(
            "rllrp{0.5\\linewidth}",
            [r"$\mathit{tp}$", "formats", "$B$", "tok/s/GPU", "why it lost"],
            runner_rows,
        )
        + r"\caption{The best runners-up, each the best batch of its formats and degree.}"
        r"\label{tab:runners-up}" + "\n" + r"\end{table}" + "\n"
    )
    if data.method is not None:
        method = _escape(data.method)
        text += (
            f"\nMethod: {method}. In this recording the optimiser took "
            f"${sig(data.optimiser_seconds, 2)}$\\,s and the exhaustive sweep "
            f"${sig(data.brute_force_seconds, 2)}$\\,s.\n"
        )
    if OPTIMISER_FIGURE:
        text += figure(
            OPTIMISER_FIGURE,
            r"\linewidth",
            "The optimiser's own figure: decode throughput per GPU against batch for each degree "
            "and pair of formats, with the first batch at which memory or a latency target "
            "fails, and the chosen point.",
            "fig:optimiser",
        )
    return generated(text)


LIMIT_NAMES = {
    "ttft": "the time-to-first-token target",
    "tpot": "the time-per-output-token target",
    "memory": "memory",
    "infeasible": "infeasible at batch 1",
    "batch_max": "the largest batch allowed",
}


def _limit_phrase(combination: Combination) -> str:
    limit = combination.limit
    if limit in ("ttft", "tpot", "memory"):
        return f"{LIMIT_NAMES[limit]} caps the batch"
    return _escape(combination.limit_text or limit)


def timing_section(data: TimingReport | None) -> str:
    """Calibrated and uncalibrated model against measured times on held-out shapes."""
    experiment = EXPERIMENTS["validate_timing"]
    if data is None:
        return not_available(experiment)
    splits = [
        ("calibrated, training shapes", data.train),
        ("calibrated, held-out shapes", data.heldout),
        (r"fractions and overhead only, held-out", data.basic_calibration.heldout),
        ("pure roofline, held-out shapes", data.roofline_only),
    ]
    rows = [
        (
            label,
            str(part.cases),
            f"{100 * part.median_abs_rel_err:.1f}",
            f"{100 * part.p90_abs_rel_err:.1f}",
            f"{100 * part.max_abs_rel_err:.1f}",
        )
        for label, part in splits
    ]
    table = tabular(
        "lrrrr",
        ["model", "shapes", r"median $|$err$|$ \%", r"p90 $|$err$|$ \%", r"max $|$err$|$ \%"],
        rows,
    )
    fitted = [
        (label, f"${sig(value)}${unit}")
        for value, label, unit in _fitted_values(data.calibration.efficiency.calibration())
        if value is not None
    ]
    regime = data.regime
    measurement = data.measurement
    load = measurement.load_average
    text = recorded_from(experiment) + f" Device: {_describe(data.device)}."
    text += f" {measurement.cases} layer shapes were timed" + (
        " (the quick grid)" if measurement.quick else ""
    )
    if load:
        text += (
            f", with a load average of ${sig(load.start, 2)}$ at the start and "
            f"${sig(load.end, 2)}$ at the end"
        )
    text += "."
    if regime.cases:
        text += (
            f" For {regime.agree} of {regime.cases} held-out shapes the regime the "
            "calibrated model predicts (time flat in batch or growing with it) agrees with the "
            "measured scaling."
        )
    text += (
        "\n\n"
        + r"\begin{table}[htbp]\centering\small"
        + "\n"
        + table
        + r"\caption{Predicted against measured times of the compiled reference layers: "
        r"absolute relative error per split.}\label{tab:timing}" + "\n" + r"\end{table}" + "\n"
    )
    if fitted:
        text += (
            "\n"
            + r"\begin{table}[htbp]\centering\small"
            + "\n"
            + tabular("lr", ["fitted on the training shapes", ""], fitted)
            + r"\caption{The calibrated parameters.}\label{tab:calibration}"
            + "\n"
            + r"\end{table}"
            + "\n"
        )
    text += "\n" + figure(
        TIMING_FIGURE,
        r"0.46\linewidth",
        "The experiment's own figure: predicted against measured time per shape.",
        "fig:timing",
    )
    return generated(text)


def _fitted_values(calibration: Calibration) -> list[tuple[float | None, str, str]]:
    """(value in the table's unit, label, unit) of the fitted values the timing table shows."""
    cache = calibration.cache
    return [
        (float(calibration.eta_compute), r"achievable compute fraction $\eta_c$", ""),
        (float(calibration.eta_memory), r"achievable bandwidth fraction $\eta_m$", ""),
        (1e6 * float(calibration.kernel_overhead_s), r"overhead per kernel $t_k$", r"\,$\mu$s"),
        (
            None if calibration.overlap is None else float(calibration.overlap),
            "compute--memory overlap exponent",
            "",
        ),
        (None if cache is None else float(cache.capacity) / 1e6, "cache capacity", r"\,MB"),
        (None if cache is None else float(cache.bandwidth) / 1e9, "cache bandwidth", r"\,GB/s"),
    ]


def _describe(device: Any) -> str:
    """One line for a device record of validate_timing (kind, CPU, JAX, date)."""
    if not isinstance(device, Mapping):
        return _escape(str(device))
    text = str(device.get("device_kind", "unknown device"))
    if device.get("cpu"):
        text += f" ({device['cpu']}, {device.get('cpu_count', '?')} cores)"
    if device.get("backend"):
        text += f", JAX {device.get('jax_version', '')} {device['backend']} backend"
    if device.get("date_utc"):
        text += f", measured {device['date_utc']}"
    return _escape(text)


def _escape(text: str) -> str:
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char if char != "\\" else r"\textbackslash{}")
    return text
