"""Kernel latencies from the shipped engine calibrations, for the rows of a CSV file.

A row names a kernel family (:data:`costmodel.model.kernels.ALL_FAMILIES`), a (hardware, engine)
with a calibration in the catalogue (``engines/<hardware>/<engine>.json``), a dtype the family
was fitted at there, and the family's shape columns (:data:`SHAPE_COLUMNS`); its answer is the
fitted family's latency [ms].  Nothing is fitted here.

Every row is parsed and checked before anything is evaluated; a bad row raises
:class:`PredictError` naming the row (data rows count from 1, the first line after the header;
blank lines count too), the column and what is wrong.  Rows of one (family, hardware, engine,
dtype) share their constants and coefficients; each family is then evaluated in one vectorised
call of its compiled expression (:func:`costmodel.validate.gpu_fit.predict_s`), with the
coefficients as per-row arrays, so a file of any mix of groups compiles one function per family.

:func:`measured_points` evaluates a calibration on its own measured rows (train and held-out),
for the figures of ``python -m experiments.calibrate_gpu --plot``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from costmodel.config import catalogue
from costmodel.config.load import engine_calibration, load_hardware
from costmodel.config.specs import ConfigError, EngineCalibration, HardwareSpec
from costmodel.model import kernels
from costmodel.validate import gpu_fit

KEY_COLUMNS = ("family", "hardware", "engine", "dtype")
ANSWER_COLUMN = "latency_ms"  # added to each row's echo; an input column of that name is refused
# The CSV's shape columns per family, in the order of the family's shape symbols.
SHAPE_COLUMNS = gpu_fit.SHAPE_COLUMNS
MAX_SHAPE = 2**53  # largest shape value: every integer up to it is exact in float64
MIN_RANKS = 2  # an all-reduce needs two GPUs
BUCKET = 256  # a family's rows are padded to BUCKET · 2^j: few array sizes, few compilations


class PredictError(ValueError):
    """A bad input row: ``row`` (1 = the first line after the header; 0 = the header itself),
    the column ``field`` and what is wrong."""

    def __init__(self, row: int, field: str, message: str):
        self.row = row
        self.field = field
        self.message = message
        where = f"row {row}" if row > 0 else "header"
        super().__init__(f"{where}: {field}: {message}")


class Query(NamedTuple):
    """A checked row: the kernel, its shape (in :data:`SHAPE_COLUMNS` order) and the row's own
    columns to echo (shape columns as ints, other numbers as int or float, text as text)."""

    row: int
    family: str
    hardware: str
    engine: str
    dtype: str
    shape: tuple[int, ...]
    echo: dict[str, int | float | str]


class Group(NamedTuple):
    """What rows of one (family, hardware, engine, dtype) share: the family's constants and
    fitted coefficients, in the family's symbol order."""

    consts: tuple[float, ...]
    params: tuple[float, ...]


# --------------------------------------------------------------------------- the catalogue


class Catalogue:
    """The shipped calibrations and hardware specs, loaded once each on first use."""

    def __init__(self) -> None:
        self.pairs = frozenset(catalogue.engine_pairs())
        self._calibrations: dict[tuple[str, str], EngineCalibration] = {}
        self._specs: dict[str, HardwareSpec] = {}
        self._groups: dict[tuple[str, str, str, str], Group] = {}

    def calibration(self, hardware: str, engine: str) -> EngineCalibration:
        """The calibration of ``engine`` on ``hardware`` (it must be in :attr:`pairs`)."""
        key = (hardware, engine)
        if key not in self._calibrations:
            path = catalogue.engine_path(hardware, engine)
            self._calibrations[key] = engine_calibration(hardware, engine, path, "engine")
        return self._calibrations[key]

    def spec(self, hardware: str) -> HardwareSpec:
        """The catalogue's hardware spec ``hardware`` (it must exist)."""
        if hardware not in self._specs:
            self._specs[hardware] = load_hardware(catalogue.path("hardware", hardware))
        return self._specs[hardware]

    def group(self, family: str, hardware: str, engine: str, dtype: str) -> Group:
        """Constants and coefficients of a calibrated (family, hardware, engine, dtype); a
        ConfigError naming the calibration file if it lacks a coefficient of the family."""
        key = (family, hardware, engine, dtype)
        if key not in self._groups:
            fam = kernels.family(family)
            values = gpu_fit.constants(self.spec(hardware), family, dtype)
            terms = self.calibration(hardware, engine).terms(family, dtype)
            missing = [s.name for s in fam.param_symbols if s.name not in terms]
            if missing:
                raise ConfigError(
                    catalogue.engine_path(hardware, engine),
                    f"families.{family}.dtypes.{dtype}.params",
                    f"no {', '.join(missing)}: the calibration is older than the {family} "
                    "family; fit it again (python -m experiments.calibrate_gpu)",
                )
            self._groups[key] = Group(
                tuple(values[s] for s in fam.constants),
                tuple(terms[s.name] for s in fam.param_symbols),
            )
        return self._groups[key]


# --------------------------------------------------------------------------- reading rows


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def read_csv(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank data rows (row number, cells) of the CSV file ``path``.

    Raises :class:`PredictError` for a file that is empty, not UTF-8 or not CSV, a header with
    an empty or repeated column name or a ``latency_ms`` column, and a row with more cells than
    the header; OSError for a file that cannot be read."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        row = raw[: err.start].count(b"\n")
        raise PredictError(row, "encoding", "not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0  # lines read so far; a record's row is its first line's number - 1
    try:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise PredictError(0, "family", "the file is empty; expected a header line")
        for i, name in enumerate(header):
            if not name:
                raise PredictError(0, f"column {i + 1}", "empty column name")
            if name in header[:i]:
                raise PredictError(0, name, "repeated column name")
            if name == ANSWER_COLUMN:
                raise PredictError(0, name, "the answer's column; rename it (e.g. measured_ms)")
        found = []
        end = reader.line_num
        for cells in reader:
            row, end = end, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise PredictError(
                    row, "columns", f"{len(cells)} cells, the header names {len(header)} columns"
                )
            found.append((row, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))
    except csv.Error as err:
        raise PredictError(end, "csv", str(err)) from None
    return header, found


def _number(text: str) -> int | float | None:
    """``text`` as an int (when integral) or a finite float; None if it is neither."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() else value


def _shape_value(row: int, column: str, text: str, family: str) -> int:
    needed = ", ".join(SHAPE_COLUMNS[family])
    if not text:
        raise PredictError(row, column, f"empty ({family} rows need {needed})")
    value = _number(text)
    if value is None or not isinstance(value, int):
        raise PredictError(row, column, f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise PredictError(row, column, f"must be positive, got {value}")
    if value > MAX_SHAPE:
        raise PredictError(row, column, f"must be at most 2^53, got {value}")
    return value


def _check_key(row: int, cells: Mapping[str, str], source: Catalogue) -> tuple[str, ...]:
    """The row's (family, hardware, engine, dtype), each known and calibrated."""
    for column in KEY_COLUMNS:
        if column not in cells:
            raise PredictError(row, column, "missing column")
        if not cells[column]:
            raise PredictError(row, column, "empty")
    family, hardware, engine, dtype = (cells[c] for c in KEY_COLUMNS)
    if family not in kernels.ALL_FAMILIES:
        known = ", ".join(kernels.ALL_FAMILIES)
        raise PredictError(row, "family", f"unknown family {family!r} (known: {known})")
    calibrated = {h for h, _ in source.pairs}
    if hardware not in calibrated:
        raise PredictError(
            row, "hardware", f"no calibration of {hardware!r} (calibrated: {_names(calibrated)})"
        )
    if (hardware, engine) not in source.pairs:
        engines = {e for h, e in source.pairs if h == hardware}
        raise PredictError(
            row,
            "engine",
            f"no calibration of {engine!r} on {hardware} (calibrated: {_names(engines)})",
        )
    if not catalogue.path("hardware", hardware).is_file():
        raise PredictError(row, "hardware", f"no hardware spec {hardware!r} in the catalogue")
    fitted = source.calibration(hardware, engine).fitted_dtypes(family)
    if not fitted:
        families = source.calibration(hardware, engine).families
        raise PredictError(
            row,
            "family",
            f"{family} is not calibrated for {engine} on {hardware} "
            f"(calibrated: {_names(families)})",
        )
    if dtype not in fitted:
        raise PredictError(
            row,
            "dtype",
            f"{dtype!r} is not calibrated for {family} on {hardware}/{engine} "
            f"(calibrated: {', '.join(fitted)})",
        )
    return family, hardware, engine, dtype


def _check_moe(row: int, named: Mapping[str, int]) -> None:
    """An MoE row routes each token to at most every expert, and its experts split evenly over
    the expert-parallel GPUs."""
    if named["topk"] > named["num_experts"]:
        raise PredictError(
            row, "topk", f"{named['topk']} exceeds the {named['num_experts']} experts"
        )
    if named["num_experts"] % named["moe_ep_size"]:
        raise PredictError(
            row,
            "moe_ep_size",
            f"{named['moe_ep_size']} GPUs do not divide {named['num_experts']} experts",
        )


def check_row(row: int, header: Sequence[str], cells: Sequence[str], source: Catalogue) -> Query:
    """One data row checked against the catalogue ``source``: a :class:`Query`, or a
    :class:`PredictError` naming the first bad column."""
    values = dict(zip(header, cells, strict=True))
    family, hardware, engine, dtype = _check_key(row, values, source)
    shape = []
    for column in SHAPE_COLUMNS[family]:
        if column not in values:
            needed = ", ".join(SHAPE_COLUMNS[family])
            raise PredictError(row, column, f"missing column ({family} rows need {needed})")
        shape.append(_shape_value(row, column, values[column], family))
    named = dict(zip(SHAPE_COLUMNS[family], shape, strict=True))
    if family == "allreduce" and named["num_gpus"] < MIN_RANKS:
        ranks = named["num_gpus"]
        raise PredictError(row, "num_gpus", f"must be at least {MIN_RANKS}, got {ranks}")
    if family.endswith("attention") and named["heads"] % named["kv_heads"]:
        raise PredictError(
            row,
            "kv_heads",
            f"{named['kv_heads']} KV heads do not divide {named['heads']} query heads",
        )
    if family == "moe":
        _check_moe(row, named)
    echo: dict[str, int | float | str] = {}
    for column, text in values.items():
        if column in named:
            echo[column] = named[column]
        elif column in KEY_COLUMNS:
            echo[column] = text
        elif text:
            number = _number(text)
            echo[column] = text if number is None else number
    return Query(row, family, hardware, engine, dtype, tuple(shape), echo)


def read_queries(path: str | Path, source: Catalogue | None = None) -> list[Query]:
    """Every data row of the CSV file ``path``, checked (see :func:`check_row`), in file order."""
    source = Catalogue() if source is None else source
    header, found = read_csv(path)
    return [check_row(row, header, cells, source) for row, cells in found]


# --------------------------------------------------------------------------- evaluating


def _bucket(n: int) -> int:
    """The padded length of ``n`` rows: BUCKET · 2^j >= n."""
    size = BUCKET
    while size < n:
        size *= 2
    return size


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` (rows first) padded to ``size`` rows by repeating its first row."""
    extra = size - len(values)
    return np.concatenate([values, np.repeat(values[:1], extra, axis=0)]) if extra else values


def family_latency_s(family: str, shapes: np.ndarray, groups: Sequence[Group]) -> np.ndarray:
    """Latencies [s] of ``family`` at ``shapes`` (rows x shape columns), row i under the
    constants and coefficients ``groups[i]``: one call of the family's compiled expression."""
    n = len(shapes)
    size = _bucket(n)
    consts = _pad(np.array([g.consts for g in groups], dtype=np.float64), size)
    params = _pad(np.array([g.params for g in groups], dtype=np.float64), size)
    padded = _pad(np.asarray(shapes, dtype=np.float64), size)
    return gpu_fit.predict_s(family, padded, consts.T, params.T)[:n]


def _pair_dtype(query: Query) -> tuple[str, str, str]:
    return query.hardware, query.engine, query.dtype


def latencies_ms(queries: Sequence[Query], source: Catalogue | None = None) -> np.ndarray:
    """Latency [ms] of each query under the catalogue's calibrations, in query order.

    Raises :class:`PredictError` on the first row whose latency is not a positive finite
    number (a shape far outside the measured ones can overflow the fitted expression)."""
    source = Catalogue() if source is None else source
    out = np.empty(len(queries))
    for family in kernels.ALL_FAMILIES:
        index = [i for i, q in enumerate(queries) if q.family == family]
        if not index:
            continue
        shapes = np.array([queries[i].shape for i in index], dtype=np.float64)
        groups = [source.group(family, *_pair_dtype(queries[i])) for i in index]
        out[index] = family_latency_s(family, shapes, groups) * 1e3
    for query, value in zip(queries, out, strict=True):
        if not (math.isfinite(value) and value > 0):
            raise PredictError(query.row, "latency_ms", f"evaluates to {value} (out of range)")
    return out


def answer(path: str | Path) -> list[dict[str, int | float | str]]:
    """Each data row of the CSV file ``path`` (its echo) with ``latency_ms`` [ms] added.

    Every row is checked before any is evaluated; raises :class:`PredictError` for a bad one."""
    source = Catalogue()
    queries = read_queries(path, source)
    values = latencies_ms(queries, source)
    return [{**q.echo, ANSWER_COLUMN: float(v)} for q, v in zip(queries, values, strict=True)]


# --------------------------------------------------------------------------- measured rows


class Points(NamedTuple):
    """A calibration on its own measured rows of one family (all dtypes): measured, fitted and
    pure-roofline latencies [ms], and which rows the fit held out."""

    measured_ms: np.ndarray
    predicted_ms: np.ndarray
    roofline_ms: np.ndarray
    heldout: np.ndarray


def measured_points(calibration: EngineCalibration, spec: HardwareSpec, family: str) -> Points:
    """Evaluate ``calibration``'s fit of ``family`` on every measured row of its (hardware,
    engine) at the fitted dtypes (none fitted: empty arrays)."""
    parts = []
    for dtype in calibration.fitted_dtypes(family):
        data = gpu_fit.rows(calibration.hardware, calibration.engine, family, dtype)
        values = gpu_fit.constants(spec, family, dtype)
        consts = [values[s] for s in kernels.family(family).constants]
        terms = calibration.terms(family, dtype)
        params = [terms[s.name] for s in kernels.family(family).param_symbols]
        parts.append(
            Points(
                data.latency_ms,
                gpu_fit.predict_s(family, data.shapes, consts, params) * 1e3,
                gpu_fit.roofline_s(family, data.shapes, consts) * 1e3,
                gpu_fit.held_out(family, data.shapes).astype(bool),
            )
        )
    if not parts:
        empty = np.zeros(0)
        return Points(empty, empty, empty, np.zeros(0, dtype=bool))
    return Points(*(np.concatenate(column) for column in zip(*parts, strict=True)))
