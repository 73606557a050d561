"""The roofline post's figures (shared/seed), reproduced by the model."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.load import hardware_catalogue, load_model, load_scenario
from costmodel.model import symbols as sy
from costmodel.model.layers import kv_cache_elements_per_token, model_ops
from costmodel.model.memory import kv_cache_bytes
from costmodel.model.roofline import seed_ridge_batch, totals
from experiments import roofline
from tests.helpers import ROOT, at

SEED_THROUGHPUTS = [24, 48, 96, 191, 383, 766, 1531, 3063, 6126]


@pytest.fixture(scope="module")
def report():
    """The command's JSON for the seed's question (in-process: its ``main``)."""
    out = io.StringIO()
    config = str(ROOT / "configs/h100_70b.yaml")
    with contextlib.redirect_stdout(out):
        assert roofline.main([config, "--json", "--context", "32768"]) == 0
    return json.loads(out.getvalue())


def test_ridge_points_match_the_post(report):
    assert round(report["ridge_point_flop_per_byte"]) == 295
    a100 = hardware_catalogue()["a100-sxm-80gb"]
    assert round(float(a100.ridge_point("bf16"))) == 153


def test_weights_only_decode_table(report):
    rows = report["decode_table_weights_only"]
    assert [row["batch"] for row in rows] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    for row in rows:
        assert round(row["latency_ms"], 1) == 41.8
        assert row["regime"] == "memory-bound"
        assert row["intensity_flop_per_byte"] == pytest.approx(row["batch"], rel=1e-12)
    assert [round(row["throughput_tok_s"]) for row in rows] == SEED_THROUGHPUTS
    assert rows[0]["utilisation"] < 0.005
    assert round(100 * rows[0]["utilisation"], 3) == 0.339


def test_full_model_decode_latencies_of_the_seed_question(report):
    latencies = {row["batch"]: row["latency_ms"] for row in report["decode_table"]}
    assert round(latencies[1], 1) == 44.7
    assert round(latencies[64], 1) == 247.9
    assert report["decode_table_weights_only_params"]["source"] == "nominal"


def test_kv_cache_of_llama3_70b_at_32k_is_exact(report):
    assert report["kv_cache_bytes"] == 10_737_418_240
    model = load_model(catalogue.path("models", "llama-3-70b"))
    exact = at(kv_cache_bytes("gqa"), model.dims() | {sy.B: 1, sy.T: 32768, sy.b_kv: 2, sy.tp: 1})
    assert exact == sp.Integer(10_737_418_240)


def test_full_model_decode_table_is_slower_than_weights_only(report):
    # Real parameter count (70.6e9 > 70e9), KV cache and LM head only add traffic.
    for seed_row, row in zip(
        report["decode_table_weights_only"], report["decode_table"], strict=True
    ):
        assert row["latency_ms"] > seed_row["latency_ms"]


def test_mla_latent_cache_is_4x_smaller_than_gqa_and_32x_smaller_than_mha():
    mla = load_model(catalogue.path("models", "deepseek-v3-mla"))
    llama = load_model(catalogue.path("models", "llama-3-70b"))
    gqa = at(kv_cache_elements_per_token("gqa"), llama.dims() | {sy.tp: 1})
    assert gqa == 2 * 8 * 128
    latent = mla.mla.kv_lora_rank
    assert gqa / latent == 4
    mha = at(kv_cache_elements_per_token("mha"), llama.dims() | {sy.H_kv: 64, sy.tp: 1})
    assert mha / latent == 32
    # With the decoupled RoPE key the cache is 512 + 64 elements: still 3.56x below GQA.
    with_rope = at(kv_cache_elements_per_token("mla"), mla.dims())
    assert with_rope == 576
    assert sp.Rational(gqa, with_rope) == sp.Rational(32, 9)


def test_prefill_intensity_of_2048_tokens_is_about_2048():
    """Counting the traffic that survives fusion (weights and KV cache), as the seed does."""
    scenario = load_scenario(ROOT / "configs/h100_70b.yaml")
    values = scenario.model.dims() | {
        sy.B: 1,
        sy.S: 2048,
        sy.T: 2048,
        sy.b_w: 2,
        sy.b_a: 2,
        sy.b_kv: 2,
        sy.tp: 1,
    }
    total = totals(model_ops("gqa", "prefill"))
    intensity = at(total.flops / (total.weight_bytes + total.kv_bytes), values)
    assert abs(float(intensity) / 2048 - 1) < 0.15


def test_ridge_batch_closed_forms():
    h100 = hardware_catalogue()["h100-sxm"]
    ridge = seed_ridge_batch()
    point = {sy.peak_matmul: h100.peak_flops("bf16"), sy.hbm_bandwidth: h100.hbm_bandwidth}
    assert ridge == sy.b_w * sy.peak_matmul / (2 * sy.hbm_bandwidth)
    assert round(float(at(ridge, point | {sy.b_w: 2}))) == 295
    assert round(float(at(ridge, point | {sy.b_w: 1}))) == 148
