"""Measured kernel families: one kernel's latency on a GPU as a smooth function of its shape.

A datasheet roofline, max(FLOPs / peak, bytes / bandwidth), is what a kernel could reach; a real
kernel adds a fixed launch cost, reaches a fraction of the peaks that depends on its shape (a
GEMM of a few rows is bound by its weight traffic and leaves most tensor cores idle; a large
one reaches a steady fraction of the dtype's peak), and overlaps compute with memory traffic
only partly.  Each family here writes that as one SymPy expression:

    t = t_launch + (t_c^q + t_m^q)^(1/q) + extra
    t_c = FLOPs / (eta_c · peak),  t_m = bytes / (eta_m · bandwidth)
    eta = 1 / (1 + exp(-(c · phi)))

where phi are the monomials (up to the family's degree) of the scaled logarithms of the
kernel's shape, c fitted coefficients (one vector for compute, one for memory), q >= 1 the
overlap exponent and ``extra`` a family-specific term (a GEMM's activation-quantisation pass; a
collective's per-rank latency).  Every term is smooth and positive, so the expression is
differentiable in both the shape and the coefficients: :mod:`costmodel.validate.gpu_fit` fits
the coefficients with optax, and the engine model (:mod:`costmodel.model.engine`) substitutes
them.  FLOPs and bytes are the kernel's own counts, and with eta = 1, q -> infinity and no
launch cost the expression is the pure roofline (:attr:`Family.roofline`).

A kernel timed in a loop finds its operands in the GPU's L2 cache when they fit (A100 40 MB,
H100 50 MB, L40S 96 MB): a fraction C^4 / (C^4 + bytes^4) of the traffic moves at a cache rate
W_cache instead.  Both are fitted; the engine model (:mod:`costmodel.model.engine`) sets C = 0,
since a whole forward step streams far more than any cache holds between two uses of a weight.

Shapes (per GPU): ``gemm`` (m x k) · (k x n); ``context_attention`` B sequences of T prompt
tokens, causal; ``generation_attention`` B sequences, one new token against T cached tokens;
``allreduce`` X bytes over g GPUs.  Attention heads h and KV heads h_kv are those on the GPU.
"""

from __future__ import annotations

import itertools
from typing import Literal, NamedTuple

import sympy as sp

from costmodel.model import symbols as sy

# Scaled logarithm of a shape: ln(x) / ln(2^10), so shapes from 1 to 2^20 map to [0, 2] and
# the fitted coefficients are of order one.
LOG_SCALE = sp.log(2**10)

# Kernel shape symbols (per GPU); the others are the model's own (B, T, d_h, b_w, b_a, b_kv,
# tp, X, the peaks and bandwidths).
m = sp.Symbol("m", integer=True, positive=True)  # rows of a GEMM (tokens) [tokens]
n = sy.matmul_out  # output features of a GEMM [elements]
k = sy.matmul_in  # input features of a GEMM [elements]
h = sp.Symbol("h", integer=True, positive=True)  # query heads on the GPU [heads]
h_kv = sp.Symbol("h_kv", integer=True, positive=True)  # key/value heads on the GPU [heads]
b_x = sp.Symbol("b_x", positive=True)  # bytes per GEMM input (activation) element [bytes]
ranks = sy.tp  # GPUs taking part in a collective [GPUs]
payload = sy.payload  # bytes each GPU contributes to an all-reduce [bytes]

GEMM_DEGREE = 3  # degree of the GEMM efficiencies' polynomial in log m, log n, log k
ATTENTION_DEGREE = 2  # in log B, log T, log h, log(h / h_kv), log d_h
SWITCH_SHARPNESS = 8  # exponent of the smooth step where a GEMM's kernel changes with m
GROUP_SHARPNESS = 16  # exponent of the smooth step at a GQA kernel's largest group
CACHE_SHARPNESS = 4  # exponent k of the cache-hit fraction C^k / (C^k + bytes^k)
OUTPUT_BYTES = 2  # GEMM and attention outputs are 16-bit (bf16) in every engine measured


# Where a fit starts the coefficients that the data does not set (physical units).
QUANT_START = 1e-12  # a GEMM's quantisation pass, a block's fixed cost [s per element or block]
FIXED_START = 1e-7  # a kernel switch's or an all-reduce hop's fixed cost [s]
SWITCH_START = 24.0  # rows where a GEMM's kernel changes [tokens]
GROUP_START = 40.0  # largest GQA group of a decode kernel [heads]
CACHE_START_BYTES = 3e7  # cache capacity: an L2's order of size [bytes]
CACHE_START_RATE = 1e13  # cache rate: a few times HBM [bytes/s]
OVERLAP_START = 2.0  # overlap exponent q [1]


class Param(NamedTuple):
    """A fitted coefficient: its symbol and unit; ``lower``, its bound (a fit sets it as
    lower + exp(u); None: any real); ``start``, where a fit starts it (None: 0, or for the launch
    time half the fastest measurement); ``cache``, its part in the cache term, "capacity" or
    "rate" (the engine model switches the term off with a capacity of 0)."""

    symbol: sp.Symbol
    unit: str
    lower: float | None = None
    start: float | None = None
    cache: Literal["capacity", "rate"] | None = None


class Family(NamedTuple):
    """A kernel family: shape symbols, costs, fitted coefficients and latency expressions.

    ``time`` and ``roofline`` are latencies [s] in ``shape``, the precision and hardware
    symbols (``constants``) and, for ``time``, the coefficients ``params``.
    """

    name: str
    shape: tuple[sp.Symbol, ...]
    constants: tuple[sp.Symbol, ...]
    flops: sp.Expr
    bytes: sp.Expr
    params: tuple[Param, ...]
    time: sp.Expr
    roofline: sp.Expr

    @property
    def param_symbols(self) -> tuple[sp.Symbol, ...]:
        """The coefficients' symbols, in fit order."""
        return tuple(p.symbol for p in self.params)

    @property
    def launch(self) -> Param:
        """The fixed launch time t_launch, the first coefficient."""
        return self.params[0]


def monomials(variables: tuple[sp.Expr, ...], degree: int) -> list[sp.Expr]:
    """Every monomial of ``variables`` of total degree 0 to ``degree``, constant first."""
    terms: list[sp.Expr] = [sp.Integer(1)]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(variables, d):
            terms.append(sp.Mul(*combo))
    return terms


def _coefficients(family: str, part: str, count: int) -> tuple[Param, ...]:
    return tuple(Param(sp.Symbol(f"c_{family}_{part}{i}"), "1") for i in range(count))


def _sigmoid(x: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-x))


def _smooth_max(compute: sp.Expr, memory: sp.Expr, q: sp.Symbol) -> sp.Expr:
    """(c^q + m^q)^(1/q) as max · (1 + (min/max)^q)^(1/q): no overflow at large q."""
    larger, smaller = sp.Max(compute, memory), sp.Min(compute, memory)
    return larger * (1 + (smaller / larger) ** q) ** (1 / q)


def _family(
    name: str,
    shape: tuple[sp.Symbol, ...],
    constants: tuple[sp.Symbol, ...],
    logs: tuple[sp.Expr, ...],
    degree: int,
    flops: sp.Expr,
    moved: sp.Expr,
    peak: sp.Symbol,
    bandwidth: sp.Symbol,
    extra: tuple[tuple[Param, sp.Expr], ...] = (),
    cached: bool = True,
) -> Family:
    """Assemble a family: t_launch + smooth roofline with shape-dependent efficiencies + extra."""
    phi = monomials(tuple(sp.log(x) / LOG_SCALE for x in logs), degree)
    memory_coeffs = _coefficients(name, "m", len(phi))
    launch = Param(sp.Symbol(f"t_{name}_launch", positive=True), "s", lower=0.0)
    eta_m = _sigmoid(sum(c.symbol * f for c, f in zip(memory_coeffs, phi, strict=True)))
    params: tuple[Param, ...] = (launch,)
    if cached:
        capacity = Param(
            sp.Symbol(f"C_{name}", positive=True), "bytes", 0.0, CACHE_START_BYTES, "capacity"
        )
        rate = Param(
            sp.Symbol(f"W_{name}_cache", positive=True), "bytes/s", 0.0, CACHE_START_RATE, "rate"
        )
        hit = capacity.symbol**CACHE_SHARPNESS / (
            capacity.symbol**CACHE_SHARPNESS + moved**CACHE_SHARPNESS
        )
        t_m = moved * ((1 - hit) / (eta_m * bandwidth) + hit / rate.symbol)
        params += (capacity, rate)
    else:
        t_m = moved / (eta_m * bandwidth)
    if flops == 0:
        body = t_m
        params += memory_coeffs
        roofline = moved / bandwidth
    else:
        compute_coeffs = _coefficients(name, "c", len(phi))
        q = Param(sp.Symbol(f"q_{name}", positive=True), "1", 1.0, OVERLAP_START)
        eta_c = _sigmoid(sum(c.symbol * f for c, f in zip(compute_coeffs, phi, strict=True)))
        body = _smooth_max(flops / (eta_c * peak), t_m, q.symbol)
        params += (q, *compute_coeffs, *memory_coeffs)
        roofline = sp.Max(flops / peak, moved / bandwidth)
    time = launch.symbol + body + sum((p.symbol * x for p, x in extra), sp.Integer(0))
    params += tuple(p for p, _ in extra)
    return Family(name, shape, constants, flops, moved, params, time, roofline)


SWITCH_ROWS = sp.Symbol("m_gemm_switch", positive=True)  # rows where a GEMM's kernel changes


def kernel_switch(rows: sp.Expr, threshold: sp.Expr) -> sp.Expr:
    """The smooth step r / (1 + r), r = (rows / threshold)^8: 0 well below ``threshold``, 1
    well above [1]."""
    ratio = (rows / threshold) ** SWITCH_SHARPNESS
    return ratio / (1 + ratio)


def gemm() -> Family:
    """(m x k) · (k x n): 2mnk FLOPs; weights b_w·nk, inputs b_x·mk and bf16 outputs moved once;
    plus a_q per input element, the pass that quantises (or converts) the activations; plus
    t_s · r / (1 + r), r = (m / m_s)^8: engines hand GEMMs of few rows to a different kernel
    than the others (vLLM's block-scaled fp8: FlashInfer below 32 rows, DeepGEMM above), whose
    fixed cost differs by t_s from about m_s rows on."""
    quantise = Param(sp.Symbol("a_gemm_quant", positive=True), "s/element", 0.0, QUANT_START)
    switch = Param(sp.Symbol("t_gemm_switch", positive=True), "s", 0.0, FIXED_START)
    rows = Param(SWITCH_ROWS, "tokens", 0.0, SWITCH_START)
    family = _family(
        "gemm",
        (m, n, k),
        (sy.b_w, b_x, sy.peak_matmul, sy.hbm_bandwidth),
        (m, n, k),
        GEMM_DEGREE,
        2 * m * n * k,
        sy.b_w * n * k + b_x * m * k + OUTPUT_BYTES * m * n,
        sy.peak_matmul,
        sy.hbm_bandwidth,
        extra=((quantise, m * k), (switch, kernel_switch(m, rows.symbol))),
    )
    return family._replace(params=(*family.params, rows))


def _per_block(name: str) -> tuple[Param, sp.Expr]:
    """a · B · h_kv: a fixed cost per (sequence, KV head) block of work, which bounds a kernel
    of many short sequences (its traffic and FLOPs are small, its blocks many).  GQA kernels
    give all query heads of a group to one block, so blocks count KV heads."""
    block = Param(sp.Symbol(f"a_{name}_block", positive=True), "s/block", 0.0, QUANT_START)
    return block, sy.B * h_kv


def context_attention() -> Family:
    """Causal prefill attention of B sequences of T tokens, h query and h_kv KV heads of width
    d_h: 2·B·h·T²·d_h FLOPs (QK^T and PV, half the square each); Q and O in bf16, K and V
    written to the cache in b_kv."""
    return _family(
        "context_attention",
        (sy.B, sy.T, h, h_kv, sy.d_h),
        (sy.b_kv, sy.peak_attention, sy.hbm_bandwidth),
        (sy.B, sy.T, h, h / h_kv, sy.d_h),
        ATTENTION_DEGREE,
        2 * sy.B * h * sy.T**2 * sy.d_h,
        sy.B * sy.T * sy.d_h * (2 * OUTPUT_BYTES * h + 2 * sy.b_kv * h_kv),
        sy.peak_attention,
        sy.hbm_bandwidth,
        extra=(_per_block("context_attention"),),
    )


def generation_attention() -> Family:
    """One decode step of B sequences against T cached tokens: 4·B·h·T·d_h FLOPs; the cached
    keys and values (b_kv) read once per KV head, the query and output in bf16.

    A GQA decode kernel shares each KV head's reads among the group's h/h_kv query heads only up
    to a largest group G it supports (TensorRT-LLM's XQA kernels: 32); beyond, it reads the cache
    once per query head.  The KV heads read are h_kv + h · s, with the smooth step
    s = (g/G)^16 / (1 + (g/G)^16) of the group g = h/h_kv; G is fitted (large where no limit
    shows)."""
    group_limit = Param(
        sp.Symbol("G_generation_attention", positive=True), "heads", 0.0, GROUP_START
    )
    ratio = ((h / h_kv) / group_limit.symbol) ** GROUP_SHARPNESS
    heads_read = h_kv + h * ratio / (1 + ratio)
    family = _family(
        "generation_attention",
        (sy.B, sy.T, h, h_kv, sy.d_h),
        (sy.b_kv, sy.peak_attention, sy.hbm_bandwidth),
        (sy.B, sy.T, h, h / h_kv, sy.d_h),
        ATTENTION_DEGREE,
        4 * sy.B * h * sy.T * sy.d_h,
        sy.B * sy.d_h * (2 * sy.b_kv * heads_read * sy.T + 2 * OUTPUT_BYTES * h),
        sy.peak_attention,
        sy.hbm_bandwidth,
        extra=(_per_block("generation_attention"),),
    )
    # G is a coefficient of the traffic, not of a separate term: list it with the others, and
    # let the pure roofline read the cache once per KV head (G -> infinity).
    roofline = family.roofline.xreplace({group_limit.symbol: sp.oo})
    return family._replace(params=(*family.params, group_limit), roofline=roofline)


def allreduce() -> Family:
    """All-reduce of X bytes per GPU over g GPUs: a ring moves 2(g-1)/g · X over each link;
    plus t_hop per GPU beyond the first (the engines' one-shot kernels read every peer)."""
    hop = Param(sp.Symbol("t_allreduce_hop", positive=True), "s", 0.0, FIXED_START)
    return _family(
        "allreduce",
        (payload, ranks),
        (sy.link_bandwidth,),
        (payload, ranks),
        3,
        sp.Integer(0),
        2 * (ranks - 1) / ranks * payload,
        sy.peak_vector,
        sy.link_bandwidth,
        extra=((hop, ranks - 1),),
        cached=False,
    )


FAMILY_BUILDERS = {
    "gemm": gemm,
    "context_attention": context_attention,
    "generation_attention": generation_attention,
    "allreduce": allreduce,
}
FAMILIES = tuple(FAMILY_BUILDERS)

_CACHE: dict[str, Family] = {}


def family(name: str) -> Family:
    """The family ``name`` (built once per process); exported as ``costmodel.kernel_family``."""
    if name not in FAMILY_BUILDERS:
        raise KeyError(f"unknown kernel family {name!r} (known: {', '.join(FAMILIES)})")
    if name not in _CACHE:
        _CACHE[name] = FAMILY_BUILDERS[name]()
    return _CACHE[name]


# Operand formats of the GEMM dtypes measured: weight and input bytes per element and the
# peak the tensor cores run at.  fp8 kernels quantise the activations to fp8; weight-only
# int8/int4 kernels keep bf16 activations and dequantise the weights; nvfp4 stores 4-bit
# values with one fp8 scale per 16 (NVIDIA's NVFP4 format), on both operands.
class GemmFormat(NamedTuple):
    """Operand bytes [bytes per element] and tensor-core peak dtype of a GEMM dtype."""

    weight_bytes: sp.Rational
    input_bytes: sp.Rational
    peak: str


GEMM_FORMATS = {
    "bfloat16": GemmFormat(sp.Integer(2), sp.Integer(2), "bf16"),
    "fp8": GemmFormat(sp.Integer(1), sp.Integer(1), "fp8"),
    "fp8_block": GemmFormat(sp.Integer(1), sp.Integer(1), "fp8"),
    "int8_wo": GemmFormat(sp.Integer(1), sp.Integer(2), "bf16"),
    "int4_wo": GemmFormat(sp.Rational(1, 2), sp.Integer(2), "bf16"),
    "nvfp4": GemmFormat(sp.Rational(9, 16), sp.Rational(9, 16), "fp4"),
}

# KV-cache bytes per element of the attention dtypes measured.
KV_BYTES = {"bfloat16": sp.Integer(2), "fp8": sp.Integer(1)}

# The model's weight and KV dtypes (costmodel.model.dtypes) -> the measured dtype that runs them.
WEIGHT_GEMM_DTYPE = {
    "bf16": "bfloat16",
    "fp16": "bfloat16",
    "fp8": "fp8",
    "int8": "int8_wo",
    "int4": "int4_wo",
}
KV_ATTENTION_DTYPE = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8"}


kernel_family = family  # the public name: costmodel.kernel_family
