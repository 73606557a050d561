"""The chosen point's decode step as the roofline figure draws it: under the hardware spec's
time model, so on a calibrated spec its time is the optimiser's TPOT, and the ridge batch is
where summed compute and memory time cross."""

from __future__ import annotations

import pytest
import sympy as sp

from costmodel.config.load import hardware_catalogue, load_scenario
from costmodel.model import symbols as sy
from costmodel.search import operating
from costmodel.search import optimise as opt
from tests.helpers import ROOT

SAME_RTOL = 1e-9  # float64 JAX against exact SymPy evaluation
RIDGE_RTOL = 1e-9  # compute and memory time at the ridge batch agree this closely


def _calibrated_cpu_scenario():
    base = load_scenario(ROOT / "configs" / "h100_8b.yaml")
    cpu = hardware_catalogue()["cpu-epyc-2core"]
    assert cpu.efficiency.calibrated
    return base.model_copy(
        update={
            "hardware": cpu,
            "n_gpus": 1,
            "search": base.search.model_copy(
                update={"tp": [1], "weight_dtypes": ["bf16"], "kv_dtypes": ["bf16"], "batch_max": 4}
            ),
            "slo": base.slo.model_copy(update={"tpot_ms": 1e6, "ttft_ms": 1e8}),
            "workload": base.workload.model_copy(update={"prompt_tokens": 64, "output_tokens": 64}),
        }
    )


def test_decode_step_time_is_the_optimisers_tpot_on_a_calibrated_spec():
    scenario = _calibrated_cpu_scenario()
    best = opt.optimise(scenario).best
    assert best is not None
    step = operating.decode_step(scenario, best)
    assert step.time_s == pytest.approx(best.tpot_s, rel=SAME_RTOL)
    assert step.flops > 0 and step.bytes > 0


@pytest.mark.parametrize("config", ["h100_70b.yaml", "cpu"])
def test_ridge_batch_is_where_compute_and_memory_time_cross(config):
    scenario = (
        _calibrated_cpu_scenario() if config == "cpu" else load_scenario(ROOT / "configs" / config)
    )
    best = opt.optimise(scenario).best
    compute, memory = operating.decode_times(scenario, best)
    point = operating.operating_point(scenario, best)
    at = {sy.B: sp.Integer(best.batch)}
    assert point.compute_s == float(compute.xreplace(at))
    assert point.memory_s == float(memory.xreplace(at))
    if point.ridge_batch is not None:
        ridge = {sy.B: sp.Float(point.ridge_batch, 30)}
        c, m = float(compute.xreplace(ridge)), float(memory.xreplace(ridge))
        assert c == pytest.approx(m, rel=RIDGE_RTOL)
