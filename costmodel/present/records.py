"""Typed schemas of the experiments' recorded ``--json`` outputs that the paper reads.

Three experiments feed the paper (``paper/data/<name>.json``): ``validate_xla`` (the model
against XLA's cost analysis), ``optimise`` on the H100 / Llama-3-70B scenario, and
``validate_timing`` (measured layer times against the calibrated model).  Each output is a
frozen record here with ``from_json`` (raises :class:`RecordError` naming the file and the
dotted key that is missing or of the wrong type) and, for the one this package's experiment
builds, ``to_json``.  Keys an output has beyond the schema are allowed and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from costmodel.config.specs import Efficiency
from costmodel.validate.calibrate import ErrorSummary

_MISSING = object()


class RecordError(ValueError):
    """A recorded experiment output lacks a key the paper reads, or holds the wrong type."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key or '(top level)'}: {message}")
        self.source, self.key = source, key


class _Reader:
    """Reads one JSON object, reporting a problem with its file and dotted key."""

    def __init__(self, data: Any, source: str, path: str = ""):
        if not isinstance(data, Mapping):
            raise RecordError(source, path, f"expected an object, got {type(data).__name__}")
        self.data, self.source, self.path = data, source, path

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...] = object, default: Any = _MISSING):
        """The value at ``key``, of ``kind`` (a missing key is an error unless ``default``)."""
        if key not in self.data or (self.data[key] is None and default is not _MISSING):
            if default is _MISSING:
                raise RecordError(self.source, self._key(key), "missing key")
            return default
        value = self.data[key]
        if kind is float:
            kind = (int, float)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
            raise RecordError(self.source, self._key(key), f"unexpected {type(value).__name__}")
        return value

    def sub(self, key: str, optional: bool = False) -> _Reader | None:
        """The object at ``key`` (None when ``optional`` and absent or null)."""
        if optional and self.data.get(key) is None:
            return None
        return _Reader(self.get(key, Mapping), self.source, self._key(key))

    def items(self, key: str, optional: bool = False) -> list[_Reader]:
        """The objects of the list at ``key`` (empty when ``optional`` and absent)."""
        values = self.get(key, list, [] if optional else _MISSING)
        return [_Reader(v, self.source, f"{self._key(key)}[{i}]") for i, v in enumerate(values)]

    def errors(self, key: str) -> ErrorSummary:
        """An :class:`~costmodel.validate.calibrate.ErrorSummary` at ``key``."""
        part = self.sub(key)
        return ErrorSummary(
            *(part.get(f, int if f == "cases" else float) for f in ErrorSummary._fields)
        )

    def efficiency(self, key: str) -> Efficiency:
        """A hardware spec's :class:`~costmodel.config.specs.Efficiency` at ``key``."""
        try:
            return Efficiency.model_validate(self.get(key, Mapping))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise RecordError(self.source, f"{self._key(key)}.{where}", first["msg"]) from None


def to_json(record: Any) -> Any:
    """A record as JSON-ready data: dataclasses and NamedTuples as objects, tuples as lists,
    an ``Efficiency`` as its set fields."""
    if isinstance(record, BaseModel):
        return record.model_dump(exclude_none=True)
    if is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json(getattr(record, f.name)) for f in fields(record)}
    if isinstance(record, tuple) and hasattr(record, "_asdict"):
        return {k: to_json(v) for k, v in record._asdict().items()}
    if isinstance(record, list | tuple):
        return [to_json(v) for v in record]
    if isinstance(record, Mapping):
        return {str(k): to_json(v) for k, v in record.items()}
    return record


def read_json(path: str | Path) -> Any:
    """A file's JSON; a missing or malformed file is a :class:`RecordError`."""
    file = Path(path)
    if not file.is_file():
        raise RecordError(str(file), "", "no such file")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(str(file), "", f"malformed JSON: {err}") from None


# --------------------------------------------------------------------------- validate_xla


@dataclass(frozen=True)
class Collective:
    """A collective of a sharded layer: kind and payload [bytes]."""

    kind: str
    payload_bytes: float


@dataclass(frozen=True)
class XlaCase:
    """One case of the XLA cross-check: model against XLA's FLOPs, transcendentals, bytes."""

    kind: str
    flops_model: float
    flops_xla: float
    bytes_xla: float
    transcendentals_model: float | None = None
    transcendentals_xla: float | None = None
    bytes_check: str | None = None  # "exact" for single kernels, else bounds
    bytes_model: float | None = None
    bytes_fused: float | None = None
    bytes_unfused: float | None = None
    bytes_position: float | None = None  # where XLA's bytes fall between fused 0, unfused 1
    collectives_model: tuple[Collective, ...] = ()
    collectives_xla: tuple[Collective, ...] = ()

    @classmethod
    def read(cls, r: _Reader) -> XlaCase:
        def collectives(key: str) -> tuple[Collective, ...]:
            return tuple(
                Collective(c.get("kind", str), c.get("payload_bytes", float))
                for c in r.items(key, optional=True)
            )

        optional = {
            name: r.get(name, float, None)
            for name in (
                "transcendentals_model",
                "transcendentals_xla",
                "bytes_model",
                "bytes_fused",
                "bytes_unfused",
                "bytes_position",
            )
        }
        return cls(
            kind=r.get("kind", str),
            flops_model=r.get("flops_model", float),
            flops_xla=r.get("flops_xla", float),
            bytes_xla=r.get("bytes_xla", float),
            bytes_check=r.get("bytes_check", str, None),
            collectives_model=collectives("collectives_model"),
            collectives_xla=collectives("collectives_xla"),
            **optional,
        )


@dataclass(frozen=True)
class TextbookGap:
    """Decode FLOPs per step: 2·N_p·B against the XLA-convention count [FLOP]."""

    model: str
    batch: int
    context: int
    textbook_flops: float
    xla_convention_flops: float
    attention_flops: float
    gap_percent: float

    @classmethod
    def read(cls, r: _Reader) -> TextbookGap:
        kinds = {"model": str, "batch": int, "context": int}
        return cls(**{f.name: r.get(f.name, kinds.get(f.name, float)) for f in fields(cls)})


@dataclass(frozen=True)
class XlaSummary:
    """The cross-check's summary: seed, dtype, cases per tp, verdict, textbook gaps, figure."""

    seed: int
    dtype: str
    per_tp: dict[str, int]
    tp_above_kv_heads: int
    all_passed: bool
    textbook_gap: tuple[TextbookGap, ...]
    figure: str


@dataclass(frozen=True)
class XlaReport:
    """``python -m experiments.validate_xla --json``."""

    cases: tuple[XlaCase, ...]
    summary: XlaSummary

    @classmethod
    def from_json(cls, data: Any, source: str = "validate_xla") -> XlaReport:
        """Parse the experiment's JSON; ``source`` names it in errors."""
        r = _Reader(data, source)
        s = r.sub("summary")
        summary = XlaSummary(
            seed=s.get("seed", int),
            dtype=s.get("dtype", str),
            per_tp={str(k): int(v) for k, v in s.get("per_tp", Mapping).items()},
            tp_above_kv_heads=s.get("tp_above_kv_heads", int),
            all_passed=s.get("all_passed", bool),
            textbook_gap=tuple(TextbookGap.read(g) for g in s.items("textbook_gap")),
            figure=s.get("figure", str),
        )
        return cls(tuple(XlaCase.read(c) for c in r.items("cases")), summary)


# --------------------------------------------------------------------------- optimise


@dataclass(frozen=True)
class Choice:
    """A configuration the optimiser evaluated: degree, batch, formats, objective and, for the
    chosen one, its latencies [ms], throughput [tok/s/GPU] and memory [bytes]."""

    tp: int
    batch: int
    weight_dtype: str
    kv_dtype: str
    objective: float
    tpot_ms: float | None = None
    ttft_ms: float | None = None
    throughput_tok_s_per_gpu: float | None = None
    memory_bytes_per_gpu: float | None = None
    memory_breakdown_bytes: dict[str, float] | None = None
    replicas: int | None = None
    gpus_used: int | None = None
    regime: str | None = None
    decode_compute_s: float | None = None
    decode_memory_s: float | None = None

    @classmethod
    def read(cls, r: _Reader, *, full: bool = False) -> Choice:
        """``full``: the chosen configuration, whose latencies, throughput and memory the
        paper prints, must have them."""
        required = ("tpot_ms", "ttft_ms", "throughput_tok_s_per_gpu", "memory_bytes_per_gpu")
        values = {
            name: r.get(name, float) if full and name in required else r.get(name, float, None)
            for name in (*required, "decode_compute_s", "decode_memory_s")
        }
        breakdown = r.get("memory_breakdown_bytes", Mapping, None)
        return cls(
            tp=r.get("tp", int),
            batch=r.get("batch", int),
            weight_dtype=r.get("weight_dtype", str),
            kv_dtype=r.get("kv_dtype", str),
            objective=r.get("objective", float),
            memory_breakdown_bytes=None if breakdown is None else dict(breakdown),
            replicas=r.get("replicas", int, None),
            gpus_used=r.get("gpus_used", int, None),
            regime=r.get("regime", str, None),
            **values,
        )


@dataclass(frozen=True)
class Combination:
    """The best batch of one degree and pair of formats, and what limits it."""

    tp: int
    weight_dtype: str
    kv_dtype: str
    best: Choice | None
    limit: str
    limit_text: str
    reason: str | None = None
    relaxed_batch: float | None = None

    @classmethod
    def read(cls, r: _Reader) -> Combination:
        best = r.sub("best", optional=True)
        return cls(
            tp=r.get("tp", int),
            weight_dtype=r.get("weight_dtype", str),
            kv_dtype=r.get("kv_dtype", str),
            best=None if best is None else Choice.read(best),
            limit=r.get("limit", str),
            limit_text=r.get("limit_text", str),
            reason=r.get("reason", str, None),
            relaxed_batch=r.get("relaxed_batch", float, None),
        )


@dataclass(frozen=True)
class Constraints:
    """The scenario's limits: TPOT and TTFT [ms], memory per GPU [bytes]."""

    tpot_ms_max: float
    ttft_ms_max: float
    memory_bytes_per_gpu_max: float


@dataclass(frozen=True)
class OptimiseReport:
    """``python -m experiments.optimise configs/h100_70b.yaml --json``."""

    best: Choice | None
    explanation: str | None  # what would fit (fixes' texts), when ``best`` is None
    brute_force_best: Choice | None
    brute_force_evaluated: int
    constraints: Constraints
    combinations: tuple[Combination, ...]
    runners_up: tuple[Combination, ...]
    search_tp: tuple[int, ...]
    method: str | None
    optimiser_seconds: float | None
    brute_force_seconds: float | None
    figure: str | None  # files.throughput_vs_batch (None: run with --no-plots)

    @classmethod
    def from_json(cls, data: Any, source: str = "optimise_h100_70b") -> OptimiseReport:
        """Parse the experiment's JSON; ``source`` names it in errors."""
        r = _Reader(data, source)
        best = r.sub("best", optional=True)
        why = r.sub("explanation", optional=True)
        brute = r.sub("brute_force")
        brute_best = brute.sub("best", optional=True)
        c = r.sub("constraints")
        optimiser = r.sub("optimiser", optional=True)
        search = r.sub("scenario").sub("search")
        return cls(
            best=None if best is None else Choice.read(best, full=True),
            explanation=None
            if why is None
            else "; ".join(fix.get("text", str) for fix in why.items("fixes")),
            brute_force_best=None if brute_best is None else Choice.read(brute_best),
            brute_force_evaluated=brute.get("evaluated", int),
            constraints=Constraints(
                c.get("tpot_ms_max", float),
                c.get("ttft_ms_max", float),
                c.get("memory_bytes_per_gpu_max", float),
            ),
            combinations=tuple(Combination.read(x) for x in r.items("combinations")),
            runners_up=tuple(Combination.read(x) for x in r.items("runners_up")),
            search_tp=tuple(int(t) for t in search.get("tp", list)),
            method=None if optimiser is None else optimiser.get("method", str),
            optimiser_seconds=r.get("optimiser_seconds", float, None),
            brute_force_seconds=r.get("brute_force_seconds", float, None),
            figure=r.sub("files").get("throughput_vs_batch", str, None),
        )


# --------------------------------------------------------------------------- validate_timing


@dataclass(frozen=True)
class TimingCalibration:
    """The fit: which terms, its values (a hardware spec's ``Efficiency``), the fixed peaks
    [FLOP/s, bytes/s], the loss before and after, and the Adam steps taken."""

    terms: dict[str, bool]
    efficiency: Efficiency
    peak_flops: float
    peak_bandwidth_bytes_s: float
    loss_start: float
    loss_end: float
    steps: int
    fitted_on: str = "train"


@dataclass(frozen=True)
class BasicCalibration:
    """The pure roofline form fitted (eta_c, eta_m, t_k only) and its errors."""

    efficiency: Efficiency | None  # None in recordings older than this schema
    train: ErrorSummary
    heldout: ErrorSummary


@dataclass(frozen=True)
class RegimeSummary:
    """Held-out cases whose predicted batch scaling agrees with the measured one."""

    cases: int
    agree: int
    agree_strict: int
    threshold_exponent: float
    exponent_tolerance: float
    heldout_regimes: dict[str, int]


@dataclass(frozen=True)
class LoadAverage:
    """The host's 1-minute load average at the start and end of the measurement."""

    start: float
    end: float


@dataclass(frozen=True)
class Measurement:
    """How the times were measured (from the measurements file)."""

    cases: int
    dtype: str | None = None
    quick: bool | None = None
    load_average: LoadAverage | None = None
    measure_wall_s: float | None = None
    policy: dict[str, Any] | None = None
    rounds: int | None = None
    contention: dict[str, Any] | None = None


@dataclass(frozen=True)
class TimingFiles:
    """Where the run wrote its plot and spec, and the measurements it fitted."""

    plot: str
    spec: str
    measurements: str


@dataclass(frozen=True)
class TimingReport:
    """``python -m experiments.validate_timing --json``."""

    device: dict[str, Any]
    calibration: TimingCalibration
    train: ErrorSummary
    heldout: ErrorSummary
    roofline_only: ErrorSummary
    heldout_uncontended: ErrorSummary | None
    basic_calibration: BasicCalibration
    regime: RegimeSummary
    measurement: Measurement
    microbench: dict[str, Any]
    heldout_cases: tuple[dict[str, Any], ...]
    files: TimingFiles | None = None
    wall_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON the experiment prints (the inverse of :meth:`from_json`)."""
        out = to_json(self)
        calibration = out["calibration"]
        calibration["peaks"] = {
            "flops": calibration.pop("peak_flops"),
            "bandwidth_bytes_s": calibration.pop("peak_bandwidth_bytes_s"),
        }
        return {k: v for k, v in out.items() if v is not None or k == "heldout_uncontended"}

    @classmethod
    def from_json(cls, data: Any, source: str = "validate_timing") -> TimingReport:
        """Parse the experiment's JSON; ``source`` names it in errors."""
        r = _Reader(data, source)
        cal = r.sub("calibration")
        peaks = cal.sub("peaks")
        basic = r.sub("basic_calibration")
        regime = r.sub("regime")
        m = r.sub("measurement")
        load = m.sub("load_average", optional=True)
        files = r.sub("files", optional=True)
        return cls(
            device=dict(r.get("device", Mapping)),
            calibration=TimingCalibration(
                terms={k: bool(v) for k, v in cal.get("terms", Mapping).items()},
                efficiency=cal.efficiency("efficiency"),
                peak_flops=peaks.get("flops", float),
                peak_bandwidth_bytes_s=peaks.get("bandwidth_bytes_s", float),
                loss_start=cal.get("loss_start", float),
                loss_end=cal.get("loss_end", float),
                steps=cal.get("steps", int),
                fitted_on=cal.get("fitted_on", str, "train"),
            ),
            train=r.errors("train"),
            heldout=r.errors("heldout"),
            roofline_only=r.errors("roofline_only"),
            heldout_uncontended=(
                r.errors("heldout_uncontended") if r.data.get("heldout_uncontended") else None
            ),
            basic_calibration=BasicCalibration(
                efficiency=basic.efficiency("efficiency") if basic.data.get("efficiency") else None,
                train=basic.errors("train"),
                heldout=basic.errors("heldout"),
            ),
            regime=RegimeSummary(
                cases=regime.get("cases", int),
                agree=regime.get("agree", int),
                agree_strict=regime.get("agree_strict", int),
                threshold_exponent=regime.get("threshold_exponent", float),
                exponent_tolerance=regime.get("exponent_tolerance", float),
                heldout_regimes=dict(regime.get("heldout_regimes", Mapping)),
            ),
            measurement=Measurement(
                cases=m.get("cases", int),
                dtype=m.get("dtype", str, None),
                quick=m.get("quick", bool, None),
                load_average=None
                if load is None
                else LoadAverage(load.get("start", float), load.get("end", float)),
                measure_wall_s=m.get("measure_wall_s", float, None),
                policy=m.get("policy", Mapping, None),
                rounds=m.get("rounds", int, None),
                contention=m.get("contention", Mapping, None),
            ),
            microbench=dict(r.get("microbench", Mapping)),
            heldout_cases=tuple(dict(c.data) for c in r.items("heldout_cases")),
            files=None
            if files is None
            else TimingFiles(
                files.get("plot", str), files.get("spec", str), files.get("measurements", str)
            ),
            wall_s=r.get("wall_s", float, None),
        )


def load(path: str | Path, schema: type) -> Any:
    """Read ``path`` as ``schema`` (:class:`XlaReport`, :class:`OptimiseReport` or
    :class:`TimingReport`); problems name the file and the key."""
    return schema.from_json(read_json(path), str(path))
