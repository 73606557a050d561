"""What-if questions on one deployment: elasticities, the value of one figure that meets an SLO,
and where two choices cross.

    python -m experiments.whatif PREDICT-QUESTION --sensitivity [--gpu-hour-usd P]
        [--json] [--plot PATH] [--no-cache]
    python -m experiments.whatif PREDICT-QUESTION --solve PARAM --subject-to "tpot_ms<=T"
        [--json] [--plot PATH] [--no-cache]
    python -m experiments.whatif PREDICT-QUESTION --crossover A B --over PARAM
        [--metric M] [--range LO,HI] [--json] [--plot PATH] [--no-cache]
    python -m experiments.whatif PREDICT-QUESTION --interval LEVEL [--slo "tpot_ms<=T" ...]
        [--json] [--no-cache]

PREDICT-QUESTION is the question options of ``python -m experiments.predict`` (--model,
--hardware (a catalogue name or a path to a YAML spec: hardware that does not exist),
--engine, --tp, --weight-dtype, --kv-dtype, --ep, --attention-dp, --expert-dtype, --isl,
--osl, --concurrency | --request-rate, --token-budget, --prefill-replicas, ...), read and
checked by predict's own parser (no --input: one question).

--sensitivity prints the elasticities d log(metric) / d log(parameter) of TTFT, TPOT, output
throughput per GPU and cost per million output tokens (at --gpu-hour-usd per GPU-hour, default
2.0) with respect to every hardware figure of the spec (each peak present, HBM bandwidth and
capacity, link bandwidth and latency, the scale-out tier's where the spec has one, the usable
memory fraction), the workload numbers (isl, osl, the concurrency or request rate), every
calibrated term (kind "calibration": under --engine, each fitted coefficient of the kernel
families the deployment uses, named family[dtype].symbol, e.g. gemm[bfloat16].t_gemm_launch;
on a spec with a fitted efficiency, its efficiency.* terms), every model dimension (kind
"model": n_layers, d_model, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size and the
MoE, MLA and sliding-window dimensions the model has, taken as continuous numbers) and, under
an engine, its fitted step overhead; ranked by the largest |elasticity|, each with its kind and
a reason.  They are exact derivatives of the compiled model (forward-mode JAX, the steady
state followed by the implicit function theorem; :mod:`costmodel.search.whatif`), not finite
differences; a parameter with no effect is exactly 0.

--solve PARAM --subject-to C gives the least value of the hardware figure PARAM (as the YAML
spec names it: hbm_bandwidth_tb_s, link_bandwidth_gb_s, peak_tflops.bf16, hbm_capacity_gb, ...)
or the largest isl, osl, concurrency or request_rate at which the deployment meets C, one of
``tpot_ms<=T``, ``ttft_ms<=T`` or ``output_tok_s_per_gpu>=X``: bracketed, then narrowed on
the full model (no steady state, e.g. a KV cache too small, counts as not met) and verified by
re-evaluating the prediction there.  A figure is searched from 1/1000 to 1000 times the spec's
(the usable fraction up to 1), a length or concurrency from 1 to 2^24, a request rate from
1/1000 of the question's to 1e9 requests/s.  When no value in that
range meets C, or every value does, ``solution`` is null and ``why`` says which.  PARAM ``tp``
gives the least GPUs per replica that meets C (every power of two up to 64 dividing the
model's query heads is predicted; not with expert parallelism), and PARAM ``gpu_hour_usd``
with ``cost_usd_per_1m_tokens<=C`` the largest price per GPU-hour at which a million output
tokens cost at most C (the cost is linear in the price: exact, then re-evaluated).

--crossover A B --over PARAM finds every value of PARAM where the question changed as A and
the question changed as B swap order on the metric M (--metric: tpot_ms, the default,
ttft_ms or output_tok_s_per_gpu).  A and B each set one or more of predict's inputs,
``name=value[,name=value...]`` with predict's input names (its options without the dashes)
and values read by its own parsers: ``weight_dtype=fp8``, ``weight_dtype=int4``, ``tp=8``,
``kv_dtype=fp8``, ``engine=vllm`` (``engine=none``: the roofline),
``prefill_replicas=1,decode_replicas=1`` (disaggregated) against ``prefill_replicas=0``
(aggregated: one zero sets both), ...; neither may set the loop or PARAM.  PARAM is isl, osl,
the question's concurrency or request_rate, or a hardware figure (as for --solve); --range
LO,HI bounds the search (default: concurrency 1..4096, isl and osl 1..131072, a request rate
1/1000 to 1000 times the question's, a figure 1/10 to 10 times the spec's).  On the full model
(predict's answers, batched; :mod:`costmodel.search.crossover_search`) a geometric grid finds
each change of order, which is narrowed to the exact integer where the order flips (isl, osl,
concurrency: the bracket [n - 1, n], reported as n) or to a bracket 1e-9 wide (a real PARAM,
reported as its midpoint, where A's and B's metric agree), then both ends are re-evaluated
with predict ("verified").  Each crossing says which is better below and above it and its
kind: the metrics meet ("equal"), the requests one side's KV cache holds step there so its
metric jumps ("capacity"), or one side's steady state ends ("feasibility").  With no crossing
in range, ``crossovers`` is empty and ``why`` says which is better throughout.  For two
pure-roofline choices with the same serving layout in a closed loop, over concurrency, isl,
osl or a hardware figure, the crossing of a static model (the mean step: concurrency
sequences decoding at context isl + osl/2 with the prompts of the requests finishing each
step) is also given in closed form where SymPy finds one
(:func:`costmodel.model.crossover.crossover`), printed by SymPy and as a string in JSON; it
is near the full model's crossing (a few per cent in the examples tested), not on it.  Otherwise
``closed_form`` is null and ``closed_form_why`` says why.

--interval LEVEL (under --engine: a calibrated engine) gives prediction intervals at LEVEL
(e.g. 0.9) of TTFT, TPOT, the request latency and the throughputs, from the GPU
calibration's uncertainty (:mod:`costmodel.search.uncertainty`: Monte Carlo over each kernel
fit's Laplace posterior and one latency error per kernel family drawn from the fit's training
residuals; a fixed seed, so the answer is reproducible), and with --slo (``tpot_ms<=T`` and/or
``ttft_ms<=T``, each at most once) the probability that the deployment meets every limit.
The calibrated prediction, its interval and the pure roofline's prediction are printed apart:
the roofline has no interval.  A question the pure roofline answers (no --engine) has no
posterior to draw from: an error.

--json prints one JSON object; --plot PATH draws a tornado chart of the (at most 30) largest
elasticities, the metric against the solved parameter with the solution marked, or both
choices' metric against the crossover's parameter with the crossings marked.  Bad input is
one line on stderr, ``error: --option: what is wrong``, exit status 2, and nothing on stdout.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from experiments import predict as predict_cli
from experiments._cli import (
    ENGINES,
    MAX_TOKENS,
    OptionError,
    Parser,
    bounded_float,
    image_file,
    print_json,
    run,
)
from experiments.roofline import KV_DTYPES, WEIGHT_DTYPES

DEFAULT_GPU_HOUR_USD = 2.0
MIN_LEVEL, MAX_LEVEL = 0.5, 1.0  # an interval's level lies in [0.5, 1)
SLO_METRICS = ("ttft_ms", "tpot_ms")  # what --slo may limit (costmodel.search.uncertainty's)
TORNADO_ROWS = 30  # parameters a tornado chart shows
MAX_GPU_HOUR_USD = 1e6
# --crossover: the metrics compared (as costmodel.search.crossover_search has them; kept here
# so that --help imports nothing heavy) and what a choice may set.
CROSSOVER_METRICS = ("tpot_ms", "ttft_ms", "output_tok_s_per_gpu")
DEFAULT_CROSSOVER_METRIC = "tpot_ms"
CROSSING_KINDS = {
    "equal": "the metrics meet",
    "capacity": "the requests a KV cache holds step: the metric jumps",
    "feasibility": "one side's steady state ends",
}
CHOICE_NAMES = tuple(c for c in predict_cli.COLUMNS if c not in predict_cli.LOOPS)
CHOICES = {
    "engine": (*ENGINES, "none"),
    "weight_dtype": WEIGHT_DTYPES,
    "kv_dtype": KV_DTYPES,
}


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
CONSTRAINT = re.compile(
    r"^\s*(ttft_ms|tpot_ms|output_tok_s_per_gpu|cost_usd_per_1m_tokens)\s*(<=|>=)\s*(\S+)\s*$"
)
COMPARISON = {
    "ttft_ms": "<=",
    "tpot_ms": "<=",
    "output_tok_s_per_gpu": ">=",
    "cost_usd_per_1m_tokens": "<=",
}


def _constraint(text: str) -> tuple[str, str, float]:
    """argparse type: ``tpot_ms<=T``, ``ttft_ms<=T``, ``output_tok_s_per_gpu>=X`` or
    ``cost_usd_per_1m_tokens<=C``."""
    found = CONSTRAINT.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            "expected tpot_ms<=T, ttft_ms<=T, output_tok_s_per_gpu>=X or "
            f"cost_usd_per_1m_tokens<=C, got {text!r}"
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


def _slo(text: str) -> tuple[str, str, float]:
    """argparse type: ``tpot_ms<=T`` or ``ttft_ms<=T`` (an SLO limit)."""
    metric, op, bound = _constraint(text)
    if metric not in SLO_METRICS:
        raise argparse.ArgumentTypeError(f"expected tpot_ms<=T or ttft_ms<=T, got {text!r}")
    return metric, op, bound


def _range(text: str) -> tuple[float, float]:
    """argparse type: ``LO,HI``, two positive finite numbers, LO < HI."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise argparse.ArgumentTypeError(f"expected 0 < LO < HI, both finite, got {text!r}")
    return lo, hi


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
    mode.add_argument(
        "--interval",
        type=bounded_float(MIN_LEVEL, MAX_LEVEL, "an interval level", high_open=True),
        metavar="LEVEL",
        help="prediction intervals at LEVEL (under a calibrated --engine)",
    )
    mode.add_argument(
        "--crossover",
        nargs=2,
        metavar=("A", "B"),
        help='two choices, each "name=value[,name=value...]" in predict\'s input names',
    )
    parser.add_argument(
        "--over", metavar="PARAM", help="with --crossover: the parameter the choices cross over"
    )
    parser.add_argument(
        "--metric",
        choices=CROSSOVER_METRICS,
        help=f"with --crossover: the metric compared (default {DEFAULT_CROSSOVER_METRIC})",
    )
    parser.add_argument(
        "--range",
        type=_range,
        metavar="LO,HI",
        help="with --crossover: the values of PARAM searched (default: see above)",
    )
    parser.add_argument(
        "--subject-to",
        type=_constraint,
        metavar="C",
        help='with --solve: "tpot_ms<=T", "ttft_ms<=T", "output_tok_s_per_gpu>=X" or '
        '"cost_usd_per_1m_tokens<=C" (with gpu_hour_usd)',
    )
    parser.add_argument(
        "--slo",
        type=_slo,
        action="append",
        metavar="C",
        help='with --interval: "tpot_ms<=T" or "ttft_ms<=T" (each at most once)',
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
        if (
            not args.sensitivity
            and args.solve is None
            and args.crossover is None
            and args.interval is None
        ):
            raise OptionError(
                "--sensitivity",
                "give --sensitivity, --solve PARAM, --crossover A B --over PARAM or "
                "--interval LEVEL",
            )
        _check_interval_options(args)
        _check_crossover_options(args)
        if args.solve is not None:
            if not args.solve.strip():
                raise OptionError("--solve", "expected a parameter name, got an empty one")
            if args.subject_to is None:
                raise OptionError("--subject-to", 'required with --solve (e.g. "tpot_ms<=20")')
            if args.gpu_hour_usd is not None:
                raise OptionError("--gpu-hour-usd", "goes with --sensitivity, not --solve")
        elif args.subject_to is not None:
            raise OptionError("--subject-to", "goes with --solve")
        if args.crossover is not None and args.gpu_hour_usd is not None:
            raise OptionError("--gpu-hour-usd", "goes with --sensitivity, not --crossover")
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
    if args.crossover is not None:
        try:
            args.choices = [
                _chosen(args.question, pair, args.over)
                for pair in zip(args.crossover, args.overrides, strict=True)
            ]
            if args.choices[0] == args.choices[1]:
                raise OptionError("--crossover", "A and B are the same deployment")
        except OptionError as err:
            parser.error(str(err))
    return args


def _check_interval_options(args: argparse.Namespace) -> None:
    """--slo goes with --interval, each metric at most once; --interval takes no --plot or
    --gpu-hour-usd.  ``args.slo`` becomes a dict metric -> limit [ms] (or None)."""
    slo = args.slo or []
    if args.interval is None:
        if slo:
            raise OptionError("--slo", "goes with --interval")
        return
    if args.plot is not None:
        raise OptionError("--plot", "goes with --sensitivity, --solve or --crossover")
    if args.gpu_hour_usd is not None:
        raise OptionError("--gpu-hour-usd", "goes with --sensitivity, not --interval")
    limits: dict[str, float] = {}
    for metric, _, bound in slo:
        if metric in limits:
            raise OptionError("--slo", f"{metric} is limited twice")
        limits[metric] = bound
    args.slo = limits or None


def _check_crossover_options(args: argparse.Namespace) -> None:
    """--over, --metric and --range go with --crossover (which needs --over); each choice's
    syntax and values are checked (against the question later, by :func:`_chosen`)."""
    if args.crossover is None:
        for option, value in (("--over", args.over), ("--metric", args.metric)):
            if value is not None:
                raise OptionError(option, "goes with --crossover")
        if args.range is not None:
            raise OptionError("--range", "goes with --crossover")
        return
    if args.over is None or not args.over.strip():
        raise OptionError("--over", "required with --crossover (e.g. --over concurrency)")
    if args.metric is None:
        args.metric = DEFAULT_CROSSOVER_METRIC
    args.overrides = [_choice(text) for text in args.crossover]


def _choice(text: str) -> dict[str, Any]:
    """One side of --crossover: ``name=value[,name=value...]``, each name an input of
    predict's (its option without the dashes) and each value read by predict's own parser."""
    overrides: dict[str, Any] = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name or not value:
            raise OptionError("--crossover", f"{text!r}: expected name=value, got {item!r}")
        if name not in CHOICE_NAMES:
            known = ", ".join(CHOICE_NAMES)
            raise OptionError("--crossover", f"{text!r}: unknown name {name!r} (known: {known})")
        if name in overrides:
            raise OptionError("--crossover", f"{text!r}: {name} given twice")
        overrides[name] = _choice_value(text, name, value)
    # Aggregated serving is zero replicas of either kind: one zero is both.
    for one, other in (
        ("prefill_replicas", "decode_replicas"),
        ("decode_replicas", "prefill_replicas"),
    ):
        if overrides.get(one) == 0 and other not in overrides:
            overrides[other] = 0
    return overrides


def _choice_value(text: str, name: str, value: str) -> Any:
    """``value`` of input ``name``, read as predict reads its option (a choice's list too)."""
    if name in CHOICES:
        allowed = CHOICES[name]
        if value not in allowed:
            known = ", ".join(allowed)
            raise OptionError(
                "--crossover", f"{text!r}: {name} takes one of {known}, got {value!r}"
            )
        return None if (name == "engine" and value == "none") else value
    try:
        return predict_cli.PARSERS[name](value)
    except argparse.ArgumentTypeError as err:
        raise OptionError("--crossover", f"{text!r}: {name}: {err}") from None


def _chosen(question, text_overrides, over: str):
    """The question's inputs with one choice's overrides, checked together as predict checks
    a question."""
    text, overrides = text_overrides
    if over in overrides:
        raise OptionError("--crossover", f"{text!r} sets {over}, the parameter --over varies")
    try:
        return predict_cli.check_inputs(question._asdict() | overrides, predict_cli.OPTIONS)
    except predict_cli.BadInput as err:
        raise OptionError("--crossover", f"{text!r}: {err.message}") from None


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


def interval_data(inputs, result) -> dict[str, Any]:
    """The JSON object of an interval answer: the calibrated prediction, its intervals, the
    probability of meeting the SLOs and, apart, the pure roofline's prediction."""
    return {
        "question": _record(inputs, result.central),
        "level": result.level,
        "intervals": {m: list(lo_hi) for m, lo_hi in result.intervals.items()},
        "slo": result.slo,
        "probability_meeting_slo": result.probability,
        "stable_share": result.stable,
        "roofline": {k: predict_cli._finite(v) for k, v in result.roofline.items()},
        "draws": result.draws,
        "seed": result.seed,
        "fits": result.fits,
        "method": result.method,
    }


def interval_lines(data: dict[str, Any]) -> list[str]:
    """The text form of an interval answer."""
    q, roof = data["question"], data["roofline"]
    level = f"{100 * data['level']:g}%"
    lines = [
        *predict_cli.report_lines(q),
        "",
        f"calibrated prediction and its {level} interval ({data['draws']} draws, seed "
        f"{data['seed']}), beside the pure roofline's (no interval):",
        f"{'metric':<24} {'calibrated':>12} {'low':>12} {'high':>12} {'roofline':>12}",
    ]
    for metric, (low, high) in data["intervals"].items():
        lines.append(
            f"{metric:<24} {_number(q.get(metric)):>12} {_number(low):>12} "
            f"{_number(high):>12} {_number(roof.get(metric)):>12}"
        )
    if data["stable_share"] < 1:
        lines.append(f"draws with a steady state: {100 * data['stable_share']:.1f}%")
    if data["slo"]:
        limits = ", ".join(f"{m} <= {v:g}" for m, v in data["slo"].items())
        lines.append(f"P(meets {limits}) = {data['probability_meeting_slo']:.4f}")
    lines += [f"fits drawn: {', '.join(data['fits'])}", f"method: {data['method']}"]
    return lines


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    return f"{value:.5g}"


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
    width = max([26, *(len(r["parameter"]) for r in data["elasticities"])])
    header = (
        f"{'parameter':<{width}} {'kind':<11} {'value':>11} {'TTFT':>8} {'TPOT':>8} "
        f"{'tok/s/GPU':>9} {'$/1M':>8}  why"
    )
    lines.append(header)
    for r in data["elasticities"]:
        lines.append(
            f"{r['parameter']:<{width}} {r['kind']:<11} {r['value']:>11.5g} "
            f"{_fmt(r['ttft_ms']):>8} "
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
        f"{goal}: {data['solution']:.10g}"
        + (
            ""
            if data["current_value"] is None
            else f" (spec/question: {data['current_value']:.6g})"
        ),
        f"  re-evaluated there: {metric} = {at[metric]:.10g}; TTFT {at['ttft_ms']:.4g} ms, "
        f"TPOT {at['tpot_ms']:.4g} ms, {at['output_tok_s_per_gpu']:.4g} tok/s per GPU",
        f"  {data['why']}",
    ]


def tornado(data: dict[str, Any], path: Path) -> Path:
    """A tornado chart of the largest non-zero elasticities of TTFT and TPOT (at most
    :data:`TORNADO_ROWS`: an engine has some 200 calibrated terms)."""
    import matplotlib.pyplot as plt

    from costmodel.present.files import save_figure

    moving = [r for r in data["elasticities"] if r["ttft_ms"] or r["tpot_ms"]]
    rows = moving[:TORNADO_ROWS][::-1]  # ranked: the largest on top
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


def _side(which: str) -> str:
    return which.upper()


def crossover_data(inputs, base, sides, result) -> dict[str, Any]:
    """The JSON object of a crossover answer (``base``: the question's own prediction;
    ``sides``: (choice as written, resolved inputs) of A and B)."""
    from costmodel.search import crossover_search as cs

    def pair(values):
        return {"a": values[0], "b": values[1]}

    crossings = [
        {
            "value": c.value,
            "bracket": [c.low, c.high],
            "kind": c.kind,
            "below": _side(c.below),
            "above": _side(c.above),
            "at_low": pair(c.at_low),
            "at_high": pair(c.at_high),
            "relative_gap": c.relative_gap,
            "verified": c.verified,
        }
        for c in result.crossings
    ]
    forms = None
    if result.closed_forms is not None:
        forms = [
            {
                "expression": str(f.expression),
                "value": f.value,
                "exact": f.exact,
                "width": f.width,
                "below": _side(f.below),
                "above": _side(f.above),
            }
            for f in result.closed_forms
        ]
    integer = result.parameter in cs.INTEGER_PARAMETERS
    return {
        "question": _record(inputs, base),
        "a": {"choice": sides[0][0], "inputs": sides[0][1]._asdict()},
        "b": {"choice": sides[1][0], "inputs": sides[1][1]._asdict()},
        "parameter": result.parameter,
        "metric": result.metric,
        "better": "higher" if cs.HIGHER_IS_BETTER[result.metric] else "lower",
        "range": [result.lo, result.hi],
        "tolerance": "the exact integer where the order flips (bracket [n - 1, n], value n)"
        if integer
        else f"bracket of relative width {cs.CROSSOVER_RTOL:g}, value its midpoint",
        "crossovers": crossings,
        "why": result.why,
        "closed_form_model": result.closed_form_model,
        "closed_form": forms,
        "closed_form_why": result.closed_form_why,
    }


def crossover_lines(data: dict[str, Any], pretty: list[str] | None = None) -> list[str]:
    """The text form of a crossover answer (``pretty``: SymPy's drawing of each closed form)."""
    lines = [*predict_cli.report_lines(data["question"]), ""]
    metric, parameter = data["metric"], data["parameter"]
    lo, hi = data["range"]
    lines += [
        f"A: {data['a']['choice']}",
        f"B: {data['b']['choice']}",
        f"{metric} ({data['better']} is better) over {parameter} in [{lo:.6g}, {hi:.6g}]:",
    ]
    if not data["crossovers"]:
        lines.append(f"  no crossover: {data['why']}")
    for c in data["crossovers"]:
        low, high = c["bracket"]
        what = CROSSING_KINDS[c["kind"]]
        check = "verified by predict" if c["verified"] else "NOT confirmed by predict"
        lines.append(
            f"  crossover at {parameter} = {c['value']:.10g} ({what}; bracket [{low:.10g}, "
            f"{high:.10g}], {check}): {c['below']} better below, {c['above']} above"
        )
        for end, at in ((low, c["at_low"]), (high, c["at_high"])):
            lines.append(f"    at {end:.10g}: A {_value(at['a'])}, B {_value(at['b'])} ({metric})")
    lines.append("")
    if data["closed_form"] is None:
        lines.append(f"closed form: none: {data['closed_form_why']}")
        return lines
    lines.append(f"closed form ({data['closed_form_model']}):")
    for i, f in enumerate(data["closed_form"]):
        how = "exact" if f["exact"] else f"within {f['width']:.3g} (no exact root)"
        lines.append(
            f"  {parameter}* = {f['expression']} = {f['value']:.10g} ({how}): "
            f"{f['below']} better below, {f['above']} above"
        )
        if pretty is not None and f["exact"]:
            lines += ["    " + row for row in pretty[i].splitlines()]
    return lines


def _value(value: float | None) -> str:
    return "no steady state" if value is None else f"{value:.6g}"


def crossover_figure(data: dict[str, Any], searched, path: Path) -> Path:
    """A's and B's metric against the parameter, the crossovers marked."""
    import matplotlib.pyplot as plt

    from costmodel.present.files import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, side in ((1, "a"), (2, "b")):
        points = [(row[0], row[index]) for row in searched if row[index] is not None]
        label = f"{side.upper()}: {data[side]['choice']}"
        ax.plot([p for p, _ in points], [m for _, m in points], ".-", ms=3, label=label)
    for c in data["crossovers"]:
        ax.axvline(c["value"], color="black", lw=1, label=f"crossover {c['value']:.6g}")
    for f in data["closed_form"] or []:
        ax.axvline(f["value"], color="gray", ls="--", lw=1, label=f"static model {f['value']:.6g}")
    ax.set_xscale("log")
    ax.set_xlabel(data["parameter"])
    ax.set_ylabel(data["metric"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def _crossover(args: argparse.Namespace, inputs, binding, point):
    """Bind both choices, search, and return (data, searched, pretty closed forms)."""
    import sympy as sp

    from costmodel.search import crossover_search as cs
    from costmodel.search.predict import Question, predict

    questions, sides = [], []
    for text, chosen in zip(args.crossover, args.choices, strict=True):
        try:
            resolved, bound = predict_cli.question_binding(chosen)
        except OptionError as err:
            raise OptionError("--crossover", f"{text!r}: {err.message}") from None
        questions.append(Question(bound, predict_cli.serving_point(resolved)))
        sides.append((text, resolved))
    known = sorted(set(cs.parameters(questions[0])) & set(cs.parameters(questions[1])))
    if args.over not in known:
        raise OptionError("--over", f"unknown parameter {args.over!r} (known: {', '.join(known)})")
    lo, hi = args.range if args.range is not None else (None, None)
    integer = args.over in cs.INTEGER_PARAMETERS
    if args.range is not None and integer and math.floor(hi) - math.ceil(lo) < 1:
        raise OptionError("--range", f"holds fewer than two whole values of {args.over}")
    result = cs.find_crossovers(*questions, args.over, args.metric, lo, hi)
    base = predict([Question(binding, point)])[0]
    data = crossover_data(inputs, base, sides, result)
    pretty = [sp.pretty(f.expression) for f in result.closed_forms or []]
    return data, result.searched, pretty


def answer(args: argparse.Namespace) -> int:
    """Answer a parsed command line (exit status)."""
    from costmodel import runtime
    from costmodel.search import whatif

    inputs, binding = predict_cli.question_binding(args.question)
    point = predict_cli.serving_point(inputs)
    with runtime.compilation_cache(predict_cli._cache_root(args)):
        if args.interval is not None:
            from costmodel.search import uncertainty
            from costmodel.search.predict import Question

            try:
                result = uncertainty.serving_interval(
                    Question(binding, point), args.interval, slo=args.slo
                )
            except uncertainty.NoCalibrationError as err:
                raise OptionError("--engine", str(err)) from None
            data, lines = interval_data(inputs, result), interval_lines
        elif args.sensitivity:
            result = whatif.sensitivity(binding, point, args.gpu_hour_usd)
            data = sensitivity_data(inputs, result, args.gpu_hour_usd)
            lines = sensitivity_lines
        elif args.crossover is not None:
            data, searched, pretty = _crossover(args, inputs, binding, point)
            lines = lambda data: crossover_lines(data, pretty)  # noqa: E731
        else:
            known = whatif.solvable(binding, point)
            if args.solve not in known:
                raise OptionError(
                    "--solve", f"unknown parameter {args.solve!r} (known: {', '.join(known)})"
                )
            from costmodel.search.predict import Question, predict

            base = predict([Question(binding, point)])[0]
            constraint = whatif.Constraint(*args.subject_to)
            try:
                solution = whatif.solve(
                    binding, point, args.solve, constraint, max_tokens=MAX_TOKENS
                )
            except ValueError as err:
                raise OptionError("--subject-to", str(err)) from None
            figures = whatif.hardware_figures(binding.scenario.hardware)
            current = figures.get(args.solve, getattr(inputs, args.solve, None))
            data = solve_data(inputs, base, solution, current)
            lines = solve_lines
    if args.plot is not None:
        if args.sensitivity:
            tornado(data, args.plot)
        elif args.crossover is not None:
            crossover_figure(data, searched, args.plot)
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
