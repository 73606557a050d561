"""Loading specs: catalogues, Hugging Face config.json, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.load import hardware_catalogue, load_model, load_scenario, model_catalogue
from costmodel.config.specs import ConfigError
from costmodel.model.dtypes import bytes_per_element
from tests.helpers import ROOT

SCENARIO = (ROOT / "configs/h100_70b.yaml").read_text()


def test_catalogues_hold_the_required_entries():
    hardware = hardware_catalogue()
    assert {"h100-sxm", "h100-pcie", "h200", "a100-sxm-80gb", "l40s", "mi300x"} <= set(hardware)
    models = model_catalogue()
    assert {
        "llama-2-7b",
        "llama-2-70b",
        "llama-3-8b",
        "llama-3-70b",
        "llama-3.1-405b",
        "deepseek-v3-mla",
    } <= set(models)
    assert models["deepseek-v3-mla"].attention_kind == "mla"
    assert models["llama-2-7b"].attention_kind == "mha"
    assert models["llama-3-70b"].attention_kind == "gqa"


def test_hardware_figures_are_exact_decimals():
    h100 = hardware_catalogue()["h100-sxm"]
    assert h100.hbm_bandwidth == sp.Integer(3_350_000_000_000)
    assert h100.ridge_point("bf16") == sp.Rational(989_000, 3_350)
    assert h100.matmul_peak("fp8") == h100.peak_flops("fp8") == 1979 * 10**12
    assert h100.matmul_peak("int4") == h100.peak_flops("bf16")  # weight-only: bf16 peak
    a100 = hardware_catalogue()["a100-sxm-80gb"]
    assert a100.matmul_peak("fp8") == a100.peak_flops("bf16")  # no fp8 units


def test_int4_carries_its_group_scale():
    assert bytes_per_element("int4", 128) == sp.Rational(33, 64)
    assert bytes_per_element("int4", 64) == sp.Rational(1, 2) + sp.Rational(2, 64)
    assert bytes_per_element("int8") * 2 == bytes_per_element("bf16")


def test_llama_config_json_matches_the_catalogue(tmp_path: Path):
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
    }
    path = tmp_path / "llama-3-70b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    loaded = load_model(path)
    catalogue = model_catalogue()["llama-3-70b"]
    assert loaded.dims() == catalogue.dims()
    assert loaded.name == "llama-3-70b"


def test_deepseek_config_json_reads_mla_fields(tmp_path: Path):
    config = {
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
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    loaded = load_model(path)
    assert loaded.attention_kind == "mla"
    assert loaded.dims() == model_catalogue()["deepseek-v3-mla"].dims()


def test_scenario_resolves_catalogue_names():
    scenario = load_scenario(ROOT / "configs/h100_70b.yaml")
    assert scenario.model.name == "llama-3-70b"
    assert scenario.hardware.name == "h100-sxm"
    assert scenario.workload.default_context == 2560


# --------------------------------------------------------------------------- bad input


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing file": (None, "no such file", ""),
    "malformed yaml": ("model: [llama-3-70b\nhardware: h100-sxm\n", "malformed YAML", "line"),
    "unknown key": (SCENARIO + "colour: blue\n", "unknown key", "colour"),
    "negative dimension": (
        SCENARIO.replace("prompt_tokens: 2048", "prompt_tokens: -3"),
        "greater than 0",
        "workload.prompt_tokens",
    ),
    "non-integer dimension": (
        SCENARIO.replace("output_tokens: 512", "output_tokens: 51.5"),
        "integer",
        "workload.output_tokens",
    ),
    "unknown hardware": (
        SCENARIO.replace("hardware: h100-sxm", "hardware: h999"),
        "unknown hardware 'h999'",
        "hardware",
    ),
    "unknown dtype": (
        SCENARIO.replace("kv_dtypes: [bf16, fp8]", "kv_dtypes: [bf16, fp7]"),
        "Input should be",
        "search.kv_dtypes[1]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_one_line_error(tmp_path: Path, case: str):
    # In-process: tests/test_bad_input.py runs one case through a CLI for the exit status 2.
    text, message, field = BAD_INPUTS[case]
    path = tmp_path / "absent.yaml" if text is None else _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert message in line
    assert f": {field}" in line if field else True


def test_bad_model_dimension_names_the_model_file(tmp_path: Path):
    model = (
        (catalogue.path("models", "llama-3-8b")).read_text().replace("d_model: 4096", "d_model: 0")
    )
    model_path = _write(tmp_path, model, "tiny.yaml")
    scenario = _write(tmp_path, SCENARIO.replace("model: llama-3-70b", f"model: {model_path}"))
    with pytest.raises(ConfigError) as err:
        load_scenario(scenario)
    assert str(model_path) in str(err.value)
    assert "d_model" in str(err.value)


def test_bad_hf_config_names_the_hf_field(tmp_path: Path):
    path = _write(
        tmp_path,
        json.dumps(
            {
                "hidden_size": 4096,
                "num_attention_heads": 32,
                "num_hidden_layers": 32,
                "vocab_size": 32000,
                "intermediate_size": -1,
            }
        ),
        "config.json",
    )
    with pytest.raises(ConfigError, match="intermediate_size"):
        load_model(path)


def test_tp_must_divide_the_heads(tmp_path: Path):
    path = _write(tmp_path, SCENARIO.replace("tp: [1, 2, 4, 8]", "tp: [1, 3]"))
    with pytest.raises(ConfigError, match=r"search\.tp\[1\]"):
        load_scenario(path)
