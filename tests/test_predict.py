"""python -m experiments.predict: serving questions from the command line or a CSV file.

The fast tests run the command in-process on bad input (every check happens before anything is
compiled) and test its pieces; the slow ones run it as a subprocess and hold its answers to
invariants (flags and --input agree byte for byte, rows come back in order echoing their
inputs, per-GPU throughput times tp is the total, an open loop carries its rate), never to
numbers worked out again here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from costmodel.config.load import load_scenario, serving_scenario
from costmodel.config.specs import ConfigError
from costmodel.model import dtypes
from costmodel.search.predict import capacity
from experiments import predict
from experiments._cli import EXIT_BAD_INPUT, run
from tests.helpers import ROOT

CHILD_TIMEOUT_S = 300  # compiling a structure takes seconds; the machine may be shared
# The Must-show question, as flags and as a CSV row.
QUESTION = {
    "model": "llama-3-70b",
    "hardware": "h100-sxm",
    "engine": "vllm",
    "tp": "4",
    "weight_dtype": "fp8",
    "kv_dtype": "bf16",
    "isl": "1024",
    "osl": "256",
    "concurrency": "64",
}
FLAGS = [text for column, value in QUESTION.items() for text in (predict.OPTIONS[column], value)]
# A Mixture-of-Experts question (no engine: the engine kernel model refuses experts).
MOE_QUESTION = {
    "model": "deepseek-v3",
    "hardware": "h200",
    "engine": "",
    "tp": "8",
    "weight_dtype": "fp8",
    "kv_dtype": "fp8",
    "isl": "2048",
    "osl": "512",
    "concurrency": "256",
}
MOE_FLAGS = [
    text
    for column, value in MOE_QUESTION.items()
    if value
    for text in (predict.OPTIONS[column], value)
]
EXPERT_COLUMNS = ("ep", "attention_dp", "expert_dtype")
INPUT_KEYS = (
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
ANSWER_KEYS = (
    "ttft_ms",
    "tpot_ms",
    "request_latency_s",
    "output_tok_s",
    "output_tok_s_per_gpu",
    "request_throughput_rps",
    "kv_capacity_tokens",
    "max_concurrency_fits",
    "decode_batch",
    "prefill_load",
    "gpus",
    "stable",
    "time_model",
)
MUST_SHOW = (
    "ttft_ms",
    "tpot_ms",
    "request_latency_s",
    "output_tok_s",
    "output_tok_s_per_gpu",
    "kv_capacity_tokens",
    "max_concurrency_fits",
    "time_model",
)
HEADER = ",".join(QUESTION) + ",request_rate"
GOOD_ROW = ",".join(QUESTION.values()) + ","


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command run in-process."""
    with pytest.raises(SystemExit) as exit_info:
        run(predict.answer, list(args), parse=predict.parse_args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def bad(capsys, where: str, *args: str) -> str:
    """Run the command on bad input: exit 2, nothing on stdout, one line on stderr starting
    ``error: {where}: ``; returns that line."""
    status, out, err = cli(capsys, *args)
    assert status == EXIT_BAD_INPUT, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {where}: "), err
    return lines[0]


def with_flag(option: str, value: str | None) -> list[str]:
    """The Must-show flags with ``option`` set to ``value`` (None: dropped), or added."""
    args = list(FLAGS)
    if option in args:
        i = args.index(option)
        del args[i : i + 2]
    return args if value is None else [*args, option, value]


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# --------------------------------------------------------------------------- flags: bad input


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--model", "no-such-model", "unknown model"),
        ("--model", "missing/config.json", "no such file"),
        ("--model", "", "empty"),
        ("--hardware", "no-such-gpu", "unknown hardware"),
        ("--engine", "tgi", "invalid choice"),
        ("--engine", "vllm", None),  # on mi300x below: no calibration
        ("--tp", "3", "does not divide the 64 query heads"),
        ("--tp", "0", "positive integer"),
        ("--tp", "many", "positive integer"),
        ("--weight-dtype", "fp9", "invalid choice"),
        ("--weight-dtype", "int4", "no measured gemm kernels"),
        ("--kv-dtype", "int8", "no measured context attention kernels"),
        ("--isl", "0", "between 1 and"),
        ("--osl", "-5", "between 1 and"),
        ("--osl", "1.5", "expected an integer"),
        ("--concurrency", "0", "between 1 and"),
        ("--token-budget", "0", "between 1 and"),
        ("--prefix-hit", "1", "[0, 1)"),
        ("--prefix-hit", "-0.1", "[0, 1)"),
        ("--prefix-hit", "nan", "finite"),
        ("--draft-tokens", "-1", "between 0 and"),
        ("--acceptance", "1", "[0, 1)"),
        ("--acceptance", "0.5", "needs --draft-tokens above 0"),
        ("--draft-cost", "0.1", "needs --draft-tokens above 0"),
        ("--draft-cost", "-1", "[0, 1000]"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(capsys, option, value, says):
    args = with_flag(option, value)
    if says is None:
        args = with_flag("--hardware", "mi300x")
        says = "no calibration of vllm on mi300x"
    line = bad(capsys, option, *args)
    assert says in line


def test_an_engine_without_a_fit_for_the_dtype_names_the_dtype(capsys):
    line = bad(capsys, "--weight-dtype", *with_flag("--hardware", "a100-sxm-80gb"))
    assert "fp8 has no measured gemm kernels for vllm on a100-sxm-80gb" in line


def test_an_engine_without_the_mla_blocks_format_names_the_weight_dtype(capsys):
    line = bad(capsys, "--weight-dtype", *with_flag("--model", "deepseek-v3-mla"))
    assert "fp8 has no measured mla generation module kernels" in line


def test_exactly_one_loop(capsys):
    both = [*FLAGS, "--request-rate", "3"]
    assert "not allowed with" in bad(capsys, "--request-rate", *both)
    neither = with_flag("--concurrency", None)
    assert "--request-rate" in bad(capsys, "--concurrency", *neither)
    assert "request rate must lie in (0" in bad(
        capsys, "--request-rate", *neither, "--request-rate", "0"
    )


def test_missing_options_and_input_with_options(capsys, tmp_path):
    line = bad(capsys, "--tp", *with_flag("--tp", None))
    assert "required" in line and "--input" in line
    csv_path = write_csv(tmp_path / "q.csv", HEADER, GOOD_ROW)
    line = bad(capsys, "--input", "--input", str(csv_path), "--tp", "4")
    assert "drop --tp" in line


def test_errors_inside_a_referenced_file_name_that_file(capsys, tmp_path):
    published = ROOT / "tests" / "data" / "hf" / "mixtral-8x7b" / "config.json"
    path = tmp_path / "config.json"
    path.write_text(
        published.read_text().replace('"num_experts_per_tok": 2', '"num_experts_per_tok": 8')
    )
    line = bad(capsys, str(path), *with_flag("--model", str(path)))
    assert "num_experts_per_tok" in line


@pytest.mark.parametrize(
    ("option", "extra"),
    [
        ("--ep", ["--ep", "2"]),
        ("--attention-dp", ["--attention-dp"]),
        ("--expert-dtype", ["--expert-dtype", "fp8"]),
    ],
)
def test_expert_options_need_a_model_with_experts(capsys, option, extra):
    line = bad(capsys, option, *FLAGS, *extra)
    assert line.endswith("the model has no experts")


@pytest.mark.parametrize(
    ("option", "extra", "says"),
    [
        ("--ep", ["--ep", "3"], "ep 3 does not divide tp 8"),
        ("--ep", ["--ep", "16"], "ep 16 does not divide tp 8"),
        ("--ep", ["--ep", "0"], "positive integer"),
        ("--attention-dp", ["--attention-dp"], "needs ep equal to tp (ep 1, tp 8)"),
        ("--attention-dp", ["--ep", "4", "--attention-dp"], "needs ep equal to tp (ep 4, tp 8)"),
        ("--expert-dtype", ["--expert-dtype", "fp9"], "invalid choice"),
        ("--engine", ["--engine", "vllm", "--expert-dtype", "nvfp4"], "no moe fit for nvfp4"),
    ],
)
def test_bad_expert_options_are_one_line_naming_the_option(capsys, option, extra, says):
    model = "qwen3-30b-a3b" if option == "--engine" else "deepseek-v3"
    args = [*MOE_FLAGS, *extra]
    args[args.index("--model") + 1] = model
    assert says in bad(capsys, option, *args)


def test_int4_experts_need_groups_dividing_the_experts_widths(capsys):
    args = [*MOE_FLAGS, "--expert-dtype", "int4"]
    args[args.index("--model") + 1] = "gpt-oss-120b"
    line = bad(capsys, "--expert-dtype", *args)
    assert "int4 groups of 128 do not divide the model's d_model (2880)" in line


def test_weight_formats_are_the_models(capsys):
    assert predict.WEIGHT_DTYPES == dtypes.WEIGHT_DTYPES
    assert predict.KV_DTYPES == dtypes.KV_DTYPES
    assert "invalid choice" in bad(capsys, "--weight-dtype", *with_flag("--weight-dtype", "fp4"))


def test_help_imports_nothing_heavy():
    """``--help`` answers before anything heavy (SymPy, JAX, pydantic, ...) is imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "experiments.predict", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--ep N", "--attention-dp", "--expert-dtype", "mxfp4", "attention_dp"):
        assert option in proc.stdout, option
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    heavy_packages = {"jax", "jaxlib", "sympy", "matplotlib", "scipy", "pydantic", "numpy"}
    assert {name for name in imported if name.split(".")[0] in heavy_packages} == set()


# --------------------------------------------------------------------------- CSV: bad input


EXPERTS_HEADER = HEADER + "," + ",".join(EXPERT_COLUMNS)


def _rows(*overrides: dict[str, str], header: str = HEADER) -> list[str]:
    columns = header.split(",")
    lines = [header]
    for override in overrides:
        cells = dict.fromkeys(columns, "") | QUESTION | override
        lines.append(",".join(cells[c] for c in columns))
    return lines


@pytest.mark.parametrize(
    ("lines", "where", "says"),
    [
        ([], "header: columns", "empty"),
        (["model,hardware,tp,weight_dtype,isl,osl,concurrency"], "header: kv_dtype", "missing"),
        ([",".join(QUESTION)[: -len(",concurrency")]], "header: concurrency", "request_rate"),
        ([HEADER + ",colour"], "header: colour", "unknown column"),
        ([HEADER + ",model"], "header: model", "repeated"),
        ([HEADER, GOOD_ROW + ",extra"], "row 1: columns", "11 cells"),
        (_rows({}, {"isl": "10x24"}), "row 2: isl", "expected an integer"),
        (_rows({"tp": "0"}), "row 1: tp", "positive integer"),
        (_rows({"osl": "0"}), "row 1: osl", "between 1 and"),
        (_rows({"concurrency": "-3"}), "row 1: concurrency", "between 1 and"),
        (_rows({"request_rate": "3"}), "row 1: request_rate", "not both"),
        (_rows({"concurrency": ""}), "row 1: concurrency", "request_rate"),
        (_rows({"model": ""}), "row 1: model", "empty"),
        (_rows({"model": "nope"}), "row 1: model", "unknown model"),
        (_rows({"model": "models/x.yaml"}), "row 1: model", "no such file"),
        (_rows({"hardware": "nope"}), "row 1: hardware", "unknown hardware"),
        (_rows({"engine": "tgi"}), "row 1: engine", "'vllm', 'trtllm' or 'sglang'"),
        (_rows({"hardware": "mi300x"}), "row 1: engine", "no calibration of vllm on mi300x"),
        (_rows({"hardware": "a100-sxm-80gb"}), "row 1: weight_dtype", "no measured gemm"),
        (_rows({"kv_dtype": "int8"}), "row 1: kv_dtype", "no measured context attention"),
        (_rows({"weight_dtype": "fp9"}), "row 1: weight_dtype", "'bf16'"),
        (_rows({"tp": "3"}), "row 1: tp", "does not divide"),
        (_rows({"tp": "100000"}), "row 1: tp", "65536"),
        (
            _rows({"prefix_hit": "1.0"}, header=HEADER + ",prefix_hit"),
            "row 1: prefix_hit",
            "[0, 1)",
        ),
        (
            _rows(
                {"acceptance": "-0.1", "draft_tokens": "2"},
                header=HEADER + ",acceptance,draft_tokens",
            ),
            "row 1: acceptance",
            "[0, 1)",
        ),
        (_rows({"tp": "9" * 5000}), "row 1: tp", "at most 4,096"),
        (_rows({"ep": "2"}, header=EXPERTS_HEADER), "row 1: ep", "the model has no experts"),
        (_rows({"ep": "two"}, header=EXPERTS_HEADER), "row 1: ep", "positive integer"),
        (
            _rows({"attention_dp": "True"}, header=EXPERTS_HEADER),
            "row 1: attention_dp",
            "the model has no experts",
        ),
        (
            _rows({"attention_dp": "yes"}, header=EXPERTS_HEADER),
            "row 1: attention_dp",
            "expected true or false (or 1 or 0), got 'yes'",
        ),
        (
            _rows({"expert_dtype": "fp8"}, header=EXPERTS_HEADER),
            "row 1: expert_dtype",
            "the model has no experts",
        ),
        (
            _rows({"expert_dtype": "fp9"}, header=EXPERTS_HEADER),
            "row 1: expert_dtype",
            "expected one of 'bf16', 'fp16', 'fp8', 'int8', 'int4', 'fp8_block', 'nvfp4'",
        ),
        (
            _rows(MOE_QUESTION, MOE_QUESTION | {"ep": "3"}, header=EXPERTS_HEADER),
            "row 2: ep",
            "ep 3 does not divide tp 8",
        ),
        (
            _rows(MOE_QUESTION | {"ep": "4", "attention_dp": "1"}, header=EXPERTS_HEADER),
            "row 1: attention_dp",
            "needs ep equal to tp (ep 4, tp 8)",
        ),
        (
            _rows(
                MOE_QUESTION | {"model": "gpt-oss-120b", "expert_dtype": "int4"},
                header=EXPERTS_HEADER,
            ),
            "row 1: expert_dtype",
            "int4 groups of 128",
        ),
    ],
)
def test_bad_rows_are_one_line_naming_row_and_column(capsys, tmp_path, lines, where, says):
    path = write_csv(tmp_path / "q.csv", *lines)
    line = bad(capsys, f"{path}: {where}", "--input", str(path))
    assert says in line


def test_rows_count_from_the_line_after_the_header_blank_lines_included(capsys, tmp_path):
    path = write_csv(tmp_path / "q.csv", HEADER, GOOD_ROW, "", GOOD_ROW, "nope" + GOOD_ROW[11:])
    bad(capsys, f"{path}: row 4: model", "--input", str(path))


def test_a_bad_row_after_good_ones_prints_nothing(capsys, tmp_path):
    path = write_csv(tmp_path / "q.csv", *_rows({}, {}, {"hardware": "mi300x"}))
    bad(capsys, f"{path}: row 3: engine", "--input", str(path))


def test_input_files_missing_not_regular_not_text_or_too_large(capsys, tmp_path, monkeypatch):
    assert "no such file" in bad(capsys, "--input", "--input", str(tmp_path / "none.csv"))
    assert "not a regular file" in bad(capsys, "--input", "--input", str(tmp_path))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00model")
    bad(capsys, f"{binary}: header: encoding", "--input", str(binary))
    path = write_csv(tmp_path / "q.csv", HEADER, GOOD_ROW)
    monkeypatch.setattr(predict, "MAX_INPUT_BYTES", 10)
    assert "larger than an input file may be" in bad(capsys, "--input", "--input", str(path))


def test_a_header_alone_answers_nothing(capsys, tmp_path):
    path = write_csv(tmp_path / "q.csv", HEADER)
    assert cli(capsys, "--input", str(path), "--no-cache") == (0, "", "")


# --------------------------------------------------------------------------- pieces


def must_show_inputs() -> predict.Inputs:
    parsed = {column: predict.PARSERS[column](text) for column, text in QUESTION.items()}
    return predict.check_inputs(parsed, predict.OPTIONS)


def test_records_write_infinite_values_as_null():
    inputs = must_show_inputs()
    answer = dict.fromkeys(ANSWER_KEYS, math.inf) | {"stable": False, "time_model": "x"}
    line = predict.json_line(predict.record(inputs, answer))
    assert line.endswith("\n") and line.count("\n") == 1
    data = json.loads(line)
    assert predict.COLUMNS == INPUT_KEYS
    assert list(data) == [*INPUT_KEYS, *ANSWER_KEYS]
    assert (data["ep"], data["attention_dp"], data["expert_dtype"]) == (1, False, None)
    assert data["ttft_ms"] is None and data["stable"] is False
    assert "Infinity" not in line and "NaN" not in line


def test_report_gives_every_answer_with_its_unit():
    inputs = must_show_inputs()
    answer = dict.fromkeys(ANSWER_KEYS, 1.5) | {
        "kv_capacity_tokens": 1000,
        "max_concurrency_fits": 2,
        "stable": True,
        "time_model": "pure roofline",
    }
    text = "\n".join(predict.report_lines(predict.record(inputs, answer)))
    for unit in ("ms", " s", "tok/s", "requests/s", "tokens", "sequences"):
        assert unit in text
    assert "time model: pure roofline" in text


def _answer(**values) -> dict:
    return (
        dict.fromkeys(ANSWER_KEYS, 1.5)
        | {
            "kv_capacity_tokens": 1000,
            "max_concurrency_fits": 2,
            "stable": True,
            "time_model": "pure roofline",
        }
        | values
    )


def test_report_names_the_experts_placement_of_a_model_with_experts():
    parsed = {c: predict.PARSERS[c](t) for c, t in MOE_QUESTION.items() if t}
    inputs = predict.check_inputs(parsed | {"ep": 8, "attention_dp": True}, predict.OPTIONS)
    data = predict.record(inputs._replace(expert_dtype="fp8"), _answer())
    first = predict.report_lines(data)[0]
    assert first == (
        "deepseek-v3 on 8x h200, no engine; weights fp8, KV cache fp8; routed experts fp8 over "
        "ep 8, data-parallel attention"
    )
    data = predict.record(
        inputs._replace(ep=2, attention_dp=False, expert_dtype="nvfp4"), _answer()
    )
    assert predict.report_lines(data)[0].endswith(
        "; routed experts nvfp4 over ep 2, tensor-parallel attention"
    )
    dense = predict.report_lines(predict.record(must_show_inputs(), _answer()))[0]
    assert "experts" not in dense and "ep " not in dense


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("true", True), ("TRUE", True), ("True", True), ("1", True)],
        *[("false", False), ("False", False), ("FALSE", False), ("0", False)],
    ],
)
def test_attention_dp_cells_are_true_or_false_in_any_case(text, value):
    assert predict.PARSERS["attention_dp"](text) is value


def test_empty_expert_cells_are_the_defaults(tmp_path):
    cells = dict(MOE_QUESTION) | dict.fromkeys(EXPERT_COLUMNS, "")
    inputs = predict.row_inputs(tmp_path / "q.csv", 1, cells)
    assert (inputs.ep, inputs.attention_dp, inputs.expert_dtype) == (1, False, None)
    cells |= {"ep": "8", "attention_dp": "True", "expert_dtype": "nvfp4"}
    inputs = predict.row_inputs(tmp_path / "q.csv", 1, cells)
    assert (inputs.ep, inputs.attention_dp, inputs.expert_dtype) == (8, True, "nvfp4")


def _bound(question: dict[str, str], **extra: str | bool):
    """The command line's ``question`` with ``extra`` options (True: a flag), checked and
    bound: (the inputs as answered, the binding)."""
    args = [text for c, v in question.items() if v for text in (predict.OPTIONS[c], v)]
    for column, value in extra.items():
        args += [predict.OPTIONS[column]] + ([] if value is True else [value])
    return predict.question_binding(predict.parse_args(args).question)


def test_data_parallel_attention_holds_more_latent_kv_cache():
    """Tensor parallelism replicates DeepSeek-V3's latent KV cache on every GPU; data-parallel
    attention gives each GPU its own sequences, so the replica holds several times more."""
    tp_attention, tp_binding = _bound(MOE_QUESTION, ep="8")
    dp_attention, dp_binding = _bound(MOE_QUESTION, ep="8", attention_dp=True)
    point = predict.serving_point(tp_attention)
    tp_tokens, tp_fits = capacity(tp_binding, point)
    dp_tokens, dp_fits = capacity(dp_binding, point)
    assert dp_tokens > 4 * tp_tokens > 0 and dp_fits > 4 * tp_fits > 0
    assert dp_binding.setting.attention_dp and not tp_binding.setting.attention_dp
    # The answered inputs carry the experts' format in effect: the weight dtype when not given.
    assert (dp_attention.ep, dp_attention.attention_dp, dp_attention.expert_dtype) == (
        8,
        True,
        "fp8",
    )


def test_the_expert_format_in_effect_is_answered():
    gpt_oss = MOE_QUESTION | {"model": "gpt-oss-120b", "hardware": "h100-sxm", "tp": "1"}
    gpt_oss |= {"weight_dtype": "bf16"}
    inputs, binding = _bound(gpt_oss, expert_dtype="mxfp4")
    assert inputs.expert_dtype == binding.setting.experts == "mxfp4"
    assert binding.setting.weight_dtype == "bf16"
    assert _bound(QUESTION)[0].expert_dtype is None  # no experts: null
    bf16_experts = capacity(_bound(gpt_oss)[1], predict.serving_point(inputs))[0]
    assert capacity(binding, predict.serving_point(inputs))[0] > bf16_experts


def test_every_column_has_an_option_and_a_parser():
    assert set(predict.PARSERS) == set(predict.COLUMNS) == set(predict.Inputs._fields)
    assert tuple(predict.Inputs._fields) == predict.COLUMNS
    assert set(predict.SCENARIO_FIELDS.values()) <= set(predict.COLUMNS)


# --------------------------------------------------------------------------- serving_scenario

FIELDS = {"model": "M", "hardware": "H", "engine": "E", "n_gpus": "T", "search.tp[0]": "T"}
FIELDS |= {"search.weight_dtypes[0]": "W", "search.kv_dtypes[0]": "K"}


def _serving(source: Path, **overrides):
    kwargs = {
        "engine": "vllm",
        "tp": 4,
        "weight_dtype": "fp8",
        "kv_dtype": "bf16",
        "source": source,
        "fields": FIELDS,
    } | overrides
    model = kwargs.pop("model", "llama-3-70b")
    hardware = kwargs.pop("hardware", "h100-sxm")
    return serving_scenario(model, hardware, **kwargs)


def test_serving_scenario_is_the_yaml_scenario(tmp_path):
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text(
        "name: llama-3-70b on h100-sxm\nmodel: llama-3-70b\nhardware: h100-sxm\nn_gpus: 4\n"
        "engine: vllm\nworkload: {prompt_tokens: 1, output_tokens: 1}\n"
        "slo: {tpot_ms: 1000000000.0, ttft_ms: 1000000000.0}\n"
        "search: {tp: [4], weight_dtypes: [fp8], kv_dtypes: [bf16]}\n"
        "serving: {mode: continuous}\n"
    )
    assert _serving(tmp_path / "any.csv") == load_scenario(yaml_path)
    assert _serving(tmp_path / "any.csv", engine=None).kernels is None


def test_serving_scenario_reads_relative_paths_from_the_source_folder(tmp_path):
    model = ROOT / "costmodel" / "catalogue" / "models" / "llama-3-8b.yaml"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "m.yaml").write_text(model.read_text())
    scenario = _serving(tmp_path / "q.csv", model="specs/m.yaml", tp=1, weight_dtype="bf16")
    assert scenario.model.n_layers == 32
    with pytest.raises(ConfigError) as caught:
        _serving(ROOT / "q.csv", model="specs/m.yaml", tp=1, weight_dtype="bf16")
    assert (caught.value.path, caught.value.field) == (str(ROOT / "q.csv"), "M")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": "nope"}, "M"),
        ({"hardware": "nope"}, "H"),
        ({"engine": "tgi"}, "E"),
        ({"hardware": "mi300x"}, "E"),
        ({"tp": 3}, "T"),
        ({"tp": 10**6}, "T"),
        ({"weight_dtype": "int4"}, "W"),
        ({"kv_dtype": "int8"}, "K"),
    ],
)
def test_serving_scenario_errors_name_the_users_field(tmp_path, overrides, field):
    with pytest.raises(ConfigError) as caught:
        _serving(tmp_path / "q.csv", **overrides)
    assert (caught.value.path, caught.value.field) == (str(tmp_path / "q.csv"), field)


# --------------------------------------------------------------------------- slow: answers

# Rows: the Must-show question (the only closed-loop vLLM row, so the flags run below finds
# its compiled program in the shared cache), an open vLLM loop, and pure-roofline rows: an open
# loop, one it cannot carry, and a closed loop with every optional knob.
ROWS_HEADER = ",".join(predict.COLUMNS)
ROWS = [
    dict(QUESTION),
    QUESTION | {"concurrency": "", "request_rate": "4"},
    {"model": "llama-3-8b", "hardware": "h100-sxm", "engine": "", "tp": "1"}
    | {"weight_dtype": "bf16", "kv_dtype": "bf16", "isl": "512", "osl": "128"}
    | {"request_rate": "5", "prefix_hit": "0.5"},
    {"model": "llama-3-8b", "hardware": "h100-sxm", "engine": "", "tp": "1"}
    | {"weight_dtype": "bf16", "kv_dtype": "bf16", "isl": "512", "osl": "128"}
    | {"request_rate": "1000000"},
    {"model": "llama-3-8b", "hardware": "h100-sxm", "engine": "", "tp": "2"}
    | {"weight_dtype": "fp8", "kv_dtype": "fp8", "isl": "2048", "osl": "64"}
    | {"concurrency": "8", "token_budget": "4096", "draft_tokens": "3"}
    | {"acceptance": "0.7", "draft_cost": "0.1"},
]


def _child(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "experiments.predict", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def from_file(tmp_path_factory, cache) -> list[str]:
    """The JSON lines of ROWS answered through --input."""
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    lines = [ROWS_HEADER] + [",".join(r.get(c, "") for c in predict.COLUMNS) for r in ROWS]
    write_csv(path, *lines)
    result = _child("--input", str(path), cache=cache)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(keepends=True)


@pytest.fixture(scope="module")
def from_flags(from_file, cache) -> str:
    """The Must-show question's --json output (after ``from_file``, to share its cache)."""
    result = _child(*FLAGS, "--json", cache=cache)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_must_show_answers_are_present_and_finite(from_flags):
    assert from_flags.count("\n") == 1  # one JSON object, on one line
    data = json.loads(from_flags)
    assert list(data) == [*predict.COLUMNS, *ANSWER_KEYS]
    for key in MUST_SHOW[:-1]:
        assert isinstance(data[key], int | float) and math.isfinite(data[key]), key
        assert data[key] > 0, key
    assert data["stable"] is True
    assert data["time_model"] == "engine calibration (vllm on h100-sxm)"
    assert data["max_concurrency_fits"] >= 64


@pytest.mark.slow
def test_flags_and_input_give_the_same_line(from_file, from_flags):
    assert from_file[0] == from_flags


@pytest.mark.slow
def test_rows_come_back_in_order_echoing_their_inputs(from_file):
    assert len(from_file) == len(ROWS)
    for line, row in zip(from_file, ROWS, strict=True):
        data = json.loads(line)
        for column in predict.COLUMNS:
            text = row.get(column, "")
            if not text:
                assert data[column] == predict.DEFAULTS[column], column
            elif column in ("model", "hardware", "engine", "weight_dtype", "kv_dtype"):
                assert data[column] == text, column
            else:
                assert data[column] == float(text), column
                assert type(data[column]) is type(predict.PARSERS[column](text)), column


@pytest.mark.slow
def test_answers_hold_their_invariants(from_file):
    for line in from_file:
        data = json.loads(line)
        assert list(data) == [*predict.COLUMNS, *ANSWER_KEYS]
        if not data["stable"]:
            continue
        total = data["output_tok_s"]
        assert data["output_tok_s_per_gpu"] * data["tp"] == pytest.approx(total, rel=1e-12)
        assert data["request_throughput_rps"] * data["osl"] == pytest.approx(total, rel=1e-12)
        if data["request_rate"] is not None:  # an open loop carries what arrives
            assert data["request_throughput_rps"] == pytest.approx(data["request_rate"])


@pytest.mark.slow
def test_rows_without_an_engine_say_pure_roofline(from_file):
    for line, row in zip(from_file, ROWS, strict=True):
        data = json.loads(line)
        if not row["engine"]:
            assert data["engine"] is None
            assert "pure roofline" in data["time_model"]
        else:
            assert data["time_model"] == f"engine calibration ({row['engine']} on h100-sxm)"


@pytest.mark.slow
def test_a_rate_the_replica_cannot_carry_is_null_and_unstable(from_file):
    data = json.loads(from_file[3])
    assert data["stable"] is False
    assert data["ttft_ms"] is None and data["output_tok_s"] is None
    assert data["kv_capacity_tokens"] > 0


@pytest.mark.slow
def test_human_report_names_the_question_and_each_answer(from_flags, cache):
    result = _child(*FLAGS, cache=cache)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    data = json.loads(from_flags)
    assert text.startswith("llama-3-70b on 4x h100-sxm, served by vllm")
    assert "time model: engine calibration (vllm on h100-sxm)" in text
    assert f"{data['ttft_ms']:,.4g} ms" in text
    assert f"{data['kv_capacity_tokens']:,} tokens" in text


# Mixture-of-Experts rows (no engine): DeepSeek-V3 at ep 1, at ep 8 and with data-parallel
# attention (the flags run below asks the last again), gpt-oss-120b with MXFP4 experts.
MOE_ROWS = [
    dict(MOE_QUESTION),
    MOE_QUESTION | {"ep": "8"},
    MOE_QUESTION | {"ep": "8", "attention_dp": "TRUE"},
    MOE_QUESTION
    | {"model": "gpt-oss-120b", "hardware": "h100-sxm", "tp": "1", "concurrency": "64"}
    | {"weight_dtype": "bf16", "expert_dtype": "mxfp4"},
]


@pytest.fixture(scope="module")
def moe_answers(tmp_path_factory, cache) -> tuple[list[str], str]:
    """The JSON lines of MOE_ROWS through --input, and the data-parallel row's --json line."""
    path = tmp_path_factory.mktemp("moe") / "moe.csv"
    write_csv(path, *_rows(*MOE_ROWS, header=EXPERTS_HEADER))
    result = _child("--input", str(path), cache=cache)
    assert result.returncode == 0, result.stderr
    flags = _child(*MOE_FLAGS, "--ep", "8", "--attention-dp", "--json", cache=cache)
    assert flags.returncode == 0, flags.stderr
    return result.stdout.splitlines(keepends=True), flags.stdout


@pytest.mark.slow
def test_moe_rows_echo_the_experts_placement_and_differ_where_they_should(moe_answers):
    lines, flags = moe_answers
    assert lines[2] == flags  # the flags and the file ask alike
    tp1, ep8, dp8, gpt_oss = (json.loads(line) for line in lines)
    for data in (tp1, ep8, dp8, gpt_oss):
        assert list(data) == [*INPUT_KEYS, *ANSWER_KEYS]
        assert data["stable"] is True and data["engine"] is None
        assert data["output_tok_s_per_gpu"] * data["tp"] == pytest.approx(data["output_tok_s"])
    placements = [(d["ep"], d["attention_dp"], d["expert_dtype"]) for d in (tp1, ep8, dp8)]
    assert placements == [(1, False, "fp8"), (8, False, "fp8"), (8, True, "fp8")]
    assert (gpt_oss["weight_dtype"], gpt_oss["expert_dtype"]) == ("bf16", "mxfp4")
    # Placing the experts changes the step; data-parallel attention stops replicating the
    # latent KV cache on every GPU.
    assert ep8["tpot_ms"] != tp1["tpot_ms"]
    assert dp8["kv_capacity_tokens"] > 4 * ep8["kv_capacity_tokens"]
