"""The engine kernel model: same FLOPs as the model's kernels, the families' roofline limit,
engine scenarios bound and refused as they should be."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.bind import Setting, bind
from costmodel.config.load import load_scenario
from costmodel.config.specs import ENGINES, ConfigError
from costmodel.model import engine as engines
from costmodel.model import kernels
from costmodel.model import symbols as sy
from costmodel.model.layers import model_ops
from experiments import _cli
from tests.helpers import ROOT

ENGINE_CONFIG = ROOT / "configs" / "h100_70b_vllm.yaml"
ROOFLINE_LIMIT_RTOL = 1e-9  # eta -> 1 (logit 60), q = 1e6: the smooth max is the max within this


def _gemm_flops(phase: str, profile) -> sp.Expr:
    return sum(
        (
            k.count * k.flops
            for k in engines.engine_kernels(profile, phase)
            if k.family.startswith("gemm")
        ),
        sp.Integer(0),
    )


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("engine", sorted(engines.PROFILES))
def test_engine_gemm_flops_equal_the_models_matmul_flops(phase, engine):
    ops = model_ops("gqa", phase)
    model = sum((op.repeat * op.cost.flops for op in ops if op.unit == "matmul"), sp.Integer(0))
    assert sp.simplify(_gemm_flops(phase, engines.PROFILES[engine]) - model) == 0


def test_decode_attention_flops_are_the_models_score_and_value_products():
    (attention,) = [
        k
        for k in engines.engine_kernels(engines.PROFILES["vllm"], "decode")
        if k.name == "attention"
    ]
    # QK^T and PV: 2·(B·h·S·T·d_h) FLOPs each, at S = 1.
    heads = sy.H / sy.tp
    assert sp.simplify(attention.flops - 4 * sy.B * heads * sy.T * sy.d_h) == 0


@pytest.mark.parametrize("name", kernels.FAMILIES)
def test_family_reaches_the_pure_roofline_in_the_limit(name):
    """eta = 1, q -> infinity, no launch, no extra, no cache: the datasheet roofline."""
    fam = kernels.family(name)
    values = {}
    for p in fam.params:
        label = p.symbol.name
        if label.startswith("q_"):
            values[p.symbol] = sp.Integer(10**6)
        elif label.startswith("c_") and label[-1] == "0" and not label[-2].isdigit():
            values[p.symbol] = sp.Integer(60)  # the constant monomial: sigmoid(60) ~ 1
        elif label.startswith("G_"):
            values[p.symbol] = sp.Integer(10**6)  # no group limit: each KV head read once
        elif label.startswith("m_"):
            values[p.symbol] = sp.Integer(1)  # a kernel-switch row count; its cost t_s is 0
        elif label.startswith("W_"):
            values[p.symbol] = sp.Integer(1)  # a cache rate, unused once the capacity is 0
        else:
            values[p.symbol] = sp.Integer(0)
    shape = dict(zip(fam.shape, (64, 4096, 8192, 8, 128)[: len(fam.shape)], strict=True))
    if name == "allreduce":
        shape = {kernels.payload: 2**20, kernels.ranks: 4}
    consts = {
        sy.b_w: 1,
        kernels.b_x: 1,
        sy.b_kv: 2,
        sy.peak_matmul: 10**15,
        sy.peak_attention: 10**15,
        sy.hbm_bandwidth: 3 * 10**12,
        sy.link_bandwidth: 4 * 10**11,
    }
    point = {**shape, **{s: v for s, v in consts.items() if s in fam.constants}}
    time = float(fam.time.xreplace(values).xreplace(point))
    roof = float(fam.roofline.xreplace(point))
    assert time == pytest.approx(roof, rel=ROOFLINE_LIMIT_RTOL)


def test_command_line_engines_are_the_specs():
    assert tuple(_cli.ENGINES) == tuple(ENGINES)


def test_every_pair_of_the_data_has_a_shipped_calibration():
    from costmodel.validate import gpu_fit

    shipped = set(catalogue.engine_pairs())
    assert set(gpu_fit.pairs()) <= shipped


def _decode_at(binding, batch: int, context: int) -> float:
    return float(binding.step_time("decode").xreplace({sy.B: batch, sy.T: context}))


@pytest.mark.slow  # 14 s: the engine step evaluated in SymPy over batches and contexts
def test_engine_decode_step_grows_with_batch_and_context():
    scenario = load_scenario(ENGINE_CONFIG)
    binding = bind(scenario, Setting(tp=4, weight_dtype="fp8", kv_dtype="fp8"))
    assert binding.engine == "vllm"
    small = _decode_at(binding, 1, 2048)
    assert 0 < small < _decode_at(binding, 64, 2048) < _decode_at(binding, 64, 16384)


def test_engine_time_is_slower_than_the_pure_roofline():
    """Measured kernels never beat the datasheet: the engine's decode step is the slower one."""
    scenario = load_scenario(ENGINE_CONFIG)
    setting = Setting(tp=2, weight_dtype="bf16", kv_dtype="bf16")
    engine = _decode_at(bind(scenario, setting), 8, 2560)
    roofline = _decode_at(bind(scenario, setting, calibrated=False), 8, 2560)
    assert bind(scenario, setting, calibrated=False).engine is None
    assert engine > roofline


def test_engine_without_calibration_is_refused(tmp_path):
    config = tmp_path / "mi300x.yaml"
    text = ENGINE_CONFIG.read_text().replace("hardware: h100-sxm", "hardware: mi300x")
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"engine: no calibration of vllm on mi300x"):
        load_scenario(config)


def test_uncalibrated_weight_dtype_is_refused(tmp_path):
    config = tmp_path / "int4.yaml"
    config.write_text(ENGINE_CONFIG.read_text().replace("[bf16, fp8]  ", "[bf16, int4]"))
    with pytest.raises(
        ConfigError, match=r"search\.weight_dtypes\[1\]: int4 has no measured gemm kernels"
    ):
        load_scenario(config)


def test_mla_under_an_engine_needs_its_measured_block_formats(tmp_path):
    config = tmp_path / "mla.yaml"
    text = ENGINE_CONFIG.read_text().replace("llama-3-70b ", "deepseek-v3-mla ")
    config.write_text(text)
    with pytest.raises(ConfigError, match="static batch under an engine times dense models"):
        load_scenario(config)
    config.write_text(text + "serving: {mode: continuous}\n")
    with pytest.raises(ConfigError, match="fp8 has no measured mla generation module kernels"):
        load_scenario(config)


@pytest.mark.slow
def test_roofline_command_names_the_engine():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.roofline", str(ENGINE_CONFIG), "--tp", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "vllm's measured kernels on h100-sxm" in out.stdout


# --------------------------------------------------------------------------- MoE, MLA, windows


def _moe_model(name: str):
    from costmodel.config.load import model_catalogue

    return model_catalogue()[name]


@pytest.mark.parametrize(
    ("name", "engine"),
    [("mixtral-8x7b", "vllm"), ("qwen3-30b-a3b", "trtllm"), ("deepseek-v3", "sglang")],
)
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_moe_engine_kernels_carry_the_models_flops(name, engine, phase):
    """The engine's GEMMs and fused MoE kernel do the model's matmul and routed-expert FLOPs
    (balanced routing): nothing dropped or counted twice when an MoE layer is fused, nor when
    SGLang's MLA is its GEMMs around the attention core."""
    model = _moe_model(name)
    arch = model.architecture
    profile = engines.PROFILES[engine]
    found = engines.engine_kernels(profile, phase, arch)
    engine = sum(
        (k.count * k.flops for k in found if k.family in {"gemm", "gemm_bf16", "moe"}),
        sp.Integer(0),
    )
    ops = model_ops(arch, phase)
    routed = {"expert_combine", "expert_act", "expert_gate_mul"}
    expected = sum(
        (op.repeat * op.cost.flops for op in ops if op.unit == "matmul" or op.name in routed),
        sp.Integer(0),
    )
    context = 16 if phase == "prefill" else 64  # the phase rule: prefill attends T = S
    values = model.dims() | {sy.rho_e: 1, sy.tp: 2, sy.ep: 2, sy.B: 8, sy.S: 16, sy.T: context}
    assert float(engine.xreplace(values)) == pytest.approx(
        float(expected.xreplace(values)), rel=ROOFLINE_LIMIT_RTOL
    )


def test_window_layers_attend_at_most_the_window_in_decode():
    model = _moe_model("gpt-oss-120b")
    found = engines.engine_kernels(engines.PROFILES["vllm"], "decode", model.architecture)
    (window,) = [k for k in found if k.name == "attention_window"]
    (full,) = [k for k in found if k.name == "attention"]
    values = model.dims() | {sy.B: 4, sy.tp: 1, sy.T: 4096}
    assert window.shape[sy.T].xreplace(values) == 128 and full.shape[sy.T].xreplace(values) == 4096
    assert window.count.xreplace(values) == full.count.xreplace(values) == 18


def test_engine_scenarios_with_experts_load_and_refuse_unmeasured_formats(tmp_path):
    from costmodel.config.load import load_scenario
    from costmodel.config.specs import ConfigError

    text = (
        (ROOT / "configs" / "h100_qwen3_235b.yaml")
        .read_text()
        .replace("hardware: h100-sxm", "hardware: h100-sxm\nengine: vllm")
    )
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert load_scenario(path).kernels is not None
    path.write_text(text.replace("  attention_dp: [false, true]", "  expert_dtypes: [nvfp4]"))
    with pytest.raises(ConfigError, match=r"search\.expert_dtypes\[0\]: nvfp4 has no measured moe"):
        load_scenario(path)
