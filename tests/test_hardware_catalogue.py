"""Blackwell entries of the hardware catalogue (B200, GB200) and the optional fp4 peak."""

from __future__ import annotations

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.load import hardware_catalogue, load_hardware
from costmodel.config.specs import HardwareSpec

T, G = 10**12, 10**9

# Per-GPU dense figures as written in the YAML: peaks [TFLOP/s], bandwidth [TB/s], capacity
# [GB], link [GB/s per direction], latency [us].
EXPECTED = {
    "b200": {
        "peaks": {"bf16": 2250, "fp16": 2250, "fp8": 4500, "int8": 4500, "fp4": 9000, "fp32": 75},
        "hbm_tb_s": 8,
        "hbm_gb": 180,
        "link_gb_s": 900,
        "latency_us": 2,
    },
    "gb200": {
        "peaks": {"bf16": 2500, "fp16": 2500, "fp8": 5000, "int8": 5000, "fp4": 10000, "fp32": 80},
        "hbm_tb_s": 8,
        "hbm_gb": 186,
        "link_gb_s": 900,
        "latency_us": 2,
    },
}


def _load(name: str) -> HardwareSpec:
    return load_hardware(catalogue.path("hardware", name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_blackwell_figures_are_exact(name: str):
    spec = _load(name)
    expected = EXPECTED[name]
    assert spec.name == name
    for dtype, tflops in expected["peaks"].items():
        assert spec.peak_flops(dtype) == sp.Integer(tflops * T), dtype
    assert spec.hbm_bandwidth == sp.Integer(expected["hbm_tb_s"] * T)
    assert spec.hbm_capacity == sp.Integer(expected["hbm_gb"] * G)
    assert spec.usable_memory == sp.Rational(9, 10) * expected["hbm_gb"] * G
    assert spec.link_bandwidth == sp.Integer(expected["link_gb_s"] * G)
    assert spec.link_latency == sp.Rational(expected["latency_us"], 10**6)
    assert spec.ridge_point("bf16") == sp.Rational(expected["peaks"]["bf16"], expected["hbm_tb_s"])
    eff = spec.efficiency
    assert (eff.compute, eff.memory, eff.kernel_overhead_us) == (1.0, 1.0, 0.0)
    assert eff.time_model() == HardwareSpec.model_fields["efficiency"].default.time_model()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_blackwell_peaks_rise_as_precision_falls(name: str):
    spec = _load(name)
    assert spec.peak_flops("fp4") > spec.peak_flops("fp8") > spec.peak_flops("bf16")
    assert spec.peak_flops("fp8") == 2 * spec.peak_flops("bf16")
    assert spec.peak_flops("fp4") == 2 * spec.peak_flops("fp8")
    assert spec.matmul_peak("fp8") == spec.peak_flops("fp8")


def test_catalogue_lists_both_and_matches_the_files():
    hardware = hardware_catalogue()
    assert {"b200", "gb200"} <= set(hardware)
    for name in EXPECTED:
        assert hardware[name] == _load(name)


def test_a_spec_without_fp4_still_loads():
    h100 = _load("h100-sxm")
    assert h100.peak_tflops.fp4 is None
    with pytest.raises(ValueError, match="no fp4 peak"):
        h100.peak_flops("fp4")
    assert hardware_catalogue()["a100-sxm-80gb"].peak_tflops.fp4 is None
