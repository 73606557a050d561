"""Architectures read from published Hugging Face ``config.json`` files: exact parameter counts,
the structure each architecture implies, and what sliding windows and experts do to the costs.

Expected parameter counts are what ``transformers`` builds for each config (transformers 5.24.0,
torch 2.13.0, ``AutoModelForCausalLM.from_config`` on the meta device, quantisation_config
removed so that logical weights are built, ``sum(p.numel() for p in model.parameters())``, tied
weights once), computed once outside the test suite; where the Hub publishes a safetensors
count it is named beside it and agrees unless said otherwise.  No test needs transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy as sp

from costmodel.config.load import load_model, model_catalogue
from costmodel.model import derivations
from costmodel.model import symbols as sy
from costmodel.model.layers import model_ops, model_parameters
from costmodel.model.memory import kv_cache_bytes
from costmodel.model.moe import touched_experts

HF = Path(__file__).parent / "data" / "hf"
FLOAT_RTOL = 1e-14  # the touched-expert expectation is evaluated in double precision

# (fixture directory, architecture, expected parameters, where the number comes from)
PUBLISHED = [
    # transformers; Hub safetensors metadata of meta-llama/Meta-Llama-3-8B: 8,030,261,248
    ("llama-3-8b", "LlamaForCausalLM", 8_030_261_248),
    # transformers; Meta's card: 405B (rounded)
    ("llama-3.1-405b", "LlamaForCausalLM", 405_853_388_800),
    # transformers; Hub safetensors of mistralai/Mistral-7B-v0.1: 7,241,732,096
    ("mistral-7b", "MistralForCausalLM", 7_241_732_096),
    # transformers; Hub safetensors of Qwen/Qwen2.5-72B: 72,706,203,648
    ("qwen2.5-72b", "Qwen2ForCausalLM", 72_706_203_648),
    # transformers; Hub safetensors of Qwen/Qwen3-32B: 32,762,123,264
    ("qwen3-32b", "Qwen3ForCausalLM", 32_762_123_264),
    # transformers; Hub safetensors of Qwen/Qwen3-30B-A3B: 30,532,122,624
    ("qwen3-30b-a3b", "Qwen3MoeForCausalLM", 30_532_122_624),
    # transformers; Hub safetensors of Qwen/Qwen3-235B-A22B: 235,093,634,560
    ("qwen3-235b-a22b", "Qwen3MoeForCausalLM", 235_093_634_560),
    # transformers; Mistral's announcement: 46.7B (rounded)
    ("mixtral-8x7b", "MixtralForCausalLM", 46_702_792_704),
    # transformers (no MTP module, e_score_correction_bias a buffer); DeepSeek's card: 671B main
    ("deepseek-v3", "DeepseekV3ForCausalLM", 671_026_404_352),
    # transformers with the logical (bf16) expert weights; OpenAI's card: 116.83B
    ("gpt-oss-120b", "GptOssForCausalLM", 116_829_156_672),
    # transformers; Hub safetensors of google/gemma-2-9b: 9,241,705,984
    ("gemma-2-9b", "Gemma2ForCausalLM", 9_241_705_984),
    # transformers' Gemma3ForCausalLM of the text_config (the Hub's 27,432,406,640 adds the
    # 416,866,032-parameter vision tower and 6,194,304-parameter projector, not modelled)
    ("gemma-3-27b", "Gemma3ForCausalLM", 27_009_346_304),
    # transformers; Hub safetensors of microsoft/Phi-3-mini-4k-instruct: 3,821,079,552
    ("phi-3-mini", "Phi3ForCausalLM", 3_821_079_552),
]


def parameters(model) -> sp.Integer:
    """The model's parameters at tp = ep = 1, as the cost model stores them."""
    return model_parameters(model.architecture, sp.Integer(1)).xreplace(model.dims() | {sy.ep: 1})


@pytest.mark.parametrize(("directory", "architecture", "expected"), PUBLISHED)
def test_parameter_count_equals_what_transformers_builds(directory, architecture, expected):
    config = HF / directory / "config.json"
    assert architecture in config.read_text() or architecture == "Gemma3ForCausalLM"
    assert parameters(load_model(config)) == expected


def test_deepseek_v3_with_its_mtp_module_matches_the_published_checkpoint():
    # The Hub's safetensors total for deepseek-ai/DeepSeek-V3, 684,531,386,000, is the main
    # model, the MTP module (layer 61, with its own copies of the embedding and head), the
    # 41,540,496 fp32 block scales of the fp8 weights and 59 x 256 router correction biases.
    model = load_model(HF / "deepseek-v3/config.json").model_copy(update={"mtp_layers": 1})
    assert parameters(model) + 41_540_496 + 59 * 256 == 684_531_386_000


@pytest.mark.parametrize(
    ("directory", "sliding", "window"),
    [
        ("mistral-7b", 32, 4096),  # every layer
        ("phi-3-mini", 32, 2047),
        ("gemma-2-9b", 21, 4096),  # even layers of 42
        ("gemma-3-27b", 52, 1024),  # five local layers to each global one, 62 layers
        ("gpt-oss-120b", 18, 128),  # layer_types alternate
    ],
)
def test_sliding_window_layers_follow_the_config(directory, sliding, window):
    model = load_model(HF / directory / "config.json")
    assert (model.sliding_window.layers, model.sliding_window.tokens) == (sliding, window)


@pytest.mark.parametrize("directory", ["qwen2.5-72b", "qwen3-32b", "llama-3.1-405b"])
def test_full_attention_configs_have_no_window(directory):
    assert load_model(HF / directory / "config.json").sliding_window is None


def test_a_window_caps_the_cache_of_its_layers_only():
    model = load_model(HF / "gemma-2-9b/config.json")
    kv = kv_cache_bytes(model.architecture, sy.T, 1)
    values = model.dims() | {sy.B: 1, sy.b_kv: 2}
    short, long = (kv.xreplace(values | {sy.T: t}) for t in (4096, 4 * 4096))
    per_token_layer = 2 * model.n_kv_heads * model.head_dim * 2
    # beyond the window only the 21 global layers grow
    assert long - short == 3 * 4096 * 21 * per_token_layer


def test_moe_decode_reads_only_the_touched_experts():
    model = load_model(HF / "qwen3-30b-a3b/config.json")
    ops = model_ops(model.architecture, "decode", degree=1)
    expert_reads = sum(op.total.weight_bytes for op in ops if op.name.startswith("expert_"))
    values = model.dims() | {sy.ep: 1, sy.tp: 1, sy.b_we: 1, sy.b_w: 1, sy.b_a: 2, sy.S: 1}
    one = expert_reads.xreplace(values | {sy.B: 1})
    every = 3 * model.d_model * model.moe.expert_ffn_dim * 48
    # one token touches exactly its top-8 experts in each layer (the expectation is evaluated in
    # floating point: see touched_experts)
    assert float(one) == pytest.approx(8 * every, rel=FLOAT_RTOL)
    # 64 tokens leave an expert untouched with probability (1 - 8/128)^64 = 0.0161
    many = expert_reads.xreplace(values | {sy.B: 64})
    assert 0.983 * 128 * every < many < 0.984 * 128 * every


def test_touched_experts_at_its_limits():
    assert float(touched_experts(1, 256, 8)) == pytest.approx(8, rel=FLOAT_RTOL)
    assert touched_experts(0, 256, 8) == 0
    # uniform routing: E(1 - (1 - k/E)^N) with E = 4, k = 2, N = 2 is 4 (1 - 1/4) = 3
    assert float(touched_experts(2, 4, 2)) == pytest.approx(3, rel=FLOAT_RTOL)


@pytest.mark.parametrize(
    "name",
    [
        "deepseek-v3",
        "qwen3-235b-a22b",
        "qwen3-30b-a3b",
        "mixtral-8x7b",
        "gpt-oss-120b",
        "gemma-2-9b",
        "gemma-3-27b",
        "qwen2.5-72b",
        "qwen3-32b",
        "mistral-7b",
        "phi-3-mini",
    ],
)
def test_catalogue_models_equal_their_published_configs(name):
    catalogued = model_catalogue()[name]
    loaded = load_model(HF / name / "config.json")
    assert catalogued.model_dump(exclude={"name", "note", "nominal_params", "mtp_layers"}) == (
        loaded.model_dump(exclude={"name", "note", "nominal_params", "mtp_layers"})
    )


def test_half_the_experts_are_touched_at_the_derived_batch():
    result = derivations.expert_reads()
    dims = {sy.E: 256, sy.k_e: 8}
    half = result.half_tokens.xreplace(dims)
    assert float(result.touched.xreplace(dims | {sy.B: half})) == pytest.approx(128, rel=FLOAT_RTOL)
    assert (result.one_token, result.every_expert) == (sy.k_e, sy.E)


def test_expert_parallelism_leaves_the_weight_reads_unchanged():
    # A device stores E/ep experts of width F_e·ep/tp: the expected bytes it reads are the
    # same at every ep dividing tp.
    result = derivations.expert_reads()
    values = {sy.E: 256, sy.k_e: 8, sy.D: 7168, sy.F_e: 2048, sy.b_we: 1, sy.tp: 8, sy.B: 32}
    reads = {ep: float(result.bytes.xreplace(values | {sy.ep: ep})) for ep in (1, 2, 4, 8)}
    assert max(reads.values()) == pytest.approx(min(reads.values()), rel=FLOAT_RTOL)
