"""The main job: choose batch, quantisation and tensor-parallel degree for a scenario.

    python -m experiments.optimise configs/h100_70b.yaml [--json] [--out DIR] [--no-plots]

Prints the scenario, the chosen configuration (tp, batch, weight and KV dtypes; TPOT, TTFT,
throughput per GPU and in total, memory per GPU with its breakdown, regime, ridge batch), the
brute-force verifier's answer beside it, and every other combination with why it lost.  Writes
``optimise.json`` and three PNGs into DIR (default ``results/<config name>/``): throughput
against batch, the latency-throughput Pareto frontier, and the roofline with the chosen point.

Exit status: 0 with an answer, 3 when nothing is feasible (an explanation instead of an answer),
2 for a bad config.

Compiled XLA programs are cached on disk in ``results/.jax_cache`` (JAX's persistent
compilation cache; JAX_COMPILATION_CACHE_DIR overrides, ``--no-cache`` turns it off), which
saves about 2 s of compilation on every run after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from costmodel.config.specs import Scenario, load_scenario
from costmodel.present.report import efficiency_record
from costmodel.search import optimise as opt
from experiments._cli import print_json, run
from experiments.roofline import efficiency_line

EXIT_INFEASIBLE = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.optimise", description=__doc__)
    parser.add_argument("config", help="scenario YAML, e.g. configs/h100_70b.yaml")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", metavar="DIR", help="output folder (default results/<name>/)")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON only")
    parser.add_argument("--no-cache", action="store_true", help="no compilation cache on disk")
    return parser.parse_args(argv)


def _compilation_cache(enabled: bool) -> None:
    """JAX's persistent compilation cache, in results/.jax_cache unless the environment says."""
    import jax

    if not enabled:  # leave JAX's configuration alone
        return
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(Path("results") / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _plots(scenario: Scenario, report: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the three figures; return their paths."""
    from costmodel.present import plots
    from costmodel.present.report import (
        Setting,
        op_records,
        phase_summary,
        phase_workload,
        scenario_ops,
        substitution,
    )

    best = report["best"]
    title = f"{scenario.model.name} on {scenario.n_gpus}x {scenario.hardware.name}"
    curves = opt.batch_curves(scenario, max_points=160)
    files = {
        "throughput_vs_batch": plots.throughput_batch_figure(
            curves, best, out / "throughput_vs_batch.png", title
        )
    }
    feasible = [c["memory_ok"] & c["tpot_ok"] & c["ttft_ok"] for c in curves]
    tpot = np.concatenate([c["tpot_s"][f] * 1e3 for c, f in zip(curves, feasible, strict=True)])
    thr = np.concatenate(
        [c["throughput_per_gpu"][f] for c, f in zip(curves, feasible, strict=True)]
    )
    tps = np.concatenate(
        [np.full(int(f.sum()), c["tp"]) for c, f in zip(curves, feasible, strict=True)]
    )
    files["pareto"] = plots.pareto_figure(
        tpot,
        thr,
        tps,
        opt.pareto_front(tpot, thr),
        best,
        out / "pareto.png",
        report["constraints"]["tpot_ms_max"],
        title,
    )
    if best is not None:
        setting = Setting(best["tp"], best["weight_dtype"], best["kv_dtype"])
        values = substitution(scenario, setting, calibrated=True) | phase_workload(
            "decode", best["batch"], 1, report["constraints"]["tpot_context_tokens"]
        )
        ops = scenario_ops(scenario, "decode")
        hardware = scenario.hardware
        ceilings = {
            "bf16": float(hardware.peak_flops("bf16")),
            "fp32 vector": float(hardware.peak_flops("fp32")),
        }
        matmul_peak = float(hardware.matmul_peak(best["weight_dtype"]))
        if matmul_peak != ceilings["bf16"]:
            ceilings[f"{best['weight_dtype']} matmul"] = matmul_peak
        files["roofline"] = plots.operating_point_figure(
            op_records(ops, values),
            phase_summary(ops, values),
            ceilings,
            float(hardware.hbm_bandwidth),
            out / "roofline.png",
            f"{title}: tp {best['tp']}, {best['weight_dtype']}/{best['kv_dtype']}, "
            f"batch {best['batch']}",
        )
    return {k: str(v) for k, v in files.items()}


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def print_report(report: dict[str, Any], console: Console) -> None:
    """Human-readable form of an optimisation report."""
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
        console.print(efficiency_line(report))
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
        b = brute["best"]
        found = (
            "nothing feasible"
            if b is None
            else f"tp {b['tp']}, {b['weight_dtype']}/{b['kv_dtype']}, batch {b['batch']}, "
            f"objective {b['objective']:.6g}"
        )
        console.print(
            f"brute force ({brute['evaluated']:,} configurations, "
            f"{report['brute_force_seconds']:.2f} s): {found} -> "
            + ("[green]agrees[/green]" if brute["agrees"] else "[red]DISAGREES[/red]")
        )
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = load_scenario(args.config)
    _compilation_cache(not args.no_cache)
    optimum = opt.optimise(scenario)
    brute = opt.brute_force(scenario)
    report = opt.optimisation_report(scenario, optimum, brute)
    report["calibrated"] = bool(scenario.hardware.efficiency.calibrated)
    report["efficiency"] = efficiency_record(scenario.hardware.efficiency)
    out = Path(args.out) if args.out else Path("results") / Path(args.config).stem
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report["files"] = {} if args.no_plots else _plots(scenario, report, out)
    report["plot_seconds"] = time.perf_counter() - started
    json_path = out / "optimise.json"
    report["files"]["json"] = str(json_path)
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    if args.json:
        print_json(report)
    else:
        print_report(report, Console(width=140))
    return 0 if report["best"] is not None else EXIT_INFEASIBLE


if __name__ == "__main__":
    run(main)
