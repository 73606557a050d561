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

Two more families describe Mixture-of-Experts and multi-head latent attention (MLA) models;
their FLOPs and bytes are the model's own (:mod:`costmodel.model.moe`,
:func:`costmodel.model.layers.attention_block`), with the shapes substituted:

* ``moe``: one MoE layer's routed experts as an engine's fused kernel runs them on one GPU, N
  tokens in (every token of the replica: tensor-parallel attention), hidden width D, experts of
  width F_e, top-k k_e of E experts, the experts split over ep GPUs and each expert's width
  over tp_e more (the model's tp = tp_e·ep), balanced routing (rho_e = 1);
* ``mla_context`` and ``mla_generation``: the MLA attention kernel alone (prefill up-projected,
  decode absorbed), B sequences of S prompt tokens or one token against T cached ones, h heads
  on the GPU, DeepSeek-V3's widths (:data:`MLA_DIMS`);
* ``mla_context_module`` and ``mla_generation_module``: the whole attention block (projections,
  norms, RoPE, cache write, attention) on one GPU holding h heads, its all-reduce left out (the
  block as the model writes it: its input RMSNorm and residual add are counted, which an
  engine's timed module may run elsewhere; both are a few bytes per token and hidden unit).

The MLA families have no cache term: their tables do not pin it down (a fit sent the cache rate
past any bound), and their fits reach the same held-out errors without it.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Literal, NamedTuple

import sympy as sp

from costmodel.model import layers, phase
from costmodel.model import moe as moe_layer
from costmodel.model import symbols as sy
from costmodel.model.roofline import compute_time

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

tokens_moe = sp.Symbol("N", integer=True, positive=True)  # tokens into an MoE layer [tokens]
tp_expert = sp.Symbol("tp_e", integer=True, positive=True)  # GPUs one expert splits over [GPUs]

GEMM_DEGREE = 3  # degree of the GEMM efficiencies' polynomial in log m, log n, log k
ATTENTION_DEGREE = 2  # in log B, log T, log h, log(h / h_kv), log d_h
MOE_DEGREE = 2  # in log(rows per touched expert), log D, log(F_e·ep/tp), log(E/ep)
MLA_DEGREE = 2  # in log B, log S (or T), log h
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
    compute: sp.Expr | None = None,
) -> Family:
    """Assemble a family: t_launch + smooth roofline with shape-dependent efficiencies + extra.

    ``compute`` is the compute time at the peaks [s] when the kernel's FLOPs run on more than
    one unit (default: ``flops / peak``)."""
    compute = flops / peak if compute is None else compute
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
        body = _smooth_max(compute / eta_c, t_m, q.symbol)
        params += (q, *compute_coeffs, *memory_coeffs)
        roofline = sp.Max(compute, moved / bandwidth)
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


def _substituted(expr: sp.Expr, values: dict) -> sp.Expr:
    return sp.sympify(expr).xreplace(values)


def _in_shape(op, values: dict, step: phase.Phase | None = None):
    """``op`` with ``values`` (and the phase rule of ``step``) substituted in its costs."""
    costs = op.cost._asdict().items()
    if step is not None:
        costs = [(f, phase.apply(v, step)) for f, v in costs]
    return replace(op, cost=op.cost._replace(**{f: _substituted(v, values) for f, v in costs}))


# The moe family's shape in the model's symbols: tp = tp_e·ep, balanced routing, bf16
# activations.
MOE_SHAPE = {sy.tp: tp_expert * sy.ep, sy.rho_e: sp.Integer(1), sy.b_a: sp.Integer(OUTPUT_BYTES)}


def moe_ops() -> list:
    """The kernels of one MoE layer's routed experts on the busiest GPU as the model writes them
    (:func:`costmodel.model.moe.routed_experts`, SwiGLU, no biases, then
    :func:`costmodel.model.moe.combine`), in the ``moe`` family's shape (:data:`MOE_SHAPE`)."""
    rows = moe_layer.routed_rows(tokens_moe)
    found = [*moe_layer.routed_experts(tokens_moe, "silu", bias=False)]
    found.append(moe_layer.combine(rows, tokens_moe))
    return [_in_shape(op, MOE_SHAPE) for op in found]


def _at_peaks(found: list) -> sp.Expr:
    """The compute time of ``found`` at their units' (or their own) peaks [s]: the roofline's
    (:func:`costmodel.model.roofline.compute_time`) at an efficiency of 1."""
    return sum((compute_time(op) for op in found), sp.Integer(0)).xreplace({sy.eta_compute: 1})


def moe() -> Family:
    """One MoE layer's routed experts on one GPU (router scores given, as engines time them):
    FLOPs of the grouped gate, up and down GEMMs over rho_e·N·k_e/ep routed rows (at the experts'
    peak), the activation and the weighted sum (at the vector peak); bytes of every kernel of
    :func:`moe_ops` (the touched experts' weights, E/ep·(1 - (1 - k_e/E)^N) of them, at b_we;
    rows and outputs in bf16), all from :mod:`costmodel.model.moe`.  The efficiencies are
    polynomials in the logs of the rows per touched expert (a grouped GEMM's tile fill), D, the
    expert's width on the GPU and the experts it stores.  Plus a_route per element of every
    token's k_e routed rows, N·k_e·D (routing, permuting and un-permuting all of them: an
    engine whose GPUs each take every token sorts, pads or zero-fills the rows of other GPUs'
    experts too), and a_expert per stored expert (per-expert work of the grouped kernels)."""
    found = moe_ops()
    flops = sum((op.cost.flops for op in found), sp.Integer(0))
    moved = sum((op.cost.bytes for op in found), sp.Integer(0))
    rows = _substituted(moe_layer.routed_rows(tokens_moe), MOE_SHAPE)
    stored = sy.E / sy.ep
    touched = _substituted(moe_layer.touched_experts(tokens_moe) / sy.ep, MOE_SHAPE)
    route = Param(sp.Symbol("a_moe_route", positive=True), "s/element", 0.0, QUANT_START)
    expert = Param(sp.Symbol("a_moe_expert", positive=True), "s/expert", 0.0, QUANT_START)
    return _family(
        "moe",
        (tokens_moe, sy.D, sy.F_e, sy.k_e, sy.E, tp_expert, sy.ep),
        (sy.b_we, sy.peak_expert, sy.peak_vector, sy.hbm_bandwidth),
        (rows / touched, sy.D, _substituted(moe_layer.expert_width(), MOE_SHAPE), stored),
        MOE_DEGREE,
        flops,
        moved,
        sy.peak_expert,
        sy.hbm_bandwidth,
        extra=((route, tokens_moe * sy.k_e * sy.D), (expert, stored)),
        compute=_at_peaks(found),
    )


# DeepSeek-V3's MLA widths (deepseek-ai/DeepSeek-V3 config.json: hidden_size, q_lora_rank,
# kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim), the shape every MLA table
# measured has (Kimi-K2's MLA has the same widths); tests check them against the catalogue.
MLA_DIMS = {
    sy.D: sp.Integer(7168),
    sy.r_q: sp.Integer(1536),
    sy.r_kv: sp.Integer(512),
    sy.d_rope: sp.Integer(64),
    sy.d_nope: sp.Integer(128),
    sy.d_v: sp.Integer(128),
}


def mla_ops(which: str) -> list:
    """The kernels of one MLA attention block on a GPU holding h heads, as
    :func:`costmodel.model.layers.attention_block` writes them (prefill up-projected, decode
    absorbed), with the phase rule, DeepSeek-V3's widths and bf16 activations substituted:
    ``which`` is ``context`` or ``generation``.  Collectives are left out (one GPU)."""
    step = "prefill" if which == "context" else "decode"
    block = layers.attention_block("mla", step, degree=sy.H / h)
    values = {**MLA_DIMS, sy.b_a: sp.Integer(OUTPUT_BYTES)}
    return [_in_shape(op, values, step) for op in block if op.unit != "collective"]


def _mla(which: str, module: bool) -> Family:
    step_tokens = sy.S if which == "context" else sy.T
    found = mla_ops(which)
    if not module:
        found = [op for op in found if op.role == "attention"]
    flops = sum((op.cost.flops for op in found), sp.Integer(0))
    moved = sum((op.cost.bytes for op in found), sp.Integer(0))
    name = f"mla_{which}" + ("_module" if module else "")
    block = Param(sp.Symbol(f"a_{name}_block", positive=True), "s/sequence", 0.0, QUANT_START)
    if module:
        constants = (sy.b_w, sy.b_kv, sy.peak_matmul, sy.peak_attention, sy.peak_vector)
    else:
        constants = (sy.b_kv, sy.peak_attention)
    return _family(
        name,
        (sy.B, step_tokens, h),
        (*constants, sy.hbm_bandwidth),
        (sy.B, step_tokens, h),
        MLA_DEGREE,
        flops,
        moved,
        sy.peak_attention,
        sy.hbm_bandwidth,
        extra=((block, sy.B),),
        cached=False,
        compute=_at_peaks(found),
    )


def mla_context() -> Family:
    """MLA prefill attention alone: B sequences of S prompt tokens, causal, h heads of
    d_nope + d_rope query/key and d_v value width, keys and values up-projected (the model's
    ``attention`` kernel of :func:`mla_ops`), bf16 math; plus a per sequence."""
    return _mla("context", module=False)


def mla_generation() -> Family:
    """MLA decode attention alone, absorbed: B sequences, one new token against T cached
    latents (r_kv + d_rope wide, read once for all h heads); plus a per sequence."""
    return _mla("generation", module=False)


def mla_context_module() -> Family:
    """The whole MLA attention block in prefill on one GPU (every kernel of :func:`mla_ops`):
    GEMMs at b_w and the weight format's peak, attention at the bf16 peak, norms and RoPE at
    the vector peak; plus a per sequence."""
    return _mla("context", module=True)


def mla_generation_module() -> Family:
    """The whole MLA attention block in decode (absorbed) on one GPU; see
    :func:`mla_context_module`."""
    return _mla("generation", module=True)


FAMILY_BUILDERS = {
    "gemm": gemm,
    "context_attention": context_attention,
    "generation_attention": generation_attention,
    "allreduce": allreduce,
    "moe": moe,
    "mla_context": mla_context,
    "mla_generation": mla_generation,
    "mla_context_module": mla_context_module,
    "mla_generation_module": mla_generation_module,
}
# The families a dense model's engine step is timed with (costmodel.model.engine), in the order
# the paper tabulates them; MOE_FAMILIES describe Mixture-of-Experts and MLA layers.
FAMILIES = ("gemm", "context_attention", "generation_attention", "allreduce")
MOE_FAMILIES = (
    "moe",
    "mla_context",
    "mla_generation",
    "mla_context_module",
    "mla_generation_module",
)
ALL_FAMILIES = FAMILIES + MOE_FAMILIES

_CACHE: dict[str, Family] = {}


def family(name: str) -> Family:
    """The family ``name`` (built once per process); exported as ``costmodel.kernel_family``."""
    if name not in FAMILY_BUILDERS:
        raise KeyError(f"unknown kernel family {name!r} (known: {', '.join(ALL_FAMILIES)})")
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

# Expert weight formats of the MoE dtypes measured: b_we (bytes per expert weight element,
# scales included; the ``input_bytes`` field unused: the layer takes and gives bf16 hidden
# states) and the peak the grouped GEMMs run at.  Block scales as the measured kernels store
# them (AIConfigurator's collectors): fp8_block one fp32 scale per 128x128 block; int4_wo one
# bf16 scale per 128 (GPTQ/AWQ-style, Marlin); nvfp4 one fp8 scale per 16 (fp4 x fp4 at the fp4
# peak); mxfp4 one 8-bit power-of-two scale per 32 (OCP MX v1.0), multiplied with bf16
# activations at the bf16 peak (w4a16) or with mxfp8 ones at the fp8 peak (w4a8).  Kept here,
# not taken from costmodel.model.dtypes, because the measured names are the engines' own.
MOE_FORMATS = {
    "bfloat16": GemmFormat(sp.Integer(2), sp.Integer(2), "bf16"),
    "fp8": GemmFormat(sp.Integer(1), sp.Integer(2), "fp8"),
    "fp8_block": GemmFormat(1 + sp.Rational(4, 128 * 128), sp.Integer(2), "fp8"),
    "int4_wo": GemmFormat(sp.Rational(1, 2) + sp.Rational(2, 128), sp.Integer(2), "bf16"),
    "nvfp4": GemmFormat(sp.Rational(9, 16), sp.Integer(2), "fp4"),
    "w4a16_mxfp4": GemmFormat(sp.Rational(17, 32), sp.Integer(2), "bf16"),
    "w4a8_mxfp4_mxfp8": GemmFormat(sp.Rational(17, 32), sp.Integer(2), "fp8"),
}

# KV-cache bytes per element of the attention dtypes measured.
KV_BYTES = {"bfloat16": sp.Integer(2), "fp8": sp.Integer(1)}

# The model's weight and KV dtypes (costmodel.model.dtypes) -> the measured dtype that runs them.
# mxfp4 has no entry: no dense GEMM of it was measured (its MoE kernels are, MOE_WEIGHT_DTYPE).
WEIGHT_GEMM_DTYPE = {
    "bf16": "bfloat16",
    "fp16": "bfloat16",
    "fp8": "fp8",
    "int8": "int8_wo",
    "int4": "int4_wo",
    "fp8_block": "fp8_block",
    "nvfp4": "nvfp4",
}
# The model's expert weight dtypes -> the measured MoE dtype that runs them (mxfp4 experts with
# bf16 activations, as gpt-oss runs on Hopper).
MOE_WEIGHT_DTYPE = {
    "bf16": "bfloat16",
    "fp16": "bfloat16",
    "fp8": "fp8",
    "fp8_block": "fp8_block",
    "int4": "int4_wo",
    "nvfp4": "nvfp4",
    "mxfp4": "w4a16_mxfp4",
}
KV_ATTENTION_DTYPE = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8"}
# The MLA block tables' weight formats: bf16 and DeepSeek-V3's block-scaled fp8.
MLA_WEIGHT_DTYPE = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8_block": "fp8_block"}


kernel_family = family  # the public name: costmodel.kernel_family
