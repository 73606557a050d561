"""Hypothesis strategies for small reference-layer shapes, and the MoE layer computed token by
token (shared by the XLA tests).

Dims are capped so each compile takes well under a second; d_model is drawn from the widths
whose reductions XLA counts without padding (see costmodel.validate.xla.random_case).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from costmodel.config.specs import MLASpec
from costmodel.validate import reference, xla
from costmodel.validate.reference import small_spec

KV_GROUPS = [(kv, group) for kv in (1, 2, 4) for group in (1, 2, 4)]


def _fits(kv: int, group: int, tp: int) -> bool:
    heads = kv * group
    return heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


@st.composite
def gqa_specs(draw, tp: int = 1):
    """A one-layer GQA ModelSpec whose heads, KV heads and FFN width suit ``tp``."""
    kv, group = draw(st.sampled_from([p for p in KV_GROUPS if _fits(*p, tp)]))
    return small_spec(
        d_model=draw(st.sampled_from(xla.D_MODELS)),
        n_heads=kv * group,
        n_kv_heads=kv,
        head_dim=draw(st.sampled_from((4, 8, 16))),
        ffn_dim=2 * tp * draw(st.integers(1, 6)),
        vocab_size=draw(st.integers(8, 96)),
    )


@st.composite
def mla_specs(draw):
    """A one-layer MLA ModelSpec with small ranks."""
    mla = MLASpec(
        kv_lora_rank=draw(st.integers(4, 32)),
        q_lora_rank=draw(st.integers(4, 32)),
        qk_rope_head_dim=draw(st.sampled_from((2, 4, 8))),
        qk_nope_head_dim=draw(st.integers(2, 16)),
        v_head_dim=draw(st.integers(2, 16)),
    )
    heads = draw(st.integers(2, 4))  # one head: see costmodel.validate.xla.random_case
    return small_spec(
        d_model=draw(st.sampled_from(xla.D_MODELS)),
        n_heads=heads,
        n_kv_heads=heads,
        head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        ffn_dim=8,
        mla=mla,
    )


batches = st.integers(1, 4)
prompts = st.integers(2, 12)
contexts = st.integers(2, 32)


def assert_agrees(record: dict) -> None:
    """Every check of a comparison record, with the record in the message."""
    summary = {k: record[k] for k in record if not k.startswith("collectives")}
    assert record["flops_ok"], f"FLOPs differ: {summary}"
    assert record["transcendentals_ok"], f"transcendentals differ: {summary}"
    assert record["bytes_ok"], f"bytes check ({record['bytes_check']}) failed: {summary}"
    assert record["collectives_ok"], (
        f"collectives differ: model {record['collectives_model']} XLA {record['collectives_xla']}"
    )


@st.composite
def moe_cases(draw, *, tp: int = 1, ep: int = 1, attention_dp: bool = False):
    """A Mixture-of-Experts case (``moe`` at tp = 1, else ``tp_moe``) whose shape suits the
    reference layer's fixed, balanced routing (costmodel.validate.reference.moe_routing):
    k divides E, each group's k/ep slots at least two (a combine over one row is a multiply to
    XLA), per-device widths at least 2; tokens a multiple of the E/k classes on each device,
    at least two of them (with one token every product is a vector product, around which XLA
    CPU adds layout copies, tens of bytes, that the unfused bound leaves out: see
    costmodel.validate.xla.random_case on MLA).  Data-parallel attention splits the experts
    over all tp (ep = tp)."""
    groups, width_split = (1, 1) if attention_dp else (ep, tp // ep)
    top_k = draw(st.sampled_from([k for k in (2, 4, 8) if k % groups == 0 and k // groups >= 2]))
    experts = draw(
        st.sampled_from(
            [
                top_k * c
                for c in (1, 2, 4, 8)
                if top_k * c <= 32 and top_k * c % (tp if attention_dp else groups) == 0
            ]
        )
    )
    shared_split = 1 if attention_dp else tp
    spec = xla.moe_spec(
        "drawn",
        experts=experts,
        top_k=top_k,
        expert_ffn=width_split * draw(st.sampled_from((2, 4, 8, 16))),
        shared_ffn=shared_split * draw(st.sampled_from((0, 2, 4, 8))),
        scoring=draw(st.sampled_from(("softmax", "sigmoid"))),
        biases=draw(st.booleans()),
        activation=draw(st.sampled_from(("silu", "clamped_swiglu", "gelu_tanh"))),
        d_model=draw(st.sampled_from((8, 16, 24, 32, 64))),
        normalise=draw(st.booleans()),
    )
    blocks, classes = (tp if attention_dp else 1), experts // top_k
    tokens = blocks * classes * draw(st.integers(1 if classes > 1 else 2, 3))
    if draw(st.booleans()):  # decode: one token per sequence
        batch, new = tokens, 1
    else:
        batch = 2 if tokens % 2 == 0 and tokens >= 4 else 1
        new = tokens // batch
    kind = "moe" if tp == 1 else "tp_moe"
    ep = tp if attention_dp else ep
    return xla.Case(kind, spec, batch, new, new, tp=tp, ep=ep, attention_dp=attention_dp)


def direct_moe(spec, args: dict, routing: np.ndarray) -> np.ndarray:
    """The MoE layer token by token, in float64 numpy: norm, router, scores, the routed
    experts' weights, each routed expert on its token, the weighted sum, shared experts,
    residual."""
    m = spec.moe
    a = {name: np.asarray(value, np.float64) for name, value in args.items()}
    x = a["x"]
    h = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + reference.EPS) * a["g_moe"]
    logits = h @ a["w_router"] + a.get("b_router", 0.0)
    if m.scoring == "softmax":
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    else:
        scores = 1 / (1 + np.exp(-logits))
    weights = np.take_along_axis(scores, routing, axis=-1)
    if m.normalise_top_k:
        weights /= weights.sum(-1, keepdims=True)

    def act(gate, up):
        if spec.activation == "clamped_swiglu":
            gate = np.minimum(gate, reference.CLAMP_LIMIT)
            up = np.clip(up, -reference.CLAMP_LIMIT, reference.CLAMP_LIMIT)
            return (up + 1) * gate / (1 + np.exp(-reference.CLAMP_ALPHA * gate))
        if spec.activation == "gelu_tanh":
            inner = np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)
            return 0.5 * gate * (1 + np.tanh(inner)) * up
        return gate / (1 + np.exp(-gate)) * up

    out = np.zeros_like(x)
    for n, experts in enumerate(routing):
        for j, e in enumerate(experts):
            gate = h[n] @ a["w_gate"][e] + (a["b_gate"][e] if m.expert_bias else 0)
            up = h[n] @ a["w_up"][e] + (a["b_up"][e] if m.expert_bias else 0)
            y = act(gate, up) @ a["w_down"][e] + (a["b_down"][e] if m.expert_bias else 0)
            out[n] += weights[n, j] * y
    if m.shared_ffn_dim:
        out += act(h @ a["ws_gate"], h @ a["ws_up"]) @ a["ws_down"]
    return x + out
