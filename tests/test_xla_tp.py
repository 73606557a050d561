"""Sharded reference layers against the model: per-device FLOPs equal, collectives (kind,
count per layer, payload) equal, bytes inside [fused, unfused].  The Megatron decoder layer,
and the Mixture-of-Experts layer in its two sharded forms: data-parallel attention (dispatch
and combine all-to-alls of own·k·D elements) and tensor-parallel (one all-reduce of N·D).

The sharded programs need 8 host devices, which JAX only creates when
``costmodel.runtime.configure(cpu_devices=8)`` runs before its backend starts.  So that the rest
of the suite keeps the device count it expects, the in-process tests skip when fewer devices
exist, and the two subprocess tests rerun this file in a child Python that configures 8
devices and then runs pytest: the fixed cases in the fast tier, the hypothesis-drawn ones in
the slow tier (each fails if the child fails or skips anything but the subprocess tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xla_strategies import (
    assert_agrees,
    batches,
    contexts,
    direct_moe,
    gqa_specs,
    moe_cases,
    prompts,
)

from costmodel.validate import reference, xla

DEVICES = 8
CHILD = "COSTMODEL_XLA_TP_CHILD"
CHILD_TIMEOUT_S = 900
CHILD_SCRIPT = """
import sys
from costmodel import runtime
runtime.configure(cpu_devices=int(sys.argv[1]))
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def eight_devices():
    if len(jax.devices()) < DEVICES:
        pytest.skip(f"needs {DEVICES} host devices (run by the subprocess test)")


@st.composite
def tp_cases(draw):
    tp = draw(st.sampled_from(xla.TP_DEGREES))
    spec = draw(gqa_specs(tp=tp))
    batch = draw(batches)
    if draw(st.booleans()):
        prompt = draw(prompts)
        return xla.Case("tp_decoder", spec, batch, prompt, prompt, tp=tp, phase="prefill")
    return xla.Case("tp_decoder", spec, batch, 1, draw(contexts), tp=tp, phase="decode")


@pytest.mark.slow
@settings(max_examples=12)
@given(case=tp_cases())
def test_sharded_layer_matches_xla(eight_devices, case):
    record = xla.compare(case)
    assert_agrees(record)
    # Megatron: two all-reduces per layer, each of the (B, S, d_model) activations.
    payload = case.batch * case.new_tokens * case.spec.d_model * 4
    assert record["collectives_xla"] == [{"kind": "all_reduce", "payload_bytes": payload}] * 2


@pytest.mark.parametrize(
    ("tp", "kv_heads", "phase"), [(4, 2, "decode"), (8, 2, "prefill"), (8, 1, "decode")]
)
def test_kv_heads_replicated_when_tp_exceeds_them(eight_devices, tp, kv_heads, phase):
    spec = reference.small_spec(
        d_model=32, n_heads=8, n_kv_heads=kv_heads, head_dim=8, ffn_dim=32, vocab_size=16
    )
    tokens, context = (6, 6) if phase == "prefill" else (1, 9)
    case = xla.Case("tp_decoder", spec, 3, tokens, context, tp=tp, phase=phase)
    record = xla.compare(case)
    assert_agrees(record)
    # One KV head per device: the model's max(1, H_kv/tp); the program's K/V weights are
    # d_model x d_h per device.
    program = xla.case_program(case)
    hlo = program.compiled().as_text()
    assert f"f32[32,{spec.head_dim}]" in hlo
    assert record["dims"]["tp"] == tp > record["dims"]["H_kv"]


@pytest.mark.slow
def test_per_device_flops_shrink_with_tp(eight_devices):
    spec = reference.small_spec(
        d_model=32, n_heads=8, n_kv_heads=8, head_dim=8, ffn_dim=64, vocab_size=16
    )
    flops = {
        tp: xla.compare(xla.Case("tp_decoder", spec, 2, 1, 8, tp=tp))["flops_xla"]
        for tp in (2, 4, 8)
    }
    assert flops[2] > flops[4] > flops[8]


# --------------------------------------------------------------------------- MoE layers

SHARDED_MOE = [case for case in xla.moe_cases() if case.kind == "tp_moe"]
FAST_MOE = [SHARDED_MOE[0], SHARDED_MOE[-2]]  # data-parallel Mixtral, tensor-parallel DeepSeek


def _assert_moe_collectives(case: xla.Case, record: dict) -> None:
    """Data-parallel attention: a dispatch and a combine all-to-all, each of the device's own
    tokens' k copies, own·k·D elements; tensor-parallel: one all-reduce of the N·D output."""
    tokens, m = case.batch * case.new_tokens, case.spec.moe
    if case.attention_dp:
        payload = tokens // case.tp * m.top_k * case.spec.d_model * 4
        assert record["collectives_xla"] == [{"kind": "all_to_all", "payload_bytes": payload}] * 2
    else:
        payload = tokens * case.spec.d_model * 4
        assert record["collectives_xla"] == [{"kind": "all_reduce", "payload_bytes": payload}]


@pytest.mark.parametrize("case", FAST_MOE, ids=lambda c: c.name)
def test_fixed_sharded_moe_cases_match_xla(eight_devices, case):
    record = xla.compare(case)
    assert_agrees(record)
    _assert_moe_collectives(case, record)


@pytest.mark.slow
@pytest.mark.parametrize("case", SHARDED_MOE, ids=lambda c: c.name)
def test_sharded_moe_cases_of_the_experiment_match_xla(eight_devices, case):
    record = xla.compare(case)
    assert_agrees(record)
    _assert_moe_collectives(case, record)


@st.composite
def sharded_moe_cases(draw):
    if draw(st.booleans()):
        return draw(moe_cases(tp=draw(st.sampled_from((2, 4, 8))), attention_dp=True))
    tp, ep = draw(st.sampled_from([(2, 1), (2, 2), (4, 2), (4, 4), (8, 2), (8, 4)]))
    return draw(moe_cases(tp=tp, ep=ep))


@pytest.mark.slow
@settings(max_examples=16)
@given(case=sharded_moe_cases())
def test_drawn_sharded_moe_layers_match_xla(eight_devices, case):
    record = xla.compare(case)
    assert_agrees(record)
    _assert_moe_collectives(case, record)


@pytest.mark.parametrize(
    ("tp", "ep", "attention_dp"),
    [(4, 4, True), pytest.param(4, 2, False, marks=pytest.mark.slow)],
    ids=["dp", "tp"],
)
def test_sharded_moe_layer_computes_the_routed_mixture(eight_devices, tp, ep, attention_dp):
    """The sharded programs compute the layer: token by token with their routing
    (reference.moe_routing: classes per device under data-parallel attention, k/ep slots per
    group under tensor parallelism), each group's down bias passed divided by tp/ep."""
    spec = xla.moe_spec(
        "everything",
        experts=8,
        top_k=4,
        expert_ffn=8,
        shared_ffn=8,
        biases=True,
        activation="clamped_swiglu",
    )
    tokens = 16
    program = reference.moe_layer(spec, tokens=tokens, tp=tp, ep=ep, attention_dp=attention_dp)
    args = list(program.example_args(jax.random.key(5)))
    values = dict(zip(program.names, args, strict=True))
    if not attention_dp:  # each of an expert's tp/ep devices adds the down bias
        down = program.names.index("b_down")
        args[down] = jax.device_put(args[down] / (tp // ep), args[down].sharding)
    got = np.asarray(program.jitted()(*args))
    groups, blocks = (1, tp) if attention_dp else (ep, 1)
    routing = reference.moe_routing(tokens, 8, 4, groups=groups, blocks=blocks)
    np.testing.assert_allclose(got, direct_moe(spec, values, routing), rtol=2e-5, atol=2e-6)


def _run_child(marker: str) -> None:
    """Run this file's tests selected by ``marker`` in a child with 8 CPU devices; every one
    must pass except the subprocess tests, which the child skips."""
    if len(jax.devices()) >= DEVICES:
        pytest.skip("this process already has 8 devices: the tests above ran here")
    env = dict(os.environ)
    env[CHILD] = "1"
    root = Path(__file__).resolve().parent.parent
    args = ["-q", "-rs", "-p", "no:cacheprovider", "-m", marker, __file__]
    result = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, str(DEVICES), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 1, output  # only the subprocess test, which the child does not rerun
    assert "already the 8-device child" in skips[0], output
    assert " passed" in output.splitlines()[-1], output


@pytest.mark.skipif(os.environ.get(CHILD) == "1", reason="already the 8-device child")
def test_fixed_tensor_parallel_cases_in_8_device_subprocess():
    _run_child("not slow")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(CHILD) == "1", reason="already the 8-device child")
def test_drawn_tensor_parallel_cases_in_8_device_subprocess():
    _run_child("slow")
