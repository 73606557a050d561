"""Mixture-of-Experts layers against XLA on one device: FLOPs equal exactly, transcendentals
equal, bytes inside [fused, unfused]; the reference layer's fixed, balanced routing and its
values; the conventions of the model's small MoE kernels that XLA fixes.

The sharded forms (data-parallel attention with its all-to-alls, tensor-parallel with its
all-reduce) need 8 host devices and run in test_xla_tp.py's child process.  One fixed case
of each model runs in the fast tier; the hypothesis-drawn ones are marked slow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from xla_strategies import assert_agrees, direct_moe, moe_cases

from costmodel.model import layers, moe
from costmodel.model import symbols as sy
from costmodel.validate import reference, xla

ONE_DEVICE = [case for case in xla.moe_cases() if case.kind == "moe"]
FAST = [ONE_DEVICE[0], ONE_DEVICE[3], ONE_DEVICE[4]]  # Mixtral prefill, DeepSeek decode, gpt-oss


@pytest.mark.parametrize("case", FAST, ids=lambda c: c.name)
def test_one_fixed_case_of_each_moe_model_matches_xla(case):
    record = xla.compare(case)
    assert_agrees(record)
    assert record["flops_rel_error"] == 0
    assert record["collectives_xla"] == []


@pytest.mark.slow
@pytest.mark.parametrize("case", ONE_DEVICE, ids=lambda c: c.name)
def test_fixed_moe_cases_match_xla(case):
    assert_agrees(xla.compare(case))


@pytest.mark.slow
@settings(max_examples=16)
@given(case=moe_cases())
def test_drawn_moe_layers_match_xla(case):
    assert_agrees(xla.compare(case))


def test_experiment_cases_cover_every_model_phase_and_form():
    cases = xla.moe_cases()
    assert {c.spec.name for c in cases if c.kind == "moe"} == set(xla.MOE_SPECS)
    assert {xla.case_phase(c) for c in cases if c.kind == "moe"} == {"prefill", "decode"}
    sharded = [c for c in cases if c.kind == "tp_moe"]
    assert {(c.tp, c.ep, c.attention_dp) for c in sharded} == {(4, 4, True), (4, 2, False)}
    specs = xla.MOE_SPECS
    assert specs["mixtral-like"].moe.scoring == "softmax" and specs["mixtral-like"].moe.top_k == 2
    assert (
        specs["deepseek-like"].moe.scoring == "sigmoid"
        and specs["deepseek-like"].moe.shared_ffn_dim
    )
    oss = specs["gpt-oss-like"]
    assert oss.activation == "clamped_swiglu" and oss.moe.router_bias and oss.moe.expert_bias


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("tokens", "experts", "top_k", "groups", "blocks"),
    [(16, 8, 2, 1, 1), (4, 8, 2, 1, 1), (16, 16, 4, 2, 1), (32, 8, 2, 1, 4), (8, 8, 4, 4, 1)],
)
def test_routing_is_balanced_and_each_token_has_distinct_experts(
    tokens, experts, top_k, groups, blocks
):
    routing = reference.moe_routing(tokens, experts, top_k, groups=groups, blocks=blocks)
    assert routing.shape == (tokens, top_k) and routing.dtype == np.int32
    counts = np.bincount(routing.ravel(), minlength=experts)
    assert (counts == tokens * top_k // experts).all()  # rho_e = 1, every expert touched
    assert all(len(set(row)) == top_k for row in routing)
    # each token has k/groups of its experts in each expert-parallel group, slot-major
    group = routing // (experts // groups)
    assert (group == np.arange(top_k) // (top_k // groups)).all()


def test_routing_refuses_shapes_it_cannot_balance():
    with pytest.raises(ValueError, match="classes"):
        reference.moe_routing(6, 8, 2)
    with pytest.raises(ValueError, match="divide"):
        reference.moe_routing(8, 6, 4)


# --------------------------------------------------------------------------- the layer's values


EVERYTHING = xla.moe_spec(
    "everything",
    experts=8,
    top_k=4,
    expert_ffn=8,
    shared_ffn=8,
    biases=True,
    activation="clamped_swiglu",
)


def _check_values(spec, tokens: int) -> None:
    program = reference.moe_layer(spec, tokens=tokens)
    args = program.example_args(jax.random.key(3))
    got = np.asarray(program.jitted()(*args))
    routing = reference.moe_routing(tokens, spec.moe.n_experts, spec.moe.top_k)
    want = direct_moe(spec, dict(zip(program.names, args, strict=True)), routing)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_reference_layer_computes_the_routed_mixture():
    _check_values(EVERYTHING, 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(xla.MOE_SPECS))
def test_reference_layers_of_the_experiment_compute_the_routed_mixture(name):
    spec = xla.MOE_SPECS[name]
    _check_values(spec, 2 * spec.moe.n_experts // spec.moe.top_k)


def test_the_layer_is_two_programs_whose_costs_add_up():
    program = xla.case_program(FAST[0])
    assert len(program.stages) == 2
    norm, rest = (xla.compiled_cost(stage.compiled()) for stage in program.stages)
    tokens, width = FAST[0].batch * FAST[0].new_tokens, FAST[0].spec.d_model
    assert norm.flops == 4 * tokens * width + tokens  # RMSNorm alone
    assert norm.transcendentals == tokens
    assert xla.program_cost(program).flops == norm.flops + rest.flops


# --------------------------------------------------------------------------- model conventions


def _values(extra: dict) -> dict:
    return {sy.E: 8, sy.k_e: 2, sy.D: 32, sy.F_e: 16, sy.ep: 1, sy.rho_e: 1, **extra}


def test_renormalised_top_k_is_2k_flops_per_token_and_selection_none():
    tokens = sp.Symbol("N", positive=True)
    assert moe.top_k(tokens, normalise=True).cost.flops == 2 * sy.k_e * tokens
    assert moe.top_k(tokens, normalise=False).cost.flops == 0


def test_xla_counts_top_k_selection_as_no_flops():
    """The model's selection convention: XLA counts jax.lax.top_k (a TopK custom call on
    CPU) as no FLOPs, whatever the number of experts it chooses from."""

    def flops(experts):
        lowered = jax.jit(lambda s: jnp.sum(jax.lax.top_k(s, 4)[0])).lower(
            jax.ShapeDtypeStruct((16, experts), jnp.float32)
        )
        return xla.cost_dict(lowered.compile())["flops"]

    assert flops(8) == flops(32) < 16 * 4


def test_shared_experts_output_is_added_to_the_routed_output():
    arch = xla.MOE_SPECS["deepseek-like"].architecture
    names = [op.name for op in layers.moe_mlp_block(sy.B * sy.S, arch, sp.Integer(1))]
    assert names.index("shared_add") == names.index("shared_down_proj") + 1


def test_every_expert_touched_reads_all_of_a_devices_experts():
    tokens = sp.Integer(3)
    gate = moe.routed_experts(tokens, "silu", bias=False, degree=sp.Integer(2))[0]
    touched = xla.every_expert_touched(gate)
    values = _values({sy.ep: 2, sy.tp: 2, sy.b_we: 1})
    per_expert = 16 * 32  # D x F_e·ep/tp at one byte
    assert touched.cost.weight_bytes.subs(values) == 4 * per_expert  # E/ep of them
    assert gate.cost.weight_bytes.subs(values) < 4 * per_expert  # uniform routing: fewer
    assert touched.cost.flops == gate.cost.flops
