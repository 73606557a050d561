"""Tensor parallelism, Megatron style: how dimensions shard, and what the collectives cost.

Column-parallel layers (Q/K/V, gate/up, LM head) split their output features over ``tp`` devices,
row-parallel layers (attention output, down) split their input features and end in an
all-reduce of the (tokens, d_model) activations: two all-reduces per decoder layer
(Shoeybi et al., "Megatron-LM", 2019, section 3).  KV heads are replicated when ``tp`` exceeds
their count, so each device holds at least one.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from costmodel.model import symbols as sy


class LocalShape(NamedTuple):
    """Per-device head counts and widths under tensor parallelism (SymPy expressions)."""

    heads: sp.Expr
    kv_heads: sp.Expr
    ffn: sp.Expr
    vocab: sp.Expr


def local_shape(degree: sp.Expr = sy.tp) -> LocalShape:
    """Per-device shape: H/tp query heads, max(1, H_kv/tp) KV heads, F/tp, V/tp."""
    return LocalShape(
        heads=sy.H / degree,
        kv_heads=sp.Max(1, sy.H_kv / degree),
        ffn=sy.F / degree,
        vocab=sy.V / degree,
    )


def ring_all_reduce_time(payload_bytes: sp.Expr, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Ring all-reduce of ``payload_bytes`` per device over ``degree`` devices [s].

    A reduce-scatter then an all-gather: 2(tp-1) steps, each moving payload/tp bytes over one
    link direction, each paying one link latency (Patarasuk and Yuan, 2009).  Zero at tp = 1.
    """
    steps = 2 * (degree - 1)
    return steps / degree * payload_bytes / sy.link_bandwidth + steps * sy.link_latency


def ring_all_gather_time(payload_bytes: sp.Expr, degree: sp.Expr = sy.tp) -> sp.Expr:
    """Ring all-gather whose gathered result is ``payload_bytes`` per device [s]: tp-1 steps."""
    steps = degree - 1
    return steps / degree * payload_bytes / sy.link_bandwidth + steps * sy.link_latency


def all_to_all_time(payload_bytes: sp.Expr, degree: sp.Expr = sy.tp) -> sp.Expr:
    """All-to-all in which each device sends ``payload_bytes`` spread evenly over ``degree``
    devices [s]: the (degree-1)/degree that leaves the device crosses its link, in degree-1
    pairwise exchanges each paying one link latency.  Zero at degree 1."""
    steps = degree - 1
    return steps / degree * payload_bytes / sy.link_bandwidth + steps * sy.link_latency


COLLECTIVE_TIME = {
    "all_reduce": ring_all_reduce_time,
    "all_gather": ring_all_gather_time,
    "all_to_all": all_to_all_time,
}
