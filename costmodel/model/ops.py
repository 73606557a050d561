"""Per-kernel cost records: FLOPs, bytes read and written, transcendentals, communication.

Each function returns an :class:`Op` whose costs are exact SymPy expressions for ONE execution of
the kernel on one device.  Counting conventions (README, "Counting conventions"):

* A multiply-add is 2 FLOPs; a matmul (m, k) x (k, n) is 2mkn FLOPs.
* Elementwise and reduction work is counted the way XLA's HloCostAnalysis counts it, so the
  model can be held to ``jax.jit(f).lower(...).compile().cost_analysis()`` exactly: one FLOP per
  output element of an elementwise add/multiply/divide/compare/select/negate, ``n - 1`` FLOPs to
  reduce n elements, and exp/rsqrt/logistic as transcendentals (not FLOPs).
* Bytes are what the kernel reads from and writes to device memory when it runs unfused.
  ``weight_bytes`` and ``kv_bytes`` mark the parts of that traffic that are weights and KV cache,
  the traffic that remains when everything else is fused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import sympy as sp

from costmodel.model.symbols import b_a, b_kv, b_w

ComputeUnit = Literal["matmul", "attention", "vector", "collective", "memory"]

ZERO = sp.Integer(0)
ONE = sp.Integer(1)


class Cost(NamedTuple):
    """Costs of one kernel execution on one device (SymPy expressions).

    flops [FLOP], bytes_read and bytes_written [bytes], transcendentals [evaluations],
    weight_bytes and kv_bytes [bytes, parts of the read/written traffic], comm_bytes [bytes of
    all-reduce payload per device].
    """

    flops: sp.Expr = ZERO
    bytes_read: sp.Expr = ZERO
    bytes_written: sp.Expr = ZERO
    transcendentals: sp.Expr = ZERO
    weight_bytes: sp.Expr = ZERO
    kv_bytes: sp.Expr = ZERO
    comm_bytes: sp.Expr = ZERO

    @property
    def bytes(self) -> sp.Expr:
        """Total device-memory traffic, read plus written [bytes]."""
        return self.bytes_read + self.bytes_written

    def __add__(self, other: Cost) -> Cost:  # type: ignore[override]
        return Cost(*(a + b for a, b in zip(self, other, strict=True)))

    def scaled(self, factor: sp.Expr) -> Cost:
        """Every field multiplied by ``factor``."""
        return Cost(*(factor * a for a in self))

    def expand(self) -> Cost:
        """Every field with ``sympy.expand`` applied."""
        return Cost(*(sp.expand(a) for a in self))


@dataclass(frozen=True)
class Op:
    """One kernel of the model: its name, costs, which peak it runs at, how often it runs.

    ``repeat`` is how many times the kernel runs per forward step (the layer count for layer
    kernels); ``weight_params`` is the number of weight elements the kernel owns (stored once,
    not per execution); ``sharded`` says whether tensor parallelism splits it across devices.
    """

    name: str
    cost: Cost
    unit: ComputeUnit
    repeat: sp.Expr = ONE
    weight_params: sp.Expr = ZERO
    sharded: bool = False
    collective: Literal["", "all_reduce", "all_gather"] = ""

    @property
    def weight_bytes_stored(self) -> sp.Expr:
        """Bytes of the weights this kernel owns: norm scales in the activation dtype, the rest in
        the weight dtype [bytes]."""
        return self.weight_params * (b_a if self.unit == "vector" else b_w)

    @property
    def total(self) -> Cost:
        """Costs of all ``repeat`` executions."""
        return self.cost.scaled(self.repeat)

    def repeated(self, times: sp.Expr) -> Op:
        """The same op, run ``times`` times per step."""
        return replace(self, repeat=sp.sympify(times))


def matmul(name: str, tokens, k, n, *, sharded: bool = False) -> Op:
    """Activations (tokens, k) times a weight (k, n): 2·tokens·k·n FLOPs; weight read once."""
    weight = k * n * b_w
    cost = Cost(
        flops=2 * tokens * k * n,
        bytes_read=tokens * k * b_a + weight,
        bytes_written=tokens * n * b_a,
        weight_bytes=weight,
    )
    return Op(name, cost, "matmul", weight_params=k * n, sharded=sharded)


def batched_matmul(name: str, tokens, heads, k, n, *, sharded: bool = False) -> Op:
    """Per-head weights: (tokens, heads, k) x (heads, k, n), as MLA's absorbed projections."""
    weight = heads * k * n * b_w
    cost = Cost(
        flops=2 * tokens * heads * k * n,
        bytes_read=tokens * heads * k * b_a + weight,
        bytes_written=tokens * heads * n * b_a,
        weight_bytes=weight,
    )
    return Op(name, cost, "matmul", weight_params=heads * k * n, sharded=sharded)


def rmsnorm(name: str, tokens, width) -> Op:
    """RMSNorm over ``width``: x², sum (width-1 adds), /width, +eps, rsqrt, x·r, ·gamma.

    FLOPs 4·tokens·width + tokens, one rsqrt per token (XLA's count of the jnp formulation).
    """
    cost = Cost(
        flops=4 * tokens * width + tokens,
        transcendentals=tokens,
        bytes_read=tokens * width * b_a + width * b_a,
        bytes_written=tokens * width * b_a,
    )
    return Op(name, cost, "vector", weight_params=width)


def rope(name: str, tokens, heads, dim, *, sharded: bool = False) -> Op:
    """Rotary embedding x·cos + rotate_half(x)·sin with precomputed cos/sin tables.

    Per element: two multiplies and an add, plus negating half of x in rotate_half, i.e.
    7/2 FLOPs per element.  The (tokens, dim) cos and sin tables are read once.
    """
    elements = tokens * heads * dim
    cost = Cost(
        flops=sp.Rational(7, 2) * elements,
        bytes_read=elements * b_a + 2 * tokens * dim * b_a,
        bytes_written=elements * b_a,
    )
    return Op(name, cost, "vector", sharded=sharded)


def elementwise_binary(name: str, tokens, width, *, sharded: bool = False) -> Op:
    """An elementwise add or multiply of two (tokens, width) tensors: 1 FLOP per element."""
    elements = tokens * width
    cost = Cost(flops=elements, bytes_read=2 * elements * b_a, bytes_written=elements * b_a)
    return Op(name, cost, "vector", sharded=sharded)


def silu(name: str, tokens, width, *, sharded: bool = False) -> Op:
    """silu(x) = x·logistic(x), logistic as 1/(1+exp(-x)).

    XLA counts negate, add, divide and multiply: 4 FLOPs and one exp per element.
    """
    elements = tokens * width
    cost = Cost(
        flops=4 * elements,
        transcendentals=elements,
        bytes_read=elements * b_a,
        bytes_written=elements * b_a,
    )
    return Op(name, cost, "vector", sharded=sharded)


def embedding(name: str, tokens, vocab, width) -> Op:
    """Row gather from a (vocab, width) table: no FLOPs; only the gathered rows are read."""
    cost = Cost(
        bytes_read=tokens * width * b_w,
        bytes_written=tokens * width * b_a,
        weight_bytes=tokens * width * b_w,
    )
    return Op(name, cost, "memory", weight_params=vocab * width)


def kv_cache_write(name: str, tokens, elements_per_token, *, sharded: bool = False) -> Op:
    """Append the new tokens' keys/values to the cache: read activations, write cache format."""
    elements = tokens * elements_per_token
    cost = Cost(
        bytes_read=elements * b_a,
        bytes_written=elements * b_kv,
        kv_bytes=elements * b_kv,
    )
    return Op(name, cost, "memory", sharded=sharded)


def _score_elements(batch, heads, new_tokens, context):
    return batch * heads * new_tokens * context


def _mask_flops(batch, heads, new_tokens, context, causal: bool):
    # A causal mask is one compare per (query, key) position pair, broadcast over batch and
    # heads, and one select per score.
    if not causal:
        return ZERO
    return new_tokens * context + _score_elements(batch, heads, new_tokens, context)


def softmax_flops(rows, cols):
    """Safe softmax over ``cols``: max-reduce, subtract, exp, sum-reduce, reciprocal, multiply.

    XLA counts (cols-1) + cols + (cols-1) + 1 + cols per row = 4·cols - 1 FLOPs, and one
    transcendental per element.
    """
    return rows * (4 * cols - 1)


def attention(
    name: str,
    *,
    batch,
    heads,
    new_tokens,
    context,
    qk_dim,
    v_dim,
    k_token_bytes,
    v_token_bytes,
    k_cache_token_bytes,
    v_cache_token_bytes,
    causal: bool,
    flash: bool,
    v_shares_k: bool = False,
    sharded: bool = True,
) -> list[Op]:
    """Scaled dot-product attention of ``heads`` query heads over ``context`` keys per sequence.

    ``k_token_bytes`` and ``v_token_bytes`` are the bytes per context token that the score and
    value products read (H_kv·d_h·b_kv for GQA: key/value heads, not query heads); the
    ``*_cache_token_bytes`` are the parts of them that come from the KV cache.  With ``flash`` the
    whole computation is one kernel whose scores never leave the chip (traffic linear in
    ``context``), and with ``v_shares_k`` (MLA's latent serving as key and value) the shared
    tensor is read once.  Otherwise three kernels write and re-read the score matrix.  FLOPs are
    identical in both forms: the dense (unskipped) score matrix, scaled, masked when causal,
    softmaxed, times V.
    """
    scores = _score_elements(batch, heads, new_tokens, context)
    rows = batch * heads * new_tokens
    q_bytes = batch * new_tokens * heads * qk_dim * b_a
    k_bytes = batch * context * k_token_bytes
    v_bytes = batch * context * v_token_bytes
    k_cache = batch * context * k_cache_token_bytes
    v_cache = batch * context * v_cache_token_bytes
    out_bytes = batch * new_tokens * heads * v_dim * b_a
    score_flops = (
        2 * scores * qk_dim + scores + _mask_flops(batch, heads, new_tokens, context, causal)
    )
    pv_flops = 2 * scores * v_dim
    soft = softmax_flops(rows, context)
    if flash:
        shared = v_shares_k
        cost = Cost(
            flops=score_flops + soft + pv_flops,
            transcendentals=scores,
            bytes_read=q_bytes + k_bytes + (ZERO if shared else v_bytes),
            bytes_written=out_bytes,
            kv_bytes=k_cache + (ZERO if shared else v_cache),
        )
        return [Op(name, cost, "attention", sharded=sharded)]
    score_bytes = scores * b_a
    return [
        Op(
            f"{name}.scores",
            Cost(
                flops=score_flops,
                bytes_read=q_bytes + k_bytes,
                bytes_written=score_bytes,
                kv_bytes=k_cache,
            ),
            "attention",
            sharded=sharded,
        ),
        Op(
            f"{name}.softmax",
            Cost(
                flops=soft,
                transcendentals=scores,
                bytes_read=score_bytes,
                bytes_written=score_bytes,
            ),
            "vector",
            sharded=sharded,
        ),
        Op(
            f"{name}.pv",
            Cost(
                flops=pv_flops,
                bytes_read=score_bytes + v_bytes,
                bytes_written=out_bytes,
                kv_bytes=v_cache,
            ),
            "attention",
            sharded=sharded,
        ),
    ]


def all_reduce(name: str, elements) -> Op:
    """A tensor-parallel all-reduce of ``elements`` activations; payload in ``comm_bytes``."""
    return Op(name, Cost(comm_bytes=elements * b_a), "collective", collective="all_reduce")


def all_gather(name: str, elements) -> Op:
    """A tensor-parallel all-gather whose result is ``elements`` activations per device."""
    return Op(name, Cost(comm_bytes=elements * b_a), "collective", collective="all_gather")
