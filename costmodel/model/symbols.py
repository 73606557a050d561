"""Every SymPy symbol of the cost model, in one place, each with its unit.

Dimensions are positive integers; bytes per element are positive rationals (int4 carries a
per-group scale, so it is not a whole number of bytes); hardware figures are positive reals.
Expressions are built from these symbols and exact SymPy Integers and Rationals only.
"""

from __future__ import annotations

import sympy as sp

_int = {"integer": True, "positive": True}
_pos = {"positive": True}

# Workload
B = sp.Symbol("B", **_int)  # batch: sequences processed together [sequences]
S = sp.Symbol("S", **_int)  # new tokens per sequence: prompt in prefill, 1 in decode [tokens]
T = sp.Symbol("T", **_int)  # context: tokens attended per sequence, KV cache included [tokens]

# Model shape (Llama-style dense decoder)
L = sp.Symbol("L", **_int)  # decoder layers [layers]
D = sp.Symbol("D", **_int)  # model (hidden) width d_model [elements]
H = sp.Symbol("H", **_int)  # query heads [heads]
H_kv = sp.Symbol("H_kv", **_int)  # key/value heads [heads]
d_h = sp.Symbol("d_h", **_int)  # head dimension [elements]
F = sp.Symbol("F", **_int)  # feed-forward (intermediate) width [elements]
V = sp.Symbol("V", **_int)  # vocabulary size [tokens]

# Multi-head latent attention (DeepSeek-V2/V3)
r_q = sp.Symbol("r_q", **_int)  # query low-rank width q_lora_rank [elements]
r_kv = sp.Symbol("r_kv", **_int)  # latent KV width kv_lora_rank [elements]
d_rope = sp.Symbol("d_rope", **_int)  # decoupled RoPE key/query width qk_rope_head_dim [elements]
d_nope = sp.Symbol("d_nope", **_int)  # non-rotary query/key width qk_nope_head_dim [elements]
d_v = sp.Symbol("d_v", **_int)  # value head width v_head_dim [elements]

# Precision
b_w = sp.Symbol("b_w", **_pos)  # bytes per weight element, scale overhead included [bytes]
b_a = sp.Symbol("b_a", **_pos)  # bytes per activation element [bytes]
b_kv = sp.Symbol("b_kv", **_pos)  # bytes per KV-cache element, scale overhead included [bytes]

# Parallelism
tp = sp.Symbol("tp", **_int)  # tensor-parallel degree [GPUs]

# Hardware (achievable = peak x efficiency)
peak_matmul = sp.Symbol("P_mm", **_pos)  # weight-matmul peak at the compute dtype [FLOP/s]
peak_attention = sp.Symbol("P_attn", **_pos)  # peak FLOP/s of attention matmuls (bf16) [FLOP/s]
peak_vector = sp.Symbol("P_vec", **_pos)  # peak FLOP/s of elementwise/reduction work [FLOP/s]
hbm_bandwidth = sp.Symbol("W_hbm", **_pos)  # device-memory bandwidth [bytes/s]
link_bandwidth = sp.Symbol("W_link", **_pos)  # GPU-GPU link bandwidth, one direction [bytes/s]
link_latency = sp.Symbol("tau_link", **_pos)  # latency of one link hop [s]
eta_compute = sp.Symbol("eta_c", **_pos)  # achievable fraction of peak FLOP/s [1]
eta_memory = sp.Symbol("eta_m", **_pos)  # achievable fraction of peak bandwidth [1]
kernel_overhead = sp.Symbol("t_k", nonnegative=True)  # fixed time per kernel launch [s]

UNITS: dict[sp.Symbol, str] = {
    B: "sequences",
    S: "tokens",
    T: "tokens",
    L: "layers",
    D: "elements",
    H: "heads",
    H_kv: "heads",
    d_h: "elements",
    F: "elements",
    V: "tokens",
    r_q: "elements",
    r_kv: "elements",
    d_rope: "elements",
    d_nope: "elements",
    d_v: "elements",
    b_w: "bytes",
    b_a: "bytes",
    b_kv: "bytes",
    tp: "GPUs",
    peak_matmul: "FLOP/s",
    peak_attention: "FLOP/s",
    peak_vector: "FLOP/s",
    hbm_bandwidth: "bytes/s",
    link_bandwidth: "bytes/s",
    link_latency: "s",
    eta_compute: "1",
    eta_memory: "1",
    kernel_overhead: "s",
}

WORKLOAD = (B, S, T)
MODEL_SHAPE = (L, D, H, H_kv, d_h, F, V)
MLA_SHAPE = (r_q, r_kv, d_rope, d_nope, d_v)
PRECISION = (b_w, b_a, b_kv)
HARDWARE = (
    peak_matmul,
    peak_attention,
    peak_vector,
    hbm_bandwidth,
    link_bandwidth,
    link_latency,
    eta_compute,
    eta_memory,
    kernel_overhead,
)
ALL = WORKLOAD + MODEL_SHAPE + MLA_SHAPE + PRECISION + (tp,) + HARDWARE


def unit_of(symbol: sp.Symbol) -> str:
    """Return the unit of a cost-model symbol, e.g. ``unit_of(B) == "sequences"``."""
    return UNITS[symbol]
