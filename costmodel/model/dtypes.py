"""Number formats: bytes per element (exact) and which hardware peak a matmul runs at."""

from __future__ import annotations

import sympy as sp

# Bytes per element of each storage format, before any scale overhead.
STORAGE_BYTES: dict[str, sp.Rational] = {
    "fp32": sp.Integer(4),
    "bf16": sp.Integer(2),
    "fp16": sp.Integer(2),
    "fp8": sp.Integer(1),
    "int8": sp.Integer(1),
    "int4": sp.Rational(1, 2),
}

WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
KV_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
ACTIVATION_DTYPES = ("fp32", "bf16", "fp16")

# int4 is stored in groups of `group_size` elements sharing one scale; the scale is fp16
# (2 bytes), as in GPTQ/AWQ-style checkpoints.  Other formats use per-channel or per-tensor
# scales whose overhead is negligible and is not counted.
GROUP_SCALE_BYTES = sp.Integer(2)
DEFAULT_GROUP_SIZE = 128

# Compute dtype of a weight matmul given the weight storage dtype: fp8 weights run fp8 x fp8
# (activations quantised on the fly) at the fp8 peak; int8 and int4 weights are weight-only
# quantisation, dequantised in registers and multiplied at the 16-bit peak.
MATMUL_COMPUTE_DTYPE: dict[str, str] = {
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "int8": "bf16",
    "int4": "bf16",
}


class UnknownDtypeError(ValueError):
    """A dtype name that the model does not know."""


def bytes_per_element(dtype: str, group_size: int = DEFAULT_GROUP_SIZE) -> sp.Rational:
    """Exact bytes per stored element of ``dtype``, per-group scale overhead included [bytes].

    ``bytes_per_element("int4", 128) == 1/2 + 2/128 == 33/64``.
    """
    if dtype not in STORAGE_BYTES:
        raise UnknownDtypeError(f"unknown dtype {dtype!r} (known: {', '.join(STORAGE_BYTES)})")
    base = STORAGE_BYTES[dtype]
    if dtype == "int4":
        return base + GROUP_SCALE_BYTES / sp.Integer(group_size)
    return base


def matmul_compute_dtype(weight_dtype: str) -> str:
    """Hardware peak a weight matmul runs at for the given weight storage dtype."""
    if weight_dtype not in MATMUL_COMPUTE_DTYPE:
        raise UnknownDtypeError(
            f"unknown weight dtype {weight_dtype!r} (known: {', '.join(MATMUL_COMPUTE_DTYPE)})"
        )
    return MATMUL_COMPUTE_DTYPE[weight_dtype]
