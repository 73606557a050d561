"""The roofline report of a scenario.

    python -m experiments.roofline configs/h100_70b.yaml [--batch N] [--context N]
        [--tp N] [--weight-dtype D] [--kv-dtype D] [--json] [--plot PATH]

Prints the ridge point, whether the configuration fits in memory, per-kernel tables for prefill
and decode (FLOPs, bytes, intensity, regime, time), the KV cache size, and the seed post's
decode table beside the full model's.  Evaluated exactly in SymPy (no JAX computation).
"""

from __future__ import annotations

import argparse
from typing import Any

from costmodel.present.text import efficiency_line
from experiments._cli import (
    ENGINES,
    MAX_TOKENS,
    OptionError,
    Parser,
    check_experts,
    check_tp,
    image_file,
    print_json,
    run,
    token_count,
)

# The formats the options offer, as costmodel.model.dtypes lists them (a test keeps them equal;
# written out here so that --help answers without importing costmodel).
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp8_block", "nvfp4", "mxfp4")
KV_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
# Time units of the tables, largest first: (label, factor from seconds).
TIME_UNITS = (("s", 1.0), ("ms", 1e3), ("µs", 1e6), ("ns", 1e9))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: counts in range, a writable image path for --plot."""
    parser = Parser(prog="python -m experiments.roofline", description=__doc__)
    parser.add_argument("config", help="scenario YAML, e.g. configs/h100_70b.yaml")
    parser.add_argument(
        "--batch", type=token_count("batch"), default=1, help=f"sequences, 1..{MAX_TOKENS}"
    )
    parser.add_argument(
        "--context",
        type=token_count("context"),
        help=f"tokens attended in decode, 1..{MAX_TOKENS} (default: the scenario's)",
    )
    parser.add_argument(
        "--tp",
        type=token_count("tp"),
        default=1,
        help="tensor-parallel degree: divides the query heads, at most the scenario's n_gpus",
    )
    parser.add_argument("--weight-dtype", choices=WEIGHT_DTYPES, default="bf16")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default="bf16")
    parser.add_argument(
        "--ep",
        type=token_count("ep"),
        default=1,
        help="expert-parallel degree (Mixture-of-Experts models): divides --tp",
    )
    parser.add_argument(
        "--attention-dp",
        action="store_true",
        help="data-parallel attention: each GPU its own sequences (needs --ep equal to --tp)",
    )
    parser.add_argument(
        "--expert-dtype",
        choices=WEIGHT_DTYPES,
        help="the routed experts' weight format (default: --weight-dtype)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="time steps with this engine's measured kernels (replaces the scenario's engine)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PATH", help="write a log-log roofline (.png, .pdf, ...)")
    args = parser.parse_args(argv)
    if args.plot is not None:
        try:
            args.plot = image_file("--plot", args.plot)
        except OptionError as err:
            parser.error(str(err))
    return args


# --------------------------------------------------------------------------- human output


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def time_unit(seconds: list[float]) -> tuple[str, float]:
    """The unit (label, factor from seconds) that shows the largest of ``seconds`` as a number
    of at least 1: s, ms, µs or ns."""
    largest = max((abs(t) for t in seconds), default=0.0)
    for label, factor in TIME_UNITS:
        if largest * factor >= 1:
            return label, factor
    return TIME_UNITS[-1]


def _times(seconds: list[float], factor: float) -> list[str]:
    return [f"{t * factor:,.3f}" for t in seconds]


def _ops_table(title: str, records: list[dict]):
    from rich.table import Table

    each_unit, each = time_unit([op["time_s"] for op in records])
    total_unit, total = time_unit([op["total_time_s"] for op in records])
    columns = ("kernel", "×", "FLOPs", "bytes", "FLOP/B", "regime")
    table = Table(title=title, title_justify="left")
    for column in (*columns, f"time {each_unit}", f"total {total_unit}"):
        table.add_column(column, justify="left" if column in {"kernel", "regime"} else "right")
    each_cells = _times([op["time_s"] for op in records], each)
    total_cells = _times([op["total_time_s"] for op in records], total)
    for op, each_cell, total_cell in zip(records, each_cells, total_cells, strict=True):
        moved = op["bytes_read"] + op["bytes_written"]
        intensity = op["intensity_flop_per_byte"]
        table.add_row(
            op["name"],
            str(op["repeat"]),
            _si(op["flops"]),
            _si(moved or op["comm_bytes"], "B"),
            "-" if intensity is None else f"{intensity:.3g}",
            op["regime"],
            each_cell,
            total_cell,
        )
    return table


def _engine_table(title: str, records: list[dict]):
    from rich.table import Table

    each_unit, each = time_unit([k["time_s"] for k in records])
    total_unit, total = time_unit([k["total_time_s"] for k in records])
    table = Table(title=title, title_justify="left")
    for column in ("kernel", "family", "×", "FLOPs", f"time {each_unit}", f"total {total_unit}"):
        table.add_column(column, justify="left" if column in {"kernel", "family"} else "right")
    each_cells = _times([k["time_s"] for k in records], each)
    total_cells = _times([k["total_time_s"] for k in records], total)
    for kernel, each_cell, total_cell in zip(records, each_cells, total_cells, strict=True):
        table.add_row(
            kernel["name"],
            kernel["family"],
            str(kernel["count"]),
            _si(kernel["flops"]),
            each_cell,
            total_cell,
        )
    return table


def _decode_table(title: str, rows: list[dict]):
    from rich.table import Table

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


def header_line(header: dict) -> str:
    """The report's first line: model, hardware, attention, setting and workload."""
    setting = header["setting"]
    experts = ""
    if setting["expert_dtype"] is not None:
        experts = f"ep {setting['ep']}, experts {setting['expert_dtype']}, " + (
            "data-parallel attention, " if setting["attention_dp"] else ""
        )
    return (
        f"[bold]{header['model']}[/bold] on [bold]{header['hardware']}[/bold] "
        f"({header['attention_kind']} attention, {header['attention_impl']}); "
        f"tp {setting['tp']}, weights {setting['weight_dtype']}, KV {setting['kv_dtype']}, "
        f"{experts}batch {header['batch']}, prompt {header['prompt_tokens']}, "
        f"context {header['context']}"
    )


def memory_lines(report: dict) -> list[str]:
    """Memory per GPU by part, then whether it fits in the usable memory and by how much."""
    memory = report["memory_bytes_per_gpu"]
    lines = [
        f"KV cache: {report['kv_cache_bytes']:,.0f} bytes; memory per GPU: weights "
        f"{_si(memory['weights'], 'B')}, KV {_si(memory['kv_cache'], 'B')}, workspace "
        f"{_si(memory['workspace'], 'B')}, total {_si(memory['total'], 'B')} of "
        f"{_si(memory['usable'], 'B')} usable"
    ]
    if report["fits_in_memory"]:
        lines.append(f"fits in memory: {_si(memory['usable'] - memory['total'], 'B')} to spare")
    else:
        excess = _si(report["memory_excess_bytes_per_gpu"], "B")
        lines.append(
            f"[bold red]does not fit in memory[/bold red]: needs {_si(memory['total'], 'B')} "
            f"per GPU, {excess} more than the {_si(memory['usable'], 'B')} usable "
            "(the times below assume it fits)"
        )
    return lines


def _params_title(report: dict) -> str:
    params = report["decode_table_weights_only_params"]
    size = "nominal size" if params["source"] == "nominal" else "exact parameter count"
    return (
        f"seed decode table (weights only, {params['bytes_per_param']} B/param, {size} "
        f"{_si(params['params'])})"
    )


def print_report(report: dict, console: Any, *, header: bool = True) -> None:
    """Human-readable form of a roofline report (``header``: print its first line too)."""
    if header:
        console.print(header_line(report))
    ridges = ", ".join(f"{k} {v:.1f}" for k, v in report["ridge_points_flop_per_byte"].items())
    console.print(f"ridge point (FLOP/byte): {ridges}")
    console.print(efficiency_line(report))
    for line in memory_lines(report):
        console.print(line)
    for phase in ("prefill", "decode"):
        summary = report["summary"][phase]
        step = [summary["time_s"], summary["time_whole_model_max_s"]]
        unit, factor = time_unit(step)
        per_kernel, whole = _times(step, factor)
        console.print(
            _ops_table(
                f"{phase} (the model's kernels, roofline): {_si(summary['flops'])}FLOP, "
                f"{_si(summary['bytes'], 'B')}, "
                f"per-kernel {per_kernel} {unit}, whole-model max {whole} {unit}",
                report["ops"][phase],
            )
        )
    engine = report.get("engine")
    for phase, step in report.get("engine_steps", {}).items():
        unit, factor = time_unit([step["time_s"]])
        (time,) = _times([step["time_s"]], factor)
        title = f"{phase} as {engine['name']} runs it (measured kernels): {time} {unit}"
        console.print(_engine_table(title, step["kernels"]))
    console.print(_decode_table(_params_title(report), report["decode_table_weights_only"]))
    full = "full per-kernel decode table"
    if engine is not None:
        full = f"decode table, {engine['name']}'s kernels"
    console.print(_decode_table(full, report["decode_table"]))


# --------------------------------------------------------------------------- the command


def report(args: argparse.Namespace) -> int:
    """Answer a parsed command line: load, check --tp, print the header, then the report."""
    from costmodel.config.bind import Setting
    from costmodel.config.load import load_scenario
    from costmodel.present.report import report_header, roofline_report

    scenario = load_scenario(args.config, engine=args.engine)
    check_tp("--tp", args.tp, heads=scenario.model.n_heads, n_gpus=scenario.n_gpus)
    check_experts(args, experts=scenario.model.moe is not None)
    setting = Setting(
        tp=args.tp,
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        ep=args.ep,
        attention_dp=args.attention_dp,
        expert_dtype=args.expert_dtype,
    )
    console = None
    if not args.json:
        from rich.console import Console

        console = Console(width=120)
        console.print(header_line(report_header(scenario, setting, args.batch, args.context)))
    result = roofline_report(scenario, batch=args.batch, context=args.context, setting=setting)
    if args.plot is not None:
        from costmodel.present.plots import roofline_figure

        roofline_figure(result, args.plot)  # written whole or not at all
        result["plot"] = str(args.plot)
    if console is None:
        print_json(result)
    else:
        print_report(result, console, header=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return report(parse_args(argv))


if __name__ == "__main__":
    run(report, parse=parse_args)
