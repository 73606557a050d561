"""The kernels an inference engine launches for one forward step, and their measured-family time.

The model's own kernel list (:mod:`costmodel.model.layers`) is what the computation *is*: one
kernel per operation, counted as XLA counts it.  An engine fuses: it runs Q, K and V as one GEMM
and gate and up as another, the residual add with the next RMSNorm, SiLU with the multiply, and
(TensorRT-LLM) RoPE and the KV-cache write inside the attention kernel and the residual add and
norm inside its all-reduce.  :func:`engine_kernels` lists the kernels an engine launches for a
dense decoder (MHA, GQA or MQA), per GPU under tensor parallelism; the FLOPs are the model's
(the tests check the GEMMs' total against :func:`costmodel.model.layers.model_ops` exactly).

Each GEMM, attention kernel and all-reduce is priced by its measured family
(:mod:`costmodel.model.kernels`) with the coefficients of a fitted engine calibration; every
other kernel (norm, activation, RoPE, cache write, embedding gather) by its bytes at the HBM
bandwidth plus a fixed launch cost ``t_elem``.  The LM head's logits are all-gathered over the
vocabulary with the hardware's ring model (:mod:`costmodel.model.parallel`; no measurements).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import sympy as sp

from costmodel.model import kernels
from costmodel.model import symbols as sy
from costmodel.model.layers import Architecture, MoEArchitecture
from costmodel.model.parallel import all_to_all_time, local_shape, ring_all_gather_time
from costmodel.model.phase import Phase
from costmodel.model.serving import StepParts

Family = Literal[
    "gemm",
    "gemm_bf16",
    "context_attention",
    "generation_attention",
    "allreduce",
    "elementwise",
    "moe",
    "mla_context_module",
    "mla_generation_module",
    "ring",
]

# Fixed cost of a kernel priced by bandwidth alone (norms, activations, RoPE, cache writes) [s]:
# the fitted launch time of the engine's bf16 GEMM, the cheapest kernel measured.
t_elem = sp.Symbol("t_elem", positive=True)

# Families whose kernels a fitted calibration times (everything but the bandwidth-priced
# elementwise kernels and the ring model's all-to-alls): each one's latency in the step is
# scaled by a dimensionless factor of its own, bound to exactly 1 (:func:`latency_factor`).
MEASURED_FAMILIES: tuple[str, ...] = (
    "gemm",
    "gemm_bf16",
    "context_attention",
    "generation_attention",
    "allreduce",
    "moe",
    "mla_context_module",
    "mla_generation_module",
    "mla_context",
    "mla_generation",
)


def latency_factor(family: str) -> sp.Symbol:
    """The dimensionless factor multiplying every latency of measured ``family`` in a step
    [1]: bound to exactly 1 (:func:`costmodel.config.bind.engine_values`), so predictions are
    the calibration's; :mod:`costmodel.search.uncertainty` draws it per family to carry the
    family's fitted error (training residuals and coefficients' posterior) into the step."""
    return sp.Symbol(f"x_lat_{family}", positive=True)


class EngineProfile(NamedTuple):
    """What an engine fuses and how it schedules.  ``rope_in_attention``: RoPE and the KV-cache
    write run inside the attention kernel; ``norm_in_allreduce``: with tp > 1 the residual add
    and RMSNorm run inside the all-reduce kernel; ``token_budget``: the default tokens one step
    may carry (chunked prefill); ``block_tokens``: tokens per KV-cache page."""

    name: str
    rope_in_attention: bool
    norm_in_allreduce: bool
    token_budget: int = 8192
    block_tokens: int = 16
    mla_block: bool = True  # MLA timed as the measured whole block (else: core + GEMMs)


# vLLM and SGLang: fused_add_rms_norm, silu_and_mul, a rotary kernel and a reshape-and-cache
# kernel beside FlashAttention/FlashInfer; TensorRT-LLM: its attention op applies RoPE and
# writes the paged cache, and its all-reduce fuses the residual add and RMSNorm.
# Scheduling defaults on 80 GB-class GPUs, from each engine's documentation: vLLM's
# max_num_batched_tokens 8192 for its API server and 16-token blocks; SGLang's
# chunked_prefill_size 8192 and page_size 1; TensorRT-LLM's max_num_tokens 8192 and
# tokens_per_block 32.
PROFILES = {
    "vllm": EngineProfile("vllm", rope_in_attention=False, norm_in_allreduce=False),
    "sglang": EngineProfile(
        "sglang", rope_in_attention=False, norm_in_allreduce=False, block_tokens=1, mla_block=False
    ),
    "trtllm": EngineProfile(
        "trtllm", rope_in_attention=True, norm_in_allreduce=True, block_tokens=32
    ),
}

# Without an engine (the pure roofline) the serving model schedules like vLLM.
DEFAULT_PROFILE = PROFILES["vllm"]


class EngineKernel(NamedTuple):
    """One kernel the engine launches ``count`` times per step: its family, the family's shape
    symbols bound to model expressions, and its FLOPs and bytes (bytes price the elementwise
    kernels; the measured families price themselves)."""

    name: str
    family: Family
    shape: dict
    count: sp.Expr
    flops: sp.Expr
    bytes: sp.Expr


def _measured(name: str, family: str, shape: dict, count) -> EngineKernel:
    """A kernel priced by a measured family; its FLOPs are the family's at ``shape``."""
    flops = kernels.family(family).flops.xreplace(shape)
    return EngineKernel(name, family, shape, count, flops, sp.Integer(0))


def _gemm(name: str, rows, n, k, count) -> EngineKernel:
    return _measured(name, "gemm", {kernels.m: rows, kernels.n: n, kernels.k: k}, count)


def _elementwise(name: str, moved, count) -> EngineKernel:
    return EngineKernel(name, "elementwise", {}, count, sp.Integer(0), moved)


def _allreduce(name: str, elements, count) -> EngineKernel:
    shape = {kernels.payload: elements * sy.b_a, kernels.ranks: sy.tp}
    return EngineKernel(name, "allreduce", shape, count, sp.Integer(0), sp.Integer(0))


def engine_kernels(
    profile: EngineProfile,
    phase: Phase,
    arch: Architecture | None = None,
    *,
    attention_dp: bool = False,
) -> list[EngineKernel]:
    """Kernels of one forward step of a decoder as ``profile`` launches them, per GPU.

    Prefill: B sequences of S prompt tokens (attention over T = S); decode: B new tokens against
    T cached.  Layer kernels are counted by the layers that launch them; all-reduces are kept at
    tp = 1 and priced 0 there (:func:`kernel_time`).  ``arch`` (default: a Llama layer) adds
    what its layers run: sliding-window attention (decode over min(T, W) cached tokens; a
    windowed prefill as chunks of min(S, W) tokens, 2·S/min(S, W) - 1 of them, each attending
    its own and the previous chunk), per-head q/k norms and Gemma's extra norms (bandwidth
    kernels), MLA (the measured attention block, projections included), and Mixture-of-Experts
    layers (router GEMM and top-k, the measured fused ``moe`` kernel, shared experts' GEMMs).
    Projection biases and attention sinks run inside their GEMMs' and attention's kernels.
    With ``attention_dp`` each GPU runs attention, dense layers and the head on its own B/tp
    sequences, and an MoE layer's dispatch and combine are all-to-alls (ring model).
    """
    arch = arch or Architecture()
    degree = sp.Integer(1) if attention_dp else sy.tp
    sequences = sy.B / sy.tp if attention_dp else sy.B
    local = local_shape(degree)
    tokens = sequences * sy.S
    width = sy.D
    act = sy.b_a
    moe = arch.moe
    moe_layers = sp.Integer(0) if moe is None else (sy.L - sy.L_dense if moe.dense_layers else sy.L)
    dense_layers = sy.L - moe_layers
    reduce = [] if attention_dp else ["allreduce"]
    # fused residual add + RMSNorm: reads x and the residual, writes both, reads the gains.
    add_norm = 4 * tokens * width * act + width * act
    # two per layer (attention's and the MLP's); the measured MLA block runs its own
    norms = (1 if arch.attention == "mla" else 2) * (2 if arch.sandwich_norms else 1)
    if profile.norm_in_allreduce and not attention_dp:
        norms = norms * _at_tp_one()
    out = [_elementwise("embedding", tokens * width * (sy.b_w + act), 1)]
    if not attention_dp:
        out.append(_allreduce("embedding_allreduce", tokens * width, 1))
    if arch.embedding_scale:
        out.append(_elementwise("embedding_scale", 2 * tokens * width * act, 1))
    out.append(_elementwise("add_rmsnorm", add_norm, sy.L * norms))
    out += _attention_kernels(profile, phase, arch, local, sequences, tokens)
    if "allreduce" in reduce:
        out.append(_allreduce("attn_allreduce", tokens * width, sy.L))
    if dense_layers != 0:
        out += [
            _gemm("gate_up_proj", tokens, 2 * local.ffn, width, dense_layers),
            _elementwise("silu_and_mul", 3 * tokens * local.ffn * act, dense_layers),
            _gemm("down_proj", tokens, width, local.ffn, dense_layers),
        ]
        if "allreduce" in reduce:
            out.append(_allreduce("mlp_allreduce", tokens * width, dense_layers))
    if moe is not None:
        out += _moe_kernels(moe, tokens, degree, moe_layers, attention_dp)
    out += [
        _elementwise("final_rmsnorm", 2 * tokens * width * act + width * act, 1),
        _gemm("lm_head", sequences, local.vocab, width, 1)._replace(family="gemm_bf16"),
    ]
    if arch.softcap:
        logits = sequences * local.vocab
        out.append(_elementwise("logit_softcap", 2 * logits * act, 1))
    return out


def _attention_kernels(
    profile: EngineProfile, phase: Phase, arch: Architecture, local, sequences, tokens
) -> list[EngineKernel]:
    """The attention half of every layer, its all-reduce aside (see :func:`engine_kernels`)."""
    act = sy.b_a
    heads, kv_heads = local.heads, local.kv_heads
    if arch.attention == "mla":
        return _mla_kernels(profile, phase, sequences, tokens, heads)
    out = [_gemm("qkv_proj", tokens, (heads + 2 * kv_heads) * sy.d_h, sy.D, sy.L)]
    if arch.qk_norm:
        out.append(_elementwise("qk_norm", 2 * tokens * (heads + kv_heads) * sy.d_h * act, sy.L))
    if not profile.rope_in_attention:
        rope = 2 * tokens * (heads + kv_heads) * sy.d_h * act
        cache_write = tokens * 2 * kv_heads * sy.d_h * (act + sy.b_kv)
        out += [_elementwise("rope", rope, sy.L), _elementwise("kv_cache_write", cache_write, sy.L)]
    family = "context_attention" if phase == "prefill" else "generation_attention"
    shape = {sy.B: sequences, kernels.h: heads, kernels.h_kv: kv_heads, sy.d_h: sy.d_h}
    full = {**shape, sy.T: sy.S if phase == "prefill" else sy.T}
    # layers attending a window and layers attending everything
    windowed = {"none": sp.Integer(0), "some": sy.L_win, "all": sy.L}[arch.sliding_layers]
    if arch.sliding_layers != "all":
        out.append(_measured("attention", family, full, sy.L - windowed))
    if arch.sliding_layers != "none":
        if phase == "prefill":
            chunk = sp.Min(sy.S, sy.W_win)
            count = windowed * (2 * sy.S / chunk - 1)
            out.append(_measured("attention_window", family, {**shape, sy.T: chunk}, count))
        else:
            window = {**shape, sy.T: sp.Min(sy.T, sy.W_win)}
            out.append(_measured("attention_window", family, window, windowed))
    out.append(_gemm("o_proj", tokens, sy.D, heads * sy.d_h, sy.L))
    return out


def _mla_kernels(
    profile: EngineProfile, phase: Phase, sequences, tokens, heads
) -> list[EngineKernel]:
    """DeepSeek's MLA attention per layer: the measured whole block where the engine's tables
    time it (vLLM, TensorRT-LLM), else (SGLang) its GEMMs priced by the GEMM family and the
    measured attention core: the fused q_a / kv_a projection, the two latent norms, q_b, then
    in decode the absorbed per-head products (one GEMM each, h heads wide) around the core, in
    prefill the latent's up-projection before it, RoPE and the cache write, and o_proj."""
    step = sy.S if phase == "prefill" else sy.T
    shape = {sy.B: sequences, step: step, kernels.h: heads}
    if profile.mla_block:
        family = "mla_context_module" if phase == "prefill" else "mla_generation_module"
        return [_measured("attention", family, shape, sy.L)]
    act = sy.b_a
    latent, rope = sy.r_kv, sy.d_rope
    out = [
        _gemm("qkv_a_proj", tokens, sy.r_q + latent + rope, sy.D, sy.L),
        _elementwise("latent_norms", 2 * tokens * (sy.r_q + latent) * act, sy.L),
        _gemm("q_b_proj", tokens, heads * (sy.d_nope + rope), sy.r_q, sy.L),
        _elementwise("rope", 2 * tokens * (heads + 1) * rope * act, sy.L),
        _elementwise("kv_cache_write", tokens * (latent + rope) * (act + sy.b_kv), sy.L),
    ]
    if phase == "prefill":
        out += [
            _gemm("kv_b_proj", tokens, heads * (sy.d_nope + sy.d_v), latent, sy.L),
            _measured("attention", "mla_context", shape, sy.L),
        ]
    else:
        out += [
            _gemm("q_absorb", tokens, heads * latent, sy.d_nope, sy.L),
            _measured("attention", "mla_generation", shape, sy.L),
            _gemm("v_up", tokens, heads * sy.d_v, latent, sy.L),
        ]
    return [*out, _gemm("o_proj", tokens, sy.D, heads * sy.d_v, sy.L)]


def _moe_kernels(
    moe: MoEArchitecture, tokens, degree, layers, attention_dp: bool
) -> list[EngineKernel]:
    """One MoE MLP per layer as engines launch it: the router's bf16 GEMM, its scores and
    top-k (one bandwidth kernel), the fused routed-experts kernel (the measured ``moe`` family
    on every token of the replica), the shared experts' GEMMs, then the all-reduce (or, with
    data-parallel attention, the dispatch and combine all-to-alls)."""
    act = sy.b_a
    replica_tokens = tokens * sy.tp if attention_dp else tokens
    shape = {
        kernels.tokens_moe: replica_tokens,
        sy.D: sy.D,
        sy.F_e: sy.F_e,
        sy.k_e: sy.k_e,
        sy.E: sy.E,
        kernels.tp_expert: sy.tp / sy.ep,
        sy.ep: sy.ep,
    }
    out = [
        _gemm("router", tokens, sy.E, sy.D, layers)._replace(family="gemm_bf16"),
        _elementwise("router_top_k", tokens * sy.E * act + tokens * sy.k_e * (act + 4), layers),
        _measured("moe", "moe", shape, layers),
    ]
    if moe.shared:
        shared = sy.F_sh / degree
        out += [
            _gemm("shared_gate_up_proj", tokens, 2 * shared, sy.D, layers),
            _elementwise("shared_silu_and_mul", 3 * tokens * shared * act, layers),
            _gemm("shared_down_proj", tokens, sy.D, shared, layers),
        ]
    if attention_dp:
        payload = tokens * sy.k_e * sy.D * act
        time = 2 * all_to_all_time(payload)
        out.append(EngineKernel("moe_all_to_all", "ring", {}, layers, sp.Integer(0), time))
    else:
        out.append(_allreduce("moe_allreduce", tokens * sy.D, layers))
    return out


def _at_tp_one() -> sp.Expr:
    """1 at tp = 1, else 0."""
    return sp.Piecewise((sp.Integer(1), sp.Eq(sy.tp, 1)), (sp.Integer(0), True))


def kernel_time(kernel: EngineKernel) -> sp.Expr:
    """Time of one launch of ``kernel`` [s]: its family's measured-kernel latency at its shape
    (coefficients left as symbols), with the family's cache term off, times the family's
    :func:`latency_factor`; an elementwise kernel's bytes at HBM bandwidth plus ``t_elem``; an
    all-reduce 0 at tp = 1."""
    if kernel.family == "elementwise":
        return t_elem + kernel.bytes / sy.hbm_bandwidth
    if kernel.family == "ring":  # priced by the ring model: its time is carried in ``bytes``
        return kernel.bytes
    factor = latency_factor(kernel.family)
    if kernel.family == "gemm_bf16":
        return factor * bf16_gemm_time().xreplace(kernel.shape)
    fam = kernels.family(kernel.family)
    no_cache = {p.symbol: 0 for p in fam.params if p.cache == "capacity"}
    time = factor * fam.time.xreplace(no_cache).xreplace(kernel.shape)
    if kernel.family == "allreduce":
        return sp.Piecewise((sp.Integer(0), sp.Eq(sy.tp, 1)), (time, True))
    return time


def bf16_symbol(symbol: sp.Symbol) -> sp.Symbol:
    """The GEMM coefficient ``symbol`` as fitted at bf16, whatever the weights' dtype."""
    return sp.Symbol(f"{symbol.name}_bf16", **symbol.assumptions0)


def bf16_gemm_time() -> sp.Expr:
    """A GEMM kept in bf16 whatever the model's weight dtype (the LM head: engines leave it
    unquantised in fp8 and int4 checkpoints): the GEMM family at bf16 operands and the bf16
    tensor-core peak, with the bf16 fit's coefficients (symbols ``<name>_bf16``) [s]."""
    fam = kernels.family("gemm")
    renamed = {p.symbol: bf16_symbol(p.symbol) for p in fam.params}
    renamed |= {p.symbol: 0 for p in fam.params if p.cache == "capacity"}
    operands = {sy.b_w: 2, kernels.b_x: 2, sy.peak_matmul: sy.peak_attention}
    return fam.time.xreplace(renamed).xreplace(operands)


def logits_gather_time() -> sp.Expr:
    """All-gather of the B x V bf16 logits over the vocabulary shards (ring model) [s]."""
    return ring_all_gather_time(sy.B * sy.V * sy.b_a)


def step_time(
    profile: EngineProfile,
    phase: Phase,
    arch: Architecture | None = None,
    *,
    attention_dp: bool = False,
) -> sp.Expr:
    """Time of one forward step as ``profile`` runs it: sum of count x :func:`kernel_time`, plus
    the logits gather (none with data-parallel attention: each GPU has its whole head) [s].
    Symbolic in B, S, T, the shape, precision, tp, hardware and the families' coefficients."""
    found = engine_kernels(profile, phase, arch, attention_dp=attention_dp)
    total = sum((k.count * kernel_time(k) for k in found), sp.Integer(0))
    return total + _gather(attention_dp)


def _gather(attention_dp: bool) -> sp.Expr:
    return sp.Integer(0) if attention_dp else logits_gather_time()


class DtypeTerms(NamedTuple):
    """The engine model's coefficients by what sets their values: the weight dtype (the GEMM
    family's and its input bytes), the KV-cache dtype (both attention families') and neither
    (the all-reduce's, always bf16).  Cache terms are left out: the engine model sets C = 0."""

    weight: tuple[sp.Symbol, ...]
    kv: tuple[sp.Symbol, ...]
    fixed: tuple[sp.Symbol, ...]

    @property
    def all(self) -> tuple[sp.Symbol, ...]:
        """Every coefficient, weight's first, then KV's, then the fixed ones."""
        return self.weight + self.kv + self.fixed


def _fitted(name: str) -> tuple[sp.Symbol, ...]:
    params = kernels.family(name).params
    return tuple(p.symbol for p in params if p.cache is None)


def dtype_terms() -> DtypeTerms:
    """The coefficients a step's time needs per combination of dtypes (see :class:`DtypeTerms`)."""
    return DtypeTerms(
        weight=(*_fitted("gemm"), kernels.b_x),
        kv=_fitted("context_attention") + _fitted("generation_attention"),
        fixed=_fitted("allreduce"),
    )


ATTENTION_KERNELS = frozenset({"attention", "attention_window"})


def step_parts(
    profile: EngineProfile, arch: Architecture | None = None, *, attention_dp: bool = False
) -> StepParts:
    """The engine's step time split by what each kernel's work scales with (see
    :class:`costmodel.model.serving.StepParts`): token kernels and LM head from the decode
    step's kernels, the paged-decode attention kernels, and the prefill attention kernels."""
    decode = engine_kernels(profile, "decode", arch, attention_dp=attention_dp)
    prefill = engine_kernels(profile, "prefill", arch, attention_dp=attention_dp)

    def total(kernel_list) -> sp.Expr:
        return sum((k.count * kernel_time(k) for k in kernel_list), sp.Integer(0))

    per_sequence = ATTENTION_KERNELS | {"lm_head", "logit_softcap"}
    return StepParts(
        tokens=total(k for k in decode if k.name not in per_sequence),
        decode_attention=total(k for k in decode if k.name in ATTENTION_KERNELS),
        prefill_attention=total(k for k in prefill if k.name in ATTENTION_KERNELS),
        head=total(k for k in decode if k.name in {"lm_head", "logit_softcap"})
        + _gather(attention_dp),
    )
