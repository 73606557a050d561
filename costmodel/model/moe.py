"""Mixture-of-Experts feed-forward layers, per device, under tensor and expert parallelism.

A replica of ``tp`` devices routes each of its N = B·S tokens to ``k_e`` of ``E`` experts.  The
experts split over ``ep`` devices (``ep`` divides ``tp``), each expert's SwiGLU split again over
the tp/ep devices of its group (Megatron-style, inside the expert), so every device stores
E/ep experts of width F_e·ep/tp.  Two ways to feed them:

* Tensor-parallel attention (the default): every device holds all N tokens after attention's
  all-reduce, runs the router on all of them, computes its own experts' rows, and one
  all-reduce of the (N, D) output sums the partial results: no all-to-all.
* Data-parallel attention (``attention_dp``; engines' DP attention + EP, ``ep = tp``): each
  device owns N/tp tokens; an all-to-all sends each token's k copies to the devices of its
  experts (dispatch) and one brings the weighted outputs back (combine).

Assumptions, stated once.  Routing is uniform and independent across tokens, so an expert is
untouched by one token with probability 1 - k/E and by N tokens with probability
(1 - k/E)^N: a device reads the weights of (E/ep)·(1 - (1 - k/E)^N) experts in expectation
(all of them in a long prefill, about k/ep per token in a small decode batch).  The busiest
device receives rho_e times the mean routed rows N·k/ep (rho_e = 1: balanced, the default);
the step waits for it.
"""

from __future__ import annotations

import sympy as sp

from costmodel.model import ops
from costmodel.model import symbols as sy
from costmodel.model.ops import Cost, Op

FLOAT_ONE = sp.Float(1)  # the float factor of touched_experts' exponent (see there)


def touched_experts(tokens, experts=sy.E, top_k=sy.k_e) -> sp.Expr:
    """Expected experts with at least one of ``tokens`` tokens routed to them, under uniform
    independent routing: E·(1 - (1 - k/E)^tokens) [experts], for k < E.

    The exponent carries a float factor of 1: at exact values SymPy would otherwise expand the
    rational (1 - k/E) to the 100 000th power of a long prefill (a number of ~10^6 digits);
    with it the power is evaluated in floating point, 15 digits, as an expectation needs."""
    experts, top_k = sp.sympify(experts), sp.sympify(top_k)
    return experts * (1 - (1 - top_k / experts) ** (FLOAT_ONE * tokens))


def routed_rows(tokens, degree=sy.ep) -> sp.Expr:
    """Token rows the busiest of ``degree`` expert-parallel devices computes: rho_e·N·k/ep
    [rows]."""
    return sy.rho_e * tokens * sy.k_e / degree


def expert_width(degree=sy.tp) -> sp.Expr:
    """One expert's intermediate width on one device: F_e split over the tp/ep devices of its
    expert-parallel group [elements]."""
    return sy.F_e * sy.ep / degree


def router(tokens, *, bias: bool) -> list[Op]:
    """The router's gate GEMM (tokens, D) x (D, E), kept in the activation dtype as
    checkpoints keep it, and its bias when it has one."""
    weight = sy.D * sy.E * sy.b_a
    cost = Cost(
        flops=2 * tokens * sy.D * sy.E,
        bytes_read=tokens * sy.D * sy.b_a + weight,
        bytes_written=tokens * sy.E * sy.b_a,
        weight_bytes=weight,
    )
    gate = Op("router", cost, "matmul", weight_params=sy.D * sy.E, role="router")
    return [gate, ops.bias("router_bias", tokens, sy.E)] if bias else [gate]


def scoring(tokens, scoring_kind: str) -> Op:
    """The router's scores over the E experts: a softmax (4E - 1 FLOPs and E exps per token,
    :func:`costmodel.model.ops.softmax_flops`) or a sigmoid as 1/(1 + exp(-x)) (negate, add,
    divide: 3 FLOPs and one exp per score)."""
    scores = tokens * sy.E
    flops = ops.softmax_flops(tokens, sy.E) if scoring_kind == "softmax" else 3 * scores
    cost = Cost(
        flops=flops,
        transcendentals=scores,
        bytes_read=scores * sy.b_a,
        bytes_written=scores * sy.b_a,
    )
    return Op(f"router_{scoring_kind}", cost, "vector")


def top_k(tokens, *, normalise: bool) -> Op:
    """Choosing each token's k experts (a selection: no FLOPs) and, when ``normalise``, scaling
    the k weights to sum 1; reads the scores, writes the weights and 4-byte expert indices.

    Counted as XLA counts ``w / sum(w)`` over the k weights: the sum is k - 1 adds, and XLA
    rewrites the division by a broadcast value as one reciprocal per token times k multiplies
    (as in :func:`costmodel.model.ops.softmax_flops`), 2k FLOPs per token.  The selection,
    ``jax.lax.top_k``, is a TopK custom call on XLA CPU, which its cost analysis counts as no
    FLOPs either."""
    flops = tokens * 2 * sy.k_e if normalise else ops.ZERO
    cost = Cost(
        flops=flops,
        bytes_read=tokens * sy.E * sy.b_a,
        bytes_written=tokens * sy.k_e * (sy.b_a + 4),
    )
    return Op("router_top_k", cost, "vector")


def _expert_bias(name: str, rows, width, experts) -> Op:
    return ops.bias(name, rows, width, experts=experts, sharded=True)


def routed_experts(tokens, activation: str, *, bias: bool, degree=sy.tp) -> list[Op]:
    """The routed experts on the busiest device: gate and up grouped GEMMs over its E/ep
    experts, the activation, the gated product and the down GEMM, on rho_e·N·k/ep rows; the
    weights of the touched experts are read (:func:`touched_experts`)."""
    rows = routed_rows(tokens)
    width = expert_width(degree)
    stored = sy.E / sy.ep
    touched = touched_experts(tokens) / sy.ep
    out = [
        ops.expert_matmul("expert_gate_proj", rows, sy.D, width, experts=stored, touched=touched),
        ops.expert_matmul("expert_up_proj", rows, sy.D, width, experts=stored, touched=touched),
    ]
    if bias:
        out.append(_expert_bias("expert_gate_up_bias", rows, 2 * width, stored))
    if activation == "clamped_swiglu":
        out.append(ops.clamped_swiglu("expert_act", rows, width, sharded=True))
    else:
        act = ops.gelu_tanh if activation == "gelu_tanh" else ops.silu
        out += [
            act("expert_act", rows, width, sharded=True),
            ops.elementwise_binary("expert_gate_mul", rows, width, sharded=True),
        ]
    out.append(
        ops.expert_matmul("expert_down_proj", rows, width, sy.D, experts=stored, touched=touched)
    )
    if bias:
        # a row-parallel bias: every device of the expert's group stores all D of it
        out.append(_expert_bias("expert_down_bias", rows, sy.D, stored))
    return out


def combine(rows, tokens) -> Op:
    """Each routed row scaled by its router weight and added into its token's output: 2 FLOPs
    per element of the ``rows`` rows; reads the rows and weights, writes ``tokens`` outputs.

    This is XLA's count of the weighted sum written as a product, ``einsum("nkd,nk->nd")``
    over each token's k rows: a contraction of length k, 2k FLOPs per output element (k
    multiplies and, by the matmul convention, k adds)."""
    cost = Cost(
        flops=2 * rows * sy.D,
        bytes_read=rows * sy.D * sy.b_a + rows * sy.b_a,
        bytes_written=tokens * sy.D * sy.b_a,
    )
    return Op("expert_combine", cost, "vector", sharded=True)
