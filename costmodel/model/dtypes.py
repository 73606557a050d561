"""Number formats: bytes per element (exact) and which hardware peak a matmul runs at."""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

# Bytes per element of each storage format, before any scale overhead.
STORAGE_BYTES: dict[str, sp.Rational] = {
    "fp32": sp.Integer(4),
    "bf16": sp.Integer(2),
    "fp16": sp.Integer(2),
    "fp8": sp.Integer(1),
    "int8": sp.Integer(1),
    "int4": sp.Rational(1, 2),
    "fp8_block": sp.Integer(1),  # fp8 E4M3 values
    "nvfp4": sp.Rational(1, 2),  # FP4 E2M1 values
    "mxfp4": sp.Rational(1, 2),  # FP4 E2M1 values
}

WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp8_block", "nvfp4", "mxfp4")
KV_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
ACTIVATION_DTYPES = ("fp32", "bf16", "fp16")

# int4 is stored in groups of `group_size` elements sharing one scale; the scale is fp16
# (2 bytes), as in GPTQ/AWQ-style checkpoints.  fp8, int8 and the 16-bit formats use
# per-channel or per-tensor scales whose overhead is negligible and is not counted.
GROUP_SCALE_BYTES = sp.Integer(2)
DEFAULT_GROUP_SIZE = 128


class BlockScale(NamedTuple):
    """A block-scaled format's fixed scaling: ``elements`` stored values share one scale of
    ``scale_bytes`` [bytes]."""

    elements: int
    scale_bytes: sp.Rational


# Block-scaled formats, whose block is fixed by the format (a config's int4 `group_size` does
# not apply to them).  A second, per-tensor fp32 scale (NVFP4's global scale; a per-tensor
# scale of a checkpoint) is a handful of bytes per tensor and is not counted.
#   fp8_block: DeepSeek-V3's recipe (DeepSeek-V3 technical report, sec. 3.3): fp8 E4M3 weights
#       with one fp32 scale per 128x128 block, 1 + 4/16384 bytes; activations are quantised
#       on the fly in 1x128 tiles with fp32 scales (the matmul's input, not stored weights).
#   nvfp4: NVIDIA's NVFP4 (Blackwell): FP4 E2M1 values, one FP8 E4M3 scale per 16 values,
#       plus a per-tensor fp32 scale: 1/2 + 1/16 = 9/16 bytes.
#   mxfp4: OCP Microscaling Formats (MX) Specification v1.0, MXFP4: FP4 E2M1 elements, one
#       8-bit E8M0 (power-of-two) shared scale per block of 32: 1/2 + 1/32 = 17/32 bytes.
BLOCK_SCALES: dict[str, BlockScale] = {
    "fp8_block": BlockScale(128 * 128, sp.Integer(4)),
    "nvfp4": BlockScale(16, sp.Integer(1)),
    "mxfp4": BlockScale(32, sp.Integer(1)),
}

# Compute dtype of a weight matmul given the weight storage dtype: fp8 weights run fp8 x fp8
# (activations quantised on the fly) at the fp8 peak, fp8_block too (its per-block scales
# are applied in the kernel's epilogue); int8 and int4 weights are weight-only quantisation,
# dequantised in registers and multiplied at the 16-bit peak; nvfp4 and mxfp4 run on 4-bit
# tensor cores at the fp4 peak.  A part without the dtype's units falls back to its bf16 peak
# (HardwareSpec.matmul_peak): the weights are dequantised, as weight-only formats are.
MATMUL_COMPUTE_DTYPE: dict[str, str] = {
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "int8": "bf16",
    "int4": "bf16",
    "fp8_block": "fp8",
    "nvfp4": "fp4",
    "mxfp4": "fp4",
}


class UnknownDtypeError(ValueError):
    """A dtype name that the model does not know."""


def bytes_per_element(dtype: str, group_size: int = DEFAULT_GROUP_SIZE) -> sp.Rational:
    """Exact bytes per stored element of ``dtype``, per-group or per-block scales included
    [bytes].

    ``group_size`` is int4's group (one fp16 scale per group); the block-scaled formats have
    their own fixed block (:data:`BLOCK_SCALES`).
    ``bytes_per_element("int4", 128) == 1/2 + 2/128 == 33/64``;
    ``bytes_per_element("nvfp4") == 1/2 + 1/16 == 9/16``.
    """
    if dtype not in STORAGE_BYTES:
        raise UnknownDtypeError(f"unknown dtype {dtype!r} (known: {', '.join(STORAGE_BYTES)})")
    base = STORAGE_BYTES[dtype]
    if dtype == "int4":
        return base + GROUP_SCALE_BYTES / sp.Integer(group_size)
    if dtype in BLOCK_SCALES:
        block = BLOCK_SCALES[dtype]
        return base + block.scale_bytes / sp.Integer(block.elements)
    return base


def matmul_compute_dtype(weight_dtype: str) -> str:
    """Hardware peak a weight matmul runs at for the given weight storage dtype."""
    if weight_dtype not in MATMUL_COMPUTE_DTYPE:
        raise UnknownDtypeError(
            f"unknown weight dtype {weight_dtype!r} (known: {', '.join(MATMUL_COMPUTE_DTYPE)})"
        )
    return MATMUL_COMPUTE_DTYPE[weight_dtype]
