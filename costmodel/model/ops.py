"""Per-kernel cost records: FLOPs, bytes read and written, transcendentals, communication.

Each function returns an :class:`Op` whose costs are exact SymPy expressions for ONE execution of
the kernel on one device.  Counting conventions (README, "Counting conventions"):

* A multiply-add is 2 FLOPs; a matmul (m, k) x (k, n) is 2mkn FLOPs.
* Elementwise and reduction work is counted the way XLA's HloCostAnalysis counts it, so the
  model can be held to ``jax.jit(f).lower(...).compile().cost_analysis()`` exactly: one FLOP per
  output element of an elementwise add/multiply/divide/compare/select/negate, ``n - 1`` FLOPs to
  reduce n elements, and exp/rsqrt/logistic as transcendentals (not FLOPs).
* Bytes are what the kernel reads from and writes to device memory when it runs as one kernel.
  ``weight_bytes`` and ``kv_bytes`` mark the parts of that traffic that are weights and KV cache,
  the traffic that remains when everything else is fused.
* ``Op.unfused_bytes`` is the kernel's traffic when each of its elementary operations (those
  its FLOP count counts) is a pass of its own over memory, reading its operands as stored and
  writing its result (README, "Checked against XLA": the unfused bound).  Each constructor
  writes it next to the kernel's other costs; a kernel that is one operation moves its
  ``Cost.bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import sympy as sp

from costmodel.model.symbols import b_a, b_kv, b_w, b_we, peak_expert

ComputeUnit = Literal["matmul", "attention", "vector", "collective", "memory"]
Role = Literal[
    "matmul",
    "norm",
    "rope",
    "elementwise",
    "activation",
    "embedding",
    "kv_write",
    "attention",
    "attention_scores",
    "softmax",
    "attention_values",
    "collective",
    "bias",
    "router",
    "generic",
]
"""What a kernel is.  ``attention`` is fused (flash) attention; naive attention is three
kernels, ``attention_scores``, ``softmax`` and ``attention_values``.  ``generic`` is a kernel
known only by its costs (one elementary operation)."""
ATTENTION_ROLES: frozenset[Role] = frozenset(
    {"attention", "attention_scores", "softmax", "attention_values"}
)
PREDICATE_BYTES = 1
"""Bytes of one boolean (XLA's ``pred``), as a causal mask's compare writes it."""

ZERO = sp.Integer(0)
ONE = sp.Integer(1)
UNQUANTISED_ROLES = frozenset({"norm", "bias", "router"})
"""Kernels whose weights stay in the activation dtype whatever the checkpoint's format."""


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
    ``role`` says what the kernel is, and ``unfused_bytes`` is its traffic per execution when
    every elementary operation runs on its own (module note) [bytes]; left out, it is the
    kernel's own bytes (none for a collective).
    """

    name: str
    cost: Cost
    unit: ComputeUnit
    repeat: sp.Expr = ONE
    weight_params: sp.Expr = ZERO
    sharded: bool = False
    collective: Literal["", "all_reduce", "all_gather", "all_to_all"] = ""
    role: Role = "generic"
    unfused_bytes: sp.Expr | None = None
    element_bytes: sp.Expr | None = None  # bytes per stored weight element (None: see below)
    peak: sp.Expr | None = None  # the FLOP/s peak it runs at (None: its unit's)

    def __post_init__(self) -> None:
        if self.unfused_bytes is None:
            one_pass = ZERO if self.unit == "collective" else self.cost.bytes
            object.__setattr__(self, "unfused_bytes", one_pass)

    @property
    def weight_bytes_stored(self) -> sp.Expr:
        """Bytes of the weights this kernel owns: ``element_bytes`` each where the kernel says
        (routed experts: b_we), else norm gains, biases and the router in the activation dtype
        (checkpoints keep them unquantised) and the rest in the weight dtype [bytes]."""
        if self.element_bytes is not None:
            return self.weight_params * self.element_bytes
        return self.weight_params * (b_a if self.role in UNQUANTISED_ROLES else b_w)

    @property
    def total(self) -> Cost:
        """Costs of all ``repeat`` executions."""
        return self.cost.scaled(self.repeat)

    def repeated(self, times: sp.Expr) -> Op:
        """The same op, run ``times`` times per step."""
        return replace(self, repeat=sp.sympify(times))


def _pass(reads, written):
    """Element traffic of one elementary operation: its operands' elements and its result's."""
    return sum(reads, ZERO) + written


def matmul(name: str, tokens, k, n, *, sharded: bool = False) -> Op:
    """Activations (tokens, k) times a weight (k, n): 2·tokens·k·n FLOPs; weight read once."""
    weight = k * n * b_w
    cost = Cost(
        flops=2 * tokens * k * n,
        bytes_read=tokens * k * b_a + weight,
        bytes_written=tokens * n * b_a,
        weight_bytes=weight,
    )
    return Op(name, cost, "matmul", weight_params=k * n, sharded=sharded, role="matmul")


def expert_matmul(name: str, rows, k, n, *, experts, touched) -> Op:
    """One grouped GEMM over the routed experts on a device: ``rows`` routed token rows
    (tokens x top-k / ep on the busiest device) times each expert's (k, n) weight.  Of the
    ``experts`` the device stores, the ``touched`` ones (at least one token routed to them) have
    their weights read; weights are stored at b_we bytes per element and multiplied at the
    experts' own peak (a checkpoint may store them in another format than the rest)."""
    weight = touched * k * n * b_we
    cost = Cost(
        flops=2 * rows * k * n,
        bytes_read=rows * k * b_a + weight,
        bytes_written=rows * n * b_a,
        weight_bytes=weight,
    )
    return Op(
        name,
        cost,
        "matmul",
        weight_params=experts * k * n,
        sharded=True,
        role="matmul",
        element_bytes=b_we,
        peak=peak_expert,
    )


def bias(name: str, tokens, width, *, stored=None, sharded: bool = False, experts=ONE) -> Op:
    """A bias added to (tokens, width) outputs: 1 FLOP per element; the bias vector (``width``
    elements, ``stored`` of them owned, default ``width``; ``experts`` vectors for grouped
    expert GEMMs) is read once per owner."""
    elements = tokens * width
    owned = width if stored is None else stored
    cost = Cost(
        flops=elements,
        bytes_read=elements * b_a + experts * width * b_a,
        bytes_written=elements * b_a,
    )
    return Op(name, cost, "vector", weight_params=experts * owned, sharded=sharded, role="bias")


def cache_matmul(name: str, tokens, k, n, *, sharded: bool = False) -> Op:
    """A matmul whose (tokens, k) input is read from the KV cache, in the cache dtype (MLA's
    up-projection of the cached latent): the input is KV traffic, the weight read once."""
    weight = k * n * b_w
    cached = tokens * k * b_kv
    cost = Cost(
        flops=2 * tokens * k * n,
        bytes_read=cached + weight,
        bytes_written=tokens * n * b_a,
        weight_bytes=weight,
        kv_bytes=cached,
    )
    return Op(name, cost, "matmul", weight_params=k * n, sharded=sharded, role="matmul")


def batched_matmul(name: str, tokens, heads, k, n, *, sharded: bool = False) -> Op:
    """Per-head weights: (tokens, heads, k) x (heads, k, n), as MLA's absorbed projections."""
    weight = heads * k * n * b_w
    cost = Cost(
        flops=2 * tokens * heads * k * n,
        bytes_read=tokens * heads * k * b_a + weight,
        bytes_written=tokens * heads * n * b_a,
        weight_bytes=weight,
    )
    return Op(name, cost, "matmul", weight_params=heads * k * n, sharded=sharded, role="matmul")


def rmsnorm(name: str, tokens, width) -> Op:
    """RMSNorm over ``width``: x², sum (width-1 adds), /width, +eps, rsqrt, x·r, ·gamma.

    FLOPs 4·tokens·width + tokens, one rsqrt per token (XLA's count of the jnp formulation).
    Unfused, with x (tokens, width) and r (tokens): x·x reads x twice, the sum reads x² and
    writes one value per token, /width, +eps and rsqrt each read and write one per token, x·r
    reads x and r, ·gamma reads the product and the gains (width), each writing x's size.
    """
    x, r = tokens * width, tokens
    cost = Cost(
        flops=4 * tokens * width + tokens,
        transcendentals=tokens,
        bytes_read=tokens * width * b_a + width * b_a,
        bytes_written=tokens * width * b_a,
    )
    passes = [
        _pass([x, x], x),  # x·x
        _pass([x], r),  # sum
        _pass([r], r),  # /width
        _pass([r], r),  # +eps
        _pass([r], r),  # rsqrt
        _pass([x, r], x),  # x·r
        _pass([x, width], x),  # ·gamma
    ]
    unfused = sum(passes, ZERO) * b_a
    return Op(name, cost, "vector", weight_params=width, role="norm", unfused_bytes=unfused)


def rope(name: str, tokens, heads, dim, *, sharded: bool = False) -> Op:
    """Rotary embedding x·cos + rotate_half(x)·sin with precomputed cos/sin tables.

    Per element: two multiplies and an add, plus negating half of x in rotate_half, i.e.
    7/2 FLOPs per element.  The (tokens, dim) cos and sin tables are read once.  Unfused, with
    E = tokens·heads·dim elements: x·cos, the two half slices of x, the negation of one half,
    their concatenation, ·sin and the add, each reading its operands (a table once) and writing
    its result.
    """
    elements = tokens * heads * dim
    table = tokens * dim
    half = elements / 2
    cost = Cost(
        flops=sp.Rational(7, 2) * elements,
        bytes_read=elements * b_a + 2 * table * b_a,
        bytes_written=elements * b_a,
    )
    passes = [
        _pass([elements, table], elements),  # x·cos
        _pass([half], half),  # x2 = x[..., dim/2:]
        _pass([half], half),  # x1 = x[..., :dim/2]
        _pass([half], half),  # -x2
        _pass([half, half], elements),  # concat(-x2, x1)
        _pass([elements, table], elements),  # ·sin
        _pass([elements, elements], elements),  # add
    ]
    unfused = sum(passes, ZERO) * b_a
    return Op(name, cost, "vector", sharded=sharded, role="rope", unfused_bytes=unfused)


def elementwise_binary(name: str, tokens, width, *, sharded: bool = False) -> Op:
    """An elementwise add or multiply of two (tokens, width) tensors: 1 FLOP per element."""
    elements = tokens * width
    cost = Cost(flops=elements, bytes_read=2 * elements * b_a, bytes_written=elements * b_a)
    return Op(name, cost, "vector", sharded=sharded, role="elementwise")


def silu(name: str, tokens, width, *, sharded: bool = False) -> Op:
    """silu(x) = x·logistic(x), logistic as 1/(1+exp(-x)).

    XLA counts negate, add, divide and multiply: 4 FLOPs and one exp per element.  Unfused:
    negate, exp, +1 and the reciprocal each read and write E elements, ·x reads two.
    """
    elements = tokens * width
    cost = Cost(
        flops=4 * elements,
        transcendentals=elements,
        bytes_read=elements * b_a,
        bytes_written=elements * b_a,
    )
    passes = [_pass([elements], elements)] * 4 + [_pass([elements, elements], elements)]
    unfused = sum(passes, ZERO) * b_a
    return Op(name, cost, "vector", sharded=sharded, role="activation", unfused_bytes=unfused)


def gelu_tanh(name: str, tokens, width, *, sharded: bool = False) -> Op:
    """GELU, tanh approximation: 0.5·x·(1 + tanh(sqrt(2/pi)·(x + 0.044715·x³))).

    Per element: x·x·x (2), ·0.044715, +x, ·sqrt(2/pi), +1, ·x, ·0.5: 8 FLOPs and one tanh.
    Unfused: each of the eight operations reads its operands and writes E elements.
    """
    elements = tokens * width
    cost = Cost(
        flops=8 * elements,
        transcendentals=elements,
        bytes_read=elements * b_a,
        bytes_written=elements * b_a,
    )
    passes = [_pass([elements, elements], elements)] * 4 + [_pass([elements], elements)] * 5
    unfused = sum(passes, ZERO) * b_a
    return Op(name, cost, "vector", sharded=sharded, role="activation", unfused_bytes=unfused)


def clamped_swiglu(name: str, tokens, width, *, sharded: bool = False) -> Op:
    """gpt-oss's gated activation of (gate, up), each (tokens, width): gate clamped above,
    up clamped both ways, (up + 1)·gate·sigmoid(alpha·gate).

    Per output element: the gate's clamp (a min), the up projection's two-sided clamp (one
    clamp to XLA, whatever its spelling: jnp.clip or max and min fold into it), ·alpha,
    sigmoid as 1/(1 + exp(-x)) (negate, add, divide), ·gate, +1, ·: 9 FLOPs and one exp;
    reads gate and up, writes one.
    """
    elements = tokens * width
    cost = Cost(
        flops=9 * elements,
        transcendentals=elements,
        bytes_read=2 * elements * b_a,
        bytes_written=elements * b_a,
    )
    return Op(name, cost, "vector", sharded=sharded, role="activation")


def embedding(name: str, tokens, vocab, width, *, sharded: bool = False) -> Op:
    """Row gather from a (vocab, width) table: no FLOPs; only the gathered rows are read."""
    cost = Cost(
        bytes_read=tokens * width * b_w,
        bytes_written=tokens * width * b_a,
        weight_bytes=tokens * width * b_w,
    )
    return Op(name, cost, "memory", weight_params=vocab * width, sharded=sharded, role="embedding")


def kv_cache_write(name: str, tokens, elements_per_token, *, sharded: bool = False) -> Op:
    """Append the new tokens' keys/values to the cache: read activations, write cache format."""
    elements = tokens * elements_per_token
    cost = Cost(
        bytes_read=elements * b_a,
        bytes_written=elements * b_kv,
        kv_bytes=elements * b_kv,
    )
    return Op(name, cost, "memory", sharded=sharded, role="kv_write")


def _score_elements(batch, heads, new_tokens, context):
    return batch * heads * new_tokens * context


def _mask_flops(batch, heads, new_tokens, context, causal: bool):
    # A causal mask is one compare per (query, key) position pair, broadcast over batch and
    # heads, and one select per score.
    if not causal:
        return ZERO
    return new_tokens * context + _score_elements(batch, heads, new_tokens, context)


def _mask_unfused_bytes(batch, heads, new_tokens, context, causal: bool):
    # Unfused, the mask's compare writes one predicate per (query, key) pair (its iotas are
    # generated, not read), the broadcast reads those and writes one per score, and the select
    # reads the predicates and the scores and writes the scores.
    if not causal:
        return ZERO
    pairs = new_tokens * context
    scores = _score_elements(batch, heads, new_tokens, context)
    predicates = (2 * pairs + 2 * scores) * PREDICATE_BYTES
    return predicates + 2 * scores * b_a


def softmax_flops(rows, cols):
    """Safe softmax over ``cols``: max-reduce, subtract, exp, sum-reduce, reciprocal, multiply.

    XLA counts (cols-1) + cols + (cols-1) + 1 + cols per row = 4·cols - 1 FLOPs, and one
    transcendental per element.
    """
    return rows * (4 * cols - 1)


def softmax_unfused_bytes(rows, cols):
    """Traffic of a softmax over ``cols`` when each of its operations runs alone [bytes]: the
    max reads the E = rows·cols scores and writes a value per row, the subtract reads both and
    writes E, exp reads and writes E, the sum reads E and writes a value per row, the
    reciprocal reads and writes a value per row, the multiply reads E and a value per row and
    writes E: (8·E + 6·rows)·b_a."""
    elements = rows * cols
    passes = [
        _pass([elements], rows),  # max
        _pass([elements, rows], elements),  # subtract
        _pass([elements], elements),  # exp
        _pass([elements], rows),  # sum
        _pass([rows], rows),  # reciprocal
        _pass([elements, rows], elements),  # multiply
    ]
    return sum(passes, ZERO) * b_a


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
    softcap: bool = False,
    sinks=None,
) -> list[Op]:
    """Scaled dot-product attention of ``heads`` query heads over ``context`` keys per sequence.

    ``k_token_bytes`` and ``v_token_bytes`` are the bytes per context token that the score and
    value products read (H_kv·d_h·b_kv for GQA: key/value heads, not query heads); the
    ``*_cache_token_bytes`` are the parts of them that come from the KV cache.  With ``flash`` the
    whole computation is one kernel whose scores never leave the chip (traffic linear in
    ``context``), and with ``v_shares_k`` (MLA's latent serving as key and value) the shared
    tensor is read once.  Otherwise three kernels write and re-read the score matrix.  FLOPs are
    identical in both forms: the dense (unskipped) score matrix, scaled, masked when causal,
    softmaxed, times V.  Unfused, both forms are the three kernels with the score kernel's scale
    and mask as passes of their own.

    ``softcap`` (Gemma 2): scores soft-capped as cap·tanh(s/cap), 2 FLOPs and a tanh per score.
    ``sinks`` (gpt-oss): the number of heads, each with a learned sink logit joining its
    softmax's denominator: per row a max with the sink, its exp and an add (2 FLOPs, one
    exp); the sink logits are the kernel's weights.
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
    soft_transcendentals = scores
    if softcap:
        score_flops += 2 * scores
        soft_transcendentals += scores
    if sinks is not None:
        soft += 2 * rows
        soft_transcendentals += rows
    score_bytes = scores * b_a
    score_cost = Cost(
        flops=score_flops,
        bytes_read=q_bytes + k_bytes,
        bytes_written=score_bytes,
        kv_bytes=k_cache,
    )
    # Unfused, the product writes the scores, then the scale reads and writes them, then the
    # causal mask (when there is one) runs its own passes.
    scale_bytes = 2 * score_bytes
    mask_bytes = _mask_unfused_bytes(batch, heads, new_tokens, context, causal)
    naive = [
        Op(
            f"{name}.scores",
            score_cost,
            "attention",
            sharded=sharded,
            role="attention_scores",
            unfused_bytes=score_cost.bytes + scale_bytes + mask_bytes,
        ),
        Op(
            f"{name}.softmax",
            Cost(
                flops=soft,
                transcendentals=soft_transcendentals,
                bytes_read=score_bytes,
                bytes_written=score_bytes,
            ),
            "vector",
            sharded=sharded,
            role="softmax",
            weight_params=ZERO if sinks is None else sinks,
            element_bytes=b_a,
            unfused_bytes=softmax_unfused_bytes(rows, context),
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
            role="attention_values",
        ),
    ]
    if not flash:
        return naive
    shared = v_shares_k
    cost = Cost(
        flops=score_flops + soft + pv_flops,
        transcendentals=soft_transcendentals,
        bytes_read=q_bytes + k_bytes + (ZERO if shared else v_bytes),
        bytes_written=out_bytes,
        kv_bytes=k_cache + (ZERO if shared else v_cache),
    )
    unfused = sum((op.unfused_bytes for op in naive), ZERO)
    owned = ZERO if sinks is None else sinks
    fused = Op(
        name,
        cost,
        "attention",
        sharded=sharded,
        role="attention",
        unfused_bytes=unfused,
        weight_params=owned,
        element_bytes=b_a,
    )
    return [fused]


def _collective(name: str, elements, kind: Literal["all_reduce", "all_gather", "all_to_all"]) -> Op:
    """A collective whose payload per device is ``elements`` activations (``comm_bytes``)."""
    cost = Cost(comm_bytes=elements * b_a)
    return Op(name, cost, "collective", collective=kind, role="collective")


def all_reduce(name: str, elements) -> Op:
    """A tensor-parallel all-reduce of ``elements`` activations; payload in ``comm_bytes``."""
    return _collective(name, elements, "all_reduce")


def all_gather(name: str, elements) -> Op:
    """A tensor-parallel all-gather whose result is ``elements`` activations per device."""
    return _collective(name, elements, "all_gather")


def all_to_all(name: str, elements) -> Op:
    """An expert-parallel all-to-all: each device sends ``elements`` activations (its tokens'
    copies for the experts they are routed to, all destinations together)."""
    return _collective(name, elements, "all_to_all")
