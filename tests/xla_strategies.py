"""Hypothesis strategies for small reference-layer shapes (shared by the XLA tests).

Dims are capped so each compile takes well under a second; d_model is drawn from the widths
whose reductions XLA counts without padding (see costmodel.validate.xla.random_case).
"""

from __future__ import annotations

from hypothesis import strategies as st

from costmodel.config.specs import MLASpec
from costmodel.validate import xla
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
