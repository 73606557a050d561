"""Number formats: exact bytes per element of the block-scaled weight formats, the compute
dtype each runs at, and the peak a part without that dtype's units falls back to."""

from __future__ import annotations

from typing import get_args

import pytest
import sympy as sp

from costmodel.config.load import hardware_catalogue
from costmodel.config.specs import ComputeDtype, PeakFlops, SearchSpace, WeightDtype
from costmodel.model.dtypes import (
    KV_DTYPES,
    MATMUL_COMPUTE_DTYPE,
    WEIGHT_DTYPES,
    UnknownDtypeError,
    bytes_per_element,
    matmul_compute_dtype,
)

HARDWARE = hardware_catalogue()
T = 10**12
BLOCK_FORMATS = ("fp8_block", "nvfp4", "mxfp4")


def test_nvfp4_bytes():
    """NVIDIA's NVFP4 (Blackwell): FP4 E2M1 values (4 bits), one FP8 E4M3 scale (1 byte) per
    16 values; its per-tensor fp32 scale is a few bytes per tensor and not counted."""
    assert bytes_per_element("nvfp4") == sp.Rational(1, 2) + sp.Rational(1, 16)
    assert bytes_per_element("nvfp4") == sp.Rational(9, 16)


def test_mxfp4_bytes():
    """OCP Microscaling Formats (MX) Specification v1.0, MXFP4: FP4 E2M1 elements, one shared
    8-bit E8M0 scale per block of 32 elements."""
    assert bytes_per_element("mxfp4") == sp.Rational(1, 2) + sp.Rational(1, 32)
    assert bytes_per_element("mxfp4") == sp.Rational(17, 32)


def test_fp8_block_bytes():
    """DeepSeek-V3 (technical report, FP8 training): fp8 E4M3 weights with one fp32 scale per
    128x128 block."""
    assert bytes_per_element("fp8_block") == 1 + sp.Rational(4, 128 * 128)
    assert bytes_per_element("fp8_block") == sp.Rational(4097, 4096)


@pytest.mark.parametrize("dtype", BLOCK_FORMATS)
@pytest.mark.parametrize("group", [16, 32, 64, 128, 4096])
def test_a_format_block_is_not_the_int4_group(dtype: str, group: int):
    assert bytes_per_element(dtype, group) == bytes_per_element(dtype)


def test_the_other_formats_are_unchanged():
    assert bytes_per_element("int4", 128) == sp.Rational(33, 64)
    assert bytes_per_element("int4", 32) == sp.Rational(1, 2) + sp.Rational(2, 32)
    assert bytes_per_element("fp8") == bytes_per_element("int8") == 1
    assert bytes_per_element("bf16") == bytes_per_element("fp16") == 2


def test_scales_cost_more_than_the_bare_values_and_less_than_the_next_width():
    assert sp.Rational(1, 2) < bytes_per_element("mxfp4") < bytes_per_element("nvfp4") < 1
    assert 1 < bytes_per_element("fp8_block") < 2
    # NVFP4's block of 16 costs 1/32 byte per element more than MXFP4's block of 32.
    assert bytes_per_element("nvfp4") - bytes_per_element("mxfp4") == sp.Rational(1, 32)


def test_compute_dtypes():
    assert matmul_compute_dtype("fp8_block") == "fp8"
    assert matmul_compute_dtype("nvfp4") == "fp4"
    assert matmul_compute_dtype("mxfp4") == "fp4"
    assert matmul_compute_dtype("int4") == "bf16"  # weight-only: unchanged


def test_every_weight_format_has_a_compute_dtype_and_a_peak_field():
    assert set(MATMUL_COMPUTE_DTYPE) == set(WEIGHT_DTYPES)
    for weight_dtype in WEIGHT_DTYPES:
        compute = matmul_compute_dtype(weight_dtype)
        assert compute in PeakFlops.model_fields
        assert compute in get_args(ComputeDtype)


def test_the_config_literals_list_the_formats():
    assert set(get_args(WeightDtype)) == set(WEIGHT_DTYPES)
    assert set(BLOCK_FORMATS) <= set(WEIGHT_DTYPES)
    assert not set(BLOCK_FORMATS) & set(KV_DTYPES)  # KV-cache formats stay as they are
    search = SearchSpace(weight_dtypes=list(BLOCK_FORMATS))
    assert search.weight_dtypes == list(BLOCK_FORMATS)


def test_unknown_formats_are_refused():
    with pytest.raises(UnknownDtypeError, match="nvfp8"):
        bytes_per_element("nvfp8")
    with pytest.raises(UnknownDtypeError, match="unknown weight dtype"):
        matmul_compute_dtype("fp6")


@pytest.mark.parametrize(
    ("hardware", "weight_dtype", "tflops"),
    [
        ("b200", "nvfp4", 9000),  # fp4 tensor cores
        ("b200", "mxfp4", 9000),
        ("b300", "nvfp4", 13500),
        ("gb200", "mxfp4", 10000),
        ("mi355x", "mxfp4", 10100),
        ("rtx-pro-6000", "nvfp4", 2000),
        ("b200", "fp8_block", 4500),  # fp8 tensor cores
        ("h100-sxm", "fp8_block", 1979),
        ("mi325x", "fp8_block", 2614.9),
    ],
)
def test_a_part_with_the_units_runs_at_their_peak(hardware: str, weight_dtype: str, tflops):
    assert HARDWARE[hardware].matmul_peak(weight_dtype) == sp.Rational(str(tflops)) * T


@pytest.mark.parametrize(
    ("hardware", "weight_dtype"),
    [
        ("h100-sxm", "nvfp4"),  # Hopper: no fp4 units, FP4 checkpoints dequantised to bf16
        ("h200", "mxfp4"),
        ("h20", "nvfp4"),
        ("mi300x", "mxfp4"),
        ("mi325x", "nvfp4"),
        ("tpu-v5e", "mxfp4"),
        ("tpu-v6e", "nvfp4"),
        ("a100-sxm-80gb", "fp8_block"),  # no fp8 units either
        ("tpu-v5e", "fp8_block"),
    ],
)
def test_a_part_without_the_units_falls_back_to_bf16(hardware: str, weight_dtype: str):
    spec = HARDWARE[hardware]
    assert getattr(spec.peak_tflops, matmul_compute_dtype(weight_dtype)) is None
    assert spec.matmul_peak(weight_dtype) == spec.peak_flops("bf16")
    assert spec.matmul_peak(weight_dtype) == spec.matmul_peak("int4")  # as weight-only formats


def test_no_part_runs_a_format_slower_than_bf16():
    for name, spec in HARDWARE.items():
        for weight_dtype in WEIGHT_DTYPES:
            assert spec.matmul_peak(weight_dtype) >= spec.peak_flops("bf16"), (name, weight_dtype)


def test_fp4_weights_read_a_quarter_of_bf16_plus_their_scales():
    bf16 = bytes_per_element("bf16")
    assert bytes_per_element("nvfp4") / bf16 == sp.Rational(9, 32)
    assert bytes_per_element("mxfp4") / bf16 == sp.Rational(17, 64)
