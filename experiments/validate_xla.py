"""The symbolic model against XLA's cost analysis of real compiled layers.

    python -m experiments.validate_xla [--json] [--cases N] [--seed K] [--figure PATH]

Draws N small random shapes cycling through the kinds (decoder_prefill, decoder_decode,
attention, mlp, mla_decode, lm_head, tp_decoder over 2, 4 and 8 CPU devices), adds the fixed
Mixture-of-Experts cases (moe: Mixtral-, DeepSeek- and gpt-oss-like layers on one device, in
prefill and decode; tp_moe: over 4 devices, data-parallel attention with its dispatch and
combine all-to-alls, and tensor-parallel with ep = 2), compiles each reference layer of
costmodel.validate.reference in float32 and compares FLOPs, transcendentals, bytes and
collectives with the model.  Prints a table (or, with --json, one object {"cases": [...],
"summary": {...}}), writes a log-log figure, and reports the textbook FLOPs gap for Llama-3-70B
decode.  Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from costmodel.config import catalogue
from experiments._cli import OptionError, Parser, image_file, positive_int, print_json, run

if TYPE_CHECKING:  # annotations only: --help imports none of these
    from rich.console import Console
    from rich.table import Table

DEFAULT_CASES = 64
CPU_DEVICES = 8  # host devices for the tensor-parallel cases (tp 2, 4 and 8)
DEFAULT_FIGURE = "results/validate_xla.png"
TEXTBOOK_MODEL = catalogue.path("models", "llama-3-70b")
TEXTBOOK_BATCHES = (1, 64)
TEXTBOOK_CONTEXTS = (2560, 32768)  # the h100_70b scenario's default context, and a long one


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m experiments.validate_xla", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--cases",
        type=positive_int,
        default=DEFAULT_CASES,
        help=f"random cases (default {DEFAULT_CASES}), besides the fixed MoE cases",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--figure", default=DEFAULT_FIGURE, help=f"PNG path ({DEFAULT_FIGURE})")
    args = parser.parse_args(argv)
    try:  # checked before any work: a writable image path
        args.figure = image_file("--figure", args.figure)
    except OptionError as err:
        parser.error(str(err))
    return args


def _si(value: float) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.4g}{prefix}"
    return f"{value:.4g}"


def _table(records: list[dict]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="model vs XLA (float32, CPU)", title_justify="left")
    for column in (
        "case",
        "FLOPs model",
        "FLOPs XLA",
        "rel err",
        "bytes XLA",
        "fused",
        "unfused",
        "where",
        "collectives",
        "ok",
    ):
        table.add_column(column, justify="left" if column == "case" else "right")
    for r in records:
        if r["bytes_check"] == "exact":
            where = "= kernel" if r["bytes_ok"] else f"model {_si(r['bytes_model'])}"
        else:
            where = f"{r['bytes_position']:.2f}"
        collectives = (
            ", ".join(f"{c['kind']} {c['payload_bytes']}B" for c in r["collectives_xla"]) or "-"
        )
        ok = r["flops_ok"] and r["transcendentals_ok"] and r["bytes_ok"] and r["collectives_ok"]
        table.add_row(
            escape(r["name"]),
            _si(r["flops_model"]),
            _si(r["flops_xla"]),
            f"{r['flops_rel_error']:.1e}",
            _si(r["bytes_xla"]),
            _si(r["bytes_fused"]),
            _si(r["bytes_unfused"]),
            where,
            collectives,
            "yes" if ok else "NO",
        )
    return table


def _print_summary(summary: dict, gaps: list[dict], console: Console) -> None:
    console.print(
        f"{summary['cases']} cases {summary['per_kind']}; tp {summary['per_tp']} "
        f"({summary['tp_above_kv_heads']} with tp > KV heads); {summary['wall_time_s']:.1f} s"
    )
    console.print(
        f"FLOPs: max relative error {summary['max_flops_rel_error']:.1e}, all exact "
        f"{summary['all_flops_exact']}; transcendentals equal "
        f"{summary['all_transcendentals_equal']}"
    )
    console.print(
        f"collectives equal in all {summary['collective_cases']} sharded cases: "
        f"{summary['all_collectives_equal']}; single-kernel bytes equal "
        f"({summary['single_kernel_cases']}): {summary['all_single_kernel_bytes_equal']}; "
        f"layer bytes in \\[fused, unfused] ({summary['layer_cases']}): "
        f"{summary['all_layer_bytes_within_bounds']}, position "
        f"{summary['bytes_position_min']:.2f} to {summary['bytes_position_max']:.2f}"
    )
    console.print(
        f"MoE ({summary['moe_cases']} cases): FLOPs all exact {summary['all_moe_flops_exact']}; "
        f"dispatch and combine all-to-alls equal in all {summary['all_to_all_cases']} "
        f"data-parallel cases: {summary['all_to_alls_equal']}"
    )
    for gap in gaps:
        console.print(
            f"textbook 2·params·tokens vs XLA convention, {gap['model']} decode, batch "
            f"{gap['batch']}, context {gap['context']}: {_si(gap['textbook_flops'])} vs "
            f"{_si(gap['xla_convention_flops'])} FLOP, {gap['gap_percent']:+.2f}%"
        )
    console.print(f"figure: {summary['figure']}")


def answer(args: argparse.Namespace) -> int:
    """Compare the drawn cases, print the table or the JSON; exit status 1 if a check fails."""
    from rich.console import Console
    from tqdm import tqdm

    from costmodel.config.load import load_model
    from costmodel.present.plots import validation_figure
    from costmodel.present.records import XlaReport
    from costmodel.validate import xla

    start = time.perf_counter()
    cases = xla.random_cases(args.cases, args.seed) + xla.moe_cases()
    records = [
        xla.compare(case)
        for case in tqdm(cases, desc="compiling", unit="case", file=sys.stderr, leave=False)
    ]
    summary = xla.summary(records)
    spec = load_model(TEXTBOOK_MODEL)
    gaps = [
        xla.textbook_gap(spec, batch=batch, context=context)
        for context in TEXTBOOK_CONTEXTS
        for batch in TEXTBOOK_BATCHES
    ]
    summary["textbook_gap"] = gaps
    summary["figure"] = str(validation_figure(records, args.figure))
    summary["seed"] = args.seed
    summary["wall_time_s"] = time.perf_counter() - start
    output = {"cases": records, "summary": summary}
    XlaReport.from_json(output, "python -m experiments.validate_xla")  # the paper's schema
    if args.json:
        print_json(output)
    else:
        console = Console(width=160)
        console.print(_table(records))
        _print_summary(summary, gaps, console)
    return 0 if summary["all_passed"] else 1


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args, cpu_devices=CPU_DEVICES)
