"""The hardware catalogue: datasheet figures of the newer parts (Blackwell, Blackwell Ultra,
CDNA 3/4, Hopper H20, RTX PRO, TPUs), invariants every entry keeps, and the two link tiers."""

from __future__ import annotations

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.load import hardware_catalogue, load_hardware
from costmodel.config.specs import ConfigError, HardwareSpec
from costmodel.model import symbols as sy

T, G = 10**12, 10**9
HARDWARE = hardware_catalogue()
TENSOR_DTYPES = ("bf16", "fp16", "fp8", "int8", "fp4")


def _q(value) -> sp.Rational:
    """A decimal as written in a datasheet (e.g. 1307.4), exactly."""
    return sp.Rational(str(value))


# Per-device dense figures, each from the source its YAML comment names: peaks [TFLOP/s]
# (None: no such units, or no figure the source gives), HBM [TB/s] and [GB], fast link
# [GB/s per direction] and latency [us], and the scale-out tier (domain, GB/s, us).
EXPECTED = {
    # NVIDIA HGX B200 sheet: 8-GPU sparse totals / 8 / 2; DGX B200: 8 x ConnectX-7 400 Gb/s.
    "b200": {
        "peaks": {"bf16": 2250, "fp16": 2250, "fp8": 4500, "int8": 4500, "fp4": 9000, "fp32": 75},
        "hbm": (8, 180),
        "link": (900, 2),
        "scale_out": (8, 50, 5),
    },
    # NVIDIA GB200 NVL72 sheet: superchip sparse figures / 2 / 2; one 72-GPU NVLink domain.
    "gb200": {
        "peaks": {"bf16": 2500, "fp16": 2500, "fp8": 5000, "int8": 5000, "fp4": 10000, "fp32": 80},
        "hbm": (8, 186),
        "link": (900, 2),
        "scale_out": (72, 50, 5),
    },
    # NVIDIA HGX page, HGX B300: FP4 144 | 108 PFLOPS sparse | dense per 8 GPUs; ConnectX-8.
    "b300": {
        "peaks": {"bf16": 2250, "fp16": 2250, "fp8": 4500, "int8": None, "fp4": 13500, "fp32": 75},
        "hbm": (8, 288),
        "link": (900, 2),
        "scale_out": (8, 100, 5),
    },
    # AMD MI325X product page (dense).
    "mi325x": {
        "peaks": {
            "bf16": 1307.4,
            "fp16": 1307.4,
            "fp8": 2614.9,
            "int8": 2614.9,
            "fp4": None,
            "fp32": 163.4,
        },
        "hbm": (6, 256),
        "link": (64, 3),
        "scale_out": (8, 50, 5),
    },
    # AMD MI355X product page (dense; MXFP4 10.1 PFLOPS).
    "mi355x": {
        "peaks": {
            "bf16": 2500,
            "fp16": 2500,
            "fp8": 5000,
            "int8": 5000,
            "fp4": 10100,
            "fp32": 157.3,
        },
        "hbm": (8, 288),
        "link": (76.8, 3),
        "scale_out": (8, 50, 5),
    },
    # NVIDIA H20 spec sheet as reported (no public datasheet).
    "h20": {
        "peaks": {"bf16": 148, "fp16": 148, "fp8": 296, "int8": 296, "fp4": None, "fp32": 44},
        "hbm": (4.0, 96),
        "link": (450, 2),
        "scale_out": (8, 50, 5),
    },
    # NVIDIA RTX PRO 6000 Blackwell Server Edition sheet: FP4 4 PFLOPS sparse; PCIe only.
    "rtx-pro-6000": {
        "peaks": {"bf16": 500, "fp16": 500, "fp8": 1000, "int8": 1000, "fp4": 2000, "fp32": 120},
        "hbm": (1.597, 96),
        "link": (64, 5),
        "scale_out": None,
    },
    # Google Cloud TPU docs: per-chip bf16/int8 peaks, HBM, ICI (bidirectional per link as the
    # per-direction ring bandwidth), largest ICI slice, DCN per chip.
    "tpu-v5e": {
        "peaks": {"bf16": 197, "fp16": 197, "fp8": None, "int8": 393, "fp4": None, "fp32": 6.1},
        "hbm": (0.819, 16),
        "link": (100, 1),
        "scale_out": (256, 3.125, 10),
    },
    "tpu-v5p": {
        "peaks": {"bf16": 459, "fp16": 459, "fp8": 459, "int8": 918, "fp4": None, "fp32": 14.3},
        "hbm": (2.765, 95),
        "link": (200, 1),
        "scale_out": (6144, 6.25, 10),
    },
    "tpu-v6e": {
        "peaks": {"bf16": 918, "fp16": 918, "fp8": None, "int8": 1836, "fp4": None, "fp32": 28.7},
        "hbm": (1.638, 32),
        "link": (200, 1),
        "scale_out": (256, 12.5, 10),
    },
}

# Devices with two link tiers, the fast one reaching one board, rack or pod.
TIERED = sorted(name for name, spec in HARDWARE.items() if spec.link_domain is not None)
ACCELERATORS = sorted(name for name in HARDWARE if not name.startswith("cpu-"))


def _load(name: str) -> HardwareSpec:
    return load_hardware(catalogue.path("hardware", name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_figures_are_the_sources(name: str):
    spec = _load(name)
    expected = EXPECTED[name]
    assert spec.name == name
    for dtype, tflops in expected["peaks"].items():
        if tflops is None:
            assert getattr(spec.peak_tflops, dtype) is None, dtype
        else:
            assert spec.peak_flops(dtype) == _q(tflops) * T, dtype
    tb_s, gb = expected["hbm"]
    assert spec.hbm_bandwidth == _q(tb_s) * T
    assert spec.hbm_capacity == _q(gb) * G
    assert spec.usable_memory == sp.Rational(9, 10) * _q(gb) * G
    gb_s, us = expected["link"]
    assert spec.link_bandwidth == _q(gb_s) * G
    assert spec.link_latency == _q(us) / 10**6
    if expected["scale_out"] is None:
        assert spec.link_domain is None
    else:
        domain, out_gb_s, out_us = expected["scale_out"]
        assert spec.link_domain == domain
        assert spec.link(domain + 1) == (_q(out_gb_s) * G, _q(out_us) / 10**6)
    assert spec.ridge_point("bf16") == _q(expected["peaks"]["bf16"]) * T / (_q(tb_s) * T)
    eff = spec.efficiency
    assert (eff.compute, eff.memory, eff.kernel_overhead_us) == (1.0, 1.0, 0.0)
    assert eff.time_model() == HardwareSpec.model_fields["efficiency"].default.time_model()


def test_catalogue_lists_the_files():
    assert set(EXPECTED) <= set(HARDWARE)
    for name in EXPECTED:
        assert HARDWARE[name] == _load(name)


@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_every_figure_is_positive(name: str):
    spec = HARDWARE[name]
    for dtype, tflops in spec.peak_tflops.model_dump().items():
        assert tflops is None or tflops > 0, dtype
    assert spec.hbm_bandwidth > 0 and spec.hbm_capacity > 0
    assert spec.link_bandwidth > 0 and spec.link_latency >= 0
    assert 0 < spec.usable_memory < spec.hbm_capacity
    if spec.link_domain is not None:
        bandwidth, latency = spec.link(spec.link_domain + 1)
        assert spec.link_domain >= 2 and bandwidth > 0 and latency > 0


@pytest.mark.parametrize("name", ACCELERATORS)
def test_peaks_rise_as_precision_falls(name: str):
    """fp4 >= fp8 >= bf16 == fp16 and int8 >= bf16 where the part has them; the vector peak
    is far below the tensor peak."""
    spec = HARDWARE[name]
    peak = {d: getattr(spec.peak_tflops, d) for d in TENSOR_DTYPES}
    assert peak["fp16"] == peak["bf16"]
    if peak["fp8"] is not None:
        assert peak["fp8"] >= peak["bf16"]
    if peak["int8"] is not None:
        assert peak["int8"] >= peak["bf16"]
    if peak["fp4"] is not None:
        assert peak["fp8"] is not None and peak["fp4"] >= peak["fp8"]
    assert spec.peak_tflops.fp32 < spec.peak_tflops.bf16 / 2


@pytest.mark.parametrize("name", ["b200", "gb200"])
def test_blackwell_doubles_per_halving(name: str):
    spec = HARDWARE[name]
    assert spec.peak_flops("fp8") == 2 * spec.peak_flops("bf16")
    assert spec.peak_flops("fp4") == 2 * spec.peak_flops("fp8")


def test_blackwell_ultra_fp4_beats_blackwell_and_the_rest_matches():
    b200, b300 = HARDWARE["b200"], HARDWARE["b300"]
    assert b300.peak_flops("fp4") > b200.peak_flops("fp4")
    for dtype in ("bf16", "fp8", "fp32"):
        assert b300.peak_flops(dtype) == b200.peak_flops(dtype), dtype
    assert b300.hbm_capacity > b200.hbm_capacity
    assert b300.hbm_bandwidth == b200.hbm_bandwidth
    assert b300.link(9)[0] == 2 * b200.link(9)[0]  # ConnectX-8 800 Gb/s vs ConnectX-7 400 Gb/s


def test_refreshes_keep_their_predecessors_compute():
    """MI325X is MI300X's compute with HBM3E; H20 is a cut-down Hopper below H100."""
    mi300x, mi325x = HARDWARE["mi300x"], HARDWARE["mi325x"]
    for dtype in ("bf16", "fp8", "fp32"):
        assert mi325x.peak_flops(dtype) == pytest.approx(float(mi300x.peak_flops(dtype)), rel=1e-3)
    assert mi325x.hbm_capacity > mi300x.hbm_capacity
    assert mi325x.hbm_bandwidth > mi300x.hbm_bandwidth
    h20, h100 = HARDWARE["h20"], HARDWARE["h100-sxm"]
    assert h20.peak_flops("bf16") < h100.peak_flops("bf16") / 5
    assert h20.hbm_bandwidth > h100.hbm_bandwidth and h20.hbm_capacity > h100.hbm_capacity


@pytest.mark.parametrize("name", ACCELERATORS)
def test_ridge_points_are_plausible(name: str):
    """Datacentre parts need tens to hundreds of FLOPs per byte at their bf16 peak."""
    ridge = HARDWARE[name].ridge_point("bf16")
    assert 30 <= ridge <= 600
    for dtype in TENSOR_DTYPES:
        if getattr(HARDWARE[name].peak_tflops, dtype) is not None:
            assert HARDWARE[name].ridge_point(dtype) >= ridge, dtype


def test_tpus_have_no_fast_fp8_and_no_fp4():
    """v5e and v6e list bf16 and int8 only; v5p's fp8 runs at its bf16 rate."""
    for name in ("tpu-v5e", "tpu-v6e"):
        assert HARDWARE[name].peak_tflops.fp8 is None
    v5p = HARDWARE["tpu-v5p"]
    assert v5p.peak_flops("fp8") == v5p.peak_flops("bf16")
    for name in ("tpu-v5e", "tpu-v5p", "tpu-v6e"):
        tpu = HARDWARE[name]
        assert tpu.peak_tflops.fp4 is None
        assert tpu.peak_flops("int8") == pytest.approx(2 * float(tpu.peak_flops("bf16")), rel=3e-3)
        assert tpu.matmul_peak("fp8") == tpu.peak_flops("bf16")


def test_the_tiers_cover_the_multi_device_parts():
    assert {"b200", "b300", "gb200", "h100-sxm", "h200", "h20", "mi325x", "mi355x"} <= set(TIERED)
    assert {"tpu-v5e", "tpu-v5p", "tpu-v6e"} <= set(TIERED)
    assert HARDWARE["gb200"].link_domain == 72
    assert HARDWARE["cpu-epyc-2core"].link_domain is None


@pytest.mark.parametrize("name", TIERED)
def test_scale_out_is_slower_than_the_fast_tier(name: str):
    spec = HARDWARE[name]
    fast = spec.link(1)
    out = spec.link(spec.link_domain + 1)
    assert fast == (spec.link_bandwidth, spec.link_latency)
    assert out[0] < fast[0]
    assert out[1] >= fast[1]


@pytest.mark.parametrize("name", TIERED)
def test_link_switches_exactly_at_the_domain(name: str):
    spec = HARDWARE[name]
    fast = (spec.link_bandwidth, spec.link_latency)
    domain = spec.link_domain
    assert spec.link(1) == spec.link(2) == spec.link(domain) == fast
    out = spec.link(domain + 1)
    assert out != fast
    assert spec.link(2 * domain) == spec.link(10 * domain) == out


@pytest.mark.parametrize("name", ["h100-pcie", "l40s", "mi300x", "rtx-pro-6000", "cpu-epyc-2core"])
def test_one_tier_reaches_every_device(name: str):
    spec = HARDWARE[name]
    fast = (spec.link_bandwidth, spec.link_latency)
    assert spec.link(1) == spec.link(8) == spec.link(65536) == fast


def test_values_take_the_link_of_the_degree():
    gb200 = HARDWARE["gb200"]
    assert gb200.values("bf16") == gb200.values("bf16", degree=1)
    within = gb200.values("fp8", degree=72)
    assert (within[sy.link_bandwidth], within[sy.link_latency]) == (900 * G, sp.Rational(2, 10**6))
    beyond = gb200.values("fp8", calibrated=False, degree=73)
    assert (beyond[sy.link_bandwidth], beyond[sy.link_latency]) == (50 * G, sp.Rational(5, 10**6))
    for symbol in (sy.peak_matmul, sy.peak_attention, sy.peak_vector, sy.hbm_bandwidth):
        assert within[symbol] == beyond[symbol]


@pytest.mark.parametrize("degree", [0, -1, 1.5, True])
def test_link_refuses_a_non_degree(degree):
    with pytest.raises(ValueError, match="whole number of devices"):
        HARDWARE["gb200"].link(degree)


TIER_LINES = (
    "link_domain: 8\nscale_out_bandwidth_gb_s: 50\nscale_out_latency_us: 5\n",
    "link_domain: 8\n",
    "scale_out_bandwidth_gb_s: 50\nscale_out_latency_us: 5\n",
    "link_domain: 8\nscale_out_latency_us: 5\n",
)


@pytest.mark.parametrize("lines", TIER_LINES[1:])
def test_the_tier_fields_come_together(tmp_path, lines: str):
    text = catalogue.path("hardware", "l40s").read_text() + lines
    path = tmp_path / "tiers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"go together .*missing: .*(link_domain|scale_out)"):
        load_hardware(path)


def test_a_spec_with_all_tier_fields_loads(tmp_path):
    path = tmp_path / "tiers.yaml"
    path.write_text(catalogue.path("hardware", "l40s").read_text() + TIER_LINES[0])
    spec = load_hardware(path)
    assert spec.link(8) == (32 * G, sp.Rational(5, 10**6))
    assert spec.link(9) == (50 * G, sp.Rational(5, 10**6))


def test_a_spec_without_fp4_still_loads():
    h100 = _load("h100-sxm")
    assert h100.peak_tflops.fp4 is None
    with pytest.raises(ValueError, match="no fp4 peak"):
        h100.peak_flops("fp4")
    assert HARDWARE["a100-sxm-80gb"].peak_tflops.fp4 is None
