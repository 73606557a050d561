"""What-if questions on one deployment: elasticities, and the value of one figure that meets an SLO.

    python -m experiments.whatif PREDICT-QUESTION --sensitivity [--gpu-hour-usd P]
        [--json] [--plot PATH] [--no-cache]
    python -m experiments.whatif PREDICT-QUESTION --solve PARAM --subject-to "tpot_ms<=T"
        [--json] [--plot PATH] [--no-cache]

PREDICT-QUESTION is the question options of ``python -m experiments.predict`` (--model,
--hardware (a catalogue name or a path to a YAML spec: hardware that does not exist),
--engine, --tp, --weight-dtype, --kv-dtype, --ep, --attention-dp, --expert-dtype, --isl,
--osl, --concurrency | --request-rate, --token-budget, ...), read and checked by predict's own
parser (no --input: one question).

--sensitivity prints the elasticities d log(metric) / d log(parameter) of TTFT, TPOT, output
throughput per GPU and cost per million output tokens (at --gpu-hour-usd per GPU-hour, default
2.0) with respect to every hardware figure of the spec (each peak present, HBM bandwidth and
capacity, link bandwidth and latency, the scale-out tier's where the spec has one, the usable
memory fraction), the workload numbers (isl, osl, the concurrency or request rate) and, under
an engine, its fitted step overhead; ranked by the largest |elasticity|, each with a reason.
They are exact derivatives of the compiled model (forward-mode JAX, the steady state followed
by the implicit function theorem; :mod:`costmodel.search.whatif`), not finite differences; a
figure with no effect is exactly 0.

--solve PARAM --subject-to C gives the least value of the hardware figure PARAM (as the YAML
spec names it: hbm_bandwidth_tb_s, link_bandwidth_gb_s, peak_tflops.bf16, hbm_capacity_gb, ...)
or the largest isl, osl, concurrency or request_rate at which the deployment meets C, one of
``tpot_ms<=T``, ``ttft_ms<=T`` or ``output_tok_s_per_gpu>=X``: bracketed, then narrowed on
the full model (no steady state, e.g. a KV cache too small, counts as not met) and verified by
re-evaluating the prediction there.  A figure is searched from 1/1000 to 1000 times the spec's
(the usable fraction up to 1), a length or concurrency from 1 to 2^24, a request rate from
1/1000 of the question's to 1e9 requests/s.  When no value in that
range meets C, or every value does, ``solution`` is null and ``why`` says which.

--json prints one JSON object; --plot PATH draws a tornado chart of the elasticities, or the
metric against the solved parameter with the solution marked.  Bad input is one line on
stderr, ``error: --option: what is wrong``, exit status 2, and nothing on stdout.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from experiments import predict as predict_cli
from experiments._cli import MAX_TOKENS, OptionError, Parser, image_file, print_json, run

DEFAULT_GPU_HOUR_USD = 2.0
MAX_GPU_HOUR_USD = 1e6


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a price in USD, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_GPU_HOUR_USD):
        raise argparse.ArgumentTypeError(
            f"expected a price above 0 and at most {MAX_GPU_HOUR_USD:g}, got {text!r}"
        )
    return value


# A constraint: a metric, the comparison it takes, a positive number ("tpot_ms<=20").
CONSTRAINT = re.compile(r"^\s*(ttft_ms|tpot_ms|output_tok_s_per_gpu)\s*(<=|>=)\s*(\S+)\s*$")
COMPARISON = {"ttft_ms": "<=", "tpot_ms": "<=", "output_tok_s_per_gpu": ">="}


def _constraint(text: str) -> tuple[str, str, float]:
    """argparse type: ``tpot_ms<=T``, ``ttft_ms<=T`` or ``output_tok_s_per_gpu>=X``."""
    found = CONSTRAINT.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"expected tpot_ms<=T, ttft_ms<=T or output_tok_s_per_gpu>=X, got {text!r}"
        )
    metric, op, number = found.groups()
    if COMPARISON[metric] != op:
        raise argparse.ArgumentTypeError(f"{metric} takes {COMPARISON[metric]}, got {op}")
    try:
        bound = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number after {op}, got {number!r}") from None
    if not (math.isfinite(bound) and bound > 0):
        raise argparse.ArgumentTypeError(
            f"expected a positive finite number after {op}, got {number!r}"
        )
    return metric, op, bound


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the what-if options, then predict's question options (one
    question, checked by predict's parser)."""
    parser = Parser(
        prog="python -m experiments.whatif",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Question options: as python -m experiments.predict (see its --help).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sensitivity", action="store_true", help="ranked elasticities")
    mode.add_argument("--solve", metavar="PARAM", help="the figure or workload number to solve for")
    parser.add_argument(
        "--subject-to",
        type=_constraint,
        metavar="C",
        help='with --solve: "tpot_ms<=T", "ttft_ms<=T" or "output_tok_s_per_gpu>=X"',
    )
    parser.add_argument(
        "--gpu-hour-usd",
        type=_price,
        metavar="P",
        help=f"with --sensitivity: price of one GPU-hour (default {DEFAULT_GPU_HOUR_USD})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PATH", help="write a figure")
    parser.add_argument("--no-cache", action="store_true", help="no compilation cache on disk")
    args, rest = parser.parse_known_args(argv)
    try:
        if not args.sensitivity and args.solve is None:
            raise OptionError("--sensitivity", "give --sensitivity or --solve PARAM")
        if args.solve is not None:
            if not args.solve.strip():
                raise OptionError("--solve", "expected a parameter name, got an empty one")
            if args.subject_to is None:
                raise OptionError("--subject-to", 'required with --solve (e.g. "tpot_ms<=20")')
            if args.gpu_hour_usd is not None:
                raise OptionError("--gpu-hour-usd", "goes with --sensitivity, not --solve")
        elif args.subject_to is not None:
            raise OptionError("--subject-to", "goes with --solve")
        if args.gpu_hour_usd is None:
            args.gpu_hour_usd = DEFAULT_GPU_HOUR_USD
        if args.plot is not None:
            args.plot = image_file("--plot", args.plot)
        if "--input" in rest or any(a.startswith("--input=") for a in rest):
            raise OptionError(
                "--input", "whatif answers one question; give predict's question options"
            )
    except OptionError as err:
        parser.error(str(err))
    question = predict_cli.parse_args(rest)
    args.question = question.question
    return args


def _record(inputs, prediction: dict[str, Any]) -> dict[str, Any]:
    return predict_cli.record(inputs, prediction)


def sensitivity_data(inputs, result, gpu_hour_usd: float) -> dict[str, Any]:
    """The JSON object of a sensitivity answer."""
    return {
        "question": _record(inputs, result.prediction),
        "gpu_hour_usd": gpu_hour_usd,
        "cost_usd_per_1m_tokens": result.cost_usd_per_1m_tokens,
        "regime": result.regime,
        "decode_step_shares": result.step_shares,
        "method": "exact: forward-mode JAX through the compiled model, implicit function "
        "theorem through the steady state",
        "note": result.note,
        "elasticities": [
            {
                "parameter": r.parameter,
                "kind": r.kind,
                "value": r.value,
                **r.elasticities,
                "reason": r.reason,
            }
            for r in result.elasticities
        ],
    }


def solve_data(inputs, base, solution, current: float | None) -> dict[str, Any]:
    """The JSON object of a solve answer (``base``: the question's own prediction)."""
    check = solution.prediction
    return {
        "question": _record(inputs, base),
        "parameter": solution.parameter,
        "goal": solution.goal,
        "subject_to": str(solution.constraint),
        "current_value": current,
        "solution": solution.value,
        "unmet_value": solution.unmet,
        "why": solution.why,
        "at_solution": None
        if check is None or solution.value is None
        else {k: predict_cli._finite(v) for k, v in check.items()},
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:+.4f}"


def sensitivity_lines(data: dict[str, Any]) -> list[str]:
    """The text form of a sensitivity answer."""
    q = data["question"]
    lines = predict_cli.report_lines(q)
    cost = data["cost_usd_per_1m_tokens"]
    lines += [
        f"cost: {'n/a' if cost is None else f'{cost:.4g}'} USD per 1M output tokens at "
        f"{data['gpu_hour_usd']:g} USD per GPU-hour",
        "",
        "elasticities d log(metric) / d log(parameter), exact (ranked by the largest):",
    ]
    header = (
        f"{'parameter':<26} {'value':>11} {'TTFT':>8} {'TPOT':>8} {'tok/s/GPU':>9} {'$/1M':>8}  why"
    )
    lines.append(header)
    for r in data["elasticities"]:
        lines.append(
            f"{r['parameter']:<26} {r['value']:>11.5g} {_fmt(r['ttft_ms']):>8} "
            f"{_fmt(r['tpot_ms']):>8} {_fmt(r['output_tok_s_per_gpu']):>9} "
            f"{_fmt(r['cost_usd_per_1m_tokens']):>8}  {r['reason']}"
        )
    if data["note"]:
        lines += ["", f"note: {data['note']}"]
    return lines


def solve_lines(data: dict[str, Any]) -> list[str]:
    """The text form of a solve answer."""
    lines = [*predict_cli.report_lines(data["question"]), ""]
    goal = f"{data['goal']} {data['parameter']} with {data['subject_to']}"
    if data["solution"] is None:
        return [*lines, f"{goal}: none: {data['why']}"]
    at = data["at_solution"]
    metric = data["subject_to"].split("<")[0].split(">")[0]
    return [
        *lines,
        f"{goal}: {data['solution']:.10g} (spec/question: {data['current_value']:.6g})",
        f"  re-evaluated there: {metric} = {at[metric]:.10g}; TTFT {at['ttft_ms']:.4g} ms, "
        f"TPOT {at['tpot_ms']:.4g} ms, {at['output_tok_s_per_gpu']:.4g} tok/s per GPU",
        f"  {data['why']}",
    ]


def tornado(data: dict[str, Any], path: Path) -> Path:
    """A tornado chart of the non-zero elasticities of TTFT and TPOT."""
    import matplotlib.pyplot as plt

    from costmodel.present.files import save_figure

    rows = [r for r in data["elasticities"] if r["ttft_ms"] or r["tpot_ms"]][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["tpot_ms"] for r in rows], 0.4, label="TPOT")
    ax.barh([y - 0.2 for y in ys], [r["ttft_ms"] for r in rows], 0.4, label="TTFT")
    ax.set_yticks(list(ys), [r["parameter"] for r in rows])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("elasticity d log(metric) / d log(parameter)")
    q = data["question"]
    ax.set_title(f"{q['model']} on {q['tp']}x {q['hardware']}: what moves TTFT and TPOT")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def solve_figure(data: dict[str, Any], searched, path: Path) -> Path:
    """The constrained metric against the solved parameter, the solution marked."""
    import matplotlib.pyplot as plt

    from costmodel.present.files import save_figure

    metric = data["subject_to"].split("<")[0].split(">")[0]
    points = sorted((v, m, met) for v, m, met in searched if m is not None and math.isfinite(m))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for met, color, label in ((True, "tab:green", "met"), (False, "tab:red", "not met")):
        xs = [v for v, _, ok in points if ok == met]
        ax.plot(xs, [m for _, m, ok in points if ok == met], "o", ms=3, color=color, label=label)
    bound = float(data["subject_to"].split("=")[-1])
    ax.axhline(bound, color="gray", ls="--", lw=1)
    if data["solution"] is not None:
        ax.axvline(data["solution"], color="black", lw=1, label=f"solution {data['solution']:.6g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(data["parameter"])
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def answer(args: argparse.Namespace) -> int:
    """Answer a parsed command line (exit status)."""
    from costmodel import runtime
    from costmodel.search import whatif

    inputs, binding = predict_cli.question_binding(args.question)
    point = predict_cli.serving_point(inputs)
    with runtime.compilation_cache(predict_cli._cache_root(args)):
        if args.sensitivity:
            result = whatif.sensitivity(binding, point, args.gpu_hour_usd)
            data = sensitivity_data(inputs, result, args.gpu_hour_usd)
            lines = sensitivity_lines
        else:
            known = whatif.solvable(binding, point)
            if args.solve not in known:
                raise OptionError(
                    "--solve", f"unknown parameter {args.solve!r} (known: {', '.join(known)})"
                )
            from costmodel.search.predict import Question, predict

            base = predict([Question(binding, point)])[0]
            constraint = whatif.Constraint(*args.subject_to)
            solution = whatif.solve(binding, point, args.solve, constraint, max_tokens=MAX_TOKENS)
            figures = whatif.hardware_figures(binding.scenario.hardware)
            current = figures.get(args.solve, getattr(inputs, args.solve, None))
            data = solve_data(inputs, base, solution, current)
            lines = solve_lines
    if args.plot is not None:
        if args.sensitivity:
            tornado(data, args.plot)
        else:
            solve_figure(data, solution.searched, args.plot)
    if args.json:
        print_json(data)
    else:
        print("\n".join(lines(data)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
