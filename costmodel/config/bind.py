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

from costmodel.config.specs import EngineCalibration, ModelSpec, Scenario, exact
from costmodel.model import engine as engines
from costmodel.model import kernels, serving
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.dtypes import bytes_per_element
from costmodel.model.layers import model_ops
from costmodel.model.memory import MemoryCost, memory_per_gpu
from costmodel.model.ops import Op
from costmodel.model.phase import Phase
from costmodel.model.roofline import TimeModel, step_time
from costmodel.model.roofline import step_parts as roofline_step_parts
from costmodel.model.serving import StepParts


@dataclass(frozen=True)
class Setting:
    """One point of the design space: tensor-parallel degree, dtypes and, for
    Mixture-of-Experts models, the expert-parallel degree ``ep`` (dividing ``tp``), whether
    attention runs data-parallel (each GPU its own sequences; then ``ep == tp``) and the routed
    experts' weight format (None: ``weight_dtype``)."""

    tp: int = 1
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    ep: int = 1
    attention_dp: bool = False
    expert_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.tp % self.ep:
            raise ValueError(f"ep {self.ep} does not divide tp {self.tp}")
        if self.attention_dp and self.ep != self.tp:
            raise ValueError("data-parallel attention needs ep == tp")

    @property
    def experts(self) -> str:
        """The routed experts' weight format."""
        return self.expert_dtype or self.weight_dtype


@dataclass(frozen=True)
class ServingPoint:
    """How one engine replica is driven and scheduled: the request lengths, the closed loop's
    ``concurrency`` or the open loop's ``request_rate`` [requests/s] (exactly one), the step's
    token budget and KV page size (None: the engine's defaults), the prefix-cache hit rate, and
    speculative decoding (draft tokens per step, the acceptance probability of each, and one
    draft token's cost as a share of a target decode step)."""

    isl: int
    osl: int
    concurrency: int | None = None
    request_rate: float | None = None
    token_budget: int | None = None
    block_tokens: int | None = None
    prefix_hit: float = 0.0
    draft_tokens: int = 0
    acceptance: float = 0.0
    draft_cost: float = 0.0
    prefill_replicas: int = 0  # disaggregated: replicas that only prefill (0: aggregated)
    decode_replicas: int = 0  # disaggregated: replicas that only decode

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give exactly one of concurrency and request_rate")
        if (self.prefill_replicas > 0) != (self.decode_replicas > 0):
            raise ValueError("a disaggregated deployment needs prefill and decode replicas")
        if not 0 <= self.prefix_hit < 1 or not 0 <= self.acceptance < 1:
            raise ValueError("prefix_hit and acceptance must lie in [0, 1)")

    @property
    def closed(self) -> bool:
        """A closed loop (fixed concurrency) rather than an open one (a request rate)."""
        return self.concurrency is not None

    @property
    def disaggregated(self) -> bool:
        """Prefill and decode on separate replicas."""
        return self.prefill_replicas > 0

    @property
    def replicas(self) -> int:
        """Engine replicas the point's load is spread over (1 when aggregated)."""
        return self.prefill_replicas + self.decode_replicas if self.disaggregated else 1


class Binding(NamedTuple):
    """A scenario at a setting: symbol values and the time model they were calibrated for."""

    scenario: Scenario
    setting: Setting
    values: dict  # symbol -> exact value, for every symbol but B, S and T
    time_model: TimeModel  # calibration terms switched on (none: the pure roofline)
    engine: str | None = None  # the engine whose measured kernels time the steps (None: roofline)

    def ops(self, phase: Phase) -> list[Op]:
        """The scenario's kernels for ``phase`` at this binding's parallel layout, symbolic
        (values not substituted)."""
        return scenario_ops(self.scenario, phase, attention_dp=self.setting.attention_dp)

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
            return engines.step_time(
                engines.PROFILES[self.engine],
                phase,
                self.scenario.model.architecture,
                attention_dp=self.setting.attention_dp,
            )
        return step_time(self.ops(phase), self.time_model)

    def symbolic_step_parts(self) -> StepParts:
        """The step time split by what its kernels scale with (tokens, decode attention,
        prefill attention, LM head), before any value is substituted: the engine's kernels or
        the model's under ``time_model`` [s]."""
        if self.engine is not None:
            return engines.step_parts(
                engines.PROFILES[self.engine],
                self.scenario.model.architecture,
                attention_dp=self.setting.attention_dp,
            )
        decode, prefill = self.ops("decode"), self.ops("prefill")
        return roofline_step_parts(decode, prefill, self.time_model)

    def symbolic_mixed_step_time(self) -> sp.Expr:
        """One continuous-batching step (:func:`costmodel.model.serving.mixed_step_time`) before
        any value is substituted: n_d decoding sequences of q tokens at context T and P prompt
        tokens of prompts S long [s]."""
        return serving.mixed_step_time(
            self.symbolic_step_parts(), per_query_attention=self.engine is not None
        )

    def profile(self) -> engines.EngineProfile:
        """The engine whose scheduling defaults apply (vLLM's without an engine)."""
        return engines.PROFILES.get(self.engine or "", engines.DEFAULT_PROFILE)

    def step_overhead(self) -> float:
        """The engine's fixed cost per step (scheduling, sampling, launch gaps) [s]: fitted to
        measured serving runs (the catalogue's ``serving/step_overhead.json``); 0 without an
        engine."""
        return self.scenario.step_overhead_s if self.engine is not None else 0.0

    def serving_values(self, point: ServingPoint) -> dict:
        """Values of the serving model's workload symbols at ``point`` (engine defaults filled
        in): prompt and output tokens, token budget, prefix hit, drafts, step overhead."""
        profile = self.profile()
        return {
            sy.N_prompt: point.isl,
            sy.N_out: point.osl,
            sy.N_budget: point.token_budget or profile.token_budget,
            sy.h_prefix: point.prefix_hit,
            sy.k_draft: point.draft_tokens,
            sy.a_accept: point.acceptance,
            sy.f_draft: point.draft_cost,
            sy.t_sched: self.step_overhead(),
            sy.x_pre: max(point.prefill_replicas, 1),
            sy.y_dec: max(point.decode_replicas, 1),
            sy.t_xfer: self.kv_transfer_time(point.isl) if point.disaggregated else 0.0,
        }

    def kv_transfer_time(self, tokens: int) -> float:
        """Time to move ``tokens`` tokens' KV cache from a prefill replica to a decode replica,
        each GPU sending its shard over its own link (the hardware's link bandwidth) [s]."""
        scenario = self.scenario
        key = (scenario.model, scenario.hardware, scenario.search.group_size, self.setting, tokens)
        if key not in _KV_SECONDS:
            parts = self.memory_parts(sp.Integer(tokens))
            moved = parts.kv_cache.xreplace({sy.B: 1}).xreplace(self.values)
            _KV_SECONDS[key] = float(moved / scenario.hardware.link_bandwidth)
        return _KV_SECONDS[key]

    def memory_parts(self, context: sp.Expr = sy.T) -> MemoryCost:
        """Memory per GPU by part before values are substituted (see :meth:`memory`)."""
        model, setting = self.scenario.model, self.setting
        return memory_per_gpu(
            model.architecture,
            model.tie_word_embeddings,
            context,
            attention_dp=setting.attention_dp,
        )

    def kv_capacity_tokens(self, token_budget: int, request_tokens: int = 1) -> sp.Expr:
        """KV-cache tokens the replica holds (each GPU keeps its share of every token): usable
        memory less weights, a full step's workspace and the CUDA-graph reserve [tokens].  A
        token's bytes are the mean over a request of ``request_tokens`` tokens (sliding-window
        layers cache at most W of them)."""
        parts = self.memory_parts(sp.Integer(request_tokens))
        step = {sy.B: 1, sy.S: token_budget}
        usable = self.scenario.hardware.usable_memory
        per_token = parts.kv_cache.xreplace({sy.B: 1}).xreplace(self.values) / request_tokens
        weights = parts.weights.xreplace(self.values)
        workspace = parts.workspace.xreplace(step).xreplace(self.values)
        return sp.floor(serving.kv_capacity_tokens(weights, workspace, per_token, usable))

    def memory(self, context: sp.Expr = sy.T) -> MemoryCost:
        """Memory per GPU by part, values substituted: weights, KV cache for B sequences of
        ``context`` tokens, and the prefill workspace of B sequences of S tokens [bytes]."""
        return MemoryCost(*(part.xreplace(self.values) for part in self.memory_parts(context)))


# A request's KV cache on one GPU over its link [s], by (model, hardware, int4 group, setting,
# tokens).
_KV_SECONDS: dict[tuple, float] = {}


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
        sy.b_we: bytes_per_element(setting.experts, group),
        sy.tp: sp.Integer(setting.tp),
        sy.ep: sp.Integer(setting.ep),
        sy.rho_e: exact(scenario.moe_imbalance),
    }
    # Collectives run over the replica's tp GPUs: the fast link tier within its domain, the
    # scale-out network beyond it.
    values |= scenario.hardware.values(
        setting.weight_dtype, calibrated=calibrated, degree=setting.tp
    )
    values[sy.peak_expert] = scenario.hardware.matmul_peak(setting.experts)
    if calibrated and scenario.kernels is not None:
        values |= engine_values(scenario.kernels, setting, scenario.model)
    return values


class UncalibratedError(ValueError):
    """A setting whose dtype the engine calibration has no fit for."""


class EngineFit(NamedTuple):
    """One fit of an engine calibration a setting uses: the family, the fit's dtype key (as
    the calibration names it, e.g. ``bfloat16``) and what the setting asked for, in words."""

    family: str
    dtype: str
    asked: str


def engine_fits(
    calibration: EngineCalibration, setting: Setting, model: ModelSpec | None = None
) -> list[EngineFit]:
    """The fits whose coefficients :func:`engine_values` binds at ``setting``, the LM head's
    bf16 GEMM aside: the GEMM family's at the weight dtype, the all-reduce's (bf16), both
    attention families' at the KV-cache dtype, ``moe`` at the experts' format (a ``model``
    with experts) and the MLA families (a ``model`` with MLA).  Not checked against what the
    calibration fitted (:func:`engine_values` does)."""
    gemm = kernels.WEIGHT_GEMM_DTYPE.get(setting.weight_dtype)
    attention = kernels.KV_ATTENTION_DTYPE.get(setting.kv_dtype)
    wanted = [
        EngineFit("gemm", gemm, setting.weight_dtype),
        EngineFit("allreduce", "bfloat16", "bf16"),
    ]
    wanted += [
        EngineFit(f, attention, setting.kv_dtype) for f in kernels.FAMILIES if "attention" in f
    ]
    if model is not None and model.moe is not None:
        experts = setting.experts
        wanted.append(EngineFit("moe", kernels.MOE_WEIGHT_DTYPE.get(experts), f"{experts} experts"))
    if model is not None and model.mla is not None:
        if engines.PROFILES[calibration.engine].mla_block:
            block = f"{kernels.MLA_WEIGHT_DTYPE.get(setting.weight_dtype)}/{attention}"
            asked = f"{setting.weight_dtype} weights with a {setting.kv_dtype} KV cache"
            names = ("mla_context_module", "mla_generation_module")
        else:  # the attention core alone, at the KV-cache dtype
            block, asked, names = attention, setting.kv_dtype, ("mla_context", "mla_generation")
        wanted += [EngineFit(f, block, asked) for f in names]
    return wanted


def engine_values(
    calibration: EngineCalibration, setting: Setting, model: ModelSpec | None = None
) -> dict:
    """Values of the engine model's coefficients at ``setting``: the GEMM family's at the
    weight dtype and at bf16 (the LM head), both attention families' at the KV-cache dtype, the
    all-reduce's (bf16), the GEMM input bytes, and ``t_elem`` (the bf16 GEMM's launch time);
    for a ``model`` with experts the ``moe`` family's at the experts' format, and with MLA both
    MLA block families' at (weight, KV-cache) dtypes (:func:`engine_fits`).  Every measured
    family's latency factor (:func:`costmodel.model.engine.latency_factor`) is exactly 1."""
    values: dict = {}
    for family, dtype, asked in engine_fits(calibration, setting, model):
        fitted = calibration.fitted_dtypes(family)
        if dtype not in fitted:
            raise UncalibratedError(
                f"{calibration.engine} on {calibration.hardware} has no {family} fit for "
                f"{asked} (fitted: {', '.join(fitted) or 'none'})"
            )
        terms = calibration.terms(family, dtype)
        values |= {p.symbol: sp.Float(terms[p.symbol.name]) for p in kernels.family(family).params}
    gemm = kernels.WEIGHT_GEMM_DTYPE.get(setting.weight_dtype)
    values[kernels.b_x] = kernels.GEMM_FORMATS[gemm].input_bytes
    bf16 = calibration.terms("gemm", "bfloat16")
    values[engines.t_elem] = sp.Float(bf16["t_gemm_launch"])
    for p in kernels.family("gemm").params:  # the LM head's bf16 GEMM
        values[engines.bf16_symbol(p.symbol)] = sp.Float(bf16[p.symbol.name])
    values |= {engines.latency_factor(f): sp.Integer(1) for f in engines.MEASURED_FAMILIES}
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


def scenario_ops(scenario: Scenario, phase: Phase, *, attention_dp: bool = False) -> list[Op]:
    """The scenario model's kernels for ``phase``, symbolic in B, S, T, precision, tp and ep;
    ``attention_dp``: attention data-parallel over the replica's GPUs."""
    return model_ops(
        scenario.model.architecture,
        phase,
        flash=scenario.attention_impl == "flash",
        absorb=scenario.mla_absorb,
        attention_dp=attention_dp,
    )
