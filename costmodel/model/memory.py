"""Device memory per GPU: weights, KV cache and activation workspace."""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from costmodel.model import symbols as sy
from costmodel.model.layers import AttentionKind, kv_cache_elements_per_token, model_ops
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


def kv_cache_bytes(kind: AttentionKind, tokens: sp.Expr = sy.T, degree: sp.Expr = sy.tp) -> sp.Expr:
    """KV cache on one device for B sequences of ``tokens`` cached tokens, all L layers [bytes].

    GQA: B·tokens·L·2·max(1, H_kv/tp)·d_h·b_kv (keys and values of the local KV heads).
    MLA: B·tokens·L·(r_kv + d_rope)·b_kv.
    """
    return sy.B * tokens * sy.L * kv_cache_elements_per_token(kind, degree) * sy.b_kv


def weight_bytes(kind: AttentionKind, tied_embeddings: bool, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Weights stored on one device [bytes]: every kernel's weights, sharded as it runs."""
    return _weight_bytes_stored(
        model_ops(kind, "decode", tied_embeddings=tied_embeddings, degree=degree)
    )


def workspace_bytes(kind: AttentionKind, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Activation workspace of the widest prefill step on one device [bytes] (an estimate).

    The live activations of one layer at once for B·S tokens: the residual stream and its
    normalised copy (2·D), the local Q, K and V, and the local gate and up outputs (2·F/tp),
    plus the B local logits rows in fp32.  Attention scores are assumed to stay on chip.
    """
    local = local_shape(degree)
    if kind == "mla":
        qkv = local.heads * (2 * (sy.d_nope + sy.d_rope) + sy.d_v)
    else:
        qkv = (local.heads + 2 * local.kv_heads) * sy.d_h
    per_token = 2 * sy.D + qkv + 2 * local.ffn
    return sy.B * sy.S * per_token * sy.b_a + sy.B * local.vocab * 4


def memory_per_gpu(
    kind: AttentionKind,
    tied_embeddings: bool,
    cached_tokens: sp.Expr = sy.T,
    degree: sp.Expr = sy.tp,
) -> MemoryCost:
    """Weights, KV cache for ``cached_tokens`` per sequence, and workspace on one device."""
    return MemoryCost(
        weights=weight_bytes(kind, tied_embeddings, degree),
        kv_cache=kv_cache_bytes(kind, cached_tokens, degree),
        workspace=workspace_bytes(kind, degree),
    )
