"""Whole models as lists of kernels: decoder layers per phase and attention kind, plus the
embedding, final norm and LM head.

Every function returns per-device :class:`~costmodel.model.ops.Op` records whose costs are SymPy
expressions in the workload symbols B, S, T, the shape symbols and ``tp``.  Prefill is S prompt
tokens per sequence attending T = S positions (substitute T = S); decode is S = 1 new token
attending a cache of T tokens.  Layer kernels carry ``repeat = L``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import sympy as sp

from costmodel.model import ops
from costmodel.model import symbols as sy
from costmodel.model.ops import Op
from costmodel.model.parallel import local_shape
from costmodel.model.phase import Phase

AttentionKind = Literal["mha", "gqa", "mqa", "mla"]


def kv_cache_elements_per_token(kind: AttentionKind, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Cached elements per token per layer on one device.

    GQA/MHA/MQA: a key and a value per local KV head, 2·max(1, H_kv/tp)·d_h.  MLA: the shared
    latent plus the decoupled RoPE key, r_kv + d_rope, replicated on every device.
    """
    if kind == "mla":
        return sy.r_kv + sy.d_rope
    return 2 * local_shape(degree).kv_heads * sy.d_h


def swiglu(tokens, degree: sp.Expr = sy.tp) -> list[Op]:
    """The SwiGLU MLP's kernels on ``tokens`` tokens: down(silu(gate(x)) · up(x)), column- then
    row-parallel."""
    local = local_shape(degree)
    return [
        ops.matmul("gate_proj", tokens, sy.D, local.ffn, sharded=True),
        ops.matmul("up_proj", tokens, sy.D, local.ffn, sharded=True),
        ops.silu("silu", tokens, local.ffn, sharded=True),
        ops.elementwise_binary("gate_mul", tokens, local.ffn, sharded=True),
        ops.matmul("down_proj", tokens, local.ffn, sy.D, sharded=True),
    ]


def mlp_block(tokens, degree: sp.Expr = sy.tp) -> list[Op]:
    """The MLP half of a decoder layer: norm, SwiGLU, all-reduce, residual add."""
    return [
        ops.rmsnorm("mlp_norm", tokens, sy.D),
        *swiglu(tokens, degree),
        ops.all_reduce("mlp_all_reduce", tokens * sy.D),
        ops.elementwise_binary("mlp_residual", tokens, sy.D),
    ]


def _gqa_attention(tokens, degree, *, causal: bool, flash: bool) -> list[Op]:
    local = local_shape(degree)
    kv_width = local.kv_heads * sy.d_h
    return [
        ops.rmsnorm("attn_norm", tokens, sy.D),
        ops.matmul("q_proj", tokens, sy.D, local.heads * sy.d_h, sharded=True),
        ops.matmul("k_proj", tokens, sy.D, kv_width, sharded=True),
        ops.matmul("v_proj", tokens, sy.D, kv_width, sharded=True),
        ops.rope("rope", tokens, local.heads + local.kv_heads, sy.d_h, sharded=True),
        ops.kv_cache_write("kv_write", tokens, 2 * kv_width, sharded=True),
        *ops.attention(
            "attention",
            batch=sy.B,
            heads=local.heads,
            new_tokens=sy.S,
            context=sy.T,
            qk_dim=sy.d_h,
            v_dim=sy.d_h,
            k_token_bytes=kv_width * sy.b_kv,
            v_token_bytes=kv_width * sy.b_kv,
            k_cache_token_bytes=kv_width * sy.b_kv,
            v_cache_token_bytes=kv_width * sy.b_kv,
            causal=causal,
            flash=flash,
        ),
        ops.matmul("o_proj", tokens, local.heads * sy.d_h, sy.D, sharded=True),
        ops.all_reduce("attn_all_reduce", tokens * sy.D),
        ops.elementwise_binary("attn_residual", tokens, sy.D),
    ]


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
    kind: AttentionKind,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    degree: sp.Expr = sy.tp,
) -> list[Op]:
    """The attention half of a decoder layer on one device, run once: norm, projections,
    RoPE, cache write, attention, output projection, all-reduce, residual add.

    Prefill is causal; decode (one new token against the whole cache) needs no mask.  MLA decodes
    in absorbed form when ``absorb``; MLA prefill always up-projects.
    """
    tokens = sy.B * sy.S
    causal = phase == "prefill"
    if kind == "mla":
        return _mla_attention(
            tokens, degree, causal=causal, flash=flash, absorb=absorb and phase == "decode"
        )
    return _gqa_attention(tokens, degree, causal=causal, flash=flash)


def decoder_layer(
    kind: AttentionKind,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    degree: sp.Expr = sy.tp,
) -> list[Op]:
    """Kernels of one decoder layer on one device, each with ``repeat = L``: the
    :func:`attention_block` then the :func:`mlp_block`."""
    attn = attention_block(kind, phase, flash=flash, absorb=absorb, degree=degree)
    mlp = mlp_block(sy.B * sy.S, degree)
    return [op.repeated(sy.L) for op in attn + mlp]


def lm_head(*, tied_embeddings: bool = False, degree: sp.Expr = sy.tp) -> Op:
    """The LM head: logits for the last position of each sequence only (B tokens), split over
    the vocabulary.  A tied head owns no weights of its own."""
    head = ops.matmul("lm_head", sy.B, sy.D, local_shape(degree).vocab, sharded=True)
    return replace(head, weight_params=sp.Integer(0)) if tied_embeddings else head


def model_ops(
    kind: AttentionKind,
    phase: Phase,
    *,
    flash: bool = True,
    absorb: bool = True,
    tied_embeddings: bool = False,
    degree: sp.Expr = sy.tp,
) -> list[Op]:
    """Every kernel of one forward step on one device: embedding, L layers, final norm, LM head.

    The embedding is vocab-parallel (each device gathers the rows it owns, then an all-reduce);
    the LM head (:func:`lm_head`) is all-gathered over the vocabulary.
    """
    tokens = sy.B * sy.S
    vocab = local_shape(degree).vocab
    return [
        ops.embedding("embed", tokens / degree, vocab, sy.D, sharded=True),
        ops.all_reduce("embed_all_reduce", tokens * sy.D),
        *decoder_layer(kind, phase, flash=flash, absorb=absorb, degree=degree),
        ops.rmsnorm("final_norm", tokens, sy.D),
        lm_head(tied_embeddings=tied_embeddings, degree=degree),
        ops.all_gather("logits_all_gather", sy.B * sy.V),
    ]


def parameter_count(op_list: list[Op]) -> sp.Expr:
    """Weight elements stored on one device by these kernels (each layer's counted L times)."""
    return sp.expand(sum((op.weight_params * op.repeat for op in op_list), sp.Integer(0)))


def weight_bytes_stored(op_list: list[Op]) -> sp.Expr:
    """Bytes of weights stored on one device by these kernels [bytes]."""
    return sp.expand(sum((op.weight_bytes_stored * op.repeat for op in op_list), sp.Integer(0)))
