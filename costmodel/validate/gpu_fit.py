"""Fitting the kernel families (:mod:`costmodel.model.kernels`) to measured GPU kernel latencies.

The measurements are the committed subset in ``costmodel/data/gpu_kernels/`` (see its
``SOURCE.md``: NVIDIA AIConfigurator's published tables, Apache-2.0).  For each (hardware,
engine, family, dtype) the family's coefficients are fitted with optax (Adam, then L-BFGS) to
the training rows, minimising the mean pseudo-Huber loss of log(predicted / measured); the
held-out rows are never seen by the fit.

**Split, by shape** (seeded, deterministic, a function of the shapes only):

* ``gemm``: a quarter of the (n, k) weight shapes are held out, all their m with them;
* ``context_attention`` and ``generation_attention``: a quarter of the head configurations
  (h, h_kv, d_h) and a fifth of the token counts T are held out; a row is held out when either
  is, trained on when neither is;
* ``allreduce``: every fourth message size (in sorted order) is held out;
* ``moe``: a quarter of the expert configurations (D, F_e, k_e, E, tp_e, ep), all their token
  counts with them (as a GEMM's weight shape);
* the MLA families: a quarter of the (B, h) pairs (one head count per GPU sits in a single
  model's tables: heads alone are too few to hold a quarter out) or a fifth of the token
  counts (S or T); a row is held out when either is.

Errors are |predicted / measured - 1| per row, summarised as median and 90th percentile.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import NamedTuple

import numpy as np
import sympy as sp

from costmodel.config.specs import EngineCalibration, HardwareSpec, exact
from costmodel.model import kernels
from costmodel.model import symbols as sy
from costmodel.model.kernels import Family

DATA_PACKAGE = "costmodel.data.gpu_kernels"
HELD_OUT_FRACTION = {"gemm": 0.25, "heads": 0.25, "tokens": 0.2, "moe": 0.25}
ALLREDUCE_HELD_OUT_EVERY = 4
SPLIT_SALT = "costmodel-gpu-split-v1"
HUBER_DELTA = 0.15  # pseudo-Huber scale of the log-error loss: errors above ~15 % count linearly
ADAM_STEPS = 3000
ADAM_RATE = 0.03
LBFGS_STEPS = 600
PAD = 256  # training rows are padded to a multiple of this: few shapes, few compilations

# Shape columns of each family's table, in the family's shape-symbol order.
SHAPE_COLUMNS = {
    "gemm": ("m", "n", "k"),
    "context_attention": ("batch", "isl", "heads", "kv_heads", "head_dim"),
    "generation_attention": ("batch", "isl", "heads", "kv_heads", "head_dim"),
    "allreduce": ("message_bytes", "num_gpus"),
    "moe": (
        "num_tokens",
        "hidden_size",
        "inter_size",
        "topk",
        "num_experts",
        "moe_tp_size",
        "moe_ep_size",
    ),
    "mla_context": ("batch", "isl", "heads"),
    "mla_generation": ("batch", "isl", "heads"),
    "mla_context_module": ("batch", "isl", "heads"),
    "mla_generation_module": ("batch", "isl", "heads"),
}
# The committed file each family's rows are in (default: ``<family>.csv.gz``); a file holding
# several families names each row's in its ``family`` column.
TABLE_FILES = {
    "mla_context": "mla",
    "mla_generation": "mla",
    "mla_context_module": "mla",
    "mla_generation_module": "mla",
}
TEXT_COLUMNS = frozenset({"hardware", "engine", "dtype", "family", "kernel"})


class Rows(NamedTuple):
    """Measured rows of one (hardware, engine, family, dtype): shapes (n x d) and latency [ms]."""

    shapes: np.ndarray
    latency_ms: np.ndarray


class Errors(NamedTuple):
    """Absolute relative errors summarised: rows, median, 90th percentile [1]."""

    n: int
    median: float
    p90: float


def summarise(predicted: np.ndarray, measured: np.ndarray) -> Errors:
    """Median and 90th percentile of |predicted / measured - 1|."""
    err = np.abs(np.asarray(predicted) / np.asarray(measured) - 1)
    if not len(err):
        return Errors(0, math.nan, math.nan)
    return Errors(len(err), float(np.median(err)), float(np.quantile(err, 0.9)))


# --------------------------------------------------------------------------- data


def table_file(family: str) -> str:
    """The committed file of ``family``'s rows (in ``costmodel/data/gpu_kernels``)."""
    return f"{TABLE_FILES.get(family, family)}.csv.gz"


@cache
def _file(name: str) -> tuple[list[str], list[tuple]]:
    raw = resources.files(DATA_PACKAGE).joinpath(name).read_bytes()
    reader = csv.reader(io.StringIO(gzip.decompress(raw).decode()))
    header = next(reader)
    rows = [
        tuple(v if h in TEXT_COLUMNS else float(v) for h, v in zip(header, row, strict=True))
        for row in reader
    ]
    return header, rows


@cache
def table(family: str) -> tuple[list[str], list[tuple]]:
    """The committed table of ``family``: its header and rows (strings and numbers); the first
    three columns are hardware, engine and dtype."""
    header, rows = _file(table_file(family))
    if "family" in header:
        column = header.index("family")
        rows = [r for r in rows if r[column] == family]
    return header, rows


def pairs() -> list[tuple[str, str]]:
    """Every (hardware, engine) with measurements of all four families, sorted."""
    found = None
    for name in kernels.FAMILIES:
        _, data = table(name)
        here = {(r[0], r[1]) for r in data}
        found = here if found is None else found & here
    return sorted(found or ())


def dtypes(hardware: str, engine: str, family: str) -> list[str]:
    """Dtypes measured for ``family`` on (hardware, engine), sorted."""
    _, rows = table(family)
    return sorted({r[2] for r in rows if r[0] == hardware and r[1] == engine})


def rows(hardware: str, engine: str, family: str, dtype: str) -> Rows:
    """The measured rows of one (hardware, engine, family, dtype)."""
    header, data = table(family)
    columns = [header.index(c) for c in SHAPE_COLUMNS[family]]
    latency = header.index("latency_ms")
    chosen = [r for r in data if r[0] == hardware and r[1] == engine and r[2] == dtype]
    shapes = np.array([[r[c] for c in columns] for r in chosen], dtype=np.float64)
    return Rows(shapes.reshape(len(chosen), len(columns)), np.array([r[latency] for r in chosen]))


def _held(key: tuple, fraction: float) -> bool:
    """Whether a shape key is held out: a salted hash, so the split needs no state."""
    digest = hashlib.sha256(repr((SPLIT_SALT, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def held_out(family: str, shapes: np.ndarray) -> np.ndarray:
    """Per row: True if held out (see the module docstring for the rule)."""
    if family == "gemm":
        return np.array([_held(("nk", n, k), HELD_OUT_FRACTION["gemm"]) for _, n, k in shapes])
    if family == "allreduce":
        sizes = sorted(set(shapes[:, 0]))
        held = {s for i, s in enumerate(sizes) if i % ALLREDUCE_HELD_OUT_EVERY == 2}
        return np.array([s in held for s in shapes[:, 0]])
    if family == "moe":
        fraction = HELD_OUT_FRACTION["moe"]
        return np.array([_held(("moe", *row[1:]), fraction) for row in shapes], dtype=bool)
    if family.startswith("mla"):
        heads = [_held(("mla", row[0], row[2]), HELD_OUT_FRACTION["heads"]) for row in shapes]
    else:
        heads = [_held(("heads", *row[2:]), HELD_OUT_FRACTION["heads"]) for row in shapes]
    tokens = [_held(("tokens", row[1]), HELD_OUT_FRACTION["tokens"]) for row in shapes]
    return np.logical_or(heads, tokens)


# --------------------------------------------------------------------------- constants


def _peak(spec: HardwareSpec, unit: str, dtype: str, family: str) -> float:
    peak = getattr(spec.peak_tflops, unit)
    if peak is None:
        raise ValueError(f"{spec.name} has no {unit} peak for {dtype} {family} kernels")
    return float(exact(peak) * 10**12)


def constants(spec: HardwareSpec, family: str, dtype: str) -> dict[sp.Symbol, float]:
    """Values of the family's precision and hardware symbols for ``dtype`` on ``spec``."""
    if family == "gemm":
        fmt = kernels.GEMM_FORMATS[dtype]
        peak = getattr(spec.peak_tflops, fmt.peak)
        if peak is None:
            raise ValueError(f"{spec.name} has no {fmt.peak} peak for {dtype} GEMMs")
        return {
            sy.b_w: float(fmt.weight_bytes),
            kernels.b_x: float(fmt.input_bytes),
            sy.peak_matmul: float(exact(peak) * 10**12),
            sy.hbm_bandwidth: float(spec.hbm_bandwidth),
        }
    if family == "allreduce":
        return {sy.link_bandwidth: float(spec.link_bandwidth)}
    if family == "moe":
        fmt = kernels.MOE_FORMATS[dtype]
        return {
            sy.b_we: float(fmt.weight_bytes),
            sy.peak_expert: _peak(spec, fmt.peak, dtype, family),
            sy.peak_vector: float(spec.peak_flops("fp32")),
            sy.hbm_bandwidth: float(spec.hbm_bandwidth),
        }
    if family.endswith("_module"):
        gemm, kv = dtype.split("/")
        fmt = kernels.GEMM_FORMATS[gemm]
        return {
            sy.b_w: float(fmt.weight_bytes),
            sy.b_kv: float(kernels.KV_BYTES[kv]),
            sy.peak_matmul: _peak(spec, fmt.peak, dtype, family),
            sy.peak_attention: float(spec.peak_flops("bf16")),
            sy.peak_vector: float(spec.peak_flops("fp32")),
            sy.hbm_bandwidth: float(spec.hbm_bandwidth),
        }
    return {
        sy.b_kv: float(kernels.KV_BYTES[dtype]),
        sy.peak_attention: float(spec.peak_flops("bf16")),
        sy.hbm_bandwidth: float(spec.hbm_bandwidth),
    }


# --------------------------------------------------------------------------- the fit


@cache
def _compiled(name: str):
    """(time, roofline) of ``name`` as JAX functions of (shape columns, constants, params)."""
    import jax

    from costmodel.compile.codegen import compile_expr

    fam = kernels.family(name)
    args = (*fam.shape, *fam.constants, *fam.param_symbols)
    time = compile_expr(fam.time, args)
    roof = compile_expr(fam.roofline, (*fam.shape, *fam.constants))
    return jax.jit(time), jax.jit(roof)


def predict_s(family: str, shapes: np.ndarray, consts: Sequence[float], params) -> np.ndarray:
    """Latencies [s] of ``shapes`` (rows x shape columns) under fitted ``params``."""
    time, _ = _compiled(family)
    return np.asarray(time(*shapes.T, *consts, *params))


def roofline_s(family: str, shapes: np.ndarray, consts: Sequence[float]) -> np.ndarray:
    """Pure-roofline latencies [s] of ``shapes`` at the datasheet peaks."""
    _, roof = _compiled(family)
    return np.broadcast_to(np.asarray(roof(*shapes.T, *consts)), (len(shapes),))


def _to_physical(fam: Family, raw):
    """Unconstrained values -> coefficients: lower + exp(u) for a bounded one, u otherwise."""
    import jax.numpy as jnp

    return [
        r if p.lower is None else p.lower + jnp.exp(r) for p, r in zip(fam.params, raw, strict=True)
    ]


def _initial(fam: Family, latency_s: np.ndarray) -> np.ndarray:
    """Starting values (unconstrained) from each coefficient's ``start``; the launch time at
    half the fastest row; a coefficient without one at 0 (an efficiency of 1/2)."""
    raw = np.zeros(len(fam.params))
    for i, p in enumerate(fam.params):
        start = 0.5 * float(np.min(latency_s)) if p == fam.launch else p.start
        if start is not None:
            raw[i] = start if p.lower is None else math.log(start - p.lower)
    return raw


def fit_loss(name: str):
    """The fit's objective of family ``name`` and the log latency it compares: ``loss(raw,
    shapes, consts, log_measured, weight)``, the weighted mean pseudo-Huber of log(predicted /
    measured) at scale :data:`HUBER_DELTA`, and ``log_time(raw, shapes, consts)``, both in the
    unconstrained coefficients ``raw`` (JAX functions, for the fit and its posterior)."""
    import jax.numpy as jnp

    fam = kernels.family(name)
    time, _ = _compiled(name)

    def log_time(raw, shapes, consts):
        return jnp.log(time(*shapes.T, *consts, *_to_physical(fam, raw)))

    def loss(raw, shapes, consts, log_measured, weight):
        r = (log_time(raw, shapes, consts) - log_measured) / HUBER_DELTA
        huber = jnp.sqrt(1 + r * r) - 1
        return jnp.sum(weight * huber) / jnp.sum(weight)

    return loss, log_time


@cache
def _runner(name: str):
    """A jitted fit of ``name``: (raw0, shapes, consts, log_measured, weight) -> raw."""
    import jax
    import optax

    loss, _ = fit_loss(name)

    @jax.jit
    def run(raw0, shapes, consts, log_measured, weight):
        f = lambda raw: loss(raw, shapes, consts, log_measured, weight)  # noqa: E731
        schedule = optax.cosine_decay_schedule(ADAM_RATE, ADAM_STEPS)
        adam = optax.adam(schedule)

        def adam_step(carry, _):
            raw, state = carry
            grads = jax.grad(f)(raw)
            updates, state = adam.update(grads, state, raw)
            return (optax.apply_updates(raw, updates), state), None

        (raw, _), _ = jax.lax.scan(adam_step, (raw0, adam.init(raw0)), None, ADAM_STEPS)
        lbfgs = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(f)

        def lbfgs_step(carry, _):
            raw, state = carry
            value, grad = value_and_grad(raw, state=state)
            updates, state = lbfgs.update(grad, state, raw, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(raw, updates), state), None

        (raw, _), _ = jax.lax.scan(lbfgs_step, (raw, lbfgs.init(raw)), None, LBFGS_STEPS)
        return raw

    return run


def fit(family: str, data: Rows, consts: Sequence[float]) -> dict[str, float]:
    """Fitted coefficients (by symbol name, physical units) of ``family`` to ``data``."""
    import jax.numpy as jnp

    fam = kernels.family(family)
    n = len(data.latency_ms)
    size = max(PAD, -(-n // PAD) * PAD)
    shapes = np.ones((size, data.shapes.shape[1]))
    shapes[:n] = data.shapes
    log_measured = np.zeros(size)
    log_measured[:n] = np.log(data.latency_ms * 1e-3)
    weight = np.zeros(size)
    weight[:n] = 1.0
    raw0 = _initial(fam, data.latency_ms * 1e-3)
    raw = _runner(family)(
        jnp.asarray(raw0),
        jnp.asarray(shapes),
        jnp.asarray(np.asarray(consts, dtype=np.float64)),
        jnp.asarray(log_measured),
        jnp.asarray(weight),
    )
    physical = _to_physical(fam, raw)
    return {p.symbol.name: float(v) for p, v in zip(fam.params, physical, strict=True)}


class DtypeFit(NamedTuple):
    """One fitted (hardware, engine, family, dtype): coefficients and errors."""

    params: dict[str, float]
    train: Errors
    heldout: Errors
    roofline_heldout: Errors


def fit_dtype(spec: HardwareSpec, engine: str, family: str, dtype: str) -> DtypeFit:
    """Fit one dtype of a family on (spec, engine) and measure it on both splits."""
    fam = kernels.family(family)
    data = rows(spec.name, engine, family, dtype)
    consts = [constants(spec, family, dtype)[s] for s in fam.constants]
    held = held_out(family, data.shapes)
    train = Rows(data.shapes[~held], data.latency_ms[~held])
    params = fit(family, train, consts)
    values = [params[p.symbol.name] for p in fam.params]
    predicted_ms = predict_s(family, data.shapes, consts, values) * 1e3
    roof_ms = roofline_s(family, data.shapes, consts) * 1e3
    return DtypeFit(
        params,
        summarise(predicted_ms[~held], data.latency_ms[~held]),
        summarise(predicted_ms[held], data.latency_ms[held]),
        summarise(roof_ms[held], data.latency_ms[held]),
    )


def pooled(
    spec: HardwareSpec, engine: str, family: str, fits: Mapping[str, DtypeFit]
) -> dict[str, Errors]:
    """Errors of a family over all its dtypes together (train, held-out, roofline held-out)."""
    fam = kernels.family(family)
    parts: dict[str, list] = {"train": [], "heldout": [], "roofline": []}
    for dtype, result in fits.items():
        data = rows(spec.name, engine, family, dtype)
        consts = [constants(spec, family, dtype)[s] for s in fam.constants]
        held = held_out(family, data.shapes)
        values = [result.params[p.symbol.name] for p in fam.params]
        pred = predict_s(family, data.shapes, consts, values) * 1e3
        roof = roofline_s(family, data.shapes, consts) * 1e3
        parts["train"].append((pred[~held], data.latency_ms[~held]))
        parts["heldout"].append((pred[held], data.latency_ms[held]))
        parts["roofline"].append((roof[held], data.latency_ms[held]))
    return {
        key: summarise(
            np.concatenate([p for p, _ in chunks]), np.concatenate([m for _, m in chunks])
        )
        for key, chunks in parts.items()
    }


# --------------------------------------------------------------------------- calibrations

SPLIT = (
    "held out by shape (salted hash): gemm 1/4 of the (n, k) weight shapes; attention 1/4 of "
    "the (h, h_kv, d_h) head configurations or 1/5 of the token counts; allreduce every 4th "
    "message size"
)
MOE_SPLIT = (
    "; moe 1/4 of the expert configurations (D, F_e, k_e, E, tp_e, ep); MLA 1/4 of the "
    "(B, h) pairs or 1/5 of the token counts"
)


def data_digest(families: Sequence[str] = kernels.FAMILIES) -> str:
    """SHA-256 (first 16 hex digits) of the committed tables of ``families``, in order, each
    file once."""
    digest = hashlib.sha256()
    for name in dict.fromkeys(table_file(f) for f in families):
        digest.update(resources.files(DATA_PACKAGE).joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


def _source(families: Sequence[str]) -> str:
    """Where a calibration of ``families`` came from: the committed tables' digests (the dense
    families' as before; the MoE and MLA tables' apart, so adding them changes no digest)."""
    text = f"sha256 {data_digest()}"
    extra = [f for f in families if f in kernels.MOE_FAMILIES]
    if extra:
        text += f"; moe and mla tables sha256 {data_digest(kernels.MOE_FAMILIES)}"
    return (
        "costmodel.validate.gpu_fit on costmodel/data/gpu_kernels "
        f"({text}; NVIDIA AIConfigurator measurements, Apache-2.0)"
    )


def _errors(errors: Errors) -> dict:
    finite = errors.n > 0
    return {
        "n": errors.n,
        "median": errors.median if finite else None,
        "p90": errors.p90 if finite else None,
    }


def calibrate(
    spec: HardwareSpec,
    engine: str,
    families: Sequence[str] = kernels.ALL_FAMILIES,
    previous: EngineCalibration | None = None,
):
    """Fit every measured dtype of ``families`` on (spec, engine): an
    :class:`~costmodel.config.specs.EngineCalibration`.  With ``previous``, its fits of the
    other families are kept as they are (a refit of some families only)."""
    fitted = {}
    kept: dict = {}
    if previous is not None:
        dumped = previous.model_dump(mode="json")["families"]
        kept = {name: fit for name, fit in dumped.items() if name not in families}
    for name in families:
        fits = {d: fit_dtype(spec, engine, name, d) for d in dtypes(spec.name, engine, name)}
        if not fits:
            continue
        pool = pooled(spec, engine, name, fits)
        fitted[name] = {
            "dtypes": {
                d: {
                    "params": f.params,
                    "train": _errors(f.train),
                    "heldout": _errors(f.heldout),
                    "roofline_heldout": _errors(f.roofline_heldout),
                }
                for d, f in fits.items()
            },
            "train": _errors(pool["train"]),
            "heldout": _errors(pool["heldout"]),
            "roofline_heldout": _errors(pool["roofline"]),
        }
    families_out = {
        name: fitted[name] if name in fitted else kept[name]
        for name in kernels.ALL_FAMILIES
        if name in fitted or name in kept
    }
    return EngineCalibration.model_validate(
        {
            "hardware": spec.name,
            "engine": engine,
            "source": _source(list(families_out)),
            "split": SPLIT + (MOE_SPLIT if set(families_out) & set(kernels.MOE_FAMILIES) else ""),
            "families": families_out,
        }
    )
