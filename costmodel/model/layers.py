"""Whole models as lists of kernels: decoder layers per phase and architecture, plus the
embedding, final norm and LM head.

Every function returns per-device :class:`~costmodel.model.ops.Op` records whose costs are SymPy
expressions in the workload symbols B, S, T, the shape symbols and ``tp`` (and, for
Mixture-of-Experts layers, ``ep``).  Prefill is S prompt tokens per sequence attending T = S
positions (substitute T = S); decode is S = 1 new token attending a cache of T tokens.

Layers need not be alike.  An :class:`Architecture` says which kernels a layer runs; layers that
differ are counted by symbols: of the L layers, L_w attend a sliding window of W tokens (the
rest the whole context) and, in a Mixture-of-Experts model, the first L_d keep a dense MLP (the
rest route to experts).  Each kernel carries ``repeat`` = the number of layers that run it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import sympy as sp

from costmodel.model import moe, ops
from costmodel.model import symbols as sy
from costmodel.model.ops import ATTENTION_ROLES, Op
from costmodel.model.parallel import local_shape
from costmodel.model.phase import Phase

AttentionKind = Literal["mha", "gqa", "mqa", "mla"]
Activation = Literal["silu", "gelu_tanh", "clamped_swiglu"]


@dataclass(frozen=True)
class MoEArchitecture:
    """Which kernels a Mixture-of-Experts layer runs (sizes aside): the router's scoring, shared
    experts, dense first layers, biases, and renormalised top-k weights."""

    scoring: Literal["softmax", "sigmoid"] = "softmax"
    shared: bool = False
    dense_layers: bool = False
    router_bias: bool = False
    expert_bias: bool = False
    normalise: bool = True


@dataclass(frozen=True)
class Architecture:
    """Which kernels a model runs, sizes aside: the attention kind and its extras (projection
    biases, per-head q/k norms, sinks, soft-capping), the layers with a sliding window
    ("none", "some" or "all" of them), Gemma's extra norms and scaled embeddings, the MLP's
    activation, Mixture-of-Experts layers, tied embeddings and DeepSeek's MTP modules (whose
    weights are stored, not run: a draft's cost is the serving model's)."""

    attention: AttentionKind = "gqa"
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sinks: bool = False
    sandwich_norms: bool = False
    activation: Activation = "silu"
    softcap: bool = False
    embedding_scale: bool = False
    tied_embeddings: bool = False
    sliding_layers: Literal["none", "some", "all"] = "none"
    moe: MoEArchitecture | None = None
    mtp_layers: int = 0


def architecture_of(kind: AttentionKind | Architecture) -> Architecture:
    """``kind`` as an :class:`Architecture` (an attention kind alone: a Llama-style model)."""
    return kind if isinstance(kind, Architecture) else Architecture(attention=kind)


def kv_cache_elements_per_token(kind: AttentionKind, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Cached elements per token per layer on one device.

    GQA/MHA/MQA: a key and a value per local KV head, 2·max(1, H_kv/tp)·d_h.  MLA: the shared
    latent plus the decoupled RoPE key, r_kv + d_rope, replicated on every device.
    """
    if kind == "mla":
        return sy.r_kv + sy.d_rope
    return 2 * local_shape(degree).kv_heads * sy.d_h


def _activation(name: str, tokens, width, activation: Activation) -> Op:
    if activation == "gelu_tanh":
        return ops.gelu_tanh(name, tokens, width, sharded=True)
    if activation == "clamped_swiglu":
        return ops.clamped_swiglu(name, tokens, width, sharded=True)
    return ops.silu(name, tokens, width, sharded=True)


def swiglu(
    tokens,
    degree: sp.Expr = sy.tp,
    *,
    width: sp.Expr = sy.F,
    activation: Activation = "silu",
    prefix: str = "",
) -> list[Op]:
    """The gated MLP's kernels on ``tokens`` tokens: down(act(gate(x)) · up(x)), column- then
    row-parallel; ``width`` its intermediate width (the model's F unless said), ``activation``
    SiLU (SwiGLU) or tanh-GELU (Gemma's GeGLU)."""
    local = width / degree
    act_name = "gelu" if activation == "gelu_tanh" else "silu"
    out = [
        ops.matmul(f"{prefix}gate_proj", tokens, sy.D, local, sharded=True),
        ops.matmul(f"{prefix}up_proj", tokens, sy.D, local, sharded=True),
        _activation(f"{prefix}{act_name}", tokens, local, activation),
    ]
    if activation != "clamped_swiglu":
        out.append(ops.elementwise_binary(f"{prefix}gate_mul", tokens, local, sharded=True))
    out.append(ops.matmul(f"{prefix}down_proj", tokens, local, sy.D, sharded=True))
    return out


def mlp_block(tokens, degree: sp.Expr = sy.tp, arch: Architecture | None = None) -> list[Op]:
    """The dense MLP half of a decoder layer: norm, gated MLP, all-reduce, (Gemma: a norm
    after the MLP,) residual add."""
    arch = arch or Architecture()
    out = [
        ops.rmsnorm("mlp_norm", tokens, sy.D),
        *swiglu(tokens, degree, activation=arch.activation),
        ops.all_reduce("mlp_all_reduce", tokens * sy.D),
    ]
    if arch.sandwich_norms:
        out.append(ops.rmsnorm("post_mlp_norm", tokens, sy.D))
    return [*out, ops.elementwise_binary("mlp_residual", tokens, sy.D)]


def moe_mlp_block(
    tokens, arch: Architecture, degree: sp.Expr = sy.tp, *, attention_dp: bool = False
) -> list[Op]:
    """The Mixture-of-Experts MLP half of a decoder layer on one device
    (:mod:`costmodel.model.moe`): norm, router, scores, top-k, routed experts, combine, shared
    experts, then the all-reduce (tensor-parallel attention) or the dispatch and combine
    all-to-alls (data-parallel attention), residual add.  ``tokens`` are the replica's, B·S."""
    spec = arch.moe
    own = tokens / degree if attention_dp else tokens  # tokens this device owns
    rows = moe.routed_rows(tokens)
    out = [
        ops.rmsnorm("moe_norm", own, sy.D),
        *moe.router(own, bias=spec.router_bias),
        moe.scoring(own, spec.scoring),
        moe.top_k(own, normalise=spec.normalise),
    ]
    if attention_dp:
        out.append(ops.all_to_all("moe_dispatch", own * sy.k_e * sy.D))
    out += moe.routed_experts(tokens, arch.activation, bias=spec.expert_bias, degree=degree)
    out.append(moe.combine(rows, tokens))
    if spec.shared:
        shared_degree = sp.Integer(1) if attention_dp else degree
        out += swiglu(
            own, shared_degree, width=sy.F_sh, activation=arch.activation, prefix="shared_"
        )
        # the shared experts' output added to the routed experts' (before the collective)
        out.append(ops.elementwise_binary("shared_add", own, sy.D))
    if attention_dp:
        out.append(ops.all_to_all("moe_combine", own * sy.k_e * sy.D))
    else:
        out.append(ops.all_reduce("moe_all_reduce", tokens * sy.D))
    return [*out, ops.elementwise_binary("moe_residual", own, sy.D)]


def _gqa_attention(
    tokens, degree, *, causal: bool, flash: bool, arch: Architecture | None = None, context=sy.T
) -> list[Op]:
    arch = arch or Architecture()
    local = local_shape(degree)
    kv_width = local.kv_heads * sy.d_h
    q_width = local.heads * sy.d_h
    out = [
        ops.rmsnorm("attn_norm", tokens, sy.D),
        ops.matmul("q_proj", tokens, sy.D, q_width, sharded=True),
        ops.matmul("k_proj", tokens, sy.D, kv_width, sharded=True),
        ops.matmul("v_proj", tokens, sy.D, kv_width, sharded=True),
    ]
    if arch.qkv_bias:
        out += [
            ops.bias("q_bias", tokens, q_width, sharded=True),
            ops.bias("k_bias", tokens, kv_width, sharded=True),
            ops.bias("v_bias", tokens, kv_width, sharded=True),
        ]
    if arch.qk_norm:  # one d_h-wide gain vector each, shared by the heads
        out += [
            ops.rmsnorm("q_norm", tokens * local.heads, sy.d_h),
            ops.rmsnorm("k_norm", tokens * local.kv_heads, sy.d_h),
        ]
    out += [
        ops.rope("rope", tokens, local.heads + local.kv_heads, sy.d_h, sharded=True),
        ops.kv_cache_write("kv_write", tokens, 2 * kv_width, sharded=True),
        *ops.attention(
            "attention",
            batch=sy.B,
            heads=local.heads,
            new_tokens=sy.S,
            context=context,
            qk_dim=sy.d_h,
            v_dim=sy.d_h,
            k_token_bytes=kv_width * sy.b_kv,
            v_token_bytes=kv_width * sy.b_kv,
            k_cache_token_bytes=kv_width * sy.b_kv,
            v_cache_token_bytes=kv_width * sy.b_kv,
            causal=causal,
            flash=flash,
            softcap=arch.softcap,
            sinks=local.heads if arch.sinks else None,
        ),
        ops.matmul("o_proj", tokens, local.heads * sy.d_h, sy.D, sharded=True),
    ]
    if arch.o_bias:  # row-parallel: added once, after the partial sums meet
        out.append(ops.bias("o_bias", tokens, sy.D))
    out.append(ops.all_reduce("attn_all_reduce", tokens * sy.D))
    if arch.sandwich_norms:
        out.append(ops.rmsnorm("post_attn_norm", tokens, sy.D))
    return [*out, ops.elementwise_binary("attn_residual", tokens, sy.D)]


def _mla_attention(tokens, degree, *, causal: bool, flash: bool, absorb: bool) -> list[Op]:
    """DeepSeek-V2/V3 multi-head latent attention (DeepSeek-AI, arXiv:2405.04434, section 2.1).

    The cache holds the compressed latent c_kv (r_kv) and the decoupled RoPE key (d_rope) per
    token.  Up-projected form: the cached latent is expanded to per-head keys and values each
    step.  Absorbed form: W_UK is folded into the query and W_UV applied after attention, so
    attention runs directly on the latent (keys r_kv + d_rope wide, values r_kv wide).
    """
    heads = local_shape(degree).heads
    qk_head = sy.d_nope + sy.d_rope
    context_tokens = sy.B * sy.T
    before = [
        ops.rmsnorm("attn_norm", tokens, sy.D),
        ops.matmul("q_down", tokens, sy.D, sy.r_q),
        ops.rmsnorm("q_norm", tokens, sy.r_q),
        ops.matmul("q_up", tokens, sy.r_q, heads * qk_head, sharded=True),
        ops.matmul("kv_down", tokens, sy.D, sy.r_kv + sy.d_rope),
        ops.rmsnorm("kv_norm", tokens, sy.r_kv),
        ops.rope("q_rope", tokens, heads, sy.d_rope, sharded=True),
        ops.rope("k_rope", tokens, 1, sy.d_rope),
        ops.kv_cache_write("kv_write", tokens, sy.r_kv + sy.d_rope),
    ]
    after = [
        ops.matmul("o_proj", tokens, heads * sy.d_v, sy.D, sharded=True),
        ops.all_reduce("attn_all_reduce", tokens * sy.D),
        ops.elementwise_binary("attn_residual", tokens, sy.D),
    ]
    rope_key = sy.d_rope * sy.b_kv
    if absorb:
        latent = sy.r_kv * sy.b_kv
        core = [
            ops.batched_matmul("q_absorb", tokens, heads, sy.d_nope, sy.r_kv, sharded=True),
            *ops.attention(
                "attention",
                batch=sy.B,
                heads=heads,
                new_tokens=sy.S,
                context=sy.T,
                qk_dim=sy.r_kv + sy.d_rope,
                v_dim=sy.r_kv,
                k_token_bytes=latent + rope_key,
                v_token_bytes=latent,
                k_cache_token_bytes=latent + rope_key,
                v_cache_token_bytes=latent,
                causal=causal,
                flash=flash,
                v_shares_k=True,
            ),
            ops.batched_matmul("v_up", tokens, heads, sy.r_kv, sy.d_v, sharded=True),
        ]
        return before + core + after
    core = [
        # kv_up's input is the cached latent, in the cache dtype.
        ops.cache_matmul(
            "kv_up", context_tokens, sy.r_kv, heads * (sy.d_nope + sy.d_v), sharded=True
        ),
        *ops.attention(
            "attention",
            batch=sy.B,
            heads=heads,
            new_tokens=sy.S,
            context=sy.T,
            qk_dim=qk_head,
            v_dim=sy.d_v,
            k_token_bytes=heads * sy.d_nope * sy.b_a + rope_key,
            v_token_bytes=heads * sy.d_v * sy.b_a,
            k_cache_token_bytes=rope_key,
            v_cache_token_bytes=sp.Integer(0),
            causal=causal,
            flash=flash,
        ),
    ]
    return before + core + after


def attention_block(
    kind: AttentionKind | Architecture,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    degree: sp.Expr = sy.tp,
    window: bool = False,
) -> list[Op]:
    """The attention half of a decoder layer on one device, run once: norm, projections,
    RoPE, cache write, attention, output projection, all-reduce, residual add.

    Prefill is causal; decode (one new token against the whole cache) needs no mask.  MLA decodes
    in absorbed form when ``absorb``; MLA prefill always up-projects.  With ``window`` the layer
    attends at most the last W positions: min(T, W) keys per query.
    """
    arch = architecture_of(kind)
    tokens = sy.B * sy.S
    causal = phase == "prefill"
    if arch.attention == "mla":
        return _mla_attention(
            tokens, degree, causal=causal, flash=flash, absorb=absorb and phase == "decode"
        )
    context = sp.Min(sy.T, sy.W_win) if window else sy.T
    return _gqa_attention(tokens, degree, causal=causal, flash=flash, arch=arch, context=context)


def _attention_layers(arch: Architecture, phase: Phase, *, flash, absorb, degree) -> list[Op]:
    """Every layer's attention half, each kernel repeated by the layers that run it: the
    attention kernels of sliding-window layers (L_w of them, named ``*_window``) apart from
    those of full layers; every other kernel L times."""
    if arch.sliding_layers == "none":
        block = attention_block(arch, phase, flash=flash, absorb=absorb, degree=degree)
        return [op.repeated(sy.L) for op in block]
    windowed = attention_block(arch, phase, flash=flash, absorb=absorb, degree=degree, window=True)
    if arch.sliding_layers == "all":
        return [op.repeated(sy.L) for op in windowed]
    full = attention_block(arch, phase, flash=flash, absorb=absorb, degree=degree)
    out = []
    for whole, local in zip(full, windowed, strict=True):
        if whole.role in ATTENTION_ROLES:
            out.append(whole.repeated(sy.L - sy.L_win))
            out.append(replace(local, name=f"{local.name}_window").repeated(sy.L_win))
        else:
            out.append(whole.repeated(sy.L))
    return out


def _mlp_layers(arch: Architecture, degree, *, attention_dp: bool) -> list[Op]:
    """Every layer's MLP half, repeated by the layers that run it: dense layers (all L, or the
    first L_d of an MoE model, named ``dense_*``) and MoE layers (L - L_d)."""
    tokens = sy.B * sy.S
    if arch.moe is None:
        return [op.repeated(sy.L) for op in mlp_block(tokens, degree, arch)]
    moe_layers = sy.L - sy.L_dense if arch.moe.dense_layers else sy.L
    out = [
        op.repeated(moe_layers)
        for op in moe_mlp_block(tokens, arch, degree, attention_dp=attention_dp)
    ]
    if arch.moe.dense_layers:
        if attention_dp:  # unsharded, on the device's own B/tp sequences
            dense = _local(mlp_block(tokens, sp.Integer(1), arch), degree)
        else:
            dense = mlp_block(tokens, degree, arch)
        out = [replace(op, name=f"dense_{op.name}").repeated(sy.L_dense) for op in dense] + out
    return out


def decoder_layer(
    kind: AttentionKind | Architecture,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    degree: sp.Expr = sy.tp,
) -> list[Op]:
    """Kernels of a dense, full-attention decoder layer on one device, each with
    ``repeat = L``: the :func:`attention_block` then the :func:`mlp_block`."""
    arch = architecture_of(kind)
    attn = attention_block(arch, phase, flash=flash, absorb=absorb, degree=degree)
    mlp = mlp_block(sy.B * sy.S, degree, arch)
    return [op.repeated(sy.L) for op in attn + mlp]


def decoder_layers(
    kind: AttentionKind | Architecture,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    degree: sp.Expr = sy.tp,
    attention_dp: bool = False,
) -> list[Op]:
    """Kernels of all L decoder layers on one device, each repeated by the layers that run it
    (sliding-window and full attention; dense and MoE MLPs).  With ``attention_dp`` each
    device runs attention (and dense MLPs) unsharded on its own B/tp sequences."""
    arch = architecture_of(kind)
    attn_degree = sp.Integer(1) if attention_dp else degree
    attn = _attention_layers(arch, phase, flash=flash, absorb=absorb, degree=attn_degree)
    if attention_dp:
        attn = _local(attn, degree)
    return attn + _mlp_layers(arch, degree, attention_dp=attention_dp)


def _local(op_list: list[Op], degree) -> list[Op]:
    """Kernels built unsharded for the whole replica, run by one of ``degree`` data-parallel
    devices on its own B/degree sequences: costs at B/degree, no collectives."""
    share = {sy.B: sy.B / degree}

    def scaled(op: Op) -> Op:
        cost = type(op.cost)(*(c.xreplace(share) for c in op.cost))
        return replace(op, cost=cost, unfused_bytes=op.unfused_bytes.xreplace(share))

    return [scaled(op) for op in op_list if op.unit != "collective"]


def lm_head(*, tied_embeddings: bool = False, degree: sp.Expr = sy.tp) -> Op:
    """The LM head: logits for the last position of each sequence only (B tokens), split over
    the vocabulary.  A tied head owns no weights of its own."""
    head = ops.matmul("lm_head", sy.B, sy.D, local_shape(degree).vocab, sharded=True)
    return replace(head, weight_params=sp.Integer(0)) if tied_embeddings else head


def model_ops(
    kind: AttentionKind | Architecture,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    tied_embeddings: bool = False,
    degree: sp.Expr = sy.tp,
    attention_dp: bool = False,
) -> list[Op]:
    """Every kernel of one forward step on one device: embedding, L layers, final norm, LM head.

    The embedding is vocab-parallel (each device gathers the rows it owns, then an all-reduce);
    the LM head (:func:`lm_head`) is all-gathered over the vocabulary.  With ``attention_dp``
    (:func:`decoder_layers`) the embedding, norms and head are each device's own, unsharded.
    An :class:`Architecture` brings its own ``tied_embeddings``.
    """
    arch = architecture_of(kind)
    tied = tied_embeddings or arch.tied_embeddings
    shared_degree = sp.Integer(1) if attention_dp else degree
    tokens = sy.B * sy.S
    vocab = local_shape(shared_degree).vocab
    first = [
        ops.embedding("embed", tokens / shared_degree, vocab, sy.D, sharded=True),
        ops.all_reduce("embed_all_reduce", tokens * sy.D),
    ]
    if arch.embedding_scale:
        first.append(ops.elementwise_binary("embed_scale", tokens, sy.D))
    last = [
        ops.rmsnorm("final_norm", tokens, sy.D),
        lm_head(tied_embeddings=tied, degree=shared_degree),
    ]
    if arch.softcap:  # the logits soft-capped as cap·tanh(x/cap): 2 FLOPs and a tanh each
        logits = sy.B * local_shape(shared_degree).vocab
        cost = ops.Cost(
            flops=2 * logits,
            transcendentals=logits,
            bytes_read=logits * sy.b_a,
            bytes_written=logits * sy.b_a,
        )
        last.append(Op("logit_softcap", cost, "vector", sharded=True))
    last.append(ops.all_gather("logits_all_gather", sy.B * sy.V))
    if attention_dp:
        first, last = _local(first, degree), _local(last, degree)
    layers = decoder_layers(
        arch, phase, flash=flash, absorb=absorb, degree=degree, attention_dp=attention_dp
    )
    return first + layers + last


def mtp_ops(kind: AttentionKind | Architecture, degree: sp.Expr = sy.tp) -> list[Op]:
    """The weights of DeepSeek's multi-token-prediction modules, stored but not run by a
    forward step (their cost as a draft is the serving model's): per module the embedding and
    hidden norms (enorm, hnorm), the (2D, D) projection, one MoE decoder layer, the head's norm,
    and the module's own copies of the embedding and LM head, as the checkpoint stores them
    (DeepSeek-V3's ``model.layers.61``)."""
    arch = architecture_of(kind)
    if not arch.mtp_layers:
        return []
    tokens = sy.B * sy.S
    one_layer = Architecture(attention=arch.attention, moe=replace(arch.moe, dense_layers=False))
    module = [
        ops.rmsnorm("mtp_enorm", tokens, sy.D),
        ops.rmsnorm("mtp_hnorm", tokens, sy.D),
        ops.matmul("mtp_eh_proj", tokens, 2 * sy.D, sy.D),
        *attention_block(one_layer, "decode", degree=degree),
        *moe_mlp_block(tokens, one_layer, degree),
        ops.rmsnorm("mtp_head_norm", tokens, sy.D),
        ops.embedding("mtp_embed", tokens / degree, local_shape(degree).vocab, sy.D, sharded=True),
        lm_head(degree=degree),
    ]
    return [
        replace(op, name=f"mtp_{op.name}" if not op.name.startswith("mtp_") else op.name).repeated(
            arch.mtp_layers
        )
        for op in module
    ]


def parameter_count(op_list: list[Op]) -> sp.Expr:
    """Weight elements stored on one device by these kernels (each layer's counted L times)."""
    return sp.expand(sum((op.weight_params * op.repeat for op in op_list), sp.Integer(0)))


def weight_bytes_stored(op_list: list[Op]) -> sp.Expr:
    """Bytes of weights stored on one device by these kernels [bytes]."""
    return sp.expand(sum((op.weight_bytes_stored * op.repeat for op in op_list), sp.Integer(0)))


def model_parameters(kind: AttentionKind | Architecture, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Weight elements one device stores: every kernel's and the MTP modules' (at ``degree``
    1 and ep = 1, the model's parameter count) [parameters]."""
    arch = architecture_of(kind)
    stored = model_ops(arch, "decode", degree=degree) + mtp_ops(arch, degree)
    return parameter_count(stored)
