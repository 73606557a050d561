"""The serving model's closed form against the project's discrete-event simulation.

    python -m experiments.check_serving [--config FILE] [--tp N] [--weight-dtype D]
                                        [--kv-dtype D] [--requests N] [--json]

For the scenario's model and hardware (default: configs/h100_8b.yaml, Llama-3-8B on one H100,
bf16, the pure roofline's step times) it answers every point of the grid
(:func:`costmodel.validate.serving_check.points`: 8 prompt/output lengths x 9 closed-loop
concurrencies, and 4 open-loop rates per length) with the closed form and with the simulation
(:mod:`costmodel.validate.simulate`, same step times, same scheduler and KV capacity), and
prints one row per point: the simulation's mean and p50/p90/p99 TTFT and TPOT, the closed
form's means, and their relative errors; then how many points are within 5%.  ``--json``
prints one object with the rows and the summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from experiments._cli import Parser, positive_int, print_json, run

DEFAULT_CONFIG = "configs/h100_8b.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser(prog="python -m experiments.check_serving", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="scenario YAML (model, GPU)")
    parser.add_argument("--engine", choices=("vllm", "trtllm", "sglang"), help="engine kernels")
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    parser.add_argument("--weight-dtype", default="bf16", help="weight dtype")
    parser.add_argument("--kv-dtype", default="bf16", help="KV-cache dtype")
    parser.add_argument(
        "--requests", type=positive_int, default=1000, help="requests simulated per point (1000)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def rows(comparisons) -> list[dict[str, Any]]:
    """One record per grid point."""
    out = []
    for c in comparisons:
        s, f, p = c.simulated, c.closed_form, c.point
        out.append(
            {
                "isl": p.isl,
                "osl": p.osl,
                "concurrency": p.concurrency,
                "request_rate": p.request_rate,
                "kv_limited": c.kv_limited,
                "sim_ttft_ms": {
                    "mean": s.ttft_mean_s * 1e3,
                    "p50": s.ttft_p50_s * 1e3,
                    "p90": s.ttft_p90_s * 1e3,
                    "p99": s.ttft_p99_s * 1e3,
                },
                "sim_tpot_ms": {
                    "mean": s.tpot_mean_s * 1e3,
                    "p50": s.tpot_p50_s * 1e3,
                    "p90": s.tpot_p90_s * 1e3,
                    "p99": s.tpot_p99_s * 1e3,
                },
                "closed_ttft_ms": f["ttft_ms"],
                "closed_tpot_ms": f["tpot_ms"],
                "ttft_error": c.ttft_error,
                "tpot_error": c.tpot_error,
                "latency_error": c.latency_error,
            }
        )
    return out


def answer(args: argparse.Namespace) -> int:
    """Run the comparison and print it."""
    from rich.console import Console
    from rich.table import Table

    from costmodel import runtime
    from costmodel.config.bind import Setting, bind
    from costmodel.config.load import load_scenario
    from costmodel.validate import serving_check

    runtime.configure()
    scenario = load_scenario(args.config, engine=args.engine)
    binding = bind(scenario, Setting(args.tp, args.weight_dtype, args.kv_dtype))
    grid = serving_check.points(binding)
    records = rows(serving_check.compare(binding, grid, requests=args.requests))
    summary = serving_check.summary_of(records)
    if args.json:
        print_json({"scenario": scenario.name, "rows": records, "summary": summary})
        return 0
    table = Table(
        title=f"closed form vs simulation: {scenario.model.name} on {scenario.hardware.name}"
    )
    for column in (
        "isl",
        "osl",
        "c / rate",
        "TTFT sim mean p50 p90 p99 [ms]",
        "closed",
        "err",
        "TPOT sim mean p50 p90 p99 [ms]",
        "closed",
        "err",
    ):
        table.add_column(column, justify="right")
    for r in records:
        t, p = r["sim_ttft_ms"], r["sim_tpot_ms"]
        load = str(r["concurrency"]) if r["concurrency"] else f"{r['request_rate']:.3g}/s"
        table.add_row(
            str(r["isl"]),
            str(r["osl"]),
            load + (" kv" if r["kv_limited"] else ""),
            f"{t['mean']:.1f} {t['p50']:.1f} {t['p90']:.1f} {t['p99']:.1f}",
            f"{r['closed_ttft_ms']:.1f}",
            f"{r['ttft_error']:+.1%}",
            f"{p['mean']:.2f} {p['p50']:.2f} {p['p90']:.2f} {p['p99']:.2f}",
            f"{r['closed_tpot_ms']:.2f}",
            f"{r['tpot_error']:+.1%}",
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        f"{summary['points']} points; TTFT and TPOT both within 5%: {summary['within']}; "
        f"largest |error|: TTFT {summary['ttft_max_abs']:.1%}, TPOT {summary['tpot_max_abs']:.1%}; "
        f"KV-limited points ({summary['kv_limited']}; concurrency above the KV capacity, "
        f"TTFT mostly queueing): request latency within {summary['kv_latency_max_abs']:.1%}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
