"""Binding a scenario to symbol values: the one place where configuration meets the model.

A :class:`Setting` is one point of the design space (tensor-parallel degree, weight and KV-cache
formats).  :func:`bind` turns a scenario and a setting into a :class:`Binding`: the values of
every non-workload symbol (model shape, precision, tp, hardware) together with the time model
those values belong to, so a step time can only be built with the calibration that matches its
values (:meth:`Binding.step_time`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import sympy as sp

from costmodel.config.specs import Scenario
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.dtypes import bytes_per_element
from costmodel.model.layers import model_ops
from costmodel.model.memory import MemoryCost, memory_per_gpu
from costmodel.model.ops import Op
from costmodel.model.phase import Phase
from costmodel.model.roofline import TimeModel, step_time


@dataclass(frozen=True)
class Setting:
    """One point of the design space: tensor-parallel degree and dtypes."""

    tp: int = 1
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"


class Binding(NamedTuple):
    """A scenario at a setting: symbol values and the time model they were calibrated for."""

    scenario: Scenario
    setting: Setting
    values: dict  # symbol -> exact value, for every symbol but B, S and T
    time_model: TimeModel  # calibration terms switched on (none: the pure roofline)

    def ops(self, phase: Phase) -> list[Op]:
        """The scenario's kernels for ``phase``, symbolic (values not substituted)."""
        return scenario_ops(self.scenario, phase)

    def step_time(self, phase: Phase) -> sp.Expr:
        """Time of one step of ``phase`` under this binding's time model, values substituted:
        a function of B and S (prefill) or B and T (decode) [s]."""
        expr = step_time(self.ops(phase), self.time_model).xreplace(self.values)
        return phases.apply(expr, phase)

    def memory(self, context: sp.Expr = sy.T) -> MemoryCost:
        """Memory per GPU by part, values substituted: weights, KV cache for B sequences of
        ``context`` tokens, and the prefill workspace of B sequences of S tokens [bytes]."""
        model = self.scenario.model
        parts = memory_per_gpu(model.attention_kind, model.tie_word_embeddings, context)
        return MemoryCost(*(part.xreplace(self.values) for part in parts))


def substitution(scenario: Scenario, setting: Setting, *, calibrated: bool) -> dict:
    """Values for every non-workload symbol: model shape, precision, tp and hardware.

    ``calibrated`` must be said: with it, the hardware spec's calibrated efficiencies and terms
    (which need ``scenario.hardware.time_model()`` in the expression); without, the pure
    roofline's.  Prefer :func:`bind`, which carries the matching time model.
    """
    group = scenario.search.group_size
    values = dict(scenario.model.dims())
    values |= {
        sy.b_w: bytes_per_element(setting.weight_dtype, group),
        sy.b_a: bytes_per_element(scenario.activation_dtype),
        sy.b_kv: bytes_per_element(setting.kv_dtype, group),
        sy.tp: sp.Integer(setting.tp),
    }
    values |= scenario.hardware.values(setting.weight_dtype, calibrated=calibrated)
    return values


def bind(scenario: Scenario, setting: Setting = Setting(), *, calibrated: bool = True) -> Binding:
    """The scenario at ``setting``: values and time model, calibrated as the hardware spec says
    (or the pure roofline with ``calibrated=False``)."""
    return Binding(
        scenario,
        setting,
        substitution(scenario, setting, calibrated=calibrated),
        scenario.hardware.time_model(calibrated=calibrated),
    )


def scenario_ops(scenario: Scenario, phase: Phase) -> list[Op]:
    """The scenario model's kernels for ``phase``, symbolic in B, S, T, precision and tp."""
    return model_ops(
        scenario.model.attention_kind,
        phase,
        flash=scenario.attention_impl == "flash",
        absorb=scenario.mla_absorb,
        tied_embeddings=scenario.model.tie_word_embeddings,
    )
