"""The roofline report of a scenario.

    python -m experiments.roofline configs/h100_70b.yaml [--batch N] [--context N]
        [--tp N] [--weight-dtype D] [--kv-dtype D] [--json] [--plot PATH]

Prints the ridge point, per-kernel tables for prefill and decode (FLOPs, bytes, intensity,
regime, time), the KV cache size, and the seed post's decode table beside the full model's.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from costmodel.config.bind import Setting
from costmodel.config.specs import load_scenario
from costmodel.model.dtypes import KV_DTYPES, WEIGHT_DTYPES
from costmodel.present.plots import roofline_figure
from costmodel.present.report import roofline_report
from experiments._cli import positive_int, print_json, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.roofline", description=__doc__)
    parser.add_argument("config", help="scenario YAML, e.g. configs/h100_70b.yaml")
    parser.add_argument("--batch", type=positive_int, default=1, help="sequences (default 1)")
    parser.add_argument("--context", type=positive_int, help="tokens attended in decode")
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    parser.add_argument("--weight-dtype", choices=WEIGHT_DTYPES, default="bf16")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default="bf16")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PATH", help="write a log-log roofline PNG")
    return parser.parse_args(argv)


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _ops_table(title: str, records: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("kernel", "×", "FLOPs", "bytes", "FLOP/B", "regime", "time", "total"):
        table.add_column(column, justify="left" if column in {"kernel", "regime"} else "right")
    for op in records:
        moved = op["bytes_read"] + op["bytes_written"]
        intensity = op["intensity_flop_per_byte"]
        table.add_row(
            op["name"],
            str(op["repeat"]),
            _si(op["flops"]),
            _si(moved or op["comm_bytes"], "B"),
            "-" if intensity is None else f"{intensity:.3g}",
            op["regime"],
            _si(op["time_s"], "s"),
            _si(op["total_time_s"], "s"),
        )
    return table


def _decode_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("batch", "FLOP/B", "regime", "latency ms", "tok/s", "utilisation"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["batch"]),
            f"{row['intensity_flop_per_byte']:.3g}",
            row["regime"],
            f"{row['latency_ms']:.1f}",
            f"{row['throughput_tok_s']:.0f}",
            f"{row['utilisation']:.2%}",
        )
    return table


def efficiency_line(report: dict) -> str:
    """'efficiency: pure roofline (1.0)', or the calibrated values and where they came from."""
    eff = report.get("efficiency", {})
    if not report["calibrated"]:
        return "efficiency: pure roofline (1.0)"
    parts = [
        f"compute {eff.get('compute', 1.0):.3g}",
        f"memory {eff.get('memory', 1.0):.3g}",
        f"kernel overhead {eff.get('kernel_overhead_us', 0.0):.3g} us",
    ]
    if eff.get("overlap") is not None:
        parts.append(f"overlap exponent {eff['overlap']:.3g}")
    if eff.get("cache_mb"):
        parts.append(f"cache {eff['cache_mb']:.3g} MB at {eff['cache_bandwidth_tb_s']:.3g} TB/s")
    if eff.get("weight_relayout") is not None:
        parts.append(f"multi-row matmul weight re-layout {eff['weight_relayout']:.3g}x")
    if eff.get("attention") is not None:
        parts.append(f"attention kernels at {eff['attention']:.3g} of the rates")
    return f"efficiency: calibrated ({eff.get('calibrated')}): " + ", ".join(parts)


def print_report(report: dict, console: Console) -> None:
    """Human-readable form of a roofline report."""
    setting = report["setting"]
    console.print(
        f"[bold]{report['model']}[/bold] on [bold]{report['hardware']}[/bold] "
        f"({report['attention_kind']} attention, {report['attention_impl']}); "
        f"tp {setting['tp']}, weights {setting['weight_dtype']}, KV {setting['kv_dtype']}, "
        f"batch {report['batch']}, prompt {report['prompt_tokens']}, context {report['context']}"
    )
    ridges = ", ".join(f"{k} {v:.1f}" for k, v in report["ridge_points_flop_per_byte"].items())
    console.print(f"ridge point (FLOP/byte): {ridges}")
    console.print(efficiency_line(report))
    memory = report["memory_bytes_per_gpu"]
    console.print(
        f"KV cache: {report['kv_cache_bytes']:,.0f} bytes; memory per GPU: weights "
        f"{_si(memory['weights'], 'B')}, KV {_si(memory['kv_cache'], 'B')}, workspace "
        f"{_si(memory['workspace'], 'B')} of {_si(memory['usable'], 'B')} usable"
    )
    for phase in ("prefill", "decode"):
        summary = report["summary"][phase]
        console.print(
            _ops_table(
                f"{phase}: {_si(summary['flops'])}FLOP, {_si(summary['bytes'], 'B')}, "
                f"per-kernel {summary['time_s'] * 1e3:.2f} ms, whole-model max "
                f"{summary['time_whole_model_max_s'] * 1e3:.2f} ms",
                report["ops"][phase],
            )
        )
    console.print(
        _decode_table(
            "seed decode table (weights only, 2 B/param, nominal size)",
            report["decode_table_weights_only"],
        )
    )
    console.print(_decode_table("full per-kernel decode table", report["decode_table"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = load_scenario(args.config)
    setting = Setting(tp=args.tp, weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype)
    report = roofline_report(scenario, batch=args.batch, context=args.context, setting=setting)
    if args.plot:
        report["plot"] = str(roofline_figure(report, args.plot))
    if args.json:
        print_json(report)
    else:
        print_report(report, Console(width=120))
    return 0


if __name__ == "__main__":
    run(main)
