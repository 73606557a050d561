"""The optimiser: its answer is the brute-force optimum (many generated scenarios), it meets the
constraints, its numbers agree with the exact SymPy expressions, and every combination's
certified batch is the best integer batch of that combination."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel.config.bind import Setting, scenario_ops, substitution
from costmodel.config.load import hardware_catalogue, load_scenario, model_catalogue
from costmodel.model import piecewise
from costmodel.model import symbols as sy
from costmodel.model.memory import memory_per_gpu
from costmodel.model.roofline import step_time
from costmodel.search import optimise as opt
from costmodel.search import problem, records, relaxation, verifier

H100_70B = "configs/h100_70b.yaml"
MODELS = model_catalogue()
HARDWARE = hardware_catalogue()
DTYPES = ["bf16", "fp16", "fp8", "int8", "int4"]


def _same(a: problem.Point | None, b: problem.Point | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (a.combo, a.batch) == (b.combo, b.batch) and math.isclose(
        a.objective, b.objective, rel_tol=1e-9
    )


def _exact(scenario, point: problem.Point) -> dict[str, float]:
    """TPOT, TTFT and memory of a point from the SymPy expressions, evaluated exactly."""
    values = substitution(
        scenario,
        Setting(point.combo.tp, point.combo.weight_dtype, point.combo.kv_dtype),
        calibrated=True,
    )
    prompt, out = scenario.workload.prompt_tokens, scenario.workload.output_tokens
    b = sp.Integer(point.batch)
    decode = step_time(scenario_ops(scenario, "decode")).xreplace(
        values | {sy.B: b, sy.S: sp.Integer(1), sy.T: sp.Integer(prompt + out)}
    )
    prefill = step_time(scenario_ops(scenario, "prefill")).xreplace(
        values | {sy.B: b, sy.S: sp.Integer(prompt), sy.T: sp.Integer(prompt)}
    )
    memory = memory_per_gpu(
        scenario.model.attention_kind, scenario.model.tie_word_embeddings, sp.Integer(prompt + out)
    ).total.xreplace(values | {sy.B: b, sy.S: sp.Integer(prompt)})
    return {"tpot_s": float(decode), "ttft_s": float(prefill), "memory": float(memory)}


def test_h100_70b_answer_is_the_brute_force_optimum_and_meets_the_constraints():
    scenario = load_scenario(H100_70B)
    optimum = opt.optimise(scenario)
    brute = verifier.brute_force(scenario)
    assert optimum.best is not None
    assert _same(optimum.best, brute.best)
    assert brute.evaluated == 4 * 4 * 2 * 1024
    best = optimum.best
    assert best.tpot_s <= scenario.slo.tpot_ms / 1e3
    assert best.ttft_s <= scenario.slo.ttft_ms / 1e3
    assert best.memory <= float(scenario.hardware.usable_memory)
    exact = _exact(scenario, best)
    for key, value in exact.items():
        assert getattr(best, key) == pytest.approx(value, rel=1e-12)
    assert best.throughput_per_gpu == pytest.approx(
        best.batch / (best.combo.tp * exact["tpot_s"]), rel=1e-12
    )
    # One batch more breaks a constraint (or the objective gets worse): it really is the edge.
    (after,) = problem.evaluate_points(scenario, [(best.combo, best.batch + 1)])
    assert after.violated or after.objective < best.objective


@pytest.mark.slow
def test_every_combination_gets_its_best_integer_batch():
    """Exhaustively, per combination: the certified batch is the best of every integer batch."""
    scenario = load_scenario("configs/h100_8b.yaml")
    scenario = scenario.model_copy(
        update={"search": scenario.search.model_copy(update={"batch_max": 400})}
    )
    optimum = opt.optimise(scenario)
    batches = np.arange(1, 401)
    for result in optimum.combos:
        points = problem.evaluate_points(scenario, [(result.combo, int(b)) for b in batches])
        feasible = [p for p in points if p.feasible]
        if not feasible:
            assert result.best is None
            continue
        top = max(p.objective for p in feasible)
        assert result.best is not None
        assert result.best.objective == pytest.approx(top, rel=1e-12)


def test_the_certificate_repairs_a_wrong_relaxation(monkeypatch):
    """With the relaxation sabotaged (always batch 1), the certificate still finds the optimum."""
    scenario = load_scenario(H100_70B)
    honest = opt.optimise(scenario)

    def broken(model, combo, scenario_values, objective, batch_max):
        return relaxation.Relaxed(1.0, False, 0, 0)

    monkeypatch.setattr(opt, "relax", broken)
    repaired = opt.optimise(scenario)
    assert _same(repaired.best, honest.best)
    assert not any(r.relaxation_exact for r in repaired.combos if r.best and r.best.batch > 2)


def test_relaxation_lands_next_to_the_integer_optimum_on_h100_70b():
    optimum = opt.optimise(load_scenario(H100_70B))
    solved = [r for r in optimum.combos if r.relaxed is not None]
    assert solved
    assert all(r.relaxed.success for r in solved)
    assert all(r.relaxation_exact for r in solved)


def test_breakpoints_of_a_max_and_the_fallback_for_a_ceiling():
    b, a = sy.B, sp.Symbol("a", positive=True)
    roots = piecewise.breakpoints([sp.Max(2 * b, b + a) + 3 * b], b)
    assert roots == (a,)
    assert piecewise.breakpoints([sp.ceiling(b / 128) * a], b) is None
    assert piecewise.breakpoints([sp.Max(b, 4) * b], b) is None  # quadratic on a piece


def test_objectives_latency_prefers_small_batches_and_cost_is_consistent():
    base = load_scenario(H100_70B)
    latency = opt.optimise(base.model_copy(update={"objective": "latency"})).best
    assert latency is not None and latency.batch == 1
    cost = opt.optimise(base.model_copy(update={"objective": "cost_per_million_tokens"})).best
    assert cost is not None
    n_out = base.workload.output_tokens
    expected = (
        base.gpu_hour_usd
        * cost.combo.tp
        * (cost.ttft_s + n_out * cost.tpot_s)
        / (3600 * cost.batch * n_out)
        * 1e6
    )
    assert cost.objective == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_an_infeasible_scenario_is_explained():
    scenario = load_scenario("configs/infeasible_example.yaml")
    optimum = opt.optimise(scenario)
    brute = verifier.brute_force(scenario)
    assert optimum.best is None and brute.best is None
    report = records.optimisation_report(scenario, optimum, brute)
    assert report["best"] is None
    explanation = report["explanation"]
    assert "memory" in explanation["closest"]["violated"]
    fixes = {f["change"]: f for f in explanation["fixes"]}
    assert fixes["tp"]["tp"] > scenario.n_gpus
    # The proposed fix really fits at batch 1.
    fix = fixes["tp"]
    (point,) = problem.evaluate_points(
        scenario, [(problem.Combo(fix["tp"], fix["weight_dtype"], fix["kv_dtype"]), 1)]
    )
    assert point.feasible
    assert all(r["lost_because"] == "infeasible" for r in report["runners_up"])


def _scenario(data):
    base = load_scenario(H100_70B)
    model = MODELS[data.draw(st.sampled_from(["llama-3-8b", "llama-2-7b", "llama-3-70b"]))]
    hardware = HARDWARE[data.draw(st.sampled_from(["h100-sxm", "a100-sxm-80gb", "l40s"]))]
    n_gpus = data.draw(st.sampled_from([1, 2, 4, 8]))
    tps = [t for t in (1, 2, 4, 8) if t <= n_gpus and model.n_heads % t == 0]
    tp = data.draw(st.lists(st.sampled_from(tps), min_size=1, max_size=3, unique=True))
    weights = data.draw(st.lists(st.sampled_from(DTYPES), min_size=1, max_size=3, unique=True))
    kvs = data.draw(st.lists(st.sampled_from(DTYPES), min_size=1, max_size=2, unique=True))
    search = base.search.model_copy(
        update={
            "tp": tp,
            "weight_dtypes": weights,
            "kv_dtypes": kvs,
            "batch_max": data.draw(st.sampled_from([1, 5, 64, 300, 1024])),
            "group_size": data.draw(st.sampled_from([32, 128])),
        }
    )
    workload = base.workload.model_copy(
        update={
            "prompt_tokens": data.draw(st.integers(1, 16384)),
            "output_tokens": data.draw(st.integers(1, 4096)),
        }
    )
    slo = base.slo.model_copy(
        update={
            "tpot_ms": data.draw(st.floats(0.5, 300.0)),
            "ttft_ms": data.draw(st.floats(5.0, 30000.0)),
        }
    )
    return base.model_copy(
        update={
            "model": model,
            "hardware": hardware,
            "n_gpus": n_gpus,
            "search": search,
            "workload": workload,
            "slo": slo,
            "objective": data.draw(st.sampled_from(list(problem.OBJECTIVES))),
            "gpu_hour_usd": data.draw(st.floats(0.1, 10.0)),
        }
    )


@pytest.mark.slow
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_optimiser_equals_brute_force_on_generated_scenarios(data):
    scenario = _scenario(data)
    optimum = opt.optimise(scenario)
    brute = verifier.brute_force(scenario)
    assert _same(optimum.best, brute.best), (optimum.best, brute.best)
    if optimum.best is not None:
        assert optimum.best.feasible
        assert brute.feasible > 0


@pytest.mark.slow
def test_mla_scenario_runs_and_agrees():
    base = load_scenario(H100_70B)
    scenario = base.model_copy(
        update={
            "model": MODELS["deepseek-v3-mla"],
            "hardware": HARDWARE["mi300x"],
            "search": base.search.model_copy(update={"batch_max": 256}),
            "slo": base.slo.model_copy(update={"tpot_ms": 200.0, "ttft_ms": 20000.0}),
        }
    )
    optimum = opt.optimise(scenario)
    brute = verifier.brute_force(scenario)
    assert _same(optimum.best, brute.best)


@pytest.mark.slow
def test_calibrated_smooth_roofline_falls_back_to_every_batch_and_agrees():
    """An overlap exponent makes step times smooth, not piecewise linear: no breakpoints, so the
    certificate evaluates every batch, and the answer still equals the brute force."""
    base = load_scenario(H100_70B)
    efficiency = base.hardware.efficiency.model_copy(update={"overlap": 3.0})
    scenario = base.model_copy(
        update={
            "hardware": base.hardware.model_copy(update={"efficiency": efficiency}),
            "search": base.search.model_copy(update={"batch_max": 200, "tp": [2, 4]}),
        }
    )
    assert problem.problem(scenario).breakpoints is None
    optimum = opt.optimise(scenario)
    assert all(r.candidates == 200 for r in optimum.combos)
    assert _same(optimum.best, verifier.brute_force(scenario).best)
