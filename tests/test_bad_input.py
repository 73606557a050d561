"""Configuration is untrusted input: every malformed file is one ConfigError naming the file and
the field, in bounded time; supported Hugging Face configs load with their architecture's
defaults, unsupported ones are refused by name.

Each case writes a file to ``tmp_path`` and calls the loader in-process (no subprocesses: the
fast tier stays fast); one test runs a CLI to check the exit status and the one-line message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.load import (
    MAX_FILE_BYTES,
    hardware_catalogue,
    load_hardware,
    load_model,
    load_scenario,
    model_catalogue,
)
from costmodel.config.specs import ConfigError
from costmodel.model.layers import model_ops, parameter_count
from tests.helpers import ROOT

LOAD_SECONDS = 2.0  # loose bound on one load of a malformed file (the alias bombs hung > 20 s)
HF = ROOT / "tests/data/hf"

SCENARIO = (ROOT / "configs/h100_70b.yaml").read_text()
MODEL = catalogue.path("models", "llama-3-8b").read_text()
HARDWARE = catalogue.path("hardware", "h100-sxm").read_text()
LLAMA = json.loads((HF / "llama-3-8b/config.json").read_text())
DEEPSEEK = {  # deepseek-ai/DeepSeek-V3 config.json, the fields of its shape
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "num_hidden_layers": 61,
    "vocab_size": 129280,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 2048,
    "first_k_dense_replace": 3,
    "tie_word_embeddings": False,
}


def _bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs as one YAML flow sequence: width**levels leaves from a few hundred bytes."""
    rows = ["&a0 [" + ", ".join(["1"] * width) + "]"]
    for level in range(1, levels):
        rows.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "[" + ", ".join(rows) + "]"


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old  # the fixture still has the line a case edits
    return text.replace(old, new)


def _hf(base: dict, **changes) -> str:
    data = {**base, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not _DROP})


_DROP = object()  # a key to leave out of a Hugging Face config


class Case(NamedTuple):
    """A malformed input: the file's text, which loader reads it, what the error names."""

    text: str | bytes
    kind: str  # "scenario", "model" (YAML), "hf" (config.json) or "hardware"
    field: str  # the field the message must name ("" : the file alone)
    says: str  # a fragment of the message


CASES = {
    # duplicate keys: PyYAML keeps the later value
    "duplicate key": Case(SCENARIO + "n_gpus: 4\n", "scenario", "n_gpus", "duplicate key"),
    "duplicate nested key": Case(
        _replace(SCENARIO, "  output_tokens: 512", "  output_tokens: 512\n  prompt_tokens: 1"),
        "scenario",
        "workload.prompt_tokens",
        "duplicate key",
    ),
    "duplicate json key": Case(
        json.dumps(LLAMA)[:-1] + ', "hidden_size": 5120}', "hf", "hidden_size", "duplicate key"
    ),
    # heads
    "more kv heads than heads": Case(
        _replace(MODEL, "n_kv_heads: 8", "n_kv_heads: 64"), "model", "n_kv_heads", "exceed"
    ),
    "kv heads not dividing heads": Case(
        _replace(MODEL, "n_kv_heads: 8", "n_kv_heads: 6"), "model", "n_kv_heads", "divide"
    ),
    "hf zero kv heads": Case(_hf(LLAMA, num_key_value_heads=0), "hf", "num_key_value_heads", "1.."),
    "hf hidden not divisible by heads": Case(
        _hf(LLAMA, hidden_size=4100), "hf", "hidden_size", "does not divide"
    ),
    # scenario rules
    "int4 group dividing nothing": Case(
        _replace(SCENARIO, "group_size: 128", "group_size: 100"),
        "scenario",
        "search.group_size",
        "do not divide",
    ),
    "context shorter than prompt": Case(
        _replace(SCENARIO, "context: 2560", "context: 100"),
        "scenario",
        "workload.context",
        "shorter than the prompt",
    ),
    "empty tp": Case(
        _replace(SCENARIO, "tp: [1, 2, 4, 8]", "tp: []"), "scenario", "search.tp", "at least 1"
    ),
    "expert parallelism without experts": Case(
        _replace(SCENARIO, "  batch_max: 1024", "  batch_max: 1024\n  ep: [1, 8]"),
        "scenario",
        "search.ep",
        "no experts",
    ),
    "expert parallelism in the static batch": Case(
        _replace(
            _replace(SCENARIO, "  batch_max: 1024", "  batch_max: 1024\n  attention_dp: [true]"),
            "model: llama-3-70b",
            "model: mixtral-8x7b",
        ).replace("  mode: continuous", "  mode: static"),
        "scenario",
        "search.attention_dp",
        "continuous",
    ),
    "imbalance below one": Case(
        SCENARIO + "moe_imbalance: 0.5\n", "scenario", "moe_imbalance", "greater than or equal"
    ),
    "empty weight dtypes": Case(
        _replace(SCENARIO, "weight_dtypes: [bf16, fp8, int8, int4]", "weight_dtypes: []"),
        "scenario",
        "search.weight_dtypes",
        "at least 1",
    ),
    "empty kv dtypes": Case(
        _replace(SCENARIO, "kv_dtypes: [bf16, fp8]", "kv_dtypes: []"),
        "scenario",
        "search.kv_dtypes",
        "at least 1",
    ),
    # bounded work: alias bombs, nesting, size, long numbers
    "alias bomb in n_gpus": Case(
        _replace(SCENARIO, "n_gpus: 8", f"n_gpus: {_bomb()}"), "scenario", "n_gpus", "aliases"
    ),
    "alias bomb in workload": Case(
        _replace(SCENARIO, "workload:\n", f"workload: {_bomb()}\nunused:\n"),
        "scenario",
        "workload",
        "aliases",
    ),
    "alias bomb in model": Case(
        _replace(SCENARIO, "model: llama-3-70b", f"model: {_bomb()}"), "scenario", "model", "alias"
    ),
    "deep nesting": Case(
        SCENARIO + "x: " + "[" * 5000 + "]" * 5000 + "\n", "scenario", "x", "deeper"
    ),
    "file too large": Case(
        SCENARIO + "#" * MAX_FILE_BYTES + "\n", "scenario", "", "larger than a config may be"
    ),
    "integer of thousands of digits": Case(
        _replace(SCENARIO, "n_gpus: 8", "n_gpus: " + "9" * 5000), "scenario", "n_gpus", "5000"
    ),
    "hf integer of thousands of digits": Case(
        json.dumps(LLAMA).replace('"num_hidden_layers": 32', '"num_hidden_layers": ' + "9" * 5000),
        "hf",
        "num_hidden_layers",
        "5000 digits",
    ),
    "hf nan": Case(
        json.dumps(LLAMA).replace('"vocab_size": 128256', '"vocab_size": NaN'),
        "hf",
        "vocab_size",
        "NaN",
    ),
    # bounds on numbers
    "1e30 layers as an integer": Case(
        _replace(MODEL, "n_layers: 32", f"n_layers: {10**30}"), "model", "n_layers", "less than"
    ),
    "1e30 layers as a float": Case(
        _replace(MODEL, "n_layers: 32", "n_layers: 1.0e+30"), "model", "n_layers", "integer"
    ),
    "batch_max 1e12": Case(
        _replace(SCENARIO, "batch_max: 1024", f"batch_max: {10**12}"),
        "scenario",
        "search.batch_max",
        "less than",
    ),
    "enormous peak": Case(
        _replace(HARDWARE, "bf16: 989", "bf16: 1.0e+308"), "hardware", "peak_tflops.bf16", "less"
    ),
    "tiny bandwidth": Case(
        _replace(HARDWARE, "hbm_bandwidth_tb_s: 3.35", "hbm_bandwidth_tb_s: 1.0e-300"),
        "hardware",
        "hbm_bandwidth_tb_s",
        "greater",
    ),
    # files that are not configs
    "binary model json": Case(bytes(range(256)) * 4, "hf", "", "not UTF-8"),
    "binary model yaml": Case(b"\x00\x01\x02binary", "model", "", "NUL"),
    # MLA fields
    "hf mla field null": Case(
        _hf(DEEPSEEK, qk_rope_head_dim=None),
        "hf",
        "qk_rope_head_dim",
        "None",
    ),
    "hf mla field a string": Case(
        _hf(DEEPSEEK, qk_nope_head_dim="128"),
        "hf",
        "qk_nope_head_dim",
        "'128'",
    ),
    # expert fields
    "deepseek-v3 without experts": Case(
        _hf(DEEPSEEK, n_routed_experts=_DROP), "hf", "n_routed_experts", "required"
    ),
    "top-k above the experts": Case(
        _hf(DEEPSEEK, num_experts_per_tok=300), "hf", "num_experts_per_tok", "every expert"
    ),
    "every layer dense": Case(
        _hf(DEEPSEEK, first_k_dense_replace=61), "hf", "first_k_dense_replace", "no MoE layer"
    ),
    "unknown scoring": Case(_hf(DEEPSEEK, scoring_func="relu"), "hf", "scoring_func", "relu"),
    "moe every other layer": Case(
        _hf(DEEPSEEK, moe_layer_freq=2), "hf", "moe_layer_freq", "every n-th"
    ),
    "qwen3 moe dense layers among experts": Case(
        (HF / "qwen3-30b-a3b/config.json")
        .read_text()
        .replace('"mlp_only_layers": []', '"mlp_only_layers": [0]'),
        "hf",
        "mlp_only_layers",
        "dense layers",
    ),
    "gpt-oss without experts": Case(
        _hf(LLAMA, architectures=["GptOssForCausalLM"], model_type="gpt_oss"),
        "hf",
        "num_local_experts",
        "required",
    ),
    "moe without architectures": Case(
        _hf(LLAMA, architectures=_DROP, model_type=_DROP, num_local_experts=8),
        "hf",
        "num_local_experts",
        "architecture",
    ),
    # architectures and fields the model does not represent
    "qwen2 moe": Case(
        _hf(LLAMA, architectures=["Qwen2MoeForCausalLM"]), "hf", "architectures", "shared expert"
    ),
    "unknown architecture": Case(
        _hf(LLAMA, architectures=["FalconForCausalLM"]), "hf", "architectures", "not represented"
    ),
    "unknown model type": Case(
        _hf(LLAMA, architectures=_DROP, model_type="falcon"), "hf", "model_type", "not represented"
    ),
    "layer types of the wrong length": Case(
        _hf(LLAMA, architectures=["MistralForCausalLM"], layer_types=["full_attention"]),
        "hf",
        "layer_types",
        "32 entries",
    ),
    "mlp bias": Case(_hf(LLAMA, mlp_bias=True), "hf", "mlp_bias", "MLP biases"),
    "multimodal without a text config": Case(
        _hf(LLAMA, architectures=["Gemma3ForConditionalGeneration"]),
        "hf",
        "text_config",
        "expected an object",
    ),
}

LOADERS: dict[str, tuple[str, Callable]] = {
    "scenario": ("scenario.yaml", load_scenario),
    "model": ("model.yaml", load_model),
    "hf": ("config.json", load_model),
    "hardware": ("hardware.yaml", load_hardware),
}


def _load(tmp_path: Path, case: Case) -> tuple[ConfigError, float, Path]:
    name, loader = LOADERS[case.kind]
    path = tmp_path / "case" / name
    path.parent.mkdir()
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        loader(path)
    return err.value, time.perf_counter() - start, path


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_is_one_config_error_naming_file_and_field(tmp_path: Path, name: str):
    case = CASES[name]
    err, seconds, path = _load(tmp_path, case)
    message = str(err)
    assert seconds < LOAD_SECONDS, f"{name}: {seconds:.1f} s"
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert err.field.startswith(case.field) if case.field else True
    assert f": {case.field}" in message
    assert case.says in message, message


def test_file_name_too_long(tmp_path: Path):
    long = tmp_path / ("a" * 400 + ".yaml")
    with pytest.raises(ConfigError, match="too long"):
        load_scenario(long)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(_replace(SCENARIO, "model: llama-3-70b", f"model: {'m' * 400}.yaml"))
    with pytest.raises(ConfigError, match=r": model: .*too long"):
        load_scenario(scenario)
    scenario.write_text(_replace(SCENARIO, "model: llama-3-70b", f"model: {'m' * 400}"))
    with pytest.raises(ConfigError, match=r": model: .*too long"):
        load_scenario(scenario)


def test_a_scenario_names_the_model_file_it_could_not_read(tmp_path: Path):
    model = tmp_path / "blob.json"
    model.write_bytes(bytes(range(256)))
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(_replace(SCENARIO, "model: llama-3-70b", "model: blob.json"))
    with pytest.raises(ConfigError) as err:
        load_scenario(scenario)
    assert str(err.value).startswith(f"{model}: ")


# --------------------------------------------------------------------------- Hugging Face


def _parameters(path: Path) -> sp.Integer:
    spec = load_model(path)
    ops = model_ops(
        spec.attention_kind, "decode", tied_embeddings=spec.tie_word_embeddings, degree=1
    )
    return parameter_count(ops).xreplace(spec.dims())


def test_gemma_without_tie_field_is_tied_as_transformers_reads_it():
    # google/gemma-7b model card: 8,537,680,896 parameters (its config.json has no
    # tie_word_embeddings; GemmaConfig defaults it to true).  Untied: 786,432,000 more.
    assert load_model(HF / "gemma-7b/config.json").tie_word_embeddings is True
    assert _parameters(HF / "gemma-7b/config.json") == 8_537_680_896


def test_llama_3_8b_config_json_matches_the_catalogue_and_its_size():
    loaded = load_model(HF / "llama-3-8b/config.json")
    assert loaded.dims() == model_catalogue()["llama-3-8b"].dims()
    assert loaded.tie_word_embeddings is False
    # meta-llama/Meta-Llama-3-8B: 8,030,261,248 parameters (safetensors metadata)
    assert _parameters(HF / "llama-3-8b/config.json") == 8_030_261_248


@pytest.mark.parametrize(
    "changes",
    [
        {"architectures": ["MistralForCausalLM"], "sliding_window": None},  # Mistral-7B-v0.3
        {"architectures": ["MistralForCausalLM"], "sliding_window": 8192},  # >= max positions
        {"architectures": _DROP, "model_type": "llama"},
        {"architectures": _DROP, "model_type": _DROP},  # Llama-style by default
    ],
)
def test_represented_llama_style_configs_load(tmp_path: Path, changes: dict):
    path = tmp_path / "m" / "config.json"
    path.parent.mkdir()
    path.write_text(_hf(LLAMA, **changes))
    assert load_model(path).dims() == model_catalogue()["llama-3-8b"].dims()


def test_deepseek_v3_loads_as_the_catalogue_model(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(_hf(DEEPSEEK))
    loaded = load_model(path)
    assert loaded.attention_kind == "mla"
    assert loaded.dims() == model_catalogue()["deepseek-v3"].dims()


# --------------------------------------------------------------------------- catalogue


def test_missing_catalogue_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(catalogue.ENVIRONMENT_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no hardware catalogue directory"):
        hardware_catalogue()
    with pytest.raises(ConfigError, match="COSTMODEL_CATALOGUE"):
        model_catalogue()


def test_empty_catalogue_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "hardware").mkdir()
    (tmp_path / "models").mkdir()
    monkeypatch.setenv(catalogue.ENVIRONMENT_VARIABLE, str(tmp_path))
    with pytest.raises(ConfigError, match=r"hardware: no hardware specs"):
        hardware_catalogue()
    with pytest.raises(ConfigError, match=r"models: no models specs"):
        model_catalogue()


def test_environment_overrides_the_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for kind, name in (("hardware", "h200"), ("models", "llama-2-7b")):
        (tmp_path / kind).mkdir()
        shutil.copy(catalogue.path(kind, name), tmp_path / kind / f"{name}.yaml")
    monkeypatch.setenv(catalogue.ENVIRONMENT_VARIABLE, str(tmp_path))
    assert list(hardware_catalogue()) == ["h200"]
    assert list(model_catalogue()) == ["llama-2-7b"]
    monkeypatch.delenv(catalogue.ENVIRONMENT_VARIABLE)
    assert "h100-sxm" in hardware_catalogue()


# --------------------------------------------------------------------------- through a CLI


def test_cli_reports_an_alias_bomb_in_one_line_with_status_2(tmp_path: Path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_replace(SCENARIO, "n_gpus: 8", f"n_gpus: {_bomb()}"))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.roofline", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {path}: n_gpus")
