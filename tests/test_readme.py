"""The README's Python API example runs as written and binds a calibration whole."""

from __future__ import annotations

import re

import numpy as np
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.bind import Setting, bind
from costmodel.config.load import load_hardware, load_scenario
from costmodel.model import symbols as sy
from tests.helpers import ROOT

EXACT = 1e-12  # float64 JAX against exact SymPy at a point [relative]


def _api_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs_and_gives_the_bound_step_time(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(_api_example(), "README.md", "exec"), namespace)
    times = np.asarray(namespace["decode"](np.arange(1.0, 257.0), 4096.0)["time"])
    assert np.all(np.diff(times) > 0)  # a bigger batch never takes less time
    exact = namespace["time"].xreplace({sy.B: sp.Integer(64), sy.T: sp.Integer(4096)})
    assert np.isclose(times[63], float(exact), rtol=EXACT, atol=0)


def test_a_binding_carries_the_calibration_it_was_made_with():
    """On the calibrated CPU spec every calibration symbol is bound (none left free) and the
    terms change the time; without the calibration it is the pure roofline."""
    scenario = load_scenario(ROOT / "configs" / "h100_8b.yaml")
    scenario = scenario.model_copy(
        update={"hardware": load_hardware(catalogue.path("hardware", "cpu-epyc-2core"))}
    )
    calibrated = bind(scenario, Setting(), calibrated=True)
    pure = bind(scenario, Setting(), calibrated=False)
    assert any(calibrated.time_model) and not any(pure.time_model)
    point = {sy.B: sp.Integer(4), sy.T: sp.Integer(1024)}
    times = {}
    for name, binding in (("calibrated", calibrated), ("pure", pure)):
        expr = binding.step_time("decode")
        assert expr.free_symbols <= {sy.B, sy.T}, name
        times[name] = float(expr.xreplace(point))
    assert times["calibrated"] > times["pure"] > 0
