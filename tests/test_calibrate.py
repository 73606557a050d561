"""Calibration machinery: the layer model equals the SymPy cost model, the calibration terms are
off by default, the fit recovers parameters it generated, and the validation's bookkeeping.

No assertion here depends on how fast this machine is: every time is either synthetic (made
by the model itself) or checked only for sign.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from costmodel.config.load import hardware_catalogue
from costmodel.config.specs import Efficiency
from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE, Cache, Calibration
from costmodel.model.layers import decoder_layer
from costmodel.model.roofline import (
    ROOFLINE,
    attention_efficiency,
    cache_bandwidth,
    cache_capacity,
    compute_time,
    op_time,
    overlap,
    relayout,
    relayout_bytes,
    step_time,
)
from costmodel.validate import calibrate
from costmodel.validate.calibrate import (
    ARGS,
    Peaks,
    TimeModel,
    batch_partners,
    error_summary,
    fit,
    layer_exprs,
    make_cases,
    predict,
    predict_parts,
    regime_checks,
)
from tests.helpers import at

PEAKS = Peaks(flops=2.0e11, bandwidth=3.0e10)
ROUND_TRIP_RTOL = 1e-12  # float rounding of the unit conversions (us, MB, TB/s) [1]


def _row(phase, batch, prompt, context, d=256, heads=4, kv=2, dh=64, ffn=704, split="train"):
    return {
        "phase": phase,
        "batch": batch,
        "prompt": prompt,
        "context": context,
        "d_model": d,
        "n_heads": heads,
        "n_kv_heads": kv,
        "head_dim": dh,
        "ffn_dim": ffn,
        "bytes_per_element": 4,
        "split": split,
    }


def _grid(split="train", d=256, ffn=704):
    rows = [
        _row("decode", b, 1, t, d=d, ffn=ffn, split=split)
        for b in (1, 4, 16, 64)
        for t in (128, 1024)
    ]
    rows += [
        _row("prefill", b, s, s, d=d, ffn=ffn, split=split)
        for b, s in ((1, 16), (1, 128), (4, 256))
    ]
    return rows


TRUE = Calibration(
    eta_compute=0.62,
    eta_memory=0.71,
    kernel_overhead_s=3e-6,
    overlap=1.7,
    cache=Cache(4e6, 9e10),
    weight_relayout=0.4,
    attention_efficiency=0.55,
)


def test_layer_model_equals_the_sympy_step_time():
    """The compiled per-case prediction is the cost model's step_time, evaluated exactly."""
    calibration = TRUE
    rows = [_row("decode", 3, 1, 200), _row("prefill", 2, 48, 48)]
    got = predict(make_cases(rows), PEAKS, calibration)
    for row, value in zip(rows, got, strict=True):
        ops = calibrate.layer_ops(row["phase"])
        model = calibrate.FULL_MODEL
        expr = step_time([op for op in ops if op.unit != "collective"], model)
        point = {
            sy.B: row["batch"],
            sy.S: row["prompt"],
            sy.T: row["context"],
            sy.D: row["d_model"],
            sy.H: row["n_heads"],
            sy.H_kv: row["n_kv_heads"],
            sy.d_h: row["head_dim"],
            sy.F: row["ffn_dim"],
            sy.b_w: 4,
            sy.b_a: 4,
            sy.b_kv: 4,
            sy.L: 1,
            sy.tp: 1,
            sy.peak_matmul: sp.Float(PEAKS.flops),
            sy.peak_attention: sp.Float(PEAKS.flops),
            sy.peak_vector: sp.Float(PEAKS.flops),
            sy.hbm_bandwidth: sp.Float(PEAKS.bandwidth),
            sy.eta_compute: sp.Float(calibration.eta_compute),
            sy.eta_memory: sp.Float(calibration.eta_memory),
            sy.kernel_overhead: sp.Float(calibration.kernel_overhead_s),
            overlap: sp.Float(calibration.overlap),
            cache_capacity: sp.Float(calibration.cache.capacity),
            cache_bandwidth: sp.Float(calibration.cache.bandwidth),
            relayout: sp.Float(calibration.weight_relayout),
            attention_efficiency: sp.Float(calibration.attention_efficiency),
        }
        exact = float(sp.N(at(expr, point), 30))
        assert value == pytest.approx(exact, rel=1e-12)


def test_layer_exprs_use_only_the_declared_arguments():
    for phase in ("prefill", "decode"):
        for model in (TimeModel(), calibrate.FULL_MODEL):
            for expr in layer_exprs(phase, model).values():
                assert sp.sympify(expr).free_symbols <= set(ARGS)


def test_calibration_terms_are_off_by_default():
    """The default TimeModel gives the pure roofline's expressions, symbol for symbol."""
    for op in decoder_layer("gqa", "decode", flash=False):
        assert op_time(op) == op_time(op, ROOFLINE)
        free = sp.sympify(op_time(op)).free_symbols
        assert not free & {overlap, relayout, attention_efficiency}
    ops = decoder_layer("mla", "prefill")
    assert step_time(ops) == step_time(ops, TimeModel())


def test_overlap_tends_to_the_max_and_cache_vanishes_without_capacity():
    rows = _grid()
    cases = make_cases(rows)
    pure = Calibration(eta_compute=0.5, eta_memory=0.6, kernel_overhead_s=1e-6)
    base = predict(cases, PEAKS, pure)
    near_max = predict(cases, PEAKS, pure._replace(overlap=200.0))
    np.testing.assert_allclose(near_max, base, rtol=1e-2)
    serial = predict(cases, PEAKS, pure._replace(overlap=1.0))
    assert np.all(serial >= base)  # p = 1 adds the two times: never below the max
    tiny_cache = predict(cases, PEAKS, pure._replace(cache=Cache(1.0, 1e12)))
    np.testing.assert_allclose(tiny_cache, base, rtol=1e-9)


def test_cache_term_speeds_up_only_small_working_sets():
    small = make_cases([_row("decode", 1, 1, 128, d=128, ffn=352)])
    large = make_cases([_row("decode", 1, 1, 128, d=2048, ffn=5632)])
    plain = Calibration(eta_compute=0.5, eta_memory=0.5)
    cached = plain._replace(cache=Cache(8e6, 3e11))
    assert predict(small, PEAKS, cached)[0] < 0.5 * predict(small, PEAKS, plain)[0]
    assert predict(large, PEAKS, cached)[0] == pytest.approx(predict(large, PEAKS, plain)[0], 1e-3)
    parts = predict_parts(small, PEAKS, cached)
    assert 0.9 < parts["hit"][0] <= 1.0


@pytest.mark.parametrize(
    "model",
    [TimeModel(), TimeModel(overlap=True), calibrate.FULL_MODEL],
    ids=["roofline-form", "overlap", "all-terms"],
)
@pytest.mark.slow
def test_fit_recovers_parameters_from_its_own_times(model):
    rows = _grid() + _grid(d=512, ffn=1408) + _grid(d=1024, ffn=2816)
    cases = make_cases(rows)
    truth = TRUE._replace(
        overlap=TRUE.overlap if model.overlap else None,
        cache=TRUE.cache if model.cache else None,
        weight_relayout=TRUE.weight_relayout if model.relayout else None,
        attention_efficiency=TRUE.attention_efficiency if model.attention else None,
    )
    measured = predict(cases, PEAKS, truth)
    start = Calibration(0.4, 0.4, 1e-6, 3.0, Cache(1.5e7, 2e11), 1.0, 0.8)
    result = fit(cases, measured, PEAKS, model, start)
    got = result.calibration
    assert result.losses[-1] < 1e-3 * result.losses[0]
    assert got.eta_compute == pytest.approx(truth.eta_compute, rel=0.05)
    assert got.eta_memory == pytest.approx(truth.eta_memory, rel=0.05)
    assert got.kernel_overhead_s == pytest.approx(truth.kernel_overhead_s, rel=0.1)
    if model.overlap:
        assert got.overlap == pytest.approx(truth.overlap, rel=0.05)
    else:
        assert got.overlap is None
    assert got.time_model == model  # a term the model leaves off is None, and only then
    if model.cache:
        assert got.cache.capacity == pytest.approx(truth.cache.capacity, rel=0.1)
    if model.relayout:
        assert got.weight_relayout == pytest.approx(truth.weight_relayout, rel=0.1)
    if model.attention:
        assert got.attention_efficiency == pytest.approx(truth.attention_efficiency, rel=0.05)
    np.testing.assert_allclose(predict(cases, PEAKS, got), measured, rtol=0.02)


@pytest.mark.slow
def test_fit_is_deterministic_and_the_loss_decreases():
    rows = _grid()
    cases = make_cases(rows)
    measured = predict(cases, PEAKS, TRUE._replace(cache=None)) * np.linspace(0.9, 1.1, len(rows))
    start = Calibration(0.8, 0.8, 1e-5, 2.0)
    one = fit(cases, measured, PEAKS, TimeModel(overlap=True), start)
    two = fit(cases, measured, PEAKS, TimeModel(overlap=True), start)
    assert one.calibration == two.calibration
    assert one.losses[-1] < one.losses[0]
    assert len(one.losses) == 1501


def test_error_summary():
    summary = error_summary(np.array([1.1, 0.8, 1.0, 2.0]), np.ones(4))
    assert summary.cases == 4
    assert summary.median_abs_rel_err == pytest.approx(0.15)
    assert summary.max_abs_rel_err == pytest.approx(1.0)
    assert summary.p90_abs_rel_err == pytest.approx(np.percentile([0.1, 0.2, 0.0, 1.0], 90))


def test_batch_partners_prefer_the_next_larger_batch():
    groups = [("a",), ("a",), ("a",), ("b",), ("c",), ("c",)]
    batches = [1, 4, 2, 8, 3, 6]
    assert batch_partners(groups, batches) == [2, 2, 1, None, 5, 4]


def test_regime_checks_read_flat_and_scaling_times():
    groups = [("g",)] * 3
    batches = [1, 2, 4]
    measured = np.array([1.0, 1.05, 2.2])  # flat, then doubling
    parts = {
        "time": np.array([1.0, 1.0, 2.0]),
        "compute": np.array([0.1, 0.2, 2.0]),
        "memory": np.array([1.0, 1.0, 1.0]),
        "overhead": np.zeros(3),
    }
    checks = regime_checks(groups, batches, measured, parts)
    assert [c.measured_regime for c in checks] == [
        "flat in batch",
        "scales with batch",
        "scales with batch",
    ]
    assert [c.agree for c in checks] == [True, True, True]
    assert checks[0].bound == "memory-bound"
    assert checks[2].bound == "compute-bound"


@pytest.mark.slow
def test_validate_splits_train_from_heldout():
    rows = _grid() + _grid(d=512, ffn=1408) + _grid(split="heldout", d=384, ffn=1024)
    cases = make_cases(rows)
    truth = TRUE._replace(cache=None)
    measured = predict(cases, PEAKS, truth)
    start = Calibration(0.5, 0.5, 1e-6, 3.0, weight_relayout=1.0, attention_efficiency=0.8)
    result = calibrate.validate(rows, measured, PEAKS, start)
    assert result.model == calibrate.FULL_MODEL._replace(cache=False)
    assert result.train.sum() == 22 and (~result.train).sum() == 11
    heldout = ~result.train
    assert error_summary(result.predicted[heldout], measured[heldout]).p90_abs_rel_err < 0.05
    assert all(not result.train[c.index] and not result.train[c.partner] for c in result.regime)


def test_a_fitted_calibration_loads_as_a_calibrated_spec():
    """Calibration -> the spec's units (as the YAML is written) -> Calibration is the identity."""
    fields = Efficiency.from_calibration(TRUE, "test fit").model_dump(exclude_none=True)
    eff = Efficiency.model_validate(fields)
    assert eff.time_model() == calibrate.FULL_MODEL
    back = eff.calibration()
    for got, want in zip(back, TRUE, strict=True):
        if isinstance(want, Cache):
            np.testing.assert_allclose([float(x) for x in got], want, rtol=ROUND_TRIP_RTOL)
        else:
            assert float(got) == pytest.approx(want, rel=ROUND_TRIP_RTOL)
    hardware = hardware_catalogue()["h100-sxm"].model_copy(update={"efficiency": eff})
    values = hardware.values()
    assert float(values[overlap]) == pytest.approx(TRUE.overlap)
    assert float(values[cache_capacity]) == pytest.approx(TRUE.cache.capacity)
    assert hardware.time_model(calibrated=False) == ROOFLINE
    assert overlap not in hardware.values(calibrated=False)


def test_every_catalogued_efficiency_round_trips_exactly():
    """Efficiency -> Calibration -> Efficiency gives back the spec, for every catalogued device."""
    for hardware in hardware_catalogue().values():
        eff = hardware.efficiency
        assert Efficiency.from_calibration(eff.calibration(), eff.calibrated) == eff
        assert hardware.time_model() == eff.calibration().time_model


def test_pure_roofline_is_one_record():
    """The pure roofline of the fit, the spec and the derivations is one object."""
    assert Efficiency.from_calibration(PURE_ROOFLINE) == Efficiency()
    assert Efficiency().calibration() == PURE_ROOFLINE
    assert PURE_ROOFLINE.time_model == ROOFLINE == TimeModel()
    assert PURE_ROOFLINE.symbol_values() == {
        sy.eta_compute: 1,
        sy.eta_memory: 1,
        sy.kernel_overhead: 0,
    }
    assert calibrate.PURE_ROOFLINE is PURE_ROOFLINE


def test_starting_calibration_turns_the_cache_off_when_none_was_measured():
    profile = {"cache_bytes": None, "cache_bandwidth_bytes_s": 1e11, "kernel_s": None}
    start = calibrate.starting_calibration(profile)
    assert start.cache is None and start.kernel_overhead_s == calibrate.MIN_START_OVERHEAD_S
    found = calibrate.starting_calibration(profile | {"cache_bytes": 2**25, "kernel_s": 3e-6})
    assert found.cache == Cache(float(2**25), 1e11) and found.kernel_overhead_s == 3e-6


def test_relayout_traffic_only_for_multi_row_weight_matmuls():
    ops = {op.name: op for op in decoder_layer("gqa", "decode", flash=False)}
    q = ops["q_proj"]
    extra = relayout_bytes(q)
    single = {sy.B: 1, sy.S: 1, relayout: sp.Rational(1, 2)}
    assert at(extra, single | {sy.D: 64, sy.H: 4, sy.d_h: 16, sy.tp: 1, sy.b_w: 2}) == 0
    four = single | {sy.B: 4}
    assert sp.simplify(at(extra, four) - at(q.cost.weight_bytes, four) / 2) == 0
    assert relayout_bytes(ops["attention.scores"]) == 0
    assert relayout_bytes(ops["mlp_norm"]) == 0


def test_attention_term_scales_only_attention_kernels():
    model = TimeModel(attention=True)
    for op in decoder_layer("gqa", "prefill", flash=False):
        if op.unit == "collective":
            continue
        ratio = sp.simplify(compute_time(op, model) / compute_time(op)) if op.cost.flops else 1
        expected = 1 / attention_efficiency if op.unit == "attention" else 1
        assert ratio == expected
