"""Model, hardware and scenario specifications, and their loaders.

Specs are frozen, validated records.  They load from YAML (this project's format, unknown keys
are errors) or, for models, from a Hugging Face ``config.json``.  Every loading problem raises
:class:`ConfigError`, whose message is one line naming the file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import sympy as sp
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from costmodel.config import catalogue
from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE, Cache, Calibration, TimeModel
from costmodel.model.dtypes import DEFAULT_GROUP_SIZE, matmul_compute_dtype

PositiveInt = Annotated[StrictInt, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
WeightDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
KvDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
ActivationDtype = Literal["fp32", "bf16", "fp16"]
ComputeDtype = Literal["fp32", "bf16", "fp16", "fp8", "int8"]


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

    kv_lora_rank: PositiveInt
    q_lora_rank: PositiveInt
    qk_rope_head_dim: PositiveInt
    qk_nope_head_dim: PositiveInt
    v_head_dim: PositiveInt


class ModelSpec(_Spec):
    """A dense decoder-only transformer: Llama-style blocks, GQA or MLA attention, SwiGLU MLP."""

    name: str
    n_layers: PositiveInt
    d_model: PositiveInt
    n_heads: PositiveInt
    n_kv_heads: PositiveInt
    head_dim: PositiveInt
    ffn_dim: PositiveInt
    vocab_size: PositiveInt
    tie_word_embeddings: StrictBool = False
    nominal_params: PositiveFloat | None = None
    mla: MLASpec | None = None
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
        return {k: sp.Integer(v) for k, v in values.items()}


class PeakFlops(_Spec):
    """Dense peak throughput per compute dtype [TFLOP/s]; fp32 is the non-tensor vector peak."""

    fp32: PositiveFloat
    bf16: PositiveFloat
    fp16: PositiveFloat
    fp8: PositiveFloat | None = None
    int8: PositiveFloat | None = None


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
    kernel_overhead_us: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    overlap: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    cache_mb: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    cache_bandwidth_tb_s: PositiveFloat | None = None
    weight_relayout: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
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
    hbm_bandwidth_tb_s: PositiveFloat
    hbm_capacity_gb: PositiveFloat
    link_bandwidth_gb_s: PositiveFloat
    link_latency_us: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    usable_memory_fraction: Fraction = 0.9
    efficiency: Efficiency = Efficiency()

    def peak_flops(self, compute_dtype: str) -> sp.Rational:
        """Peak dense FLOP/s for ``compute_dtype`` (exact rational of the datasheet figure)."""
        tflops = getattr(self.peak_tflops, compute_dtype)
        if tflops is None:
            raise ValueError(f"{self.name} has no {compute_dtype} peak")
        return exact(tflops) * 10**12

    def matmul_peak(self, weight_dtype: str) -> sp.Rational:
        """Peak FLOP/s of a weight matmul with weights stored as ``weight_dtype``.

        fp8 runs at the fp8 peak where the hardware has one; without fp8 units (A100) fp8
        weights are dequantised and multiplied at the bf16 peak, as weight-only int8/int4 are.
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

    def ridge_point(self, compute_dtype: str = "bf16") -> sp.Rational:
        """Peak FLOP/s over peak bandwidth [FLOP/byte]."""
        return self.peak_flops(compute_dtype) / self.hbm_bandwidth

    def values(self, weight_dtype: str = "bf16", *, calibrated: bool = True) -> dict:
        """Substitution for the hardware symbols at ``weight_dtype``.

        With ``calibrated`` the efficiency fractions and overhead of the spec are used; without,
        the pure roofline (fractions 1, no overhead).
        """
        calibration = self.efficiency.calibration() if calibrated else PURE_ROOFLINE
        values = {
            sy.peak_matmul: self.matmul_peak(weight_dtype),
            sy.peak_attention: self.peak_flops("bf16"),
            sy.peak_vector: self.peak_flops("fp32"),
            sy.hbm_bandwidth: self.hbm_bandwidth,
            sy.link_bandwidth: self.link_bandwidth,
            sy.link_latency: self.link_latency,
        }
        return values | calibration.symbol_values()

    def time_model(self, *, calibrated: bool = True) -> TimeModel:
        """Calibration terms of the roofline this spec switches on (see :class:`Efficiency`)."""
        return (self.efficiency.calibration() if calibrated else PURE_ROOFLINE).time_model


class Workload(_Spec):
    """Request shape: prompt and generated tokens per sequence; the report's default context."""

    prompt_tokens: PositiveInt
    output_tokens: PositiveInt
    context: PositiveInt | None = None

    @property
    def default_context(self) -> int:
        """Context the roofline report uses unless told otherwise [tokens]."""
        return self.context or self.prompt_tokens + self.output_tokens


class SLO(_Spec):
    """Latency targets: time per output token and time to first token [ms]."""

    tpot_ms: PositiveFloat
    ttft_ms: PositiveFloat


class SearchSpace(_Spec):
    """What the optimiser may choose from."""

    tp: list[PositiveInt] = [1, 2, 4, 8]
    weight_dtypes: list[WeightDtype] = ["bf16", "fp8", "int8", "int4"]
    kv_dtypes: list[KvDtype] = ["bf16", "fp8"]
    batch_max: PositiveInt = 1024
    group_size: PositiveInt = DEFAULT_GROUP_SIZE


class Scenario(_Spec):
    """A question to answer: this model, on this hardware, with this workload and these SLOs."""

    name: str
    model: ModelSpec
    hardware: HardwareSpec
    n_gpus: PositiveInt
    activation_dtype: ActivationDtype = "bf16"
    attention_impl: Literal["flash", "naive"] = "flash"
    mla_absorb: StrictBool = True
    workload: Workload
    slo: SLO
    search: SearchSpace = SearchSpace()
    objective: Literal["throughput_per_gpu", "cost_per_million_tokens", "latency"] = (
        "throughput_per_gpu"
    )
    gpu_hour_usd: PositiveFloat = 2.0


def _float(value: float) -> sp.Float:
    """A config's decimal as a 30-digit SymPy Float."""
    return sp.Float(repr(value), 30)


def exact(value: float | int) -> sp.Rational:
    """The decimal a config wrote (e.g. 3.35) as an exact rational, not its binary float."""
    return sp.Rational(repr(value)) if isinstance(value, float) else sp.Integer(value)


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConfigError(path, "", "no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(path, where, f"malformed YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", f"cannot read: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(path, "", "expected a mapping of fields at the top level")
    return data


def _field_path(loc: tuple, prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item in {"int", "float", "str", "function-after[...]"}:
            continue
        else:
            parts.append(str(item))
    return ".".join(parts)


def _validate(cls, data: Mapping[str, Any], path: Path, prefix: str = ""):
    try:
        return cls.model_validate(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(x for x in first["loc"] if not str(x).startswith(("function", "union")))
        got = first.get("input")
        detail = first["msg"]
        if first["type"] not in {"missing", "extra_forbidden"}:
            detail += f" (got {got!r})"
        elif first["type"] == "extra_forbidden":
            detail = "unknown key"
        raise ConfigError(path, _field_path(loc, prefix), detail) from None


def load_hardware(path: str | Path) -> HardwareSpec:
    """Load a hardware spec from catalogue-style YAML (``costmodel/catalogue/hardware/*.yaml``)."""
    path = Path(path)
    return _validate(HardwareSpec, _read_yaml(path), path)


def _hf_model(data: Mapping[str, Any], path: Path, name: str) -> ModelSpec:
    """Map a Hugging Face config.json (Llama or DeepSeek-V3 fields) onto a ModelSpec."""
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        if key not in data:
            raise ConfigError(path, key, "Field required")
    heads = data["num_attention_heads"]
    hidden = data["hidden_size"]
    fields: dict[str, Any] = {
        "name": name,
        "n_layers": data["num_hidden_layers"],
        "d_model": hidden,
        "n_heads": heads,
        "n_kv_heads": data.get("num_key_value_heads") or heads,
        "ffn_dim": data.get("intermediate_size"),
        "vocab_size": data["vocab_size"],
        "tie_word_embeddings": data.get("tie_word_embeddings", False),
    }
    mla_keys = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
    if data.get("kv_lora_rank") is not None:
        fields["mla"] = {key: data.get(key) for key in mla_keys}
        fields["head_dim"] = data.get("qk_nope_head_dim", 0) + data.get("qk_rope_head_dim", 0)
        fields["note"] = "dense-FFN stand-in: MoE layers counted as one dense SwiGLU of ffn_dim"
    else:
        head_dim = data.get("head_dim")
        if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
            head_dim = hidden // heads
        fields["head_dim"] = head_dim
    hf_names = {
        "n_layers": "num_hidden_layers",
        "d_model": "hidden_size",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "head_dim": "head_dim",
        "ffn_dim": "intermediate_size",
        "vocab_size": "vocab_size",
        "tie_word_embeddings": "tie_word_embeddings",
    }
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        key = first["loc"][0]
        field = hf_names.get(str(key), str(key))
        if key == "mla" and len(first["loc"]) > 1:
            field = str(first["loc"][1])
        raise ConfigError(path, field, f"{first['msg']} (got {first.get('input')!r})") from None


def load_model(path: str | Path) -> ModelSpec:
    """Load a model spec from this project's YAML or a Hugging Face ``config.json``."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(path, "", "no such file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(path, f"line {err.lineno}", f"malformed JSON: {err.msg}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(path, "", "expected a JSON object")
        return _hf_model(data, path, path.parent.name or path.stem)
    return _validate(ModelSpec, _read_yaml(path), path)


def _catalogue_entry(value: Any, kind: str, path: Path, field: str) -> Path:
    """Resolve a catalogue name (beside the scenario first, then the project's) or a file path."""
    if not isinstance(value, str) or not value:
        raise ConfigError(path, field, f"expected a name or a path (got {value!r})")
    candidate = Path(value)
    if candidate.suffix in {".yaml", ".yml", ".json"}:
        resolved = candidate if candidate.is_absolute() else path.parent / candidate
        if not resolved.is_file():
            raise ConfigError(path, field, f"no such file {value!r}")
        return resolved
    directories = [path.parent / kind, catalogue.directory(kind)]
    for directory in directories:
        entry = directory / f"{value}.yaml"
        if entry.is_file():
            return entry
    known = sorted({p.stem for d in directories for p in d.glob("*.yaml")})
    raise ConfigError(path, field, f"unknown {field} {value!r} (known: {', '.join(known)})")


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario YAML; ``model`` and ``hardware`` are catalogue names or file paths."""
    path = Path(path)
    data = dict(_read_yaml(path))
    for field in ("model", "hardware"):
        if field not in data:
            raise ConfigError(path, field, "Field required")
    data.setdefault("name", path.stem)
    data["model"] = load_model(_catalogue_entry(data["model"], "models", path, "model"))
    data["hardware"] = load_hardware(
        _catalogue_entry(data["hardware"], "hardware", path, "hardware")
    )
    scenario = _validate(Scenario, data, path)
    _check_scenario(scenario, path)
    return scenario


def _check_scenario(scenario: Scenario, path: Path) -> None:
    for i, degree in enumerate(scenario.search.tp):
        if degree > scenario.n_gpus:
            raise ConfigError(
                path, f"search.tp[{i}]", f"tp {degree} exceeds n_gpus {scenario.n_gpus}"
            )
        if scenario.model.n_heads % degree:
            raise ConfigError(
                path,
                f"search.tp[{i}]",
                f"tp {degree} does not divide the {scenario.model.n_heads} query heads",
            )


def hardware_catalogue() -> dict[str, HardwareSpec]:
    """Every hardware spec of the catalogue, by name."""
    return {
        name: load_hardware(catalogue.path("hardware", name))
        for name in catalogue.names("hardware")
    }


def model_catalogue() -> dict[str, ModelSpec]:
    """Every model spec of the catalogue, by file stem."""
    return {name: load_model(catalogue.path("models", name)) for name in catalogue.names("models")}
