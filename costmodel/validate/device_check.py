"""Our own GPU timings (``costmodel/data/device_kernels/``) against the calibrated model.

The calibration (:mod:`costmodel.validate.gpu_fit`) was fitted on another party's measurements
(AIConfigurator's tables).  Kernels timed by us on a GPU of the same kind, with other software
(PyTorch's cuBLAS GEMMs and its scaled-dot-product attention, :mod:`experiments.time_gpu_kernels`),
are data the fit never saw: this module predicts each measured row with every engine's shipped
calibration for that GPU, and with the pure roofline of the family at the datasheet figures,
and counts how many rows fall inside the calibration's prediction interval
(:func:`costmodel.validate.gpu_uncertainty.kernel_interval_ms`).

Whole decode and prefill steps (``decode_step``, ``prefill_step`` rows: a Llama-3-8B-shaped
model in plain PyTorch) are compared with the model's step for Llama-3-8B on that GPU: the
engine model's step
(kernels only: no scheduler overhead, which the timed graph has none of) under each engine's
calibration, and the pure roofline's step.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from costmodel.compile.codegen import compile_expr
from costmodel.config import catalogue
from costmodel.config.bind import Setting, bind
from costmodel.config.load import load_engine_calibration, load_hardware, serving_scenario
from costmodel.config.specs import ConfigError
from costmodel.model import symbols as sy
from costmodel.validate import gpu_fit, gpu_uncertainty

# Timed row family -> the calibrated family that predicts it: an fp8 linear layer
# (``gemm_quant``: the activations' quantisation kernel, then the GEMM) is priced by the fp8
# GEMM fit, as the engine model prices the engines' fp8 linear layers.
CALIBRATED_AS = {
    "gemm": "gemm",
    "gemm_quant": "gemm",
    "context_attention": "context_attention",
    "generation_attention": "generation_attention",
}
STEP_FAMILIES = {"decode_step": "decode", "prefill_step": "prefill"}  # timed row -> phase
STEP_MODEL = "llama-3-8b"  # the timed step's shapes (experiments.time_gpu_kernels.step_rows)
ENGINES = ("vllm", "sglang", "trtllm")
# The committed timings (costmodel/data/device_kernels/SOURCE.md says how they were taken).
DEFAULT_TIMINGS = Path(__file__).resolve().parent.parent / "data/device_kernels/h200-2026-11-30.csv"


class Measured(NamedTuple):
    """One timed row: the family, its dtype, its shape columns by name and the time [ms]."""

    family: str
    dtype: str
    shape: dict[str, int]
    measured_ms: float


class Agreement(NamedTuple):
    """Rows of one (family, dtype) predicted by one source: the median and 90th percentile of
    |predicted / measured - 1|, and (a calibration only) the share inside its interval."""

    family: str
    dtype: str
    source: str  # an engine's calibration, or "roofline"
    rows: int
    median_abs_rel_err: float
    p90_abs_rel_err: float
    inside: float | None


def read_measured(path: str | Path) -> list[Measured]:
    """The rows of a device-kernel CSV (header: family, dtype, shape columns, measured_ms);
    a ConfigError naming the file, the row and the column for a bad one."""
    with open(path, newline="") as handle:
        out = []
        for number, row in enumerate(csv.DictReader(handle), start=1):
            out.append(_measured(Path(path), number, row))
    return out


def _measured(path: Path, number: int, row: dict[str, str]) -> Measured:
    """One CSV row checked: its family's shape columns positive integers, a positive time."""
    family = row.get("family") or ""
    columns = gpu_fit.SHAPE_COLUMNS.get(CALIBRATED_AS.get(family, family), ("batch", "isl"))
    values: dict[str, int] = {}
    try:
        for column in columns:
            if row.get(column):
                values[column] = int(row[column])
                if values[column] <= 0:
                    raise ValueError
        column = "measured_ms"
        measured = float(row.get(column) or "nan")
        if not measured > 0 or measured == float("inf"):
            raise ValueError
    except ValueError:
        got = row.get(column)
        raise ConfigError(
            path, f"row {number}: {column}", f"expected a positive number, got {got!r}"
        ) from None
    return Measured(family, row.get("dtype") or "", values, measured)


def _errors(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    err = np.abs(predicted / measured - 1.0)
    return float(np.median(err)), float(np.percentile(err, 90))


def kernel_agreement(
    rows: Sequence[Measured], hardware: str, level: float = gpu_uncertainty.LEVEL
) -> list[Agreement]:
    """Each (family, dtype) of ``rows`` predicted by every engine calibration of ``hardware``
    that fitted it (:data:`CALIBRATED_AS`), and by the family's pure roofline at the datasheet
    figures."""
    spec = load_hardware(catalogue.path("hardware", hardware))
    out = []
    groups = sorted({(r.family, r.dtype) for r in rows if r.family in CALIBRATED_AS})
    for timed, dtype in groups:
        family = CALIBRATED_AS[timed]
        chosen = [r for r in rows if (r.family, r.dtype) == (timed, dtype)]
        shapes = np.array(
            [[r.shape[c] for c in gpu_fit.SHAPE_COLUMNS[family]] for r in chosen], dtype=float
        )
        measured = np.array([r.measured_ms for r in chosen])
        consts = gpu_uncertainty.consts_of(spec, family, dtype)
        roof = gpu_fit.roofline_s(family, shapes, consts) * 1e3
        out.append(Agreement(timed, dtype, "roofline", len(chosen), *_errors(roof, measured), None))
        for engine in ENGINES:
            calibration = load_engine_calibration(catalogue.engine_path(hardware, engine))
            if dtype not in calibration.fitted_dtypes(family):
                continue
            predicted, low, high = gpu_uncertainty.kernel_interval_ms(
                spec, calibration, family, dtype, shapes, level
            )
            inside = float(np.mean((measured >= low) & (measured <= high)))
            out.append(
                Agreement(timed, dtype, engine, len(chosen), *_errors(predicted, measured), inside)
            )
    return out


class StepAgreement(NamedTuple):
    """One timed step beside the model's: its phase, batch B, tokens per sequence (decode: the
    context T; prefill: the prompt S), measured and predicted [ms] by source."""

    phase: str
    batch: int
    tokens: int
    measured_ms: float
    predicted_ms: dict[str, float]


def _step_functions(hardware: str, phase: str) -> dict:
    """The model's Llama-3-8B step of ``phase`` (bf16, tp 1) compiled in (B, T) for decode or
    (B, S) for prefill: under each engine calibration of ``hardware`` and the pure roofline."""
    tokens = sy.T if phase == "decode" else sy.S
    calibrated = [e for e in ENGINES if catalogue.engine_path(hardware, e).is_file()]
    out = {}
    for engine in (None, *calibrated):
        scenario = serving_scenario(
            STEP_MODEL,
            hardware,
            engine=engine,
            tp=1,
            weight_dtype="bf16",
            kv_dtype="bf16",
            source=Path("."),
            fields={},
        )
        binding = bind(scenario, Setting(tp=1), calibrated=engine is not None)
        out[engine or "roofline"] = compile_expr(binding.step_time(phase), (sy.B, tokens))
    return out


def step_agreement(rows: Sequence[Measured], hardware: str) -> list[StepAgreement]:
    """Each timed step beside the model's Llama-3-8B step (bf16, tp 1): a ``decode_step`` row
    at its batch B and context T = the cached tokens plus the new one (the decode phase fixes
    S = 1), a ``prefill_step`` row at B prompts of S tokens (T = S); per engine calibration of
    ``hardware`` (kernels only, no scheduler overhead) and the pure roofline [ms]."""
    out = []
    for family, phase in STEP_FAMILIES.items():
        steps = [r for r in rows if r.family == family]
        if not steps:
            continue
        batch = np.array([r.shape["batch"] for r in steps], dtype=np.float64)
        extra = 1 if phase == "decode" else 0  # decode attends the new token too
        tokens = np.array([r.shape["isl"] + extra for r in steps], dtype=np.float64)
        predicted = {
            name: np.asarray(t(batch, tokens)) * 1e3
            for name, t in _step_functions(hardware, phase).items()
        }
        for i, r in enumerate(steps):
            mine = {name: float(ms[i]) for name, ms in predicted.items()}
            out.append(StepAgreement(phase, int(batch[i]), int(tokens[i]), r.measured_ms, mine))
    return out


def step_summary(steps: Sequence[StepAgreement]) -> dict[str, dict[str, float]]:
    """Median |predicted / measured - 1| of the timed steps, per phase and source."""
    out: dict[str, dict[str, float]] = {}
    for phase in STEP_FAMILIES.values():
        mine = [s for s in steps if s.phase == phase]
        if mine:
            out[phase] = {
                name: statistics.median(abs(s.predicted_ms[name] / s.measured_ms - 1) for s in mine)
                for name in mine[0].predicted_ms
            }
    return out
