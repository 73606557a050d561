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

from costmodel.config.specs import EngineCalibration, Scenario
from costmodel.model import engine as engines
from costmodel.model import kernels
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
    engine: str | None = None  # the engine whose measured kernels time the steps (None: roofline)

    def ops(self, phase: Phase) -> list[Op]:
        """The scenario's kernels for ``phase``, symbolic (values not substituted)."""
        return scenario_ops(self.scenario, phase)

    def step_time(self, phase: Phase) -> sp.Expr:
        """Time of one step of ``phase`` under this binding's time model (or its engine's
        measured kernels), values substituted: a function of B and S (prefill) or B and T
        (decode) [s]."""
        return phases.apply(self.symbolic_step_time(phase).xreplace(self.values), phase)

    def symbolic_step_time(self, phase: Phase) -> sp.Expr:
        """The step time of ``phase`` before any value is substituted: the engine's kernels
        (:mod:`costmodel.model.engine`) when the binding has an engine, else the per-kernel
        roofline of the model's kernels under ``time_model`` [s]."""
        if self.engine is not None:
            return engines.step_time(engines.PROFILES[self.engine], phase)
        return step_time(self.ops(phase), self.time_model)

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
    if calibrated and scenario.kernels is not None:
        values |= engine_values(scenario.kernels, setting)
    return values


class UncalibratedError(ValueError):
    """A setting whose dtype the engine calibration has no fit for."""


def engine_values(calibration: EngineCalibration, setting: Setting) -> dict:
    """Values of the engine model's coefficients at ``setting``: the GEMM family's at the
    weight dtype and at bf16 (the LM head), both attention families' at the KV-cache dtype, the
    all-reduce's (bf16), the GEMM input bytes, and ``t_elem`` (the bf16 GEMM's launch time)."""
    gemm = kernels.WEIGHT_GEMM_DTYPE.get(setting.weight_dtype)
    attention = kernels.KV_ATTENTION_DTYPE.get(setting.kv_dtype)
    wanted = [("gemm", gemm, setting.weight_dtype), ("allreduce", "bfloat16", "bf16")]
    wanted += [(f, attention, setting.kv_dtype) for f in kernels.FAMILIES if "attention" in f]
    values: dict = {}
    for family, dtype, asked in wanted:
        fitted = calibration.fitted_dtypes(family)
        if dtype not in fitted:
            raise UncalibratedError(
                f"{calibration.engine} on {calibration.hardware} has no {family} fit for "
                f"{asked} (fitted: {', '.join(fitted) or 'none'})"
            )
        terms = calibration.terms(family, dtype)
        values |= {p.symbol: sp.Float(terms[p.symbol.name]) for p in kernels.family(family).params}
    values[kernels.b_x] = kernels.GEMM_FORMATS[gemm].input_bytes
    bf16 = calibration.terms("gemm", "bfloat16")
    values[engines.t_elem] = sp.Float(bf16["t_gemm_launch"])
    for p in kernels.family("gemm").params:  # the LM head's bf16 GEMM
        values[engines.bf16_symbol(p.symbol)] = sp.Float(bf16[p.symbol.name])
    return values


def bind(scenario: Scenario, setting: Setting = Setting(), *, calibrated: bool = True) -> Binding:
    """The scenario at ``setting``: values and time model, calibrated as the hardware spec says
    (or the pure roofline with ``calibrated=False``)."""
    return Binding(
        scenario,
        setting,
        substitution(scenario, setting, calibrated=calibrated),
        scenario.hardware.time_model(calibrated=calibrated),
        scenario.engine if calibrated and scenario.kernels is not None else None,
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
