"""Reference transformer layers in plain ``jax.numpy``, built from the same specs as the model.

Each builder returns a :class:`Program`: a pure function, the shapes (and, for sharded programs,
the shardings) of its arguments, and which arguments it donates.  ``jax.jit(p.fn,
donate_argnums=p.donate).lower(*p.abstract_args()).compile()`` is the compiled layer whose
``cost_analysis()`` :mod:`costmodel.validate.xla` holds the symbolic model to;
``p.example_args(key)`` gives random concrete arguments of the same shapes for running or timing it.

The layers are written the way the symbolic model (:mod:`costmodel.model.layers`) counts them, with
choices a real implementation also makes:

* RMSNorm ``x * rsqrt(mean(x*x) + eps) * g``; RoPE ``x*cos + rotate_half(x)*sin`` with
  precomputed per-token cos/sin tables (inputs of shape (B, S, head_dim)), ``rotate_half``
  being ``concat(-x2, x1)``;
* attention: QK product, then a softmax that subtracts the row maximum, scales, masks (causal
  mask from iotas in prefill: a compare, then a select) and exponentiates in one pass, as
  FlashAttention does (:func:`scaled_softmax`); GQA by grouping query heads against their KV
  head (no copies of K or V);
* SwiGLU ``down(silu(gate(x)) * up(x))``;
* K and V head-major, (B, H_kv, T, d_h) (:func:`kv_layout`); decode writes the new token's
  keys/values into a donated cache of T slots at position T-1 (an in-place
  dynamic-update-slice) and attends over all T slots, without a mask; prefill returns the new
  keys/values (the cache write) beside the layer output;
* tensor parallelism with ``shard_map`` and an explicit ``psum`` after o_proj and down_proj.

Where XLA CPU would otherwise count work the model rightly does not (cheap elementwise producers
fused into two consumers and so counted twice, copies around unit axes), the layouts are chosen
to avoid it; each such choice is explained where it is made (:func:`scaled_softmax`,
:func:`kv_layout`, :func:`without_units`, :func:`mla_decode_attention`, :func:`router_softmax`,
:func:`moe_layer`).

Shapes come from a :class:`~costmodel.config.specs.ModelSpec` (scale one down with :func:`scaled`,
or build one with :func:`small_spec`); the workload is ``batch`` sequences of ``new_tokens`` tokens
attending ``context`` positions.  Builders: :func:`decoder_layer`, :func:`sharded_decoder_layer`,
:func:`attention`, :func:`mlp`, :func:`lm_head`, :func:`mla_decode_attention`, and the
Mixture-of-Experts half of a layer with fixed, balanced routing, on one device or sharded
(data-parallel attention with all-to-alls, or tensor-parallel with expert groups),
:func:`moe_layer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from costmodel.config.specs import MLASpec, ModelSpec, MoESpec
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.phase import Phase

EPS = 1e-6
TP_AXIS = "tp"


@dataclass(frozen=True)
class Program:
    """A reference layer: ``fn(*args)`` with argument shapes, dtypes and optional shardings.

    ``names`` labels each argument; ``donate`` lists the arguments ``fn`` may overwrite (the KV
    cache in decode); ``mesh`` is set for sharded programs, whose ``specs`` give each
    argument's PartitionSpec over the mesh's axes.  ``fixed`` holds the arguments whose
    values the program prescribes (index tables), by position: they keep their own dtype and
    :meth:`example_args` passes their values.  ``stages``, when set, are the programs an
    engine would launch one after another for ``fn`` (same arguments' values flow between
    them): :mod:`costmodel.validate.xla` adds up their costs instead of compiling ``fn`` whole
    (see :func:`moe_layer`).
    """

    fn: Callable
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: jnp.dtype = jnp.float32
    donate: tuple[int, ...] = ()
    mesh: Mesh | None = None
    specs: tuple[P, ...] = field(default=())
    fixed: tuple[tuple[int, np.ndarray], ...] = ()
    stages: tuple[Program, ...] = ()

    def _sharding(self, index: int):
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, self.specs[index])

    def _dtype(self, index: int):
        values = dict(self.fixed).get(index)
        return self.dtype if values is None else values.dtype

    def abstract_args(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        """Argument placeholders (shape, dtype, sharding) for ``lower``, no memory allocated."""
        return tuple(
            jax.ShapeDtypeStruct(shape, self._dtype(i), sharding=self._sharding(i))
            for i, shape in enumerate(self.shapes)
        )

    def example_args(self, key: jax.Array | None = None) -> tuple[jax.Array, ...]:
        """Random normal arguments of the program's shapes, scaled by 0.1, and the fixed
        arguments' values (placed per sharding).  One draw of all the random elements
        together, so that a program costs one random-number compile, not one per shape."""
        key = jax.random.key(0) if key is None else key
        fixed = dict(self.fixed)
        sizes = [0 if i in fixed else math.prod(shape) for i, shape in enumerate(self.shapes)]
        drawn = np.asarray(0.1 * jax.random.normal(key, (sum(sizes),), self.dtype))
        starts = np.cumsum([0, *sizes])
        args = []
        for i, shape in enumerate(self.shapes):
            if i in fixed:
                value = jnp.asarray(fixed[i])
            else:
                value = jnp.asarray(drawn[starts[i] : starts[i + 1]].reshape(shape))
            sharding = self._sharding(i)
            args.append(value if sharding is None else jax.device_put(value, sharding))
        return tuple(args)

    def jitted(self) -> Callable:
        """``jax.jit`` of ``fn`` with the program's donated arguments."""
        return jax.jit(self.fn, donate_argnums=self.donate)

    def compiled(self):
        """The executable compiled for the abstract arguments (has ``cost_analysis()``)."""
        return self.jitted().lower(*self.abstract_args()).compile()


def scaled(spec: ModelSpec, divisor: int, *, heads_divisor: int | None = None) -> ModelSpec:
    """``spec`` scaled down: widths (d_model, ffn, vocab, MLA ranks) divided by ``divisor``,
    head counts by ``heads_divisor`` (default ``divisor``), head dimensions kept; each rounded
    down and at least 1, with n_kv_heads <= n_heads.  One layer, no nominal size.
    """
    hd = divisor if heads_divisor is None else heads_divisor

    def div(value: int, by: int) -> int:
        return max(1, value // by)

    heads = div(spec.n_heads, hd)
    kv_heads = min(heads, div(spec.n_kv_heads, hd))
    mla = None
    if spec.mla is not None:
        mla = MLASpec(
            kv_lora_rank=div(spec.mla.kv_lora_rank, divisor),
            q_lora_rank=div(spec.mla.q_lora_rank, divisor),
            qk_rope_head_dim=spec.mla.qk_rope_head_dim,
            qk_nope_head_dim=spec.mla.qk_nope_head_dim,
            v_head_dim=spec.mla.v_head_dim,
        )
    return spec.model_copy(
        update={
            "name": f"{spec.name}/{divisor}",
            "n_layers": 1,
            "d_model": div(spec.d_model, divisor),
            "n_heads": heads,
            "n_kv_heads": kv_heads,
            "ffn_dim": div(spec.ffn_dim, divisor),
            "vocab_size": div(spec.vocab_size, divisor),
            "mla": mla,
            "nominal_params": None,
        }
    )


def small_spec(
    *,
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    ffn_dim: int,
    vocab_size: int = 8,
    mla: MLASpec | None = None,
    moe: MoESpec | None = None,
    activation: str = "silu",
    name: str = "reference",
) -> ModelSpec:
    """A one-layer ModelSpec of the given shape (for drawing random test shapes)."""
    return ModelSpec(
        name=name,
        n_layers=1,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        ffn_dim=ffn_dim,
        vocab_size=vocab_size,
        mla=mla,
        moe=moe,
        activation=activation,
    )


# --------------------------------------------------------------------------- building blocks


def rmsnorm(x: jax.Array, gain: jax.Array) -> jax.Array:
    """x · rsqrt(mean(x²) + eps) · gain over the last axis."""
    mean_square = jnp.mean(x * x, axis=-1, keepdims=True)
    return x * lax.rsqrt(mean_square + EPS) * gain


def rotate_half(x: jax.Array) -> jax.Array:
    """(x1, x2) -> (-x2, x1) over the last axis's two halves."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding of x (B, heads, S, dim), or (B, S, dim) for a single head, with
    per-token tables cos, sin (B, S, dim)."""
    if x.ndim == cos.ndim + 1:
        cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


def causal_allowed(new: int, context: int) -> jax.Array:
    """(new, context) booleans: may query i, at position context-new+i, see key j?"""
    query_pos = lax.broadcasted_iota(jnp.int32, (new, context), 0) + (context - new)
    key_pos = lax.broadcasted_iota(jnp.int32, (new, context), 1)
    return query_pos >= key_pos


def scaled_softmax(scores: jax.Array, scale: float, *, causal: bool = False) -> jax.Array:
    """softmax(scale · scores) over the last axis, causally masked when ``causal``.

    Written as FlashAttention computes it: the row maximum is taken on the raw scores, and the
    scale and the mask are applied once, inside the exponent: exp(where(allowed, (s - max(s)) ·
    scale, -inf)).  Softmax is invariant to the shift, so this is the exact softmax (the
    maximum over the whole row bounds the maximum over the allowed keys).  Applying scale or mask
    before a separate max pass would make XLA CPU recompute them in both passes (its fusion
    duplicates cheap elementwise producers), and its cost analysis would count them twice.
    """
    shifted = (scores - jnp.max(scores, axis=-1, keepdims=True)) * scale
    if causal:
        new, context = scores.shape[-2:]
        shifted = jnp.where(causal_allowed(new, context), shifted, -jnp.inf)
    weights = jnp.exp(shifted)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool) -> jax.Array:
    """Grouped-query attention, head-major: q (B, H, S, d), k and v (B, H_kv, T, d) -> (B, H, S, d).

    Query head h attends KV head h // (H / H_kv): the G = H / H_kv query heads of a group and
    their S positions form one (G·S, d) block against the group's keys, so K and V are read
    as stored, never copied per query head.
    """
    batch, heads, new, dim = q.shape
    kv_heads, context = k.shape[1], k.shape[2]
    group = heads // kv_heads
    grouped = q.reshape(batch, kv_heads, group * new, dim)
    scores = jnp.einsum("bkqd,bktd->bkqt", grouped, k)
    scores = scores.reshape(batch, kv_heads, group, new, context)
    weights = scaled_softmax(scores, 1.0 / math.sqrt(dim), causal=causal)
    weights = weights.reshape(batch, kv_heads, group * new, context)
    out = jnp.einsum("bkqt,bktd->bkqd", weights, v)
    return out.reshape(batch, heads, new, dim)


def kv_layout(batch: int, kv_heads: int, tokens: int, dim: int) -> tuple[int, ...]:
    """Shape in which one device stores K (or V) of ``tokens`` tokens: head-major
    (B, H_kv, T, d), as Hugging Face and most JAX implementations keep it, with the batch and
    head axes left out when they have one element.

    Head-major lets the attention products read the cache as stored.  Unit axes are left out
    because XLA drops them from the products' operands: a cache stored with them is reshaped
    for the product, and XLA CPU then fuses the cache update twice (once per shape), counting
    the new keys' RoPE twice.
    """
    return (*((batch,) if batch > 1 else ()), *((kv_heads,) if kv_heads > 1 else ()), tokens, dim)


def device_axis(batch: int) -> int:
    """The axis of a :func:`kv_layout` array that tensor parallelism splits: the head axis,
    or the token axis when a device holds one KV head (the axis after the batch axis)."""
    return 1 if batch > 1 else 0


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """down(silu(x @ w_gate) * (x @ w_up))."""
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else lax.psum(x, axis_name)


# --------------------------------------------------------------------------- Llama-style layer


class _Gqa:
    """Per-device widths of a GQA decoder layer at tensor-parallel degree ``tp``."""

    def __init__(self, spec: ModelSpec, tp: int = 1):
        if spec.n_heads % tp:
            raise ValueError(f"n_heads={spec.n_heads} is not divisible by tp={tp}")
        if spec.n_heads % spec.n_kv_heads:
            raise ValueError(f"n_heads={spec.n_heads} is not a multiple of n_kv={spec.n_kv_heads}")
        if spec.n_kv_heads % tp and tp % spec.n_kv_heads:
            raise ValueError(f"n_kv_heads={spec.n_kv_heads} and tp={tp}: neither divides the other")
        if spec.ffn_dim % tp:
            raise ValueError(f"ffn_dim={spec.ffn_dim} is not divisible by tp={tp}")
        if spec.head_dim % 2:
            raise ValueError(f"head_dim={spec.head_dim} must be even for RoPE")
        self.d = spec.d_model
        self.dh = spec.head_dim
        self.heads = spec.n_heads // tp
        self.kv_heads = max(1, spec.n_kv_heads // tp)
        self.ffn = spec.ffn_dim // tp
        self.tp = tp


def _heads_major(projected: jax.Array, heads: int, dim: int) -> jax.Array:
    """(B, S, heads·dim) projections -> (B, heads, S, dim)."""
    batch, new, _ = projected.shape
    return projected.reshape(batch, new, heads, dim).transpose(0, 2, 1, 3)


def _decoder_body(
    widths: _Gqa, phase: Phase, context: int, axis_name: str | None
) -> tuple[Callable, tuple[str, ...]]:
    """The per-device layer function and its argument names."""
    dh = widths.dh

    def layer(x, cos, sin, g_attn, wq, wk, wv, wo, g_mlp, w_gate, w_up, w_down, *cache):
        batch, new, _ = x.shape
        h = rmsnorm(x, g_attn)
        q = rope(_heads_major(h @ wq, widths.heads, dh), cos, sin)
        k = rope(_heads_major(h @ wk, widths.kv_heads, dh), cos, sin)
        v = _heads_major(h @ wv, widths.kv_heads, dh)
        stored = kv_layout(batch, widths.kv_heads, new, dh)
        if phase == "decode":
            slot = (0,) * (len(stored) - 2) + (context - 1, 0)
            kv_out = tuple(
                lax.dynamic_update_slice(c, x_new.reshape(stored), slot)
                for c, x_new in zip(cache, (k, v), strict=True)
            )
            full = (batch, widths.kv_heads, context, dh)
            k_all, v_all = (c.reshape(full) for c in kv_out)
        else:
            k_all, v_all = k, v
            kv_out = (k.reshape(stored), v.reshape(stored))
        attn = gqa_attention(q, k_all, v_all, causal=phase == "prefill")
        attn = attn.transpose(0, 2, 1, 3).reshape(batch, new, widths.heads * dh)
        x = x + _psum(attn @ wo, axis_name)
        x = x + _psum(swiglu(rmsnorm(x, g_mlp), w_gate, w_up, w_down), axis_name)
        return (x, *kv_out)

    names = [
        "x",
        "cos",
        "sin",
        "g_attn",
        "wq",
        "wk",
        "wv",
        "wo",
        "g_mlp",
        "w_gate",
        "w_up",
        "w_down",
    ] + (["k_cache", "v_cache"] if phase == "decode" else [])
    return layer, tuple(names)


def _decoder_shapes(widths: _Gqa, phase: Phase, batch: int, new: int, context: int, tp: int):
    """Global argument shapes (KV heads tp·local when replicated)."""
    d, dh = widths.d, widths.dh
    kv_global = widths.kv_heads * tp
    shapes = [
        (batch, new, d),
        (batch, new, dh),
        (batch, new, dh),
        (d,),
        (d, widths.heads * tp * dh),
        (d, kv_global * dh),
        (d, kv_global * dh),
        (widths.heads * tp * dh, d),
        (d,),
        (d, widths.ffn * tp),
        (d, widths.ffn * tp),
        (widths.ffn * tp, d),
    ]
    if phase == "decode":
        shapes += [_global_kv(kv_layout(batch, widths.kv_heads, context, dh), batch, tp)] * 2
    return tuple(shapes)


def _workload(phase: Phase, new_tokens: int, context: int | None) -> tuple[int, int]:
    """(S, T) of a program: the phase rule (:mod:`costmodel.model.phase`) applied to
    ``new_tokens`` and ``context``, which must agree with it (``context`` may be left out in
    prefill)."""
    point = phases.workload(phase, batch=1, prompt=new_tokens, context=context)
    new, attended = int(point[sy.S]), point[sy.T]
    if new != new_tokens:
        raise ValueError(f"{phase} runs {new} new token(s) per sequence, not {new_tokens}")
    if context is not None and attended != context:
        raise ValueError(f"{phase} of {new_tokens} tokens attends {attended}, not {context}")
    if attended is None or attended < 1:
        raise ValueError(f"{phase} needs a context of at least 1 token")
    return new, int(attended)


def decoder_layer(
    spec: ModelSpec,
    phase: Phase,
    *,
    batch: int,
    new_tokens: int = 1,
    context: int | None = None,
    dtype=jnp.float32,
) -> Program:
    """One Llama-style decoder layer on one device.

    prefill: ``new_tokens`` = S prompt tokens, causal; returns (x_out, k, v), k and v in
    :func:`kv_layout`.
    decode: one token against a cache of ``context`` = T slots (new token written at slot T-1,
    cache donated); returns (x_out, k_cache, v_cache).
    """
    new, context = _workload(phase, new_tokens, context)
    widths = _Gqa(spec)
    fn, names = _decoder_body(widths, phase, context, None)
    shapes = _decoder_shapes(widths, phase, batch, new, context, 1)
    donate = (12, 13) if phase == "decode" else ()
    return Program(fn, names, shapes, dtype, donate)


def _global_kv(local: tuple[int, ...], batch: int, tp: int) -> tuple[int, ...]:
    """Global shape of ``tp`` devices' K/V arrays of shape ``local``, stacked on the device
    axis."""
    axis = device_axis(batch)
    return tuple(n * tp if i == axis else n for i, n in enumerate(local))


def _kv_spec(rank: int, batch: int) -> P:
    """PartitionSpec of a K/V array of ``rank`` axes in :func:`kv_layout`."""
    axis = device_axis(batch)
    return P(*(TP_AXIS if i == axis else None for i in range(rank)))


def _decoder_specs(phase: Phase, kv_spec: P) -> tuple[P, ...]:
    col, row, rep = P(None, TP_AXIS), P(TP_AXIS, None), P()
    specs = [rep, rep, rep, rep, col, col, col, row, rep, col, col, row]
    if phase == "decode":
        specs += [kv_spec] * 2
    return tuple(specs)


def tp_mesh(tp: int) -> Mesh:
    """A one-axis ("tp") mesh over the first ``tp`` devices (explicit sharding)."""
    devices = jax.devices()
    if len(devices) < tp:
        raise ValueError(
            f"tp={tp} needs {tp} devices, found {len(devices)}; on CPU call "
            f"costmodel.runtime.configure(cpu_devices={tp}) before any JAX computation"
        )
    return jax.make_mesh((tp,), (TP_AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))


def sharded_decoder_layer(
    spec: ModelSpec,
    phase: Phase,
    *,
    tp: int,
    batch: int,
    new_tokens: int = 1,
    context: int | None = None,
    dtype=jnp.float32,
    mesh: Mesh | None = None,
) -> Program:
    """The decoder layer, Megatron-style over a ``tp``-device mesh (``shard_map``).

    Q/K/V, gate and up are column-parallel, o_proj and down row-parallel, each followed by an
    all-reduce (``psum``) of the (B, S, d_model) activations; norms and residuals are
    replicated.  When tp exceeds n_kv_heads each device holds one KV head (the global K/V
    weights and caches carry tp/n_kv_heads copies of each head).
    """
    new, context = _workload(phase, new_tokens, context)
    widths = _Gqa(spec, tp)
    body, names = _decoder_body(widths, phase, context, TP_AXIS)
    mesh = tp_mesh(tp) if mesh is None else mesh
    rank = len(kv_layout(batch, widths.kv_heads, new, widths.dh))
    kv_spec = _kv_spec(rank, batch)
    specs = _decoder_specs(phase, kv_spec)
    out_specs = (P(), kv_spec, kv_spec)
    fn = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=out_specs)
    shapes = _decoder_shapes(widths, phase, batch, new, context, tp)
    donate = (12, 13) if phase == "decode" else ()
    return Program(fn, names, shapes, dtype, donate, mesh, specs)


# --------------------------------------------------------------------------- parts of a layer


def without_units(*shape: int) -> tuple[int, ...]:
    """``shape`` with its one-element axes left out.

    Programs whose inputs or results are operands or results of a product take and return
    them this way: XLA drops unit axes from products, and on CPU it copies an operand or a
    result that carries them (a copy the model rightly does not count).
    """
    return tuple(n for n in shape if n != 1)


def attention(
    spec: ModelSpec,
    phase: Phase,
    *,
    batch: int,
    new_tokens: int = 1,
    context: int | None = None,
    dtype=jnp.float32,
) -> Program:
    """Attention alone, head-major, causal in prefill: queries (B, H_kv, G·S, d_h) (query head
    h = k·G + g of KV head k, G = H/H_kv, at position s in row g·S + s) against k, v in
    :func:`kv_layout`; returns the output in the queries' layout.  Unit axes are left out
    (:func:`without_units`)."""
    new, context = _workload(phase, new_tokens, context)
    widths = _Gqa(spec)
    group = widths.heads // widths.kv_heads
    full_q = (batch, widths.heads, new, widths.dh)
    full_kv = (batch, widths.kv_heads, context, widths.dh)
    q_shape = without_units(batch, widths.kv_heads, group * new, widths.dh)

    def fn(q, k, v):
        out = gqa_attention(
            q.reshape(full_q), k.reshape(full_kv), v.reshape(full_kv), causal=phase == "prefill"
        )
        return out.reshape(q_shape)

    kv_shape = kv_layout(batch, widths.kv_heads, context, widths.dh)
    return Program(fn, ("q", "k", "v"), (q_shape, kv_shape, kv_shape), dtype)


def mlp(spec: ModelSpec, *, batch: int, new_tokens: int, dtype=jnp.float32) -> Program:
    """The SwiGLU MLP alone on B·S tokens: (B·S, d_model) -> (B·S, d_model), unit axes left
    out (:func:`without_units`)."""
    d, f = spec.d_model, spec.ffn_dim
    shapes = (without_units(batch * new_tokens, d), (d, f), (d, f), (f, d))
    return Program(swiglu, ("x", "w_gate", "w_up", "w_down"), shapes, dtype)


def lm_head(spec: ModelSpec, *, batch: int, dtype=jnp.float32) -> Program:
    """The LM head on the last position of each sequence: (B, d_model) @ (d_model, V), unit
    axes left out (:func:`without_units`)."""

    def fn(h, w):
        return h @ w

    shapes = (without_units(batch, spec.d_model), (spec.d_model, spec.vocab_size))
    return Program(fn, ("h", "w_head"), shapes, dtype)


# --------------------------------------------------------------------------- MLA decode


def mla_decode_attention(
    spec: ModelSpec, *, batch: int, context: int, absorb: bool, dtype=jnp.float32
) -> Program:
    """DeepSeek-style multi-head latent attention block, one decode step (residual included).

    Two caches, as DeepSeek-V3's inference code keeps them: the normed latent (r_kv per token)
    and the roped shared key (d_rope per token); the new token goes to slot T-1.

    Absorbed: W_UK is applied to the query and W_UV after attention, which runs on the caches
    directly, keys being latent and rotary key joined (one r_kv + d_rope product per score, as
    FlashMLA computes it), values the latent.  The latent cache (B, T, r_kv) is updated in
    place; the rotary-key cache (B, T, d_rope) is read, and the new token's rotary key returned
    for the caller to append.  Returns (x_out, latent_cache, new_rope_key (B, d_rope)).

    Up-projected: the cached latent is expanded to per-head keys and values each step (the
    model's one (r_kv, H·(d_nope + d_v)) matmul, its W_UK and W_UV columns passed as two
    arrays); each head's key is its expanded part joined to the shared rotary key.  Both
    caches are updated in place; the latent cache is kept token-major and flat, (T·B, r_kv)
    with token t of sequence b in row t·B + b (a paged cache with one slot per token), so the
    expansion reads it as stored.  Returns (x_out, latent_cache, rope_cache).

    One token per sequence: x (B, d_model), cos and sin (B, d_rope); per-sequence caches drop a
    unit batch axis (as :func:`kv_layout` does).

    The layouts are the ones for which XLA CPU neither copies the caches nor fuses the cache
    update into two consumers (which would count the new token's norm and RoPE twice).
    """
    if spec.mla is None:
        raise ValueError(f"model {spec.name} has no MLA dimensions")
    m = spec.mla
    d, heads = spec.d_model, spec.n_heads
    r_q, r_kv, d_rope, d_nope, d_v = (
        m.q_lora_rank,
        m.kv_lora_rank,
        m.qk_rope_head_dim,
        m.qk_nope_head_dim,
        m.v_head_dim,
    )
    if d_rope % 2:
        raise ValueError(f"qk_rope_head_dim={d_rope} must be even for RoPE")
    qk_head = d_nope + d_rope
    scale = 1.0 / math.sqrt(qk_head)

    def per_sequence(width: int, tokens: int) -> tuple[int, ...]:
        # (B, tokens, width) without a unit batch axis (see kv_layout).
        return (batch, tokens, width) if batch > 1 else (tokens, width)

    def write(cache, entry, width):
        slot = (0,) * (cache.ndim - 2) + (context - 1, 0)
        return lax.dynamic_update_slice(cache, entry.reshape(per_sequence(width, 1)), slot)

    def project(x, cos, sin, g_attn, w_dq, g_q, w_uq, w_dkv, g_kv):
        """Queries (B, H, 1, ·) split into non-rotary and roped parts; the new cache entries
        (B, r_kv) and (B, d_rope)."""
        h = rmsnorm(x, g_attn)
        # One new token per sequence: queries (B, H, qk), no unit axis (see without_units).
        q = (rmsnorm(h @ w_dq, g_q) @ w_uq).reshape(batch, heads, qk_head)
        q_nope, q_rope = q[..., :d_nope], rope(q[..., d_nope:], cos, sin)
        down = h @ w_dkv
        latent = rmsnorm(down[..., :r_kv], g_kv)
        k_rope = rope(down[..., r_kv:], cos, sin)
        return q_nope, q_rope, latent, k_rope

    def finish(x, out, w_o):
        return x + out.reshape(batch, heads * d_v) @ w_o

    def absorbed(x, cos, sin, g_attn, w_dq, g_q, w_uq, w_dkv, g_kv, w_uk, w_uv, w_o, lat, rot):
        q_nope, q_rope, latent, k_rope = project(x, cos, sin, g_attn, w_dq, g_q, w_uq, w_dkv, g_kv)
        lat = write(lat, latent, r_kv)
        keys = jnp.concatenate([lat, write(rot, k_rope, d_rope)], axis=-1)
        keys = keys.reshape(batch, context, r_kv + d_rope)
        q_latent = jnp.einsum("bhn,hnr->bhr", q_nope, w_uk)
        query = jnp.concatenate([q_latent, q_rope], axis=-1)
        scores = jnp.einsum("bhk,btk->bht", query, keys)
        weights = scaled_softmax(scores, scale)
        out_latent = jnp.einsum("bht,btr->bhr", weights, lat.reshape(batch, context, r_kv))
        out = jnp.einsum("bhr,hrv->bhv", out_latent, w_uv)
        return finish(x, out, w_o), lat, k_rope

    def up_projected(x, cos, sin, g_attn, w_dq, g_q, w_uq, w_dkv, g_kv, w_uk, w_uv, w_o, lat, rot):
        q_nope, q_rope, latent, k_rope = project(x, cos, sin, g_attn, w_dq, g_q, w_uq, w_dkv, g_kv)
        lat = lax.dynamic_update_slice(lat, latent, ((context - 1) * batch, 0))
        rot = write(rot, k_rope, d_rope)
        # Token-major expansion (t, b, h, ·); each product reads it in that order.
        k_nope = (lat @ w_uk).reshape(context, batch, heads, d_nope)
        values = (lat @ w_uv).reshape(context, batch, heads, d_v)
        shared = rot.reshape(batch, context, 1, d_rope).transpose(1, 0, 2, 3)
        shared = jnp.broadcast_to(shared, (context, batch, heads, d_rope))
        keys = jnp.concatenate([k_nope, shared], axis=-1)
        query = jnp.concatenate([q_nope, q_rope], axis=-1)
        scores = jnp.einsum("bhk,tbhk->bht", query, keys)
        weights = scaled_softmax(scores, scale)
        out = jnp.einsum("bht,tbhv->bhv", weights, values)
        return finish(x, out, w_o), lat, rot

    common = [
        ("x", (batch, d)),
        ("cos", (batch, d_rope)),
        ("sin", (batch, d_rope)),
        ("g_attn", (d,)),
        ("w_dq", (d, r_q)),
        ("g_q", (r_q,)),
        ("w_uq", (r_q, heads * qk_head)),
        ("w_dkv", (d, r_kv + d_rope)),
        ("g_kv", (r_kv,)),
    ]
    rope_cache = ("rope_cache", per_sequence(d_rope, context))
    if absorb:
        extra = [("w_uk", (heads, d_nope, r_kv)), ("w_uv", (heads, r_kv, d_v))]
        caches = [("latent_cache", per_sequence(r_kv, context)), rope_cache]
        fn = absorbed
    else:
        # W_UK and W_UV as matrices (the model's one kv_up weight, split by columns).
        extra = [("w_uk", (r_kv, heads * d_nope)), ("w_uv", (r_kv, heads * d_v))]
        caches = [("latent_cache", (context * batch, r_kv)), rope_cache]
        fn = up_projected
    args = [*common, *extra, ("w_o", (heads * d_v, d)), *caches]
    names = tuple(name for name, _ in args)
    shapes = tuple(shape for _, shape in args)
    donate = (len(args) - 2,) if absorb else (len(args) - 2, len(args) - 1)
    return Program(fn, names, shapes, dtype, donate)


# --------------------------------------------------------------------------- Mixture of Experts

EP_AXIS = "ep"
EXPERT_TP_AXIS = "et"
CLAMP_LIMIT = 7.0  # gpt-oss's swiglu_limit
CLAMP_ALPHA = 1.702  # gpt-oss's sigmoid scale in its gated activation


def clamped_swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """gpt-oss's gated activation: the gate clamped above, the up projection both ways,
    (up + 1) · gate · sigmoid(alpha · gate)."""
    gate = jnp.minimum(gate, CLAMP_LIMIT)
    up = jnp.maximum(jnp.minimum(up, CLAMP_LIMIT), -CLAMP_LIMIT)
    return (up + 1) * (gate * jax.nn.sigmoid(CLAMP_ALPHA * gate))


def router_softmax(logits: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """softmax(logits + bias) over the experts (last axis), the row maximum taken on the raw
    logits and the bias added inside the exponent, as :func:`scaled_softmax` does: adding the
    bias first would make XLA CPU recompute the add in both the max and the exponent passes
    and count it twice."""
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(shifted if bias is None else shifted + bias)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _gated(gate: jax.Array, up: jax.Array, activation: str) -> jax.Array:
    if activation == "clamped_swiglu":
        return clamped_swiglu(gate, up)
    if activation == "gelu_tanh":
        return jax.nn.gelu(gate, approximate=True) * up
    return jax.nn.silu(gate) * up


def moe_routing(tokens: int, experts: int, top_k: int, *, groups: int = 1, blocks: int = 1):
    """The fixed, balanced routing of the MoE reference layers: each token's ``top_k``
    experts, slot by slot, as a (tokens, top_k) int32 array.

    The tokens are cut into ``blocks`` equal blocks of consecutive tokens (a device's own
    tokens under data-parallel attention; one block otherwise), each block into G = E/k
    classes of consecutive tokens; every token of class g goes to the same k experts.  With
    ``groups`` = 1 those are experts g·k + j (slot j); with the experts in ``groups``
    expert-parallel groups of E/groups, slot j = (group q, i), i < k/groups, goes to expert
    q·E/groups + g·k/groups + i, so every token has k/groups experts in each group.  Every
    expert receives tokens·k/E rows (rho_e = 1), and every expert receives some (so all are
    touched) — the routing a step of a perfectly balanced router would produce.

    Fixed, so that the grouped expert products have static shapes (a learned router's choice
    is data-dependent), and by classes of consecutive tokens, so that laying the rows out per
    expert is a broadcast of blocks of the normed tokens rather than a gather.  The weights are
    still the router's scores of the chosen experts; only the choice is fixed.
    """
    if experts % top_k or top_k % groups or experts % groups:
        raise ValueError(f"E={experts}, k={top_k}, groups={groups}: k must divide E, groups k")
    classes = experts // top_k
    if tokens % blocks or (tokens // blocks) % classes:
        raise ValueError(
            f"{tokens} tokens in {blocks} block(s) do not split into E/k={classes} classes"
        )
    per_class = tokens // blocks // classes
    token_class = (np.arange(tokens) % (tokens // blocks)) // per_class
    slot = np.arange(top_k)
    group, i = slot // (top_k // groups), slot % (top_k // groups)
    experts_of = (
        group[None] * (experts // groups) + token_class[:, None] * (top_k // groups) + i[None]
    )
    return experts_of.astype(np.int32)


@dataclass(frozen=True)
class _MoE:
    """Shape of an MoE layer from a spec: D, E, k, F_e, F_sh, and its architecture flags."""

    d: int
    experts: int
    top_k: int
    ffn: int
    shared: int
    scoring: str
    normalise: bool
    router_bias: bool
    expert_bias: bool
    activation: str

    @classmethod
    def of(cls, spec: ModelSpec) -> _MoE:
        if spec.moe is None:
            raise ValueError(f"model {spec.name} has no Mixture-of-Experts layers")
        m = spec.moe
        return cls(
            spec.d_model,
            m.n_experts,
            m.top_k,
            m.expert_ffn_dim,
            m.shared_ffn_dim,
            m.scoring,
            m.normalise_top_k,
            m.router_bias,
            m.expert_bias,
            spec.activation,
        )

    def weights(self) -> list[tuple[str, tuple[int, ...]]]:
        """Global names and shapes of the weights after the norm, in argument order."""
        d, e, f = self.d, self.experts, self.ffn
        args = [("w_router", (d, e))]
        args += [("b_router", (e,))] if self.router_bias else []
        args += [("w_gate", (e, d, f)), ("w_up", (e, d, f)), ("w_down", (e, f, d))]
        if self.expert_bias:
            args += [("b_gate", (e, f)), ("b_up", (e, f)), ("b_down", (e, d))]
        if self.shared:
            s = self.shared
            args += [("ws_gate", (d, s)), ("ws_up", (d, s)), ("ws_down", (s, d))]
        return args

    def route_weights(self, h, w_router, rest, routing) -> jax.Array:
        """Router logits (and bias), scores (softmax over E or sigmoid), and the scores of
        each token's routed experts (``routing``, a constant table of h's leading shape: a
        gather, no FLOPs), renormalised to sum 1 when the model does: h's leading shape by k.
        """
        logits = h @ w_router
        bias = rest.pop(0) if self.router_bias else None
        if self.scoring == "softmax":
            scores = router_softmax(logits, bias)
        else:
            scores = jax.nn.sigmoid(logits if bias is None else logits + bias)
        weights = jnp.take_along_axis(
            scores, jnp.asarray(routing), axis=-1, mode="promise_in_bounds"
        )
        if self.normalise:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return weights

    def experts_apply(self, rows, w_gate, w_up, w_down, biases, specs) -> jax.Array:
        """The grouped experts on ``rows``: gate and up products, biases, the gated
        activation, the down product (and bias).  ``specs`` are the einsums of the rows with
        a gate/up weight and of the activations with a down weight."""
        into, out_of = specs
        gate = jnp.einsum(into, rows, w_gate)
        up = jnp.einsum(into, rows, w_up)
        if biases:
            b_gate, b_up, _ = biases
            gate, up = gate + _expand(b_gate, gate), up + _expand(b_up, up)
        y = jnp.einsum(out_of, _gated(gate, up, self.activation), w_down)
        if biases and biases[2] is not None:
            y = y + _expand(biases[2], y)
        return y

    def shared_apply(self, h, rest) -> jax.Array:
        w_gate, w_up, w_down = rest
        return _gated(h @ w_gate, h @ w_up, self.activation) @ w_down


def _expand(bias: jax.Array, like: jax.Array) -> jax.Array:
    """A per-expert bias, (experts..., width), broadcast over ``like``'s row axis (the one
    before the width)."""
    return jnp.expand_dims(bias, like.ndim - 2)


def moe_layer(
    spec: ModelSpec,
    *,
    tokens: int,
    tp: int = 1,
    ep: int = 1,
    attention_dp: bool = False,
    dtype=jnp.float32,
    mesh: Mesh | None = None,
) -> Program:
    """The Mixture-of-Experts half of a decoder layer on ``tokens`` tokens (the replica's
    B·S), as :func:`costmodel.model.layers.moe_mlp_block` counts it: RMSNorm, router (and
    bias), scores, the routed experts' weights, the routed experts (gate and up grouped
    products, biases, gated activation, down product and bias), the weighted combine, the
    shared experts, the residual add.  Routing is fixed and balanced (:func:`moe_routing`).
    x (tokens, D) -> (tokens, D).

    One device (tp = 1), or ``tp`` devices with ``shard_map``:

    * tensor-parallel (``attention_dp`` False): every device holds all tokens; the experts
      split over ``ep`` groups (mesh axis "ep"), each expert's width over the tp/ep devices
      of its group (axis "et"), the shared experts' width over all tp; each device computes
      its experts' rows (each token's k/ep slots in its group, picked from the token's k
      weights by the ``slots`` argument, which gives each group its slot numbers), combines
      them, adds its share of the shared experts, and one all-reduce (``psum``) of
      (tokens, D) sums the devices.  Needs ep | k and k/ep >= 2 (a combine over one slot is
      a multiply to XLA, 1 FLOP where the model counts 2; see
      :func:`costmodel.validate.xla.random_case`).
    * data-parallel attention (``attention_dp``, ep = tp, mesh axis "tp"): each device owns
      tokens/tp tokens and runs norm, router and shared experts on them; an all-to-all sends
      each token's k copies to the devices of its experts (own·k·D elements per device), each
      device runs its E/tp experts on the rows it receives, and an all-to-all returns them.

    The layer is two programs (``stages``): the norm, then the rest, reading the normed
    tokens as an input, as an engine runs it (a fused add-RMSNorm kernel writes them; the
    router, the dispatch, the experts and the shared experts read them).  Compiled as one
    program, XLA CPU would recompute the norm's two multiplies for each consumer that reads
    the normed tokens in another shape (the router's product, the experts' per-class copies,
    each slice of the dispatch all-to-all), duplicating a cheap elementwise producer as it
    does in :func:`scaled_softmax`, and count them again.  ``fn`` runs both.

    The gate/up/down and bias weights of E experts are (E, D, F_e), (E, F_e, D), (E, F_e)
    and (E, D).  Under tensor parallelism each device of an expert's group adds the down bias
    to its partial sum, so a caller wanting the layer's value passes the bias divided by
    tp/ep (the model counts that add on every device).  Under data-parallel attention the
    down bias is added where the rows come back, before the weighted sum (every device holds
    all E of them, E·D elements): added before the combine all-to-all, XLA CPU would compute
    the add inside each slice the all-to-all cuts and count it over the whole array each
    time.
    """
    m = _MoE.of(spec)
    if attention_dp:
        if ep != tp or tp == 1:
            raise ValueError(f"data-parallel attention splits the experts over all tp={tp} > 1")
        body, fixed = _moe_dp_body(m, tokens, tp), ()
        mesh = tp_mesh(tp) if mesh is None else mesh
        tokens_spec = P(TP_AXIS)
        split = {name: P(TP_AXIS) for name in ("w_gate", "w_up", "w_down", "b_gate", "b_up")}
    else:
        body, fixed = _moe_tp_body(m, tokens, tp, ep)
        mesh = moe_mesh(ep, tp // ep) if mesh is None and tp > 1 else mesh
        tokens_spec = P()
        both = (EP_AXIS, EXPERT_TP_AXIS)
        split = {
            "w_gate": P(EP_AXIS, None, EXPERT_TP_AXIS),
            "w_up": P(EP_AXIS, None, EXPERT_TP_AXIS),
            "w_down": P(EP_AXIS, EXPERT_TP_AXIS, None),
            "b_gate": P(EP_AXIS, EXPERT_TP_AXIS),
            "b_up": P(EP_AXIS, EXPERT_TP_AXIS),
            "b_down": P(EP_AXIS, None),
            "ws_gate": P(None, both),
            "ws_up": P(None, both),
            "ws_down": P(both, None),
            "slots": P(EP_AXIS),
        }
    weights = m.weights()
    fixed_args: dict[int, np.ndarray] = {}
    if len(fixed):  # after x and the normed tokens (or the gain)
        fixed_args = {len(weights) + 2: fixed}
        weights.append(("slots", fixed.shape))
    x = ("x", (tokens, m.d))
    gain = ("g_moe", (m.d,))
    layout = (mesh, tokens_spec, split)
    norm = _stage(rmsnorm, [x, gain], layout, dtype)
    rest = _stage(body, [x, ("h", x[1]), *weights], layout, dtype, fixed_args)

    def layer(x, g_moe, *args):
        return rest.fn(x, norm.fn(x, g_moe), *args)

    whole = _stage(layer, [x, gain, *weights], layout, dtype, fixed_args, shard=False)
    return replace(whole, stages=(norm, rest))


def _stage(fn, args, layout, dtype, fixed=None, *, shard: bool = True) -> Program:
    """A Program of ``fn`` over ``args`` (name, global shape).  ``layout`` is the mesh (None:
    one device), the spec of x and h, and the weights' specs by name (others replicated);
    with a mesh and ``shard``, ``fn`` runs under ``shard_map``, its result laid out like x."""
    mesh, tokens_spec, split = layout
    names = tuple(name for name, _ in args)
    shapes = tuple(shape for _, shape in args)
    fixed = tuple((fixed or {}).items())
    if mesh is None:
        return Program(fn, names, shapes, dtype, fixed=fixed)
    specs = tuple(tokens_spec if name in ("x", "h") else split.get(name, P()) for name in names)
    if shard:
        fn = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=tokens_spec)
    return Program(fn, names, shapes, dtype, mesh=mesh, specs=specs, fixed=fixed)


def moe_mesh(ep: int, expert_tp: int) -> Mesh:
    """A two-axis ("ep", "et") mesh over the first ep·expert_tp devices: expert-parallel
    groups, and the devices that split each expert's width within a group."""
    tp_mesh(ep * expert_tp)  # the device count check
    explicit = jax.sharding.AxisType.Explicit
    return jax.make_mesh((ep, expert_tp), (EP_AXIS, EXPERT_TP_AXIS), axis_types=(explicit,) * 2)


def _moe_tp_body(m: _MoE, tokens: int, tp: int, ep: int) -> tuple[Callable, np.ndarray]:
    """The layer after its norm under tensor parallelism (one device at tp = 1), and the
    slot numbers of the expert-parallel groups (empty when ep = 1)."""
    if tp % ep or m.top_k % ep:
        raise ValueError(f"ep={ep} must divide tp={tp} and k={m.top_k}")
    if ep > 1 and m.top_k // ep < 2:
        raise ValueError(f"k/ep={m.top_k // ep}: each group needs at least two of a token's slots")
    if m.ffn % (tp // ep) or m.shared % tp:
        raise ValueError(f"F_e={m.ffn} and F_sh={m.shared} must split over tp/ep and tp")
    routing = moe_routing(tokens, m.experts, m.top_k, groups=ep)
    classes, kappa = m.experts // m.top_k, m.top_k // ep
    per_class = tokens // classes

    def by_class(w):  # this device's experts as (class, slot in the group, ...)
        return w.reshape(classes, kappa, *w.shape[1:])

    def after_norm(x, h, w_router, *rest):
        rest = list(rest)
        slots = rest.pop() if ep > 1 else None
        weights = m.route_weights(h, w_router, rest, routing)
        if slots is not None:  # this group's slots of each token
            weights = weights.at[:, slots].get(
                mode="promise_in_bounds", wrap_negative_indices=False
            )
        w_gate, w_up, w_down = rest[:3]
        biases = tuple(by_class(b) for b in rest[3:6]) if m.expert_bias else ()
        # A class's tokens are consecutive; each of its k/ep experts here takes a copy of
        # them: (G, k/ep, C, D) rows, each (token, expert) pair once, expert-major as the
        # grouped products read them (the weights as stored).
        rows = jnp.broadcast_to(
            h.reshape(classes, 1, per_class, m.d), (classes, kappa, per_class, m.d)
        )
        y = m.experts_apply(
            rows,
            by_class(w_gate),
            by_class(w_up),
            by_class(w_down),
            biases,
            ("gicd,gidf->gicf", "gicf,gifd->gicd"),
        )
        out = jnp.einsum("gicd,gci->gcd", y, weights.reshape(classes, per_class, kappa))
        out = out.reshape(tokens, m.d)
        if m.shared:
            out = out + m.shared_apply(h, rest[-3:])
        if tp > 1:
            out = lax.psum(out, (EP_AXIS, EXPERT_TP_AXIS))
        return x + out

    slots = np.arange(m.top_k, dtype=np.int32) if ep > 1 else np.zeros(0, np.int32)
    return after_norm, slots


def _moe_dp_body(m: _MoE, tokens: int, tp: int) -> Callable:
    """The layer after its norm under data-parallel attention, on one device's tokens."""
    if tokens % tp or m.experts % tp:
        raise ValueError(f"{tokens} tokens and E={m.experts} experts must split over tp={tp}")
    own = tokens // tp
    routing = moe_routing(tokens, m.experts, m.top_k, blocks=tp)[:own]  # alike on every device
    classes, local = m.experts // m.top_k, m.experts // tp
    per_class = own // classes  # a class's tokens on one device

    def after_norm(x, h, w_router, *rest):
        rest = list(rest)
        weights = m.route_weights(h, w_router, rest, routing)
        w_gate, w_up, w_down = rest[:3]
        # The down bias is added where the rows come back (see moe_layer).
        b_gate, b_up, b_down = rest[3:6] if m.expert_bias else (None,) * 3
        biases = (b_gate, b_up, None) if m.expert_bias else ()
        # Dispatch: class g's tokens to experts g·k .. g·k + k - 1, as (E, C_own, D) rows,
        # expert e's on device e // (E/tp).
        copies = jnp.broadcast_to(
            h.reshape(classes, 1, per_class, m.d), (classes, m.top_k, per_class, m.d)
        )
        send = copies.reshape(tp, local, per_class, m.d)
        received = lax.all_to_all(send, TP_AXIS, 0, 0, tiled=True)  # (source, E/tp, C_own, D)
        rows = received.transpose(1, 0, 2, 3).reshape(local, tp * per_class, m.d)
        y = m.experts_apply(rows, w_gate, w_up, w_down, biases, ("ecd,edf->ecf", "ecf,efd->ecd"))
        back = y.reshape(local, tp, per_class, m.d).transpose(1, 0, 2, 3)
        returned = lax.all_to_all(back, TP_AXIS, 0, 0, tiled=True)  # (expert device, ...)
        returned = returned.reshape(classes, m.top_k, per_class, m.d)
        if b_down is not None:
            returned = returned + b_down.reshape(classes, m.top_k, 1, m.d)
        weights = weights.reshape(classes, per_class, m.top_k)
        out = jnp.einsum("gkcd,gck->gcd", returned, weights).reshape(own, m.d)
        if m.shared:
            out = out + m.shared_apply(h, rest[-3:])
        return x + out

    return after_norm
