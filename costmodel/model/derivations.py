"""Worked results derived by SymPy from the cost model's own expressions.

Each function takes the expressions the model evaluates (:mod:`costmodel.model.ops`,
:mod:`costmodel.model.layers`, :mod:`costmodel.model.roofline`, :mod:`costmodel.model.parallel`),
carries out one step of algebra on them (a limit, a solve, a ratio) and returns the result as a
NamedTuple of exact SymPy expressions.  The paper (``python -m experiments.paper``) prints these
results and the tests substitute numbers into them, so the paper, the tests and the model share one
source.

Unless a function says otherwise the derivations are per device at tp = 1 (``degree=1``), in
the pure roofline (:data:`costmodel.model.calibration.PURE_ROOFLINE`: achievable fractions
eta_c = eta_m = 1, no per-kernel overhead), and decode follows the phase rule
(:mod:`costmodel.model.phase`: one new token per sequence, S = 1).  Every symbol is declared,
with its unit, in :mod:`costmodel.model.symbols`.  The functions are pure and their results
immutable, so each is computed once per process.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import NamedTuple

import sympy as sp

from costmodel.model import moe, ops
from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE
from costmodel.model.dtypes import GROUP_SCALE_BYTES, STORAGE_BYTES, bytes_per_element
from costmodel.model.layers import (
    Architecture,
    AttentionKind,
    MoEArchitecture,
    decoder_layer,
    kv_cache_elements_per_token,
    model_ops,
    moe_mlp_block,
)
from costmodel.model.ops import Cost, Op
from costmodel.model.parallel import local_shape, ring_all_reduce_time
from costmodel.model.phase import rule as phase_rule
from costmodel.model.roofline import (
    compute_time,
    memory_time,
    op_time,
    seed_decode_bytes,
    seed_ridge_batch,
    step_time,
    totals,
)

# Generic weight-matmul shape: activations (B·S, k) times a weight (k, n).
k_in, n_out = sy.matmul_in, sy.matmul_out
# Aggregates of the tensor-parallel derivation (defined by :func:`tensor_parallel`).
sharded_bytes, replicated_bytes, payload = sy.sharded_bytes, sy.replicated_bytes, sy.payload
# Generic symbols of a decode step's totals, linear in B: FLOPs = B·phi, bytes = beta_0 + B·beta_1.
flops_per_sequence = sy.flops_per_sequence
bytes_fixed, bytes_per_sequence = sy.bytes_fixed, sy.bytes_per_sequence

DECODE = phase_rule("decode")
PURE_VALUES = PURE_ROOFLINE.symbol_values()  # eta_c = eta_m = 1, t_k = 0


def _pure(expr: sp.Expr) -> sp.Expr:
    return sp.sympify(expr).xreplace(PURE_VALUES)


def _decode_totals(kind: AttentionKind = "gqa") -> Cost:
    """Whole decode step at tp = 1 (embedding, L layers, head), S = 1, fields expanded."""
    total = totals(model_ops(kind, "decode", degree=1))
    return Cost(*(sp.expand(field.xreplace(DECODE)) for field in total))


# --------------------------------------------------------------------------- intensity


def weight_matmul() -> Op:
    """The model's weight matmul over B·S tokens with a (k, n) weight (:func:`ops.matmul`)."""
    return ops.matmul("weight", sy.B * sy.S, k_in, n_out)


class MatmulIntensity(NamedTuple):
    """Arithmetic intensity of one weight matmul and its limits [FLOP/byte]."""

    intensity: sp.Expr  # I = 2BSkn / (b_a·BS·(k + n) + b_w·k·n)
    decode: sp.Expr  # I at S = 1
    decode_wide_limit: sp.Expr  # lim_{k, n -> oo} of the decode intensity: 2B/b_w
    prefill_wide_limit: sp.Expr  # lim_{k, n -> oo} I: 2BS/b_w
    token_limit: sp.Expr  # lim_{BS -> oo} I: 2kn / (b_a (k + n)), activation traffic's ceiling


@cache
def matmul_intensity() -> MatmulIntensity:
    """Limits of a weight matmul's intensity: wide weights (weights dominate the traffic) give
    2·tokens/b_w, i.e. B in decode and B·S in prefill with 16-bit weights; many tokens
    (activations dominate) give the weight's own ceiling 2kn/(b_a(k + n))."""
    op = weight_matmul()
    intensity = op.cost.flops / op.cost.bytes
    decode = intensity.xreplace(DECODE)
    tokens = sy.n_tokens
    per_token = intensity.xreplace({sy.S: tokens / sy.B})
    return MatmulIntensity(
        intensity=intensity,
        decode=decode,
        decode_wide_limit=sp.limit(sp.limit(decode, n_out, sp.oo), k_in, sp.oo),
        prefill_wide_limit=sp.limit(sp.limit(intensity, n_out, sp.oo), k_in, sp.oo),
        token_limit=sp.simplify(sp.limit(per_token, tokens, sp.oo)),
    )


@cache
def layer_matmul_intensity(kind: AttentionKind = "gqa") -> sp.Expr:
    """Intensity of all weight matmuls of one decoder layer together (tp = 1) [FLOP/byte].

    Symbolic in B and S: decode is S = 1, a prefill of S prompt tokens is S.
    """
    matmuls = [op for op in decoder_layer(kind, "prefill", degree=1) if op.unit == "matmul"]
    total = totals(matmuls)
    return total.flops / total.bytes


# --------------------------------------------------------------------------- ridge batch


class RidgeBatch(NamedTuple):
    """Batch at which decode turns from memory-bound to compute-bound [sequences]."""

    weights_only: sp.Expr  # the seed's model: b_w·P_mm / (2·W_hbm)
    matmul: sp.Expr  # one (k, n) weight matmul, activation traffic included
    general: sp.Expr  # whole step with FLOPs = B·phi, bytes = beta_0 + B·beta_1: solved for B
    phi: sp.Expr  # phi: the decode step's FLOPs per sequence (KV attention included) [FLOP]
    beta_0: sp.Expr  # beta_0: bytes moved once per step whatever the batch (weights) [bytes]
    beta_1: sp.Expr  # beta_1: bytes moved per sequence (KV cache, activations) [bytes]
    whole_model: sp.Expr  # ``general`` with phi, beta_0, beta_1 of the model substituted
    context_limit: sp.Expr  # T beyond which whole_model has no positive solution [tokens]


@cache
def ridge_batch(kind: AttentionKind = "gqa") -> RidgeBatch:
    """Solve compute time = memory time for B, in three models of a decode step.

    Weights only (the seed post), one weight matmul with its activation traffic, and the whole
    decode step in the ``max(FLOPs/P, bytes/W)`` form with every kernel's traffic (KV cache at
    context T included).  The last is B* = P·beta_0 / (W·phi - P·beta_1), whose denominator is
    linear in T: past ``context_limit`` the per-sequence traffic alone out-paces the
    arithmetic and decode is memory-bound at every batch.
    """
    op = weight_matmul()
    (matmul,) = sp.solve(
        sp.Eq(
            _pure(compute_time(op)).xreplace(DECODE),
            _pure(memory_time(op)).xreplace(DECODE),
        ),
        sy.B,
    )
    (general,) = sp.solve(
        sp.Eq(
            sy.B * flops_per_sequence / sy.peak_matmul,
            (bytes_fixed + sy.B * bytes_per_sequence) / sy.hbm_bandwidth,
        ),
        sy.B,
    )
    total = _decode_totals(kind)
    phi = sp.factor(total.flops.coeff(sy.B, 1))
    beta_0 = sp.factor(total.bytes.coeff(sy.B, 0))
    beta_1 = sp.factor(total.bytes.coeff(sy.B, 1))
    if (
        sp.expand(sy.B * phi - total.flops) != 0
        or sp.expand(beta_0 + sy.B * beta_1 - total.bytes) != 0
    ):
        raise ArithmeticError("decode totals are not linear in the batch")
    components = {flops_per_sequence: phi, bytes_fixed: beta_0, bytes_per_sequence: beta_1}
    _, denominator = sp.fraction(sp.together(general))
    (context_limit,) = sp.solve(sp.Eq(denominator.xreplace(components), 0), sy.T)
    return RidgeBatch(
        weights_only=seed_ridge_batch(),
        matmul=sp.factor(matmul),
        general=general,
        phi=phi,
        beta_0=beta_0,
        beta_1=beta_1,
        whole_model=general.xreplace(components),
        context_limit=context_limit,
    )


# --------------------------------------------------------------------------- KV cache vs weights


class KvCrossover(NamedTuple):
    """Where the KV cache's traffic in one decode step equals the weights' traffic."""

    kv_bytes: sp.Expr  # KV-cache bytes read and written in one decode step [bytes]
    weight_bytes: sp.Expr  # weight bytes read in one decode step [bytes]
    context: sp.Expr  # T at which they are equal [tokens]
    context_leading: sp.Expr  # the same, keeping only the layers' weights and cache reads


@cache
def kv_weight_crossover(kind: AttentionKind = "gqa") -> KvCrossover:
    """Solve kv_bytes(T) = weight_bytes for the context T of a decode step at tp = 1.

    ``context_leading`` drops the embedding rows, the LM head and the new token's cache write
    (L -> oo at fixed per-layer shape), the form to remember: per-layer weight bytes over the
    per-token cache bytes of the batch.
    """
    total = _decode_totals(kind)
    (context,) = sp.solve(sp.Eq(total.kv_bytes, total.weight_bytes), sy.T)
    layers_only = sp.limit(context, sy.L, sp.oo) + 1
    return KvCrossover(
        kv_bytes=sp.factor(total.kv_bytes),
        weight_bytes=sp.factor(total.weight_bytes),
        context=context,
        context_leading=sp.factor(layers_only),
    )


# --------------------------------------------------------------------------- quantisation


class QuantisationSpeedup(NamedTuple):
    """Decode speed-up from storing weights in b_w bytes instead of 2 (bf16), memory-bound."""

    weights_only: sp.Expr  # the seed's model: 2 / b_w
    weight_elements: sp.Expr  # M_w: weight elements read in one decode step [elements]
    other_bytes: sp.Expr  # M_o: every other byte of the step (KV cache, activations) [bytes]
    general: sp.Expr  # (2·M_w + M_o) / (b_w·M_w + M_o), in the symbols M_w, M_o
    full: sp.Expr  # ``general`` with the model's M_w and M_o substituted
    ridge_ratio: sp.Expr  # B*(b_w, P_mm) / B*(bf16, P_bf16) in the weights-only model


@cache
def quantisation_speedup(kind: AttentionKind = "gqa") -> QuantisationSpeedup:
    """Ratios of memory-bound decode times, bf16 weights over b_w-byte weights (tp = 1).

    In the memory-bound regime every kernel's time is its bytes over the bandwidth, so the
    speed-up is a ratio of traffic.  A step's traffic is linear in b_w, b_w·M_w + M_o, so the
    speed-up is 2/b_w only while the weights are all of the traffic (M_o -> 0).
    """
    bf16 = {sy.b_w: sp.Integer(2)}
    seed_memory = seed_decode_bytes() / (sy.eta_memory * sy.hbm_bandwidth)
    moved = _decode_totals(kind).bytes
    weight_elements = sp.factor(moved.coeff(sy.b_w, 1))
    other_bytes = sp.expand(moved.coeff(sy.b_w, 0))
    if sp.expand(sy.b_w * weight_elements + other_bytes - moved) != 0:
        raise ArithmeticError("decode traffic is not linear in b_w")
    m_w, m_o = sy.weight_elements, sy.other_bytes
    general = (2 * m_w + m_o) / (sy.b_w * m_w + m_o)
    peak_bf16 = sy.peak_bf16
    ridge_bf16 = seed_ridge_batch().xreplace(bf16 | {sy.peak_matmul: peak_bf16})
    return QuantisationSpeedup(
        weights_only=sp.simplify(seed_memory.xreplace(bf16) / seed_memory),
        weight_elements=weight_elements,
        other_bytes=other_bytes,
        general=general,
        full=general.xreplace({m_w: weight_elements, m_o: other_bytes}),
        ridge_ratio=sp.simplify(seed_ridge_batch() / ridge_bf16),
    )


# --------------------------------------------------------------------------- FlashAttention


class FlashReduction(NamedTuple):
    """Attention traffic of one layer, naive (scores through HBM) against FlashAttention."""

    naive_bytes: sp.Expr  # the three naive kernels' bytes [bytes]
    flash_bytes: sp.Expr  # the one flash kernel's bytes [bytes]
    saved_bytes: sp.Expr  # naive - flash: the score matrix written and read twice [bytes]
    flops_difference: sp.Expr  # naive - flash FLOPs: zero, same arithmetic
    prefill_ratio: sp.Expr  # naive / flash in prefill (T = S)
    prefill_ratio_slope: sp.Expr  # lim_{S -> oo} ratio / S: the ratio grows linearly in S


def _attention_cost(kind: AttentionKind, flash: bool) -> Cost:
    layer = decoder_layer(kind, "prefill", flash=flash, degree=1)
    return totals([op for op in layer if op.name.startswith("attention")]).scaled(1 / sy.L)


@cache
def flash_reduction(kind: AttentionKind = "gqa") -> FlashReduction:
    """Difference and ratio of the attention kernels' traffic with and without FlashAttention."""
    naive = _attention_cost(kind, flash=False)
    flash = _attention_cost(kind, flash=True)
    prefill = phase_rule("prefill")
    ratio = sp.cancel((naive.bytes / flash.bytes).xreplace(prefill))
    return FlashReduction(
        naive_bytes=sp.factor(naive.bytes),
        flash_bytes=sp.factor(flash.bytes),
        saved_bytes=sp.factor(naive.bytes - flash.bytes),
        flops_difference=sp.expand(naive.flops - flash.flops),
        prefill_ratio=ratio,
        prefill_ratio_slope=sp.factor(sp.limit(ratio / sy.S, sy.S, sp.oo)),
    )


# --------------------------------------------------------------------------- MLA


class MlaReduction(NamedTuple):
    """Cached elements per token per layer, GQA/MHA against MLA [elements]."""

    gqa: sp.Expr  # 2·H_kv·d_h: a key and a value per KV head
    mla: sp.Expr  # r_kv + d_rope: the latent and the shared rotary key
    ratio: sp.Expr  # gqa / mla


@cache
def mla_reduction() -> MlaReduction:
    """How many times smaller MLA's cache is than a GQA cache, per token and layer.

    Both from :func:`~costmodel.model.layers.kv_cache_elements_per_token` at tp = 1.
    """
    gqa = kv_cache_elements_per_token("gqa", sp.Integer(1))
    mla = kv_cache_elements_per_token("mla", sp.Integer(1))
    return MlaReduction(gqa=gqa, mla=mla, ratio=gqa / mla)


# --------------------------------------------------------------------------- mixture of experts


class ExpertReads(NamedTuple):
    """The routed experts' weights one decode step reads per MoE layer, on one device of a
    tp x ep replica, for N = B tokens (uniform routing, :mod:`costmodel.model.moe`)."""

    touched: sp.Expr  # expected experts touched by N tokens: E(1 - (1 - k/E)^N) [experts]
    one_token: sp.Expr  # its value at N = 1: k [experts]
    every_expert: sp.Expr  # its limit as N grows: E [experts]
    half_tokens: sp.Expr  # tokens that touch half the experts: log(1/2) / log(1 - k/E) [tokens]
    bytes: sp.Expr  # weight bytes of the three expert GEMMs on one device [bytes]
    per_expert: sp.Expr  # bytes / touched: one touched expert's share on a device (ep cancels)


def _every_expert(touched: sp.Expr) -> sp.Expr:
    """The limit of ``touched`` as the tokens grow, for 0 < k < E: written with k = E·r/(1 + r),
    r > 0, the untouched share (1 - k/E)^N is (1 + r)^-N, which SymPy takes to 0."""
    share = sp.Symbol("r", positive=True)
    written = touched.xreplace({sy.k_e: sy.E * share / (1 + share)})
    return sp.limit(sp.simplify(written), sy.B, sp.oo)


@cache
def expert_reads() -> ExpertReads:
    """The expert weights a decode step reads, from the model's routed-expert kernels
    (:func:`costmodel.model.moe.routed_experts` in decode, rho_e = 1), and their limits."""
    arch = Architecture(moe=MoEArchitecture())
    decode = [op for op in moe_mlp_block(sy.B, arch) if op.name.startswith("expert_")]
    exact = {moe.FLOAT_ONE: sp.Integer(1)}  # the float factor of touched_experts, made exact
    weight = sum((op.cost.weight_bytes for op in decode), sp.Integer(0)).xreplace(exact)
    touched = moe.touched_experts(sy.B).xreplace(exact)
    (half,) = sp.solve(sp.Eq(touched, sy.E / 2), sy.B)
    return ExpertReads(
        touched=touched,
        one_token=sp.simplify(touched.xreplace({sy.B: 1})),
        every_expert=_every_expert(touched),
        half_tokens=sp.simplify(half),
        bytes=weight,
        per_expert=sp.simplify(weight / touched),
    )


# --------------------------------------------------------------------------- tensor parallelism


class TensorParallel(NamedTuple):
    """One decoder layer's decode step on one of tp devices, and where communication wins."""

    all_reduce_time: sp.Expr  # ring all-reduce of X = B·D·b_a bytes, in X [s]
    payload: sp.Expr  # X: the all-reduce payload, B·D·b_a [bytes]
    layer_time: sp.Expr  # per-kernel roofline time of one layer, two all-reduces included [s]
    sharded: sp.Expr  # M_s: the layer's traffic that tp divides (weights, KV cache, heads) [bytes]
    replicated: sp.Expr  # M_r: traffic every device moves (norms, residuals, inputs) [bytes]
    memory_bound_time: sp.Expr  # M_s/(tp·W) + M_r/W + 2·t_AR(X), every kernel memory-bound [s]
    communication_time: sp.Expr  # 2·t_AR(X) [s]
    quadratic: sp.Expr  # polynomial in tp whose positive root is the crossover (= 0)
    crossover: sp.Expr  # tp at which 2·t_AR = M_s/(tp·W) + M_r/W, in X, M_s, M_r [GPUs]
    fastest: sp.Expr  # tp minimising memory_bound_time: sqrt((M_s/W - 4X/W_link) / (4·tau))


@cache
def tensor_parallel(kind: AttentionKind = "gqa") -> TensorParallel:
    """Split a decode layer's time into what tensor parallelism divides and what it adds.

    Assumes tp <= H_kv (no replicated KV heads), so max(1, H_kv/tp) = H_kv/tp.  Setting the
    two all-reduces' time equal to the memory-bound time of the rest gives, times tp, a
    quadratic in tp whose roots have a negative product: exactly one is positive, the
    crossover beyond which communication takes longer than everything else in the layer.
    The memory-bound time falls as M_s/(tp·W) and the all-reduces grow about linearly in tp,
    so the layer is fastest at ``fastest``, where the derivative in tp vanishes.
    """
    layer = [op.repeated(1) for op in decoder_layer(kind, "decode", degree=sy.tp)]
    no_replication = {local_shape(sy.tp).kv_heads: sy.H_kv / sy.tp}
    layer_time = _pure(step_time(layer)).xreplace(DECODE)
    compute_ops = [op for op in layer if op.unit != "collective"]
    moved = sp.expand(totals(compute_ops).bytes.xreplace(DECODE).xreplace(no_replication))
    sharded = sp.factor(moved.coeff(sy.tp, -1))
    replicated = sp.factor(moved.coeff(sy.tp, 0))
    if sp.expand(sharded / sy.tp + replicated - moved) != 0:
        raise ArithmeticError("layer traffic is not of the form M_s/tp + M_r")
    collectives = [op for op in layer if op.unit == "collective"]
    (x_bytes,) = {op.cost.comm_bytes.xreplace(DECODE) for op in collectives}
    comm = sum(
        (
            _pure(op_time(replace(op, cost=op.cost._replace(comm_bytes=payload))))
            for op in collectives
        ),
        sp.Integer(0),
    )
    memory = (sharded_bytes / sy.tp + replicated_bytes) / sy.hbm_bandwidth
    quadratic = sp.collect(
        sp.expand((comm - memory) * sy.tp * sy.hbm_bandwidth * sy.link_bandwidth), sy.tp
    )
    roots = sp.solve(quadratic, sy.tp)
    (crossover,) = [root for root in roots if root.xreplace(_probe()).is_positive]
    # d/dtp of the layer time is (c·tp² - a)/tp²: solve for tp² and take the positive root.
    slope, _ = sp.fraction(sp.together(sp.diff(memory + comm, sy.tp)))
    square = sy.tp_squared
    (fastest_squared,) = sp.solve(sp.expand(slope).subs(sy.tp**2, square), square)
    if sy.tp in fastest_squared.free_symbols:
        raise ArithmeticError("the layer time's slope is not of the form c·tp² - a")
    fastest = sp.sqrt(sp.factor(fastest_squared))
    return TensorParallel(
        all_reduce_time=ring_all_reduce_time(payload),
        payload=x_bytes,
        layer_time=layer_time,
        sharded=sharded,
        replicated=replicated,
        memory_bound_time=memory + comm,
        communication_time=comm,
        quadratic=quadratic,
        crossover=crossover,
        fastest=fastest,
    )


def _probe() -> dict:
    """Positive values for every symbol, to tell the two roots of the quadratic apart."""
    symbols = (*sy.ALL, sharded_bytes, replicated_bytes, payload)
    return {symbol: sp.Integer(2) for symbol in symbols}


# --------------------------------------------------------------------------- crossovers
#
# Where one choice overtakes another (issue 13), from the model's own expressions: fp8 against
# int4 weights as the batch grows, and tp against tp/2 at a fixed GPU count.  Closed forms where
# the algebra gives one; the whole step's crossover, a sum of maxima, is found at numbers by
# :func:`costmodel.model.crossover.crossover`.

# Symbols of these derivations only (to join :mod:`costmodel.model.symbols` with the paper).
peak_fp8, group_size = sy.peak_fp8, sy.group_size  # the formats compared (symbols.py)

# fp8 weights: one byte, fp8 x fp8 at the fp8 peak.  int4 weight-only: half a byte plus one
# fp16 scale per group (costmodel.model.dtypes), dequantised and multiplied at the bf16 peak.
FP8_WEIGHTS = {sy.b_w: bytes_per_element("fp8"), sy.peak_matmul: peak_fp8}
INT4_WEIGHTS = {
    sy.b_w: STORAGE_BYTES["int4"] + GROUP_SCALE_BYTES / group_size,
    sy.peak_matmul: sy.peak_bf16,
}


def _crossover_probe() -> dict:
    """H100-like ratios (P_fp8 = 2 P_bf16, P_bf16/W = 300, g = 128) with wide weights, to tell
    which branches of two maxima meet; the docstrings say why the choice holds in general."""
    return {
        sy.peak_bf16: sp.Integer(300),
        peak_fp8: sp.Integer(600),
        sy.hbm_bandwidth: sp.Integer(1),
        sy.b_a: sp.Integer(2),
        group_size: sp.Integer(128),
        k_in: sp.Integer(8192),
        n_out: sp.Integer(8192),
    }


@cache
def _decode_step(kind: AttentionKind) -> sp.Expr:
    """Per-kernel roofline time of a whole decode step on one of tp devices (pure, S = 1).

    Built at the symbol tp, the ring size of the collectives, and set to a degree after; at
    tp = 1 the collectives' times vanish and it is the step of ``model_ops(degree=1)``.
    """
    return _pure(step_time(model_ops(kind, "decode", degree=sy.tp))).xreplace(DECODE)


class Fp8Int4Crossover(NamedTuple):
    """Batch at which fp8 weights (fp8 peak) overtake int4 weight-only (bf16 peak) in decode."""

    fp8_time: sp.Expr  # one (k, n) weight matmul at fp8: max(2Bkn/P_fp8, memory) [s]
    int4_time: sp.Expr  # the same at int4: max(2Bkn/P_bf16, memory at b_w = 1/2 + 2/g) [s]
    int4_meets: sp.Expr  # int4's time that meets fp8's at B*: its compute time 2Bkn/P_bf16 [s]
    fp8_meets: sp.Expr  # fp8's time that meets it: its memory time [s]
    batch: sp.Expr  # B* = k·n·P_bf16 / (2·k·n·W - b_a·(k + n)·P_bf16) [sequences]
    denominator: sp.Expr  # B* exists (fp8 ever wins) only while this is positive [bytes·FLOP/s]
    fp8_step: sp.Expr  # whole decode step at fp8, per-kernel roofline (tp 1) [s]
    int4_step: sp.Expr  # the same at int4 [s]


def _meeting(
    a: dict[str, sp.Expr], b: dict[str, sp.Expr], symbol: sp.Symbol, probe: dict
) -> tuple[str, str, sp.Expr]:
    """Solve max(a) = max(b) for ``symbol``: each pair of branches is solved, and the pair kept
    whose positive solution makes both branches the active ones at ``probe``."""
    variable = sp.Dummy("B", positive=True)
    found = []
    for name_a, time_a in a.items():
        for name_b, time_b in b.items():
            equation = sp.Eq(
                time_a.xreplace({symbol: variable}), time_b.xreplace({symbol: variable})
            )
            for root in sp.solve(equation, variable):
                at_probe = root.xreplace(probe)
                if not at_probe.is_positive:
                    continue
                point = probe | {symbol: at_probe}
                active_a = all(time_a.xreplace(point) >= t.xreplace(point) for t in a.values())
                active_b = all(time_b.xreplace(point) >= t.xreplace(point) for t in b.values())
                if active_a and active_b:
                    found.append((name_a, name_b, sp.factor(root)))
    if len(found) != 1:
        raise ArithmeticError(f"expected one meeting of the two maxima, found {found}")
    return found[0]


@cache
def fp8_int4_crossover(kind: AttentionKind = "gqa") -> Fp8Int4Crossover:
    """Solve time_fp8(B) = time_int4(B) for one decode weight matmul, each the roofline's max.

    int4 moves fewer bytes (memory_int4 < memory_fp8, as 1/2 + 2/g < 1 for g > 4) and fp8
    computes faster (compute_fp8 < compute_int4, as P_fp8 > P_bf16), so of the four pairs of
    branches only int4's compute time can meet fp8's memory time: int4 wins while it is
    memory-bound and fp8 wins once int4's compute at the bf16 peak exceeds fp8's traffic.
    B* depends neither on g nor on P_fp8 (while P_fp8 > P_bf16): it is the ridge batch of
    one-byte weights at the bf16 peak.  Past ``denominator`` <= 0 (activation traffic alone
    out-paces the bf16 arithmetic, narrow k, n) fp8 never wins; where P_fp8 <= P_bf16 (no fp8
    units, as on A100) neither.  The whole step (every kernel, KV cache at context T) is
    returned for :func:`costmodel.model.crossover.crossover` to solve at numbers.
    """
    op = weight_matmul()

    def times(weights: dict) -> dict[str, sp.Expr]:
        return {
            "compute": _pure(compute_time(op)).xreplace(DECODE).xreplace(weights),
            "memory": _pure(memory_time(op)).xreplace(DECODE).xreplace(weights),
        }

    int4, fp8 = times(INT4_WEIGHTS), times(FP8_WEIGHTS)
    int4_branch, fp8_branch, batch = _meeting(int4, fp8, sy.B, _crossover_probe())
    if (int4_branch, fp8_branch) != ("compute", "memory"):
        raise ArithmeticError(f"unexpected meeting: int4 {int4_branch}, fp8 {fp8_branch}")
    _, denominator = sp.fraction(sp.together(batch))
    step = _decode_step(kind).xreplace({sy.tp: sp.Integer(1)})
    return Fp8Int4Crossover(
        fp8_time=sp.Max(*fp8.values()),
        int4_time=sp.Max(*int4.values()),
        int4_meets=int4[int4_branch],
        fp8_meets=fp8[fp8_branch],
        batch=batch,
        denominator=sp.expand(denominator),
        fp8_step=step.xreplace(FP8_WEIGHTS),
        int4_step=step.xreplace(INT4_WEIGHTS),
    )


class TensorParallelHalving(NamedTuple):
    """tp GPUs as one replica of degree tp, or as two replicas of degree tp/2 sharing the batch:
    the total batch B at which the two replicas' decode step becomes the faster."""

    large_time: sp.Expr  # one layer on one replica of degree tp at batch B, memory-bound [s]
    small_time: sp.Expr  # one layer on a replica of degree tp/2 at batch B/2, memory-bound [s]
    batch: sp.Expr  # B at which they are equal: tp/2 faster above it [sequences]
    large_step: sp.Expr  # whole decode step, degree tp, batch B, per-kernel roofline [s]
    small_step: sp.Expr  # whole decode step, degree tp/2, batch B/2 [s]


@cache
def tensor_parallel_halving(kind: AttentionKind = "gqa") -> TensorParallelHalving:
    """Solve t_tp(B) = t_{tp/2}(B/2) for the total batch B of tp GPUs.

    Both serve B sequences per step on tp GPUs, so equal step times mean equal TPOT and
    throughput per GPU.  Built on :func:`tensor_parallel`'s memory-bound split
    M_s/(tp·W) + M_r/W + 2·t_AR(X) of one decoder layer (tp <= H_kv), with M_s, M_r and X the
    model's expressions at each degree's batch: KV-cache and other per-sequence sharded traffic
    is the same per GPU in both, the weights cost the halves twice as much per GPU, and the
    halves save replicated traffic, all-reduce bytes (half the payload over a shorter ring) and
    link latencies.  The difference is linear in B: one closed-form root, valid while every
    kernel is memory-bound at both degrees (checked at numbers in the tests).  The whole step
    (embedding all-reduce and LM head all-gather included, compute-bound kernels as they are)
    is returned for :func:`costmodel.model.crossover.crossover`.
    """
    split = tensor_parallel(kind)
    half = sy.tp / 2

    def layer(degree: sp.Expr, batch: sp.Expr) -> sp.Expr:
        aggregates = {
            sharded_bytes: split.sharded.xreplace({sy.B: batch}),
            replicated_bytes: split.replicated.xreplace({sy.B: batch}),
            payload: split.payload.xreplace({sy.B: batch}),
        }
        return split.memory_bound_time.xreplace(aggregates).xreplace({sy.tp: degree})

    large, small = layer(sy.tp, sy.B), layer(half, sy.B / 2)
    variable = sp.Dummy("B", positive=True)
    difference = sp.expand((large - small).xreplace({sy.B: variable}))
    constant, slope = difference.coeff(variable, 0), difference.coeff(variable, 1)
    if sp.expand(constant + slope * variable - difference) != 0:
        raise ArithmeticError("the halving difference is not linear in the batch")
    batch = -constant / slope

    def step(degree: sp.Expr, batch: sp.Expr) -> sp.Expr:
        return _decode_step(kind).xreplace({sy.tp: degree, sy.B: batch})

    return TensorParallelHalving(
        large_time=large,
        small_time=small,
        batch=sp.factor(batch),
        large_step=step(sy.tp, sy.B),
        small_step=step(half, sy.B / 2),
    )
