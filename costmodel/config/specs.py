"""Model, hardware and scenario specifications: frozen, validated records (plain data).

Every number has a documented bound, so a value either works or is refused with a reason.
:mod:`costmodel.config.load` reads them from YAML or a Hugging Face ``config.json``; every
problem is a :class:`ConfigError`, one line naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import sympy as sp
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE, Cache, Calibration, TimeModel
from costmodel.model.dtypes import DEFAULT_GROUP_SIZE, matmul_compute_dtype
from costmodel.model.layers import Architecture, MoEArchitecture

# Bounds on every number a config may hold, so that a value either works or is refused with a
# reason (never an overflow, a hang or a traceback later).  Each is far outside any real value.
MAX_DIMENSION = 2**24  # widths, heads, layers, vocabulary: 64x the largest published (256k vocab)
MAX_TOKENS = 2**24  # prompt, output, context: above the longest published window (10 M tokens)
MAX_GPUS = 2**16  # GPUs in one scenario: above the largest single training clusters
MAX_BATCH = 2**20  # the optimiser searches log(batch) over [0, log batch_max]; 1 M sequences
MIN_RATE, MAX_RATE = 1e-3, 1e7  # TFLOP/s, TB/s, GB/s, GB: 1 giga- to 10 exa-; float64-safe sums
MAX_DURATION = 1e9  # us or ms: latencies, overheads and SLOs (11 days in ms)
MAX_OVERLAP = 1e6  # exponent p of (c^p + m^p)^(1/p), computed as max·(1 + (min/max)^p)^(1/p)
#                  (finite for any p); at 1e6 it is max(c, m) within 2^(1/p) - 1 < 1e-6
MAX_RELAYOUT = 1e3  # extra weight traffic as a multiple of the weight bytes
MAX_PRICE = 1e6  # USD per GPU-hour
MAX_PARAMS = 1e15  # nominal parameters: 1000x the largest published model

Dimension = Annotated[StrictInt, Field(gt=0, le=MAX_DIMENSION)]
Tokens = Annotated[StrictInt, Field(gt=0, le=MAX_TOKENS)]
GpuCount = Annotated[StrictInt, Field(gt=0, le=MAX_GPUS)]
NON_EMPTY = Field(min_length=1)  # a search list with nothing to choose from answers nothing
Rate = Annotated[float, Field(ge=MIN_RATE, le=MAX_RATE, allow_inf_nan=False)]
Duration = Annotated[float, Field(ge=0, le=MAX_DURATION, allow_inf_nan=False)]
PositiveDuration = Annotated[float, Field(gt=0, le=MAX_DURATION, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
WeightDtype = Literal["bf16", "fp16", "fp8", "int8", "int4", "fp8_block", "nvfp4", "mxfp4"]
KvDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
ActivationDtype = Literal["fp32", "bf16", "fp16"]
ComputeDtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "fp4"]


class ConfigError(Exception):
    """A configuration problem, reported as one line: ``FILE: FIELD: what is wrong``."""

    def __init__(self, path: str | Path, field: str, message: str):
        self.path = str(path)
        self.field = field
        self.message = message
        super().__init__(f"{self.path}: {field}: {message}" if field else f"{self.path}: {message}")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLASpec(_Spec):
    """Multi-head latent attention dimensions (DeepSeek-V2/V3 ``config.json`` names)."""

    kv_lora_rank: Dimension
    q_lora_rank: Dimension
    qk_rope_head_dim: Dimension
    qk_nope_head_dim: Dimension
    v_head_dim: Dimension


class MoESpec(_Spec):
    """Mixture-of-Experts feed-forward layers (Hugging Face names in comments).

    ``n_experts`` routed experts (num_local_experts / num_experts / n_routed_experts), each a
    SwiGLU of ``expert_ffn_dim`` (moe_intermediate_size; Mixtral: intermediate_size); every
    token goes to ``top_k`` of them (num_experts_per_tok).  ``shared_ffn_dim``: the width of
    the always-active shared experts together (DeepSeek: n_shared_experts x
    moe_intermediate_size; 0: none).  ``dense_layers``: the first layers keep a dense SwiGLU of
    the model's ``ffn_dim`` (first_k_dense_replace).  ``scoring``: the router's softmax or
    sigmoid; ``router_bias`` and ``expert_bias``: biases on the router and the experts'
    projections (gpt-oss); ``normalise_top_k``: the k chosen weights are renormalised to sum 1.
    """

    n_experts: Dimension
    top_k: Dimension
    expert_ffn_dim: Dimension
    shared_ffn_dim: Annotated[StrictInt, Field(ge=0, le=MAX_DIMENSION)] = 0
    dense_layers: Annotated[StrictInt, Field(ge=0, le=MAX_DIMENSION)] = 0
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    router_bias: StrictBool = False
    expert_bias: StrictBool = False
    normalise_top_k: StrictBool = True


class SlidingWindow(_Spec):
    """Sliding-window attention: ``layers`` of the model's layers attend (and cache) at most
    the last ``tokens`` positions; the others attend the whole context."""

    tokens: Tokens
    layers: Dimension


class ModelSpec(_Spec):
    """A decoder-only transformer: Llama-style blocks with GQA or MLA attention and a SwiGLU
    (or gated-GELU) MLP, optionally Mixture-of-Experts, sliding-window layers, projection
    biases, per-head q/k norms, attention sinks and Gemma's extra norms."""

    name: str
    n_layers: Dimension
    d_model: Dimension
    n_heads: Dimension
    n_kv_heads: Dimension
    head_dim: Dimension
    ffn_dim: Dimension
    vocab_size: Dimension
    tie_word_embeddings: StrictBool = False
    nominal_params: Annotated[float, Field(ge=1, le=MAX_PARAMS, allow_inf_nan=False)] | None = None
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    sliding_window: SlidingWindow | None = None
    qkv_bias: StrictBool = False  # biases on the query, key and value projections (Qwen2)
    o_bias: StrictBool = False  # a bias on the attention output projection (gpt-oss)
    qk_norm: StrictBool = False  # per-head RMSNorm of queries and keys (Qwen3, Gemma 3)
    attention_sinks: StrictBool = False  # a learned sink logit per head (gpt-oss)
    sandwich_norms: StrictBool = False  # norms after attention and after the MLP (Gemma 2, 3)
    activation: Literal["silu", "gelu_tanh", "clamped_swiglu"] = "silu"
    logit_softcap: StrictBool = False  # tanh soft-capping of attention and final logits (Gemma 2)
    embedding_scale: StrictBool = False  # embeddings multiplied by sqrt(d_model) (Gemma)
    mtp_layers: Annotated[StrictInt, Field(ge=0, le=8)] = 0  # DeepSeek's multi-token prediction
    note: str = ""

    @property
    def attention_kind(self) -> str:
        """'mla', 'mha' (KV heads = query heads), 'mqa' (one KV head) or 'gqa'."""
        if self.mla is not None:
            return "mla"
        if self.n_kv_heads == self.n_heads:
            return "mha"
        if self.n_kv_heads == 1:
            return "mqa"
        return "gqa"

    @property
    def architecture(self) -> Architecture:
        """The model's structure (which kernels each layer runs), sizes aside."""
        moe = self.moe
        window = self.sliding_window
        return Architecture(
            attention=self.attention_kind,
            qkv_bias=self.qkv_bias,
            o_bias=self.o_bias,
            qk_norm=self.qk_norm,
            sinks=self.attention_sinks,
            sandwich_norms=self.sandwich_norms,
            activation=self.activation,
            softcap=self.logit_softcap,
            embedding_scale=self.embedding_scale,
            tied_embeddings=self.tie_word_embeddings,
            sliding_layers="none"
            if window is None
            else ("all" if window.layers == self.n_layers else "some"),
            moe=None
            if moe is None
            else MoEArchitecture(
                scoring=moe.scoring,
                shared=moe.shared_ffn_dim > 0,
                dense_layers=moe.dense_layers > 0,
                router_bias=moe.router_bias,
                expert_bias=moe.expert_bias,
                normalise=moe.normalise_top_k,
            ),
            mtp_layers=self.mtp_layers,
        )

    def dims(self) -> dict[sp.Symbol, sp.Integer]:
        """The model's shape as a substitution for the shape symbols."""
        values = {
            sy.L: self.n_layers,
            sy.D: self.d_model,
            sy.H: self.n_heads,
            sy.H_kv: self.n_kv_heads,
            sy.d_h: self.head_dim,
            sy.F: self.ffn_dim,
            sy.V: self.vocab_size,
        }
        if self.mla is not None:
            values |= {
                sy.r_q: self.mla.q_lora_rank,
                sy.r_kv: self.mla.kv_lora_rank,
                sy.d_rope: self.mla.qk_rope_head_dim,
                sy.d_nope: self.mla.qk_nope_head_dim,
                sy.d_v: self.mla.v_head_dim,
            }
        if self.moe is not None:
            values |= {
                sy.E: self.moe.n_experts,
                sy.k_e: self.moe.top_k,
                sy.F_e: self.moe.expert_ffn_dim,
                sy.L_dense: self.moe.dense_layers,
            }
            if self.moe.shared_ffn_dim:
                values[sy.F_sh] = self.moe.shared_ffn_dim
        if self.sliding_window is not None:
            values |= {sy.W_win: self.sliding_window.tokens, sy.L_win: self.sliding_window.layers}
        return {k: sp.Integer(v) for k, v in values.items()}


class PeakFlops(_Spec):
    """Dense peak throughput per compute dtype [TFLOP/s]; fp32 is the non-tensor vector peak.

    None: the part has no units for that dtype (a weight matmul in it falls back to bf16, see
    :meth:`HardwareSpec.matmul_peak`).
    """

    fp32: Rate
    bf16: Rate
    fp16: Rate
    fp8: Rate | None = None
    int8: Rate | None = None
    fp4: Rate | None = None  # dense 4-bit float (NVFP4, MXFP4) tensor-core peak; None: no fp4


class Efficiency(_Spec):
    """Achievable fractions of peak, and a fixed per-kernel overhead [us].

    ``calibrated`` says where fitted values came from (empty: not calibrated).  Two optional
    calibration terms of :mod:`costmodel.model.roofline` (unset: the pure roofline): ``overlap``,
    the exponent p combining compute and memory time as (c^p + m^p)^(1/p) instead of their max; a
    cache of ``cache_mb`` [MB] serving a step whose working set fits at ``cache_bandwidth_tb_s``
    [TB/s]; ``weight_relayout``, the extra traffic of a multi-row weight matmul as a multiple of its
    weight bytes; and ``attention``, the fraction of the other kernels' rates attention kernels
    reach.
    """

    compute: Fraction = 1.0
    memory: Fraction = 1.0
    kernel_overhead_us: Duration = 0.0
    overlap: Annotated[float, Field(ge=1, le=MAX_OVERLAP, allow_inf_nan=False)] | None = None
    cache_mb: Annotated[float, Field(ge=0, le=MAX_RATE, allow_inf_nan=False)] = 0.0
    cache_bandwidth_tb_s: Rate | None = None
    weight_relayout: Annotated[float, Field(ge=0, le=MAX_RELAYOUT, allow_inf_nan=False)] | None = (
        None
    )
    attention: Fraction | None = None
    calibrated: str = ""

    def calibration(self) -> Calibration:
        """These values as the model's :class:`~costmodel.model.calibration.Calibration` (SI
        units; the one conversion from the spec's units).

        Fractions and overhead become the exact rationals of the decimals written; the terms
        30-digit Floats: a rational power with a large denominator has no cheap exact value
        (SymPy would search for one), and the fourth power of an exact capacity is an integer
        too large for a JAX constant.  A cache needs both a size above 0 and a bandwidth.
        """
        cache = None
        if self.cache_mb > 0 and self.cache_bandwidth_tb_s is not None:
            cache = Cache(_float(self.cache_mb) * 10**6, _float(self.cache_bandwidth_tb_s) * 10**12)
        return Calibration(
            eta_compute=exact(self.compute),
            eta_memory=exact(self.memory),
            kernel_overhead_s=exact(self.kernel_overhead_us) / 10**6,
            overlap=None if self.overlap is None else _float(self.overlap),
            cache=cache,
            weight_relayout=None if self.weight_relayout is None else _float(self.weight_relayout),
            attention_efficiency=None if self.attention is None else _float(self.attention),
        )

    @classmethod
    def from_calibration(cls, calibration: Calibration, note: str = "") -> Efficiency:
        """A calibration in the spec's units (the one conversion to them); ``note`` says where
        it came from."""

        def optional(value, scale: float = 1.0) -> float | None:
            return None if value is None else float(value) / scale

        cache = calibration.cache
        return cls(
            compute=float(calibration.eta_compute),
            memory=float(calibration.eta_memory),
            kernel_overhead_us=float(calibration.kernel_overhead_s) * 1e6,
            overlap=optional(calibration.overlap),
            cache_mb=0.0 if cache is None else float(cache.capacity) / 1e6,
            cache_bandwidth_tb_s=None if cache is None else float(cache.bandwidth) / 1e12,
            weight_relayout=optional(calibration.weight_relayout),
            attention=optional(calibration.attention_efficiency),
            calibrated=note,
        )

    def time_model(self) -> TimeModel:
        """The calibration terms these values switch on (none: the pure roofline)."""
        return self.calibration().time_model


class HardwareSpec(_Spec):
    """One accelerator: peaks, memory, link to its peers, achievable fractions."""

    name: str
    description: str
    peak_tflops: PeakFlops
    hbm_bandwidth_tb_s: Rate
    hbm_capacity_gb: Rate
    link_bandwidth_gb_s: Rate
    link_latency_us: Duration
    # A second, scale-out tier: the devices one fast link tier reaches (an HGX board: 8, a
    # GB200 NVL72 rack: 72, a TPU pod: its largest ICI slice), and the per-device, per-direction
    # bandwidth [GB/s] and step latency [us] of the network beyond them (InfiniBand/Ethernet
    # NICs, a TPU's data-centre network).  None: the fast tier reaches every device of a
    # scenario.  All three or none.
    link_domain: GpuCount | None = None
    scale_out_bandwidth_gb_s: Rate | None = None
    scale_out_latency_us: Duration | None = None
    usable_memory_fraction: Fraction = 0.9
    efficiency: Efficiency = Efficiency()

    @model_validator(mode="after")
    def _two_tiers(self) -> HardwareSpec:
        """link_domain, scale_out_bandwidth_gb_s and scale_out_latency_us come together."""
        tier = {
            "link_domain": self.link_domain,
            "scale_out_bandwidth_gb_s": self.scale_out_bandwidth_gb_s,
            "scale_out_latency_us": self.scale_out_latency_us,
        }
        missing = [name for name, value in tier.items() if value is None]
        if missing and len(missing) < len(tier):
            raise ValueError(
                "link_domain, scale_out_bandwidth_gb_s and scale_out_latency_us go together "
                f"(give all three or none); missing: {', '.join(missing)}"
            )
        return self

    def peak_flops(self, compute_dtype: str) -> sp.Rational:
        """Peak dense FLOP/s for ``compute_dtype`` (exact rational of the datasheet figure)."""
        tflops = getattr(self.peak_tflops, compute_dtype)
        if tflops is None:
            raise ValueError(f"{self.name} has no {compute_dtype} peak")
        return exact(tflops) * 10**12

    def matmul_peak(self, weight_dtype: str) -> sp.Rational:
        """Peak FLOP/s of a weight matmul with weights stored as ``weight_dtype``.

        fp8 (and fp8_block) runs at the fp8 peak where the hardware has one; without fp8 units
        (A100) fp8 weights are dequantised and multiplied at the bf16 peak, as weight-only
        int8/int4 are.

        Block-scaled fp4 weights (nvfp4, mxfp4) run at the fp4 peak where the part has one; a
        part without fp4 units (Hopper, MI300X, TPUs) dequantises them and multiplies at the
        bf16 peak, as weight-only int4 kernels do (the way Hopper serves FP4 checkpoints).  The
        one fp4 peak serves both formats: a part whose units take only one of them (MI355X:
        MXFP4) is not told apart.
        """
        compute = matmul_compute_dtype(weight_dtype)
        if getattr(self.peak_tflops, compute, None) is None:
            compute = "bf16"
        return self.peak_flops(compute)

    @property
    def hbm_bandwidth(self) -> sp.Rational:
        """Peak device-memory bandwidth [bytes/s]."""
        return exact(self.hbm_bandwidth_tb_s) * 10**12

    @property
    def hbm_capacity(self) -> sp.Rational:
        """Device-memory capacity [bytes] (decimal GB, as datasheets count)."""
        return exact(self.hbm_capacity_gb) * 10**9

    @property
    def usable_memory(self) -> sp.Rational:
        """Capacity left for weights, KV cache and workspace [bytes]."""
        return self.hbm_capacity * exact(self.usable_memory_fraction)

    @property
    def link_bandwidth(self) -> sp.Rational:
        """Per-direction GPU-GPU link bandwidth [bytes/s]."""
        return exact(self.link_bandwidth_gb_s) * 10**9

    @property
    def link_latency(self) -> sp.Rational:
        """Latency of one ring step [s]."""
        return exact(self.link_latency_us) / 10**6

    def link(self, degree: int) -> tuple[sp.Rational, sp.Rational]:
        """(bandwidth [bytes/s], latency [s]) a collective over ``degree`` devices sees.

        The fast tier while the devices fit in one link domain (or the spec has none); past it,
        the scale-out tier: a ring that leaves the domain runs at its slowest hop.
        """
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"a collective spans a whole number of devices >= 1, not {degree!r}")
        if self.link_domain is None or degree <= self.link_domain:
            return self.link_bandwidth, self.link_latency
        assert self.scale_out_bandwidth_gb_s is not None and self.scale_out_latency_us is not None
        return (
            exact(self.scale_out_bandwidth_gb_s) * 10**9,
            exact(self.scale_out_latency_us) / 10**6,
        )

    def ridge_point(self, compute_dtype: str = "bf16") -> sp.Rational:
        """Peak FLOP/s over peak bandwidth [FLOP/byte]."""
        return self.peak_flops(compute_dtype) / self.hbm_bandwidth

    def values(
        self, weight_dtype: str = "bf16", *, calibrated: bool = True, degree: int = 1
    ) -> dict:
        """Substitution for the hardware symbols at ``weight_dtype``.

        With ``calibrated`` the efficiency fractions and overhead of the spec are used; without,
        the pure roofline (fractions 1, no overhead).  The link is the tier a collective over
        ``degree`` devices sees (:meth:`link`; the default, 1, is the fast tier).
        """
        calibration = self.efficiency.calibration() if calibrated else PURE_ROOFLINE
        link_bandwidth, link_latency = self.link(degree)
        values = {
            sy.peak_matmul: self.matmul_peak(weight_dtype),
            sy.peak_attention: self.peak_flops("bf16"),
            sy.peak_vector: self.peak_flops("fp32"),
            sy.hbm_bandwidth: self.hbm_bandwidth,
            sy.link_bandwidth: link_bandwidth,
            sy.link_latency: link_latency,
        }
        return values | calibration.symbol_values()

    def time_model(self, *, calibrated: bool = True) -> TimeModel:
        """Calibration terms of the roofline this spec switches on (see :class:`Efficiency`)."""
        return (self.efficiency.calibration() if calibrated else PURE_ROOFLINE).time_model


Engine = Literal["vllm", "trtllm", "sglang"]
ENGINES: tuple[str, ...] = ("vllm", "trtllm", "sglang")
MAX_COEFFICIENT = 1e18  # a fitted kernel coefficient: seconds, bytes, bytes/s or a logit


class FitErrors(_Spec):
    """|predicted / measured - 1| over ``n`` rows: median and 90th percentile [1] (None: no
    rows)."""

    n: Annotated[StrictInt, Field(ge=0)]
    median: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
    p90: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None


class DtypeFit(_Spec):
    """A kernel family's fitted coefficients at one dtype (by symbol name, SI units), with the
    fit's errors on its training rows, its held-out rows, and the pure roofline's held-out."""

    params: dict[
        str, Annotated[float, Field(ge=-MAX_COEFFICIENT, le=MAX_COEFFICIENT, allow_inf_nan=False)]
    ]
    train: FitErrors
    heldout: FitErrors
    roofline_heldout: FitErrors


class FamilyFit(_Spec):
    """A kernel family's fits per dtype, and its errors over all dtypes together."""

    dtypes: Annotated[dict[str, DtypeFit], NON_EMPTY]
    train: FitErrors
    heldout: FitErrors
    roofline_heldout: FitErrors


class EngineCalibration(_Spec):
    """The kernel families (:mod:`costmodel.model.kernels`) fitted to one engine's measured
    kernels on one GPU; ``source`` names the data and the fit, ``split`` the held-out rule."""

    hardware: str
    engine: Engine
    source: str
    split: str
    families: dict[str, FamilyFit]

    def terms(self, family: str, dtype: str) -> dict[str, float]:
        """Coefficients of ``family`` at ``dtype`` by symbol name; KeyError if not fitted."""
        return dict(self.families[family].dtypes[dtype].params)

    def fitted_dtypes(self, family: str) -> tuple[str, ...]:
        """The dtypes ``family`` was fitted at, sorted (empty if the family was not)."""
        fit = self.families.get(family)
        return tuple(sorted(fit.dtypes)) if fit is not None else ()


class StepOverhead(_Spec):
    """Each engine's fixed cost per step beyond its kernels (scheduling, sampling, the gaps
    between CUDA graphs), fitted to measured serving runs; ``source`` names the data and the
    fit, ``split`` the held-out rule."""

    source: str
    split: str
    seconds: dict[Engine, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]


class Workload(_Spec):
    """Request shape: prompt and generated tokens per sequence; the report's default context."""

    prompt_tokens: Tokens
    output_tokens: Tokens
    context: Tokens | None = None

    @property
    def default_context(self) -> int:
        """Context the roofline report uses unless told otherwise [tokens]."""
        return self.context or self.prompt_tokens + self.output_tokens


class SLO(_Spec):
    """Latency targets: time per output token and time to first token [ms]; ``probability``
    (optional, strictly between 0 and 1): the continuous optimiser also requires the share of
    the engine calibration's Monte-Carlo draws meeting both targets
    (:mod:`costmodel.search.uncertainty`) to be at least this."""

    tpot_ms: PositiveDuration
    ttft_ms: PositiveDuration
    probability: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None


class SearchSpace(_Spec):
    """What the optimiser may choose from."""

    tp: Annotated[list[GpuCount], NON_EMPTY] = [1, 2, 4, 8]
    weight_dtypes: Annotated[list[WeightDtype], NON_EMPTY] = ["bf16", "fp8", "int8", "int4"]
    kv_dtypes: Annotated[list[KvDtype], NON_EMPTY] = ["bf16", "fp8"]
    batch_max: Annotated[StrictInt, Field(gt=0, le=MAX_BATCH)] = 1024
    group_size: Dimension = DEFAULT_GROUP_SIZE
    # Mixture-of-Experts models only: expert-parallel degrees (each must divide the tp it is
    # paired with; pairs that do not are skipped), data-parallel attention on or off (on needs
    # ep == tp), and the routed experts' formats (None: the weight dtype).
    ep: Annotated[list[GpuCount], NON_EMPTY] = [1]
    attention_dp: Annotated[list[StrictBool], NON_EMPTY] = [False]
    expert_dtypes: Annotated[list[WeightDtype], NON_EMPTY] | None = None


Share = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
DraftTokens = Annotated[StrictInt, Field(ge=0, le=16)]
Replicas = Annotated[StrictInt, Field(gt=0, le=64)]


class Speculation(_Spec):
    """Speculative decoding the optimiser may use: draft lengths to choose from (0: off), the
    acceptance probability of each draft token, and one draft token's cost as a share of a
    target decode step (a small draft model ~ its parameter share; MTP heads ~ 1/layers)."""

    draft_tokens: Annotated[list[DraftTokens], NON_EMPTY] = [0]
    acceptance: Share = 0.7
    draft_cost: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.05


class Serving(_Spec):
    """How the replicas serve.  ``continuous``: continuous batching at a closed-loop
    concurrency the optimiser chooses (up to ``concurrency_max``), with chunked prefill under a
    token budget (``token_budgets`` to choose from; None: the engine's default), a prefix-cache
    hit rate and optional speculative decoding.  ``static``: the seed's static batch (TTFT the
    prefill of the whole batch, TPOT a decode step at full context)."""

    mode: Literal["continuous", "static"] = "static"
    concurrency_max: Annotated[StrictInt, Field(gt=0, le=MAX_BATCH)] = 1024
    token_budgets: Annotated[list[Tokens], NON_EMPTY] | None = None
    prefix_hit: Share = 0.0
    speculation: Speculation = Speculation()
    # Disaggregated deployments to weigh against aggregated serving: [prefill replicas, decode
    # replicas] pairs, each replica of tp GPUs (empty: aggregated only).
    disaggregation: list[tuple[Replicas, Replicas]] = []


class Scenario(_Spec):
    """A question to answer: this model, on this hardware, with this workload and these SLOs."""

    name: str
    model: ModelSpec
    hardware: HardwareSpec
    n_gpus: GpuCount
    activation_dtype: ActivationDtype = "bf16"
    attention_impl: Literal["flash", "naive"] = "flash"
    mla_absorb: StrictBool = True
    workload: Workload
    slo: SLO
    search: SearchSpace = SearchSpace()
    objective: Literal["throughput_per_gpu", "cost_per_million_tokens", "latency"] = (
        "throughput_per_gpu"
    )
    gpu_hour_usd: Annotated[float, Field(gt=0, le=MAX_PRICE, allow_inf_nan=False)] = 2.0
    engine: Engine | None = None  # None: the datasheet's pure roofline (or the spec's own)
    kernels: EngineCalibration | None = None  # the engine's calibration, set by the loader
    serving: Serving = Serving()  # absent: the static batch of the seed's analysis
    # Routed tokens on the busiest expert-parallel GPU over the mean (1: balanced routing)
    moe_imbalance: Annotated[float, Field(ge=1, le=MAX_DIMENSION, allow_inf_nan=False)] = 1.0
    step_overhead_s: Annotated[float, Field(ge=0, le=1)] = 0.0  # the engine's, set by the loader


def _float(value: float) -> sp.Float:
    """A config's decimal as a 30-digit SymPy Float."""
    return sp.Float(repr(value), 30)


def exact(value: float | int) -> sp.Rational:
    """The decimal a config wrote (e.g. 3.35) as an exact rational, not its binary float."""
    return sp.Rational(repr(value)) if isinstance(value, float) else sp.Integer(value)
