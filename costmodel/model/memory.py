"""Device memory per GPU: weights, KV cache and activation workspace."""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from costmodel.model import symbols as sy
from costmodel.model.layers import (
    Architecture,
    AttentionKind,
    architecture_of,
    kv_cache_elements_per_token,
    model_ops,
    mtp_ops,
)
from costmodel.model.layers import weight_bytes_stored as _weight_bytes_stored
from costmodel.model.parallel import local_shape


class MemoryCost(NamedTuple):
    """Bytes resident on one device (SymPy expressions) [bytes]."""

    weights: sp.Expr
    kv_cache: sp.Expr
    workspace: sp.Expr

    @property
    def total(self) -> sp.Expr:
        """Weights + KV cache + workspace [bytes]."""
        return self.weights + self.kv_cache + self.workspace


def cached_token_layers(kind: AttentionKind | Architecture, tokens: sp.Expr = sy.T) -> sp.Expr:
    """Tokens cached per sequence summed over the layers, for a context of ``tokens``: every
    layer caches them all, except sliding-window layers, which keep at most the last W
    [token-layers]."""
    arch = architecture_of(kind)
    if arch.sliding_layers == "none":
        return sy.L * tokens
    windowed = sp.Min(tokens, sy.W_win)
    if arch.sliding_layers == "all":
        return sy.L * windowed
    return (sy.L - sy.L_win) * tokens + sy.L_win * windowed


def kv_cache_bytes(
    kind: AttentionKind | Architecture,
    tokens: sp.Expr = sy.T,
    degree: sp.Expr = sy.tp,
    *,
    attention_dp: bool = False,
) -> sp.Expr:
    """KV cache on one device for B sequences of ``tokens`` cached tokens, all L layers [bytes].

    GQA: B·tokens·L·2·max(1, H_kv/tp)·d_h·b_kv (keys and values of the local KV heads).
    MLA: B·tokens·L·(r_kv + d_rope)·b_kv.  Sliding-window layers cache at most W tokens
    (:func:`cached_token_layers`).  With ``attention_dp`` a device holds all heads of its own B/tp
    sequences.
    """
    arch = architecture_of(kind)
    if attention_dp:
        per_token = kv_cache_elements_per_token(arch.attention, sp.Integer(1))
        sequences = sy.B / degree
    else:
        per_token = kv_cache_elements_per_token(arch.attention, degree)
        sequences = sy.B
    return sequences * cached_token_layers(arch, tokens) * per_token * sy.b_kv


def weight_bytes(
    kind: AttentionKind | Architecture,
    tied_embeddings: bool,
    degree: sp.Expr = sy.tp,
    *,
    attention_dp: bool = False,
) -> sp.Expr:
    """Weights stored on one device [bytes]: every kernel's weights, sharded as it runs, and
    any MTP modules' (:func:`costmodel.model.layers.mtp_ops`)."""
    arch = architecture_of(kind)
    stored = model_ops(
        arch, "decode", tied_embeddings=tied_embeddings, degree=degree, attention_dp=attention_dp
    )
    return _weight_bytes_stored(stored + mtp_ops(arch, degree))


def workspace_bytes(
    kind: AttentionKind | Architecture, degree: sp.Expr = sy.tp, *, attention_dp: bool = False
) -> sp.Expr:
    """Activation workspace of the widest prefill step on one device [bytes] (an estimate).

    The live activations of one layer at once for B·S tokens: the residual stream and its
    normalised copy (2·D), the local Q, K and V, and the local gate and up outputs (2·F/tp;
    in an MoE layer each token's k routed rows, 2·k·F_e/tp, and the shared experts' 2·F_sh/tp,
    the wider of that and a dense layer's), plus the B local logits rows in fp32.  Attention
    scores are assumed to stay on chip.  With ``attention_dp`` a device holds B/tp sequences
    with unsharded attention.
    """
    arch = architecture_of(kind)
    local = local_shape(sp.Integer(1) if attention_dp else degree)
    if arch.attention == "mla":
        qkv = local.heads * (2 * (sy.d_nope + sy.d_rope) + sy.d_v)
    else:
        qkv = (local.heads + 2 * local.kv_heads) * sy.d_h
    mlp = 2 * sy.F / degree
    if arch.moe is not None:
        routed = 2 * sy.k_e * sy.F_e / degree + (2 * sy.F_sh / degree if arch.moe.shared else 0)
        mlp = sp.Max(mlp, routed) if arch.moe.dense_layers else routed
    per_token = 2 * sy.D + qkv + mlp
    workspace = sy.B * sy.S * per_token * sy.b_a + sy.B * local.vocab * 4
    return workspace.xreplace({sy.B: sy.B / degree}) if attention_dp else workspace


def memory_per_gpu(
    kind: AttentionKind | Architecture,
    tied_embeddings: bool,
    cached_tokens: sp.Expr = sy.T,
    degree: sp.Expr = sy.tp,
    *,
    attention_dp: bool = False,
) -> MemoryCost:
    """Weights, KV cache for ``cached_tokens`` per sequence, and workspace on one device."""
    return MemoryCost(
        weights=weight_bytes(kind, tied_embeddings, degree, attention_dp=attention_dp),
        kv_cache=kv_cache_bytes(kind, cached_tokens, degree, attention_dp=attention_dp),
        workspace=workspace_bytes(kind, degree, attention_dp=attention_dp),
    )
