"""The main job: choose batch, quantisation and tensor-parallel degree for a scenario.

    python -m experiments.optimise configs/h100_70b.yaml [--json] [--out DIR] [--no-plots]

Prints the scenario, the chosen configuration (tp, batch, weight and KV dtypes; TPOT, TTFT,
throughput per GPU and in total, memory per GPU with its breakdown, regime, ridge batch), the
brute-force verifier's answer beside it, and every other combination with why it lost.  Writes
``optimise.json`` and three PNGs into DIR (default ``results/<config name>/``): throughput
against batch, the latency-throughput Pareto frontier, and the roofline with the chosen point.
Files appear whole or not at all; a failed run leaves nothing in DIR.

Exit status: 0 with an answer, 3 when nothing is feasible (an explanation instead of an answer),
2 for a bad config or an output folder that cannot be written.

Compiled XLA programs are cached on disk (JAX's persistent compilation cache) in
``results/.jax_cache/<jax version>/`` (JAX_COMPILATION_CACHE_DIR replaces ``results/.jax_cache``;
``--no-cache`` turns it off).  A run that meets an unreadable cache entry clears that version's
cache, so the next run rebuilds it instead of warning again.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments._cli import (
    ENGINES,
    OptionError,
    Parser,
    output_dir,
    print_json,
    run,
    staged_output,
)

if TYPE_CHECKING:  # annotations only: --help imports none of these
    from rich.console import Console

    from costmodel.config.specs import Scenario
    from costmodel.search.optimise import Optimum

EXIT_INFEASIBLE = 3
DEFAULT_RESULTS = Path("results")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked before anything heavy is imported: a writable --out."""
    parser = Parser(prog="python -m experiments.optimise", description=__doc__)
    parser.add_argument("config", help="scenario YAML, e.g. configs/h100_70b.yaml")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="time steps with this engine's measured kernels (replaces the scenario's engine)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", metavar="DIR", help="output folder (default results/<name>/)")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON only")
    parser.add_argument("--no-cache", action="store_true", help="no compilation cache on disk")
    args = parser.parse_args(argv)
    try:
        args.out = output_dir("--out", args.out or DEFAULT_RESULTS / Path(args.config).stem)
    except OptionError as err:
        parser.error(str(err))
    return args


def _cache_root(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_RESULTS / ".jax_cache")


def _plots(
    scenario: Scenario, optimum: Optimum, report: dict[str, Any], stage: Path
) -> dict[str, str]:
    """Write the three figures into ``stage``; return their file names."""
    from costmodel.present import plots
    from costmodel.search import operating, records

    best = report["best"]
    title = f"{scenario.model.name} on {scenario.n_gpus}x {scenario.hardware.name}"
    curves = records.batch_curves(scenario, max_points=160)
    files = {
        "throughput_vs_batch": plots.throughput_batch_figure(
            curves, best, stage / "throughput_vs_batch.png", title
        )
    }
    data = records.pareto_data(curves)
    limits = report["constraints"]
    files["pareto"] = plots.pareto_figure(
        stage / "pareto.png",
        data["tpot_ms"],
        data["throughput"],
        data["tp"],
        records.pareto_front(data["tpot_ms"], data["throughput"]),
        best,
        limits["tpot_ms_max"],
        title,
        ttft_limit_ms=limits["ttft_ms_max"],
        ttft_broken=(data["broken_tpot_ms"], data["broken_throughput"]),
    )
    if best is not None:
        point = optimum.best
        step = operating.decode_step(scenario, point)  # under the spec's time model
        hardware = scenario.hardware
        ceilings = {
            "bf16": float(hardware.peak_flops("bf16")),
            "fp32 vector": float(hardware.peak_flops("fp32")),
        }
        matmul_peak = float(hardware.matmul_peak(point.combo.weight_dtype))
        if matmul_peak != ceilings["bf16"]:
            ceilings[f"{point.combo.weight_dtype} matmul"] = matmul_peak
        files["roofline"] = plots.operating_point_figure(
            step.records,
            {"flops": step.flops, "bytes": step.bytes, "time_s": step.time_s},
            ceilings,
            float(hardware.hbm_bandwidth),
            stage / "roofline.png",
            f"{title}: tp {best['tp']}, {best['weight_dtype']}/{best['kv_dtype']}, "
            f"batch {best['batch']}",
        )
    return {k: v.name for k, v in files.items()}


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def print_header(report: dict[str, Any], console: Console) -> None:
    """The question: scenario, SLOs, search space, objective and the efficiency in use."""
    s = report["scenario"]
    c = report["constraints"]
    obj = report["objective"]
    console.print(
        f"[bold]{s['name']}[/bold]: {s['model']} ({s['attention_kind']}) on {s['n_gpus']}x "
        f"{s['hardware']}; prompt {s['prompt_tokens']}, output {s['output_tokens']} tokens"
    )
    console.print(
        f"SLOs: TPOT <= {c['tpot_ms_max']:g} ms (decode step at context "
        f"{c['tpot_context_tokens']}), TTFT <= {c['ttft_ms_max']:g} ms (prefill of the batch); "
        f"memory <= {_gb(c['memory_bytes_per_gpu_max'])} per GPU"
    )
    search = s["search"]
    console.print(
        f"search: tp {search['tp']}, weights {search['weight_dtypes']}, KV {search['kv_dtypes']}, "
        f"batch 1..{search['batch_max']}; objective {obj['name']} "
        f"({'max' if obj['maximise'] else 'min'}, {obj['unit']})"
    )
    if "efficiency" in report:
        from costmodel.present.text import efficiency_line

        console.print(efficiency_line(report))


def print_brute_force(report: dict[str, Any], size: str, console: Console) -> None:
    """One line: the brute force's answer (``size``: "batch" or "concurrency") and whether it
    agrees with the optimiser's."""
    brute = report["brute_force"]
    b = brute["best"]
    found = (
        "nothing feasible"
        if b is None
        else f"tp {b['tp']}, {b['weight_dtype']}/{b['kv_dtype']}, {size} {b[size]}, "
        f"objective {b['objective']:.6g}"
    )
    console.print(
        f"brute force ({brute['evaluated']:,} configurations, "
        f"{report['brute_force_seconds']:.2f} s): {found} -> "
        + ("[green]agrees[/green]" if brute["agrees"] else "[red]DISAGREES[/red]")
    )


def print_report(report: dict[str, Any], console: Console, header: bool = True) -> None:
    """Human-readable form of an optimisation report (``header``: the question too)."""
    from rich.table import Table

    if header:
        print_header(report, console)
    obj = report["objective"]
    best = report["best"]
    if best is None:
        console.print("[bold red]No feasible configuration.[/bold red]")
        explanation = report["explanation"]
        closest = explanation["closest"]
        if closest:
            console.print(
                f"closest: tp {closest['tp']}, {closest['weight_dtype']} weights, "
                f"{closest['kv_dtype']} KV, batch 1: breaks {', '.join(closest['violated'])} "
                f"(TPOT {closest['tpot_ms']:.3g} ms, TTFT {closest['ttft_ms']:.4g} ms, memory "
                f"{_gb(closest['memory_bytes_per_gpu'])})"
            )
        for fix in explanation["fixes"]:
            console.print(f"would fit: {fix['text']}")
    else:
        mem = best["memory_breakdown_bytes"]
        table = Table(title="chosen configuration", title_justify="left", show_header=False)
        table.add_column("", justify="left")
        table.add_column("", justify="right")
        rows = [
            ("tensor parallel", f"{best['tp']} ({best['replicas']} replica(s))"),
            ("batch", str(best["batch"])),
            ("weights / KV cache", f"{best['weight_dtype']} / {best['kv_dtype']}"),
            ("objective", f"{best['objective']:.6g} {obj['unit']}"),
            ("TPOT", f"{best['tpot_ms']:.3f} ms"),
            ("TTFT", f"{best['ttft_ms']:.1f} ms"),
            ("throughput per GPU", f"{best['throughput_tok_s_per_gpu']:.1f} tok/s"),
            ("throughput total", f"{best['throughput_tok_s_total']:.0f} tok/s"),
            ("cost", f"{best['cost_per_million_tokens_usd']:.3f} USD / 1M output tokens"),
            (
                "memory per GPU",
                f"{_gb(best['memory_bytes_per_gpu'])} = weights {_gb(mem['weights'])} + KV "
                f"{_gb(mem['kv_cache'])} + workspace {_gb(mem['workspace'])}",
            ),
            ("decode regime", best["regime"]),
            (
                "ridge batch",
                "none (memory time grows faster than compute)"
                if best["ridge_batch"] is None
                else f"{best['ridge_batch']:.1f}",
            ),
        ]
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
    brute = report.get("brute_force")
    if brute is not None:
        print_brute_force(report, "batch", console)
    o = report["optimiser"]
    console.print(
        f"optimiser: {report['optimiser_seconds']:.2f} s, {o['combinations']} combinations, "
        f"{o['relaxations_solved']} relaxations ({o['relaxations_exact']} rounded straight to "
        f"the certified optimum), {o['certificate_candidates']} certificate candidates"
    )
    table = Table(title="runners-up and why they lost", title_justify="left")
    for column in ("tp", "weights", "KV", "batch", "objective", "why"):
        table.add_column(column, justify="left" if column == "why" else "right")
    for r in report["runners_up"]:
        p = r["best"]
        table.add_row(
            str(r["tp"]),
            r["weight_dtype"],
            r["kv_dtype"],
            "-" if p is None else str(p["batch"]),
            "-" if p is None else f"{p['objective']:.4g}",
            r["reason"],
        )
    console.print(table)
    if report.get("files"):
        console.print("wrote " + ", ".join(report["files"].values()))


def _check_probability(config: str, scenario: Scenario) -> None:
    """A ConfigError naming ``slo.probability`` when it is set on a scenario that cannot honour
    it: not continuous serving, or no engine calibration (the roofline has no posterior)."""
    from costmodel.config.specs import ConfigError

    if scenario.slo.probability is None:
        return
    if scenario.serving.mode != "continuous":
        raise ConfigError(config, "slo.probability", "needs serving.mode: continuous")
    if scenario.engine is None or scenario.kernels is None:
        raise ConfigError(
            config,
            "slo.probability",
            "needs an engine calibration (engine:); the pure roofline has no posterior",
        )


def answer(args: argparse.Namespace) -> int:
    """Answer a parsed command line (exit status): optimise, verify, write, print."""
    from rich.console import Console

    from costmodel import runtime
    from costmodel.config.load import load_scenario
    from costmodel.present.files import write_text
    from costmodel.present.records import OptimiseReport
    from costmodel.search import optimise as opt
    from costmodel.search import records, verifier

    scenario = load_scenario(args.config, engine=args.engine)
    _check_probability(args.config, scenario)
    out = args.out
    console = Console(width=140)
    if scenario.serving.mode == "continuous":
        return answer_serving(args, scenario, console)
    with staged_output("--out", out) as stage:
        if not args.json:  # the question first, before any slow work
            print_header(records.question_record(scenario), console)
        with runtime.compilation_cache(_cache_root(args)):
            optimum = opt.optimise(scenario)
            brute = verifier.brute_force(scenario)
            report = records.optimisation_report(scenario, optimum, brute)
            report |= records.question_record(scenario)
            started = time.perf_counter()
            names = {} if args.no_plots else _plots(scenario, optimum, report, stage)
        report["plot_seconds"] = time.perf_counter() - started
        names["json"] = "optimise.json"
        report["files"] = {k: str(out / name) for k, name in names.items()}
        OptimiseReport.from_json(report, "python -m experiments.optimise")  # the paper's schema
        write_text(stage / "optimise.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    if args.json:
        print_json(report)
    else:
        print_report(report, console, header=False)
    return 0 if report["best"] is not None else EXIT_INFEASIBLE


def print_serving(report: dict[str, Any], console: Console) -> None:
    """Human-readable form of a continuous-serving optimisation report."""
    from rich.table import Table

    c, obj = report["constraints"], report["objective"]
    best = report["best"]
    if best is None:
        console.print("[bold red]No feasible configuration.[/bold red]")
        closest = report["explanation"]["closest"]
        if closest:
            console.print(
                f"closest: tp {closest['tp']}, {closest['weight_dtype']} weights, "
                f"{closest['kv_dtype']} KV at concurrency 1: breaks "
                f"{', '.join(closest['violated'])}"
            )
    else:
        table = Table(title="chosen deployment", title_justify="left", show_header=False)
        table.add_column("", justify="left")
        table.add_column("", justify="right")
        budget = best["token_budget"] or "engine default"
        rows = [
            ("tensor parallel", f"{best['tp']} ({best['replicas']} deployment(s))"),
            ("weights / KV cache", f"{best['weight_dtype']} / {best['kv_dtype']}"),
            *_expert_rows(report, best),
            (
                "concurrency per deployment" if best["prefill_replicas"] else "concurrency",
                str(best["concurrency"]),
            ),
            (
                "disaggregated",
                f"{best['prefill_replicas']} prefill + {best['decode_replicas']} decode replicas"
                if best["prefill_replicas"]
                else "no (prefill and decode on each replica)",
            ),
            ("token budget / draft tokens", f"{budget} / {best['draft_tokens']}"),
            ("objective", f"{best['objective']:.6g} {obj['unit']}"),
            ("TTFT (mean)", f"{best['ttft_ms']:.1f} ms"),
            ("TPOT (mean)", f"{best['tpot_ms']:.3f} ms"),
            ("request latency", f"{best['request_latency_s']:.2f} s"),
            ("throughput per GPU", f"{best['output_tok_s_per_gpu']:.1f} output tok/s"),
            ("throughput total", f"{best['output_tok_s_total']:.0f} output tok/s"),
            ("cost", f"{best['cost_per_mtok_usd']:.3f} USD / 1M output tokens"),
            (
                "KV cache",
                f"{best['kv_capacity_tokens']:,} tokens, {best['max_concurrency_fits']} requests",
            ),
            (
                "decode batch / prefill load",
                f"{best['decode_batch']:.1f} / {best['prefill_load']:.2f}",
            ),
            ("time model", best["time_model"]),
        ]
        if c.get("probability_min") is not None:
            rows.append(
                (
                    "P(meet both SLOs)",
                    f"{best['slo_probability']:.3f} (at least {c['probability_min']:g} asked)",
                )
            )
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
    print_brute_force(report, "concurrency", console)
    console.print(
        f"optimiser: {report['optimiser_seconds']:.2f} s, {report['optimiser']['choices']} "
        f"choices, {report['optimiser']['evaluations']} evaluations"
    )
    table = Table(title="runners-up and why they lost", title_justify="left")
    experts = report["scenario"]["experts"]
    columns = ("tp", "EP", "weights", "KV", "budget", "drafts", "P/D", "concurrency", "objective")
    for column in (*(c for c in columns if experts or c != "EP"), "why"):
        table.add_column(column, justify="left" if column == "why" else "right")
    for r in report["runners_up"]:
        p = r["best"]
        table.add_row(
            str(r["tp"]),
            *([_expert_layout(r)] if experts else []),
            r["weight_dtype"],
            r["kv_dtype"],
            str(r["token_budget"] or "default"),
            str(r["draft_tokens"]),
            f"{r['prefill_replicas']}/{r['decode_replicas']}" if r["prefill_replicas"] else "-",
            "-" if p is None else str(p["concurrency"]),
            "-" if p is None else f"{p['objective']:.4g}",
            r["reason"],
        )
    console.print(table)
    slos = f"SLOs: TTFT <= {c['ttft_ms_max']:g} ms, TPOT <= {c['tpot_ms_max']:g} ms (means)"
    if c.get("probability_min") is not None:
        slos += f", both met in at least {c['probability_min']:g} of the calibration's draws"
    console.print(slos)
    if report.get("files"):
        console.print("wrote " + ", ".join(report["files"].values()))


def _expert_layout(choice: dict) -> str:
    """A choice's expert parallelism in a few characters: ``8`` or ``8+DP`` (data-parallel
    attention), with the experts' format when it differs from the other weights'."""
    layout = f"{choice['ep']}" + ("+DP" if choice["attention_dp"] else "")
    expert = choice.get("expert_dtype")
    return layout + (f" {expert}" if expert and expert != choice["weight_dtype"] else "")


def _expert_rows(report: dict[str, Any], best: dict) -> list[tuple[str, str]]:
    """The chosen deployment's expert-parallel rows (none for a dense model)."""
    if not report["scenario"]["experts"]:
        return []
    attention = "data-parallel" if best["attention_dp"] else f"tensor-parallel over {best['tp']}"
    return [
        ("expert parallel", f"ep {best['ep']} ({best['tp'] // best['ep']}-way tp per expert)"),
        ("attention", attention),
        ("experts' format", best.get("expert_dtype") or best["weight_dtype"]),
    ]


def answer_serving(args: argparse.Namespace, scenario: Scenario, console: Console) -> int:
    """Optimise a continuous-serving scenario: choose, verify by brute force, write, print."""
    from costmodel import runtime
    from costmodel.present.files import write_text
    from costmodel.search import serving_search

    out = args.out
    with staged_output("--out", out) as stage:
        if not args.json:
            console.print(
                f"[bold]{scenario.name}[/bold]: {scenario.model.name} on {scenario.n_gpus}x "
                f"{scenario.hardware.name}, continuous batching"
                + (f" under {scenario.engine}" if scenario.engine else " (pure roofline)")
                + f"; prompt {scenario.workload.prompt_tokens}, output "
                f"{scenario.workload.output_tokens} tokens"
            )
        with runtime.compilation_cache(_cache_root(args)):
            optimum = serving_search.optimise(scenario)
            brute = serving_search.brute_force(scenario)
        report = serving_search.report(scenario, optimum, brute)
        report["files"] = {"json": str(out / "optimise.json")}
        write_text(stage / "optimise.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    if args.json:
        print_json(report)
    else:
        print_serving(report, console)
    return 0 if report["best"] is not None else EXIT_INFEASIBLE


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
