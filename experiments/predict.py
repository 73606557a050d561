"""Predict how one engine replica serves requests: TTFT, TPOT, latency, throughput, KV capacity.

    python -m experiments.predict --model NAME_OR_PATH --hardware NAME_OR_PATH
        [--engine vllm|trtllm|sglang] --tp N --weight-dtype D --kv-dtype D
        [--ep N] [--attention-dp] [--expert-dtype D] --isl N --osl N
        (--concurrency N | --request-rate R) [--token-budget N] [--prefix-hit F]
        [--draft-tokens K --acceptance A --draft-cost F]
        [--prefill-replicas X --decode-replicas Y] [--json] [--no-cache]
    python -m experiments.predict --input FILE.csv [--json] [--no-cache]

One question: a model (catalogue name, or a path to a .yaml spec or a Hugging Face config.json)
on tp GPUs of a hardware (catalogue name or path), served by an engine (its measured kernels
time the steps; without --engine, the hardware's roofline), with weights and KV cache in the
given formats, prompts of isl tokens and osl tokens out, driven by a closed loop of --concurrency
clients or an open loop of --request-rate requests/s (costmodel.search.predict).  A
Mixture-of-Experts model (no engine: the engines' kernel models cover dense models only) may
also place its experts: --ep N spreads them over N of the tp GPUs (N divides tp; default 1),
--attention-dp runs attention data-parallel, each GPU its own sequences (needs ep equal to
tp), and --expert-dtype D stores the routed experts in format D (default: --weight-dtype); a
model without experts takes none of the three.  Prints the question, then each answer with
its unit and the time model that answered; --json prints one JSON object on one line instead:
the inputs (model, hardware, engine (null: none), tp, weight_dtype, kv_dtype, ep,
attention_dp, expert_dtype (the routed experts' format in effect: --expert-dtype or the
weight dtype; null for a model without experts), isl, osl, concurrency, request_rate (null:
the other loop), token_budget (null: the engine's default), prefix_hit, draft_tokens,
acceptance, draft_cost, prefill_replicas, decode_replicas (0: aggregated serving; else X
replicas that only prefill and Y that only decode, the KV cache moved over the GPU link; the
loop then drives the whole deployment)) and every answer (ttft_ms, tpot_ms, request_latency_s,
output_tok_s, output_tok_s_per_gpu, request_throughput_rps, kv_capacity_tokens,
max_concurrency_fits, decode_batch, prefill_load, gpus, stable, time_model).  A rate the
replica cannot carry, or a request whose KV fits no cache, has infinite times: null in JSON,
with stable false.

--input FILE.csv answers every row of a CSV file instead, always as JSON lines (with or without
--json), one per row in file order, each exactly the line --json prints for the same question.
Columns: model, hardware, engine (optional; empty: no engine), tp, weight_dtype, kv_dtype,
isl, osl, concurrency and/or request_rate (each row fills exactly one), and optionally ep,
attention_dp (true/false or 1/0, any case), expert_dtype, token_budget, prefix_hit,
draft_tokens, acceptance, draft_cost, prefill_replicas, decode_replicas (empty: the default).
Relative model and hardware paths are read from the CSV file's folder.  --input takes no
question options.

Every row is checked before anything is computed.  Bad input is one line on stderr,
``error: FILE: row N: column: what is wrong`` (row 1 is the line after the header),
``error: FILE: header: column: ...`` or ``error: --option: what is wrong``, exit status 2,
and nothing on stdout.

Questions alike (engine or time model, attention kind) are compiled once per run; compiled XLA
programs are cached on disk as by ``python -m experiments.optimise`` (``results/.jax_cache``;
JAX_COMPILATION_CACHE_DIR replaces it, ``--no-cache`` turns it off).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from experiments._cli import (
    ENGINES,
    MAX_TOKENS,
    OptionError,
    Parser,
    bounded_float,
    bounded_int,
    check_experts,
    input_file,
    positive_int,
    run,
    token_count,
)
from experiments.roofline import KV_DTYPES, WEIGHT_DTYPES

if TYPE_CHECKING:  # annotations only: --help imports none of these
    from costmodel.config.bind import Binding, ServingPoint
    from costmodel.config.specs import Scenario

DEFAULT_RESULTS = Path("results")
MAX_INPUT_BYTES = 2**24  # 16 MiB: some 200,000 rows
MAX_CELL_CHARS = 4096  # a path's length at most (PATH_MAX on Linux)
MAX_DRAFT_TOKENS = 64  # draft tokens per step: speculative decoding proposes a handful
MAX_RATE = 1e9  # requests/s: far beyond what any replica carries (it answers unstable)
MAX_DRAFT_COST = 1e3  # one draft token's cost, as a share of a target decode step
MAX_REPLICAS = 1024  # prefill or decode replicas of a disaggregated deployment
# Where the command line's answers say they come from (ConfigError's file); relative model and
# hardware paths are read from its folder, the current one.
COMMAND_LINE = Path("<command line>")

# A question's inputs, in the order every output echoes them.
COLUMNS = (
    "model",
    "hardware",
    "engine",
    "tp",
    "weight_dtype",
    "kv_dtype",
    "ep",
    "attention_dp",
    "expert_dtype",
    "isl",
    "osl",
    "concurrency",
    "request_rate",
    "token_budget",
    "prefix_hit",
    "draft_tokens",
    "acceptance",
    "draft_cost",
    "prefill_replicas",
    "decode_replicas",
)
REQUIRED = ("model", "hardware", "tp", "weight_dtype", "kv_dtype", "isl", "osl")
LOOPS = ("concurrency", "request_rate")
OPTIONS = {column: "--" + column.replace("_", "-") for column in COLUMNS}
DEFAULTS: dict[str, Any] = {
    "engine": None,
    "ep": 1,
    "attention_dp": False,
    "expert_dtype": None,
    "concurrency": None,
    "request_rate": None,
    "token_budget": None,
    "prefix_hit": 0.0,
    "draft_tokens": 0,
    "acceptance": 0.0,
    "draft_cost": 0.0,
    "prefill_replicas": 0,
    "decode_replicas": 0,
}
# The scenario fields (costmodel.config.load.serving_scenario) each input becomes.
SCENARIO_FIELDS = {
    "model": "model",
    "hardware": "hardware",
    "engine": "engine",
    "n_gpus": "tp",
    "search.tp[0]": "tp",
    "search.weight_dtypes[0]": "weight_dtype",
    "search.kv_dtypes[0]": "kv_dtype",
}


def _name(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected a {what} name or path, got an empty one")
        return text

    return parse


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            known = ", ".join(repr(c) for c in choices)
            raise argparse.ArgumentTypeError(f"expected one of {known}, got {text!r}")
        return text

    return parse


def _flag(text: str) -> bool:
    """A yes/no cell: true/false or 1/0, in any case."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false (or 1 or 0), got {text!r}")
    return value


# How each input is read from text (the command line's and the CSV file's alike).
PARSERS: dict[str, Callable[[str], Any]] = {
    "model": _name("model"),
    "hardware": _name("hardware"),
    "engine": str,
    "tp": positive_int,
    "weight_dtype": str,
    "kv_dtype": str,
    "ep": positive_int,
    "attention_dp": _flag,
    "expert_dtype": _choice(WEIGHT_DTYPES),
    "isl": token_count("isl"),
    "osl": token_count("osl"),
    "concurrency": token_count("concurrency"),
    "request_rate": bounded_float(0, MAX_RATE, "request rate", low_open=True),
    "token_budget": token_count("token budget"),
    "prefix_hit": bounded_float(0, 1, "prefix hit", high_open=True),
    "draft_tokens": bounded_int(0, MAX_DRAFT_TOKENS, "draft tokens"),
    "acceptance": bounded_float(0, 1, "acceptance", high_open=True),
    "draft_cost": bounded_float(0, MAX_DRAFT_COST, "draft cost"),
    "prefill_replicas": bounded_int(0, MAX_REPLICAS, "prefill replicas"),
    "decode_replicas": bounded_int(0, MAX_REPLICAS, "decode replicas"),
}


class Inputs(NamedTuple):
    """One question's inputs, checked (fields in :data:`COLUMNS` order)."""

    model: str
    hardware: str
    engine: str | None
    tp: int
    weight_dtype: str
    kv_dtype: str
    ep: int
    attention_dp: bool
    expert_dtype: str | None
    isl: int
    osl: int
    concurrency: int | None
    request_rate: float | None
    token_budget: int | None
    prefix_hit: float
    draft_tokens: int
    acceptance: float
    draft_cost: float
    prefill_replicas: int
    decode_replicas: int

    @property
    def key(self) -> tuple:
        """What the question's binding depends on."""
        return self[:9]


class BadInput(Exception):
    """A bad input: its column and what is wrong (the caller names the option or the row)."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column
        self.message = message


def check_inputs(values: Mapping[str, Any], name: Mapping[str, str]) -> Inputs:
    """Inputs from parsed ``values`` (absent or None: the default), checked together: exactly
    one loop, speculative decoding's knobs only with draft tokens; ``name`` names the inputs
    in messages (the user's options or columns)."""
    given = {c: values.get(c) for c in COLUMNS}
    loops = [c for c in LOOPS if given[c] is not None]
    if not loops:
        raise BadInput(
            "concurrency",
            f"give {name['concurrency']} (a closed loop of that many clients) or "
            f"{name['request_rate']} (an open loop of that many requests/s)",
        )
    if len(loops) == 2:
        raise BadInput(
            "request_rate",
            f"give one of {name['concurrency']} and {name['request_rate']}, not both",
        )
    if bool(given["prefill_replicas"]) != bool(given["decode_replicas"]):
        raise BadInput(
            "decode_replicas",
            f"a disaggregated deployment needs both {name['prefill_replicas']} and "
            f"{name['decode_replicas']} above 0",
        )
    if not given["draft_tokens"]:
        for column in ("acceptance", "draft_cost"):
            if given[column]:
                raise BadInput(column, f"needs {name['draft_tokens']} above 0")
    return Inputs(**{c: DEFAULTS.get(c) if given[c] is None else given[c] for c in COLUMNS})


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked before anything heavy is imported: each option's value, one
    question (or a readable --input file alone)."""
    parser = Parser(
        prog="python -m experiments.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    question = parser.add_argument_group("one question")
    question.add_argument(
        "--model", type=PARSERS["model"], metavar="NAME_OR_PATH", help="catalogue name or path"
    )
    question.add_argument(
        "--hardware",
        type=PARSERS["hardware"],
        metavar="NAME_OR_PATH",
        help="catalogue name or path",
    )
    question.add_argument(
        "--engine", choices=ENGINES, help="time steps with this engine's measured kernels"
    )
    question.add_argument("--tp", type=PARSERS["tp"], metavar="N", help="tensor-parallel GPUs")
    question.add_argument("--weight-dtype", choices=WEIGHT_DTYPES)
    question.add_argument("--kv-dtype", choices=KV_DTYPES)
    question.add_argument(
        "--ep",
        type=PARSERS["ep"],
        metavar="N",
        help="Mixture-of-Experts models: expert-parallel GPUs, dividing --tp (default 1)",
    )
    question.add_argument(
        "--attention-dp",
        action="store_true",
        default=None,
        help="Mixture-of-Experts models: data-parallel attention, each GPU its own sequences "
        "(needs --ep equal to --tp)",
    )
    question.add_argument(
        "--expert-dtype",
        choices=WEIGHT_DTYPES,
        help="Mixture-of-Experts models: the routed experts' weight format "
        "(default: --weight-dtype)",
    )
    question.add_argument(
        "--isl", type=PARSERS["isl"], metavar="N", help=f"prompt tokens, 1..{MAX_TOKENS}"
    )
    question.add_argument(
        "--osl", type=PARSERS["osl"], metavar="N", help=f"output tokens, 1..{MAX_TOKENS}"
    )
    loop = question.add_mutually_exclusive_group()
    loop.add_argument(
        "--concurrency",
        type=PARSERS["concurrency"],
        metavar="N",
        help="closed loop: N clients, each sending its next request when one finishes",
    )
    loop.add_argument(
        "--request-rate",
        type=PARSERS["request_rate"],
        metavar="R",
        help="open loop: R requests/s arriving at random (Poisson)",
    )
    question.add_argument(
        "--token-budget",
        type=PARSERS["token_budget"],
        metavar="N",
        help="tokens one step may carry (default: the engine's)",
    )
    question.add_argument(
        "--prefix-hit",
        type=PARSERS["prefix_hit"],
        metavar="F",
        help="share of each prompt found in the prefix cache, in [0, 1) (default 0)",
    )
    question.add_argument(
        "--draft-tokens",
        type=PARSERS["draft_tokens"],
        metavar="K",
        help=f"speculative decoding: draft tokens per step, 0..{MAX_DRAFT_TOKENS} (default 0)",
    )
    question.add_argument(
        "--acceptance",
        type=PARSERS["acceptance"],
        metavar="A",
        help="probability each draft token is accepted, in [0, 1) (default 0)",
    )
    question.add_argument(
        "--draft-cost",
        type=PARSERS["draft_cost"],
        metavar="F",
        help="one draft token's cost as a share of a target decode step (default 0)",
    )
    question.add_argument(
        "--prefill-replicas",
        type=PARSERS["prefill_replicas"],
        metavar="X",
        help="disaggregated serving: replicas of tp GPUs that only prefill (default 0: aggregated)",
    )
    question.add_argument(
        "--decode-replicas",
        type=PARSERS["decode_replicas"],
        metavar="Y",
        help="disaggregated serving: replicas of tp GPUs that only decode",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (--input always does)"
    )
    parser.add_argument("--no-cache", action="store_true", help="no compilation cache on disk")
    parser.add_argument(
        "--input",
        metavar="FILE.csv",
        help="answer every row of a CSV file, one JSON line each (no question options)",
    )
    args = parser.parse_args(argv)
    try:
        given = [OPTIONS[c] for c in COLUMNS if getattr(args, c) is not None]
        if args.input is not None:
            if given:
                raise OptionError("--input", f"answers the file's rows; drop {', '.join(given)}")
            args.input = input_file("--input", args.input, max_bytes=MAX_INPUT_BYTES)
        else:
            missing = [OPTIONS[c] for c in REQUIRED if getattr(args, c) is None]
            if missing:
                raise OptionError(
                    missing[0],
                    f"required (missing: {', '.join(missing)}); or answer a file with --input",
                )
            try:
                args.question = check_inputs(vars(args), OPTIONS)
            except BadInput as err:
                raise OptionError(OPTIONS[err.column], err.message) from None
    except OptionError as err:
        parser.error(str(err))
    return args


# --------------------------------------------------------------------------- CSV file


def _file_error(path: Path, where: str, column: str, message: str) -> Exception:
    from costmodel.config.specs import ConfigError

    return ConfigError(path, f"{where}: {column}", message)


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The non-blank data rows of the CSV file ``path``: (row number, column -> text), row 1
    the line after the header (blank lines count).  A ConfigError for a file that is empty,
    not UTF-8 or not CSV, a header with an unknown, repeated or missing column, or a row with
    more cells than the header has columns."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise OptionError("--input", f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        row = raw[: err.start].count(b"\n")
        where = f"row {row}" if row else "header"
        raise _file_error(path, where, "encoding", "not UTF-8 text: a binary file?") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0  # lines read so far; a record's row is its first line's number - 1
    try:
        header = [name.strip() for name in next(reader, [])]
        _check_header(path, header)
        rows = []
        end = reader.line_num
        for cells in reader:
            row, end = end, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise _file_error(
                    path,
                    f"row {row}",
                    "columns",
                    f"{len(cells)} cells, the header names {len(header)} columns",
                )
            padded = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
            rows.append((row, dict(zip(header, padded, strict=True))))
    except csv.Error as err:
        raise _file_error(path, f"row {end}" if end else "header", "csv", str(err)) from None
    return rows


def _check_header(path: Path, header: Sequence[str]) -> None:
    if not any(header):
        raise _file_error(
            path, "header", "columns", "the file is empty; expected a header line of columns"
        )
    for i, name in enumerate(header):
        if not name:
            raise _file_error(path, "header", f"column {i + 1}", "empty column name")
        if name in header[:i]:
            raise _file_error(path, "header", name, "repeated column name")
        if name not in COLUMNS:
            known = ", ".join(COLUMNS)
            raise _file_error(path, "header", name, f"unknown column (known: {known})")
    for name in REQUIRED:
        if name not in header:
            raise _file_error(path, "header", name, "missing column")
    if not any(name in header for name in LOOPS):
        raise _file_error(
            path, "header", "concurrency", "missing column: give concurrency or request_rate"
        )


def row_inputs(path: Path, row: int, cells: Mapping[str, str]) -> Inputs:
    """One row's inputs, each cell read as its option's value is; a ConfigError naming the
    row and the column of the first bad cell."""
    values: dict[str, Any] = {}
    for column, text in cells.items():
        if len(text) > MAX_CELL_CHARS:
            raise _file_error(
                path, f"row {row}", column, f"{len(text):,} characters; at most {MAX_CELL_CHARS:,}"
            )
        if not text:
            if column in REQUIRED:
                raise _file_error(path, f"row {row}", column, "empty")
            continue
        try:
            values[column] = PARSERS[column](text)
        except argparse.ArgumentTypeError as err:
            raise _file_error(path, f"row {row}", column, str(err)) from None
    try:
        return check_inputs(values, {c: c for c in COLUMNS})
    except BadInput as err:
        raise _file_error(path, f"row {row}", err.column, err.message) from None


# --------------------------------------------------------------------------- answering


class Bindings:
    """Each distinct (model, hardware, engine, tp, dtypes, experts' placement) bound once:
    scenario, then binding (the slow parts of a question; rows asking alike share them)."""

    def __init__(self) -> None:
        self._bound: dict[tuple, Binding] = {}

    def get(self, inputs: Inputs, source: Path, fields: Mapping[str, str]) -> Binding:
        """The binding of ``inputs``; a ConfigError naming ``source`` and, for what was given,
        ``fields[column]`` (a column the inputs name)."""
        from costmodel.config.bind import Setting, UncalibratedError, bind
        from costmodel.config.load import serving_scenario
        from costmodel.config.specs import ConfigError

        key = inputs.key
        if key not in self._bound:
            # int4 groups must divide the widths they run along: blame the int4 format.
            group = "kv_dtype" if inputs.weight_dtype != "int4" else "weight_dtype"
            scenario = serving_scenario(
                inputs.model,
                inputs.hardware,
                engine=inputs.engine,
                tp=inputs.tp,
                weight_dtype=inputs.weight_dtype,
                kv_dtype=inputs.kv_dtype,
                source=source,
                fields={
                    k: fields[c] for k, c in {**SCENARIO_FIELDS, "search.group_size": group}.items()
                },
            )
            _check_experts(inputs, scenario, source, fields)
            setting = Setting(
                inputs.tp,
                inputs.weight_dtype,
                inputs.kv_dtype,
                ep=inputs.ep,
                attention_dp=inputs.attention_dp,
                expert_dtype=inputs.expert_dtype,
            )
            try:
                self._bound[key] = bind(scenario, setting)
            except UncalibratedError as err:
                raise ConfigError(source, fields["engine"], str(err)) from None
        return self._bound[key]


def _check_experts(
    inputs: Inputs, scenario: Scenario, source: Path, fields: Mapping[str, str]
) -> None:
    """ep, attention_dp and expert_dtype (as :func:`experiments._cli.check_experts`: only for
    a model with experts, ep dividing tp, data-parallel attention at ep = tp), and int4 routed
    experts' groups dividing the widths they run along; a ConfigError naming the input."""
    from costmodel.config.specs import ConfigError

    model = scenario.model
    try:
        check_experts(
            argparse.Namespace(
                tp=inputs.tp,
                ep=inputs.ep,
                attention_dp=inputs.attention_dp,
                expert_dtype=inputs.expert_dtype,
            ),
            experts=model.moe is not None,
        )
    except OptionError as err:
        column = err.option.removeprefix("--").replace("-", "_")
        raise ConfigError(source, fields[column], err.message) from None
    if inputs.expert_dtype == "int4" and model.moe is not None:
        group = scenario.search.group_size
        widths = {"d_model": model.d_model, "moe.expert_ffn_dim": model.moe.expert_ffn_dim}
        for name, width in widths.items():
            if width % group:
                raise ConfigError(
                    source,
                    fields["expert_dtype"],
                    f"int4 groups of {group} do not divide the model's {name} ({width}), "
                    "along which the routed experts' groups run",
                )


def resolved(inputs: Inputs, binding: Binding) -> Inputs:
    """``inputs`` as answered: the routed experts' format in effect for a model with experts
    (``expert_dtype`` or, not given, the weight dtype), None for one without."""
    moe = binding.scenario.model.moe is not None
    return inputs._replace(expert_dtype=binding.setting.experts if moe else None)


def serving_point(inputs: Inputs) -> ServingPoint:
    """How the question drives the replica."""
    from costmodel.config.bind import ServingPoint

    return ServingPoint(
        isl=inputs.isl,
        osl=inputs.osl,
        concurrency=inputs.concurrency,
        request_rate=inputs.request_rate,
        token_budget=inputs.token_budget,
        prefix_hit=inputs.prefix_hit,
        draft_tokens=inputs.draft_tokens,
        acceptance=inputs.acceptance,
        draft_cost=inputs.draft_cost,
        prefill_replicas=inputs.prefill_replicas,
        decode_replicas=inputs.decode_replicas,
    )


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def record(inputs: Inputs, answer: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs echoed, then every answer (an infinite time or rate as None)."""
    return inputs._asdict() | {k: _finite(v) for k, v in answer.items()}


def json_line(data: Mapping[str, Any]) -> str:
    """One record as one line of JSON."""
    return json.dumps(data, allow_nan=False) + "\n"


def answers(questions: Sequence[tuple[Inputs, Binding]]) -> list[dict[str, Any]]:
    """Every question's record, in order: one prediction call for all."""
    from costmodel.search.predict import Question, predict

    found = predict([Question(binding, serving_point(q)) for q, binding in questions])
    return [record(q, a) for (q, _), a in zip(questions, found, strict=True)]


def _number(value: float | None, unit: str, digits: int = 4) -> str:
    if value is None:
        return "none (no steady state)"
    return f"{value:,.{digits}g} {unit}".rstrip()


def _unstable(data: Mapping[str, Any]) -> str:
    if not data["max_concurrency_fits"]:
        return "one request's KV cache does not fit in the replica's memory"
    return "the replica cannot carry this request rate"


def report_lines(data: Mapping[str, Any]) -> list[str]:
    """The human-readable form of one record: the question, then each answer with its unit."""
    engine = f"served by {data['engine']}" if data["engine"] else "no engine"
    if data["concurrency"] is not None:
        loop = f"closed loop of {data['concurrency']:,} concurrent requests"
    else:
        loop = f"open loop of {data['request_rate']:g} requests/s"
    budget = data["token_budget"]
    knobs = [
        f"token budget {budget:,}" if budget is not None else "default token budget",
        f"prefix hit {data['prefix_hit']:g}",
    ]
    if data["draft_tokens"]:
        knobs.append(
            f"{data['draft_tokens']} draft tokens per step (acceptance {data['acceptance']:g}, "
            f"cost {data['draft_cost']:g} of a decode step)"
        )
    if data["prefill_replicas"]:
        knobs.append(
            f"disaggregated: {data['prefill_replicas']} prefill + {data['decode_replicas']} "
            f"decode replicas ({data['gpus']} GPUs)"
        )
    experts = ""
    if data["expert_dtype"] is not None:
        attention = "data-parallel" if data["attention_dp"] else "tensor-parallel"
        experts = (
            f"; routed experts {data['expert_dtype']} over ep {data['ep']}, {attention} attention"
        )
    fits = data["max_concurrency_fits"]
    rows = [
        ("TTFT", _number(data["ttft_ms"], "ms")),
        ("TPOT", _number(data["tpot_ms"], "ms")),
        ("request latency", _number(data["request_latency_s"], "s")),
        ("output throughput", _number(data["output_tok_s"], "tok/s")),
        ("output per GPU", _number(data["output_tok_s_per_gpu"], "tok/s")),
        ("request throughput", _number(data["request_throughput_rps"], "requests/s")),
        (
            "KV cache capacity",
            f"{data['kv_capacity_tokens']:,} tokens ({fits:,} requests of "
            f"{data['isl'] + data['osl']:,} tokens fit at once)",
        ),
        ("decode batch", _number(data["decode_batch"], "sequences (mean, steady state)")),
        (
            "prefill load",
            _number(data["prefill_load"], "(share of the step budget left to prefill)"),
        ),
        ("stable", "yes" if data["stable"] else f"no: {_unstable(data)}"),
    ]
    width = max(len(label) for label, _ in rows)
    return [
        f"{data['model']} on {data['tp']}x {data['hardware']}, {engine}; weights "
        f"{data['weight_dtype']}, KV cache {data['kv_dtype']}{experts}",
        f"prompts of {data['isl']:,} tokens, {data['osl']:,} output tokens; {loop}; "
        + ", ".join(knobs),
        f"time model: {data['time_model']}",
        "",
        *(f"{label:<{width}}  {text}" for label, text in rows),
    ]


def question_binding(inputs: Inputs) -> tuple[Inputs, Binding]:
    """The command line's question, bound; a bad value is an OptionError naming its option."""
    from costmodel.config.specs import ConfigError

    try:
        binding = Bindings().get(inputs, COMMAND_LINE, OPTIONS)
    except ConfigError as err:
        if err.path != str(COMMAND_LINE):
            raise
        raise OptionError(err.field, err.message) from None
    return resolved(inputs, binding), binding


def file_bindings(path: Path) -> list[tuple[Inputs, Binding]]:
    """Every row of the CSV file ``path``, checked and bound, in file order; a bad row is a
    ConfigError naming the file, the row and the column."""
    from costmodel.config.specs import ConfigError

    bindings = Bindings()
    questions = []
    for row, cells in read_rows(path):
        inputs = row_inputs(path, row, cells)
        try:
            binding = bindings.get(inputs, path, {c: c for c in COLUMNS})
        except ConfigError as err:
            if err.path != str(path):
                raise
            raise _file_error(path, f"row {row}", err.field, err.message) from None
        questions.append((resolved(inputs, binding), binding))
    return questions


def _cache_root(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_RESULTS / ".jax_cache")


def answer(args: argparse.Namespace) -> int:
    """Answer a parsed command line (exit status): check and bind every question, predict them
    together, print."""
    from costmodel import runtime

    if args.input is not None:
        questions = file_bindings(args.input)
    else:
        questions = [question_binding(args.question)]
    with runtime.compilation_cache(_cache_root(args)):
        found = answers(questions) if questions else []
    if args.input is None and not args.json:
        print("\n".join(report_lines(found[0])))
    else:
        sys.stdout.write("".join(json_line(data) for data in found))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
