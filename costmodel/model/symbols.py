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

# Mixture of experts, sliding-window attention and expert parallelism
E = sp.Symbol("E", **_int)  # routed experts per MoE layer [experts]
k_e = sp.Symbol("k_e", **_int)  # experts each token is routed to (top-k) [experts]
F_e = sp.Symbol("F_e", **_int)  # intermediate width of one routed expert [elements]
F_sh = sp.Symbol("F_sh", **_int)  # intermediate width of the shared experts together [elements]
L_dense = sp.Symbol("L_d", **_int)  # dense-FFN layers of an MoE model (first_k_dense) [layers]
L_win = sp.Symbol("L_w", **_int)  # sliding-window attention layers [layers]
W_win = sp.Symbol("W", **_int)  # sliding window: keys one query attends at most [tokens]
ep = sp.Symbol("ep", **_int)  # expert-parallel degree: devices the routed experts split over [GPUs]
rho_e = sp.Symbol("rho_e", **_pos)  # routed tokens on the busiest device / the mean [1]

# Precision
b_w = sp.Symbol("b_w", **_pos)  # bytes per weight element, scale overhead included [bytes]
b_a = sp.Symbol("b_a", **_pos)  # bytes per activation element [bytes]
b_kv = sp.Symbol("b_kv", **_pos)  # bytes per KV-cache element, scale overhead included [bytes]
b_we = sp.Symbol("b_we", **_pos)  # bytes per routed-expert weight element, scales included [bytes]

# Parallelism
tp = sp.Symbol("tp", **_int)  # tensor-parallel degree [GPUs]

# Hardware (achievable = peak x efficiency)
peak_matmul = sp.Symbol("P_mm", **_pos)  # weight-matmul peak at the compute dtype [FLOP/s]
peak_expert = sp.Symbol("P_mm_e", **_pos)  # routed experts' matmul peak at their format [FLOP/s]
peak_attention = sp.Symbol("P_attn", **_pos)  # peak FLOP/s of attention matmuls (bf16) [FLOP/s]
peak_vector = sp.Symbol("P_vec", **_pos)  # peak FLOP/s of elementwise/reduction work [FLOP/s]
hbm_bandwidth = sp.Symbol("W_hbm", **_pos)  # device-memory bandwidth [bytes/s]
link_bandwidth = sp.Symbol("W_link", **_pos)  # GPU-GPU link bandwidth, one direction [bytes/s]
link_latency = sp.Symbol("tau_link", **_pos)  # latency of one link hop [s]
eta_compute = sp.Symbol("eta_c", **_pos)  # achievable fraction of peak FLOP/s [1]
eta_memory = sp.Symbol("eta_m", **_pos)  # achievable fraction of peak bandwidth [1]
kernel_overhead = sp.Symbol("t_k", nonnegative=True)  # fixed time per kernel launch [s]

# Calibration terms of the roofline (costmodel.model.roofline), used only under a TimeModel
# that switches them on
overlap = sp.Symbol("p_ov", **_pos)  # exponent combining compute and memory time [1]
cache_capacity = sp.Symbol("C_cache", **_pos)  # working set a cache holds [bytes]
cache_bandwidth = sp.Symbol("W_cache", **_pos)  # bandwidth of cache-resident traffic [bytes/s]
relayout = sp.Symbol("rho_w", nonnegative=True)  # extra weight traffic of GEMMs / weight bytes [1]
attention_efficiency = sp.Symbol("eta_a", **_pos)  # attention kernels' rate fraction [1]

# The seed post's weights-only decode model
n_params = sp.Symbol("N_p", **_pos)  # parameter count [parameters]

# Generic shapes and aggregates of the derivations (costmodel.model.derivations)
matmul_in = sp.Symbol("k", **_int)  # input features of a weight matmul [elements]
matmul_out = sp.Symbol("n", **_int)  # output features of a weight matmul [elements]
n_tokens = sp.Symbol("N_tok", **_pos)  # tokens of a matmul, B·S, taken to infinity [tokens]
flops_per_sequence = sp.Symbol("phi", **_pos)  # decode FLOPs per sequence [FLOP]
bytes_fixed = sp.Symbol("beta_0", **_pos)  # decode bytes independent of B [bytes]
bytes_per_sequence = sp.Symbol("beta_1", **_pos)  # decode bytes per sequence [bytes]
weight_elements = sp.Symbol("M_w", **_pos)  # weight elements read by a decode step [elements]
other_bytes = sp.Symbol("M_o", **_pos)  # every other byte of a decode step [bytes]
peak_bf16 = sp.Symbol("P_bf16", **_pos)  # bf16 matmul peak, to compare formats [FLOP/s]
peak_fp8 = sp.Symbol("P_fp8", **_pos)  # fp8 matmul peak, to compare formats [FLOP/s]
group_size = sp.Symbol("g", **_int)  # int4 elements sharing one fp16 scale [elements]
sharded_bytes = sp.Symbol("M_s", **_pos)  # per-layer traffic that tp divides [bytes]
replicated_bytes = sp.Symbol("M_r", nonnegative=True)  # per-layer traffic at any tp [bytes]
payload = sp.Symbol("X", **_pos)  # all-reduce payload per device [bytes]
tp_squared = sp.Symbol("tp_squared", **_pos)  # tp², solved for by the derivations [GPUs^2]

# Generic sizes of the paper's counting conventions (costmodel.present.paper)
kernel_flops = sp.Symbol("F_k", **_pos)  # FLOPs of one kernel [FLOP]
kernel_bytes = sp.Symbol("M_k", **_pos)  # bytes of one kernel [bytes]
tokens = sp.Symbol("t", **_int)  # tokens of a generic kernel [tokens]
width = sp.Symbol("w", **_int)  # width of a generic kernel [elements]
softmax_rows = sp.Symbol("r", **_int)  # softmax rows [rows]
softmax_cols = sp.Symbol("c", **_int)  # softmax columns [elements]

# Scenario numbers of the optimiser (costmodel.search): arguments of its compiled model, so one
# compilation serves every workload, SLO and price of the same model, hardware and numerics.
N_prompt = sp.Symbol("N_prompt", **_int)  # prompt tokens per request [tokens]
N_out = sp.Symbol("N_out", **_int)  # output tokens per request [tokens]
c_gpu = sp.Symbol("c_gpu", **_pos)  # price of one GPU-hour [USD]
tpot_max = sp.Symbol("tpot_max", **_pos)  # time-per-output-token limit [s]
ttft_max = sp.Symbol("ttft_max", **_pos)  # time-to-first-token limit [s]
M_max = sp.Symbol("M_max", **_pos)  # usable memory per GPU [bytes]

# Serving (costmodel.model.serving): one engine replica under continuous batching
P = sp.Symbol(
    "P_s", nonnegative=True
)  # prompt tokens prefilled in one step, all chunks together [tokens]
q = sp.Symbol(
    "q_s", **_int
)  # tokens each decoding sequence runs per step: 1 + draft length [tokens]
n_d = sp.Symbol(
    "n_d", nonnegative=True
)  # decoding sequences in a step, steady-state mean [sequences]
c_conc = sp.Symbol("c_r", **_pos)  # requests in flight, closed loop [requests]
lam = sp.Symbol("lambda", **_pos)  # request rate, open loop [requests/s]
N_budget = sp.Symbol("N_b", **_pos)  # token budget of one step (max_num_batched_tokens) [tokens]
h_prefix = sp.Symbol(
    "h_pre", nonnegative=True
)  # share of each prompt found in the prefix cache [1]
k_draft = sp.Symbol("k_s", nonnegative=True, integer=True)  # draft tokens per step [tokens]
a_accept = sp.Symbol("a_s", nonnegative=True)  # acceptance probability of one draft token [1]
f_draft = sp.Symbol("f_d", nonnegative=True)  # one draft token's cost / a target decode step [1]
m_adm = sp.Symbol("m_a", nonnegative=True)  # requests admitted to prefill per step [requests]
t_bar = sp.Symbol("tbar", positive=True)  # mean step time [s]
t_step2 = sp.Symbol("tbar2", positive=True)  # mean squared step time [s^2]
t_first = sp.Symbol("t_first", positive=True)  # time of the step that finishes a prefill [s]
t_full = sp.Symbol("t_full", positive=True)  # time of a step whose prefill fills the budget [s]
t_draft = sp.Symbol("t_draft", nonnegative=True)  # draft model's proposals, per step [s]
t_sched = sp.Symbol("t_sched", nonnegative=True)  # engine's fixed cost per step [s]
x_pre = sp.Symbol("x_p", positive=True)  # prefill replicas of a disaggregated deployment [replicas]
y_dec = sp.Symbol("y_d", positive=True)  # decode replicas of a disaggregated deployment [replicas]
t_xfer = sp.Symbol("t_xfer", nonnegative=True)  # moving one request's KV cache to decode [s]

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
    E: "experts",
    k_e: "experts",
    F_e: "elements",
    F_sh: "elements",
    L_dense: "layers",
    L_win: "layers",
    W_win: "tokens",
    ep: "GPUs",
    rho_e: "1",
    b_w: "bytes",
    b_we: "bytes",
    b_a: "bytes",
    b_kv: "bytes",
    tp: "GPUs",
    peak_matmul: "FLOP/s",
    peak_expert: "FLOP/s",
    peak_attention: "FLOP/s",
    peak_vector: "FLOP/s",
    hbm_bandwidth: "bytes/s",
    link_bandwidth: "bytes/s",
    link_latency: "s",
    eta_compute: "1",
    eta_memory: "1",
    kernel_overhead: "s",
    overlap: "1",
    cache_capacity: "bytes",
    cache_bandwidth: "bytes/s",
    relayout: "1",
    attention_efficiency: "1",
    n_params: "parameters",
    matmul_in: "elements",
    matmul_out: "elements",
    n_tokens: "tokens",
    flops_per_sequence: "FLOP",
    bytes_fixed: "bytes",
    bytes_per_sequence: "bytes",
    weight_elements: "elements",
    other_bytes: "bytes",
    peak_bf16: "FLOP/s",
    peak_fp8: "FLOP/s",
    group_size: "elements",
    sharded_bytes: "bytes",
    replicated_bytes: "bytes",
    payload: "bytes",
    tp_squared: "GPUs^2",
    kernel_flops: "FLOP",
    kernel_bytes: "bytes",
    tokens: "tokens",
    width: "elements",
    softmax_rows: "rows",
    softmax_cols: "elements",
    N_prompt: "tokens",
    N_out: "tokens",
    c_gpu: "USD",
    tpot_max: "s",
    ttft_max: "s",
    M_max: "bytes",
    P: "tokens",
    q: "tokens",
    n_d: "sequences",
    c_conc: "requests",
    lam: "requests/s",
    N_budget: "tokens",
    h_prefix: "1",
    k_draft: "tokens",
    a_accept: "1",
    m_adm: "requests",
    f_draft: "1",
    t_bar: "s",
    t_step2: "s^2",
    t_first: "s",
    t_full: "s",
    t_draft: "s",
    t_sched: "s",
    x_pre: "replicas",
    y_dec: "replicas",
    t_xfer: "s",
}

WORKLOAD = (B, S, T)
MODEL_SHAPE = (L, D, H, H_kv, d_h, F, V)
MLA_SHAPE = (r_q, r_kv, d_rope, d_nope, d_v)
MOE_SHAPE = (E, k_e, F_e, F_sh, L_dense, L_win, W_win)
PRECISION = (b_w, b_a, b_kv, b_we)
HARDWARE = (
    peak_matmul,
    peak_expert,
    peak_attention,
    peak_vector,
    hbm_bandwidth,
    link_bandwidth,
    link_latency,
    eta_compute,
    eta_memory,
    kernel_overhead,
)
CALIBRATION = (overlap, cache_capacity, cache_bandwidth, relayout, attention_efficiency)
PARALLEL = (tp, ep, rho_e)
ALL = WORKLOAD + MODEL_SHAPE + MLA_SHAPE + MOE_SHAPE + PRECISION + PARALLEL + HARDWARE
# Symbols of derived results: the seed's parameter count, the derivations' aggregates
DERIVED = (
    n_params,
    matmul_in,
    matmul_out,
    n_tokens,
    flops_per_sequence,
    bytes_fixed,
    bytes_per_sequence,
    weight_elements,
    other_bytes,
    peak_bf16,
    peak_fp8,
    group_size,
    sharded_bytes,
    replicated_bytes,
    payload,
    tp_squared,
)
CONVENTIONS = (kernel_flops, kernel_bytes, tokens, width, softmax_rows, softmax_cols)
SEARCH = (N_prompt, N_out, c_gpu, tpot_max, ttft_max, M_max)
SERVING = (P, q, n_d, c_conc, lam, N_budget, h_prefix, k_draft, a_accept, f_draft, m_adm)
SERVING_TIMES = (t_bar, t_step2, t_first, t_full, t_draft, t_sched, x_pre, y_dec, t_xfer)
# Every symbol of the project, in the order the paper's symbol table lists them.
EVERY = ALL + CALIBRATION + SEARCH + SERVING + SERVING_TIMES + DERIVED + CONVENTIONS


def unit_of(symbol: sp.Symbol) -> str:
    """Return the unit of a cost-model symbol, e.g. ``unit_of(B) == "sequences"``."""
    return UNITS[symbol]
