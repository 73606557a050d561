"""Fit a device's efficiency parameters to measured layer times, through the compiled cost model.

The prediction for a measured layer is the cost model's own per-kernel sum: the kernels of
:func:`costmodel.model.layers.decoder_layer` (one layer, one device, attention unfused as the
reference layers run it), each timed by :func:`costmodel.model.roofline.op_time`, summed by
:func:`costmodel.model.roofline.step_time`, compiled to float64 JAX by
:mod:`costmodel.compile.codegen`.  The device's peaks (measured by
:mod:`costmodel.validate.microbench`) are fixed; the fitted parameters are the values of the
model's one calibration record, :class:`costmodel.model.calibration.Calibration` (a term it
leaves ``None`` is off):

* eta_c, achievable fraction of the matmul peak, and eta_m, of the streaming bandwidth (both
  in (0, 1], through a logistic);
* t_k, a fixed time per kernel [s];
* with ``TimeModel(overlap=True)``, the exponent p >= 1 combining compute and memory time;
* with ``TimeModel(cache=True)``, a cache capacity [bytes] and its bandwidth [bytes/s] (at
  least the memory bandwidth);
* with ``TimeModel(relayout=True)``, rho >= 0, the extra weight traffic of multi-row matmuls;
* with ``TimeModel(attention=True)``, eta_a in (0, 1], the attention kernels' rate fraction.

The loss is the mean squared log ratio of predicted to measured time, so every case weighs the
same whether it takes 50 us or 500 ms; optax's Adam minimises it on the training cases only.
Library code: pure functions, no printing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp

from costmodel.compile.codegen import compile_exprs
from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE, Cache, Calibration, TimeModel
from costmodel.model.layers import Phase, decoder_layer
from costmodel.model.ops import Op
from costmodel.model.roofline import cache_hit_fraction, compute_time, memory_time, step_time

SHAPE_SYMBOLS = (sy.B, sy.S, sy.T, sy.D, sy.H, sy.H_kv, sy.d_h, sy.F, sy.b_w, sy.b_a, sy.b_kv)
PEAK_SYMBOLS = (sy.peak_matmul, sy.peak_attention, sy.peak_vector, sy.hbm_bandwidth)
PARAM_SYMBOLS = (sy.eta_compute, sy.eta_memory, sy.kernel_overhead, *sy.CALIBRATION)
ARGS = SHAPE_SYMBOLS + PEAK_SYMBOLS + PARAM_SYMBOLS
PHASES: tuple[Phase, ...] = ("prefill", "decode")
FULL_MODEL = TimeModel(overlap=True, cache=True, relayout=True, attention=True)  # every term on


class Peaks(NamedTuple):
    """The device's fixed ceilings: matmul FLOP/s [FLOP/s] and streaming bandwidth [bytes/s]."""

    flops: float
    bandwidth: float


class Cases(NamedTuple):
    """A batch of layer shapes as float64 arrays, one entry per case.

    batch, prompt (new tokens S), context (T), d_model, heads, kv_heads, head_dim, ffn
    [elements or tokens]; bytes per weight, activation and KV element [bytes]; is_decode (1.0
    for decode, 0.0 for prefill).
    """

    batch: np.ndarray
    prompt: np.ndarray
    context: np.ndarray
    d_model: np.ndarray
    heads: np.ndarray
    kv_heads: np.ndarray
    head_dim: np.ndarray
    ffn: np.ndarray
    weight_bytes: np.ndarray
    act_bytes: np.ndarray
    kv_bytes: np.ndarray
    is_decode: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(np.size(self.batch))

    def take(self, index) -> Cases:
        """The cases at ``index`` (an integer array or boolean mask)."""
        return Cases(*(np.asarray(a)[index] for a in self))


def make_cases(rows: Sequence[Mapping]) -> Cases:
    """Cases from records with keys phase, batch, prompt, context, d_model, n_heads, n_kv_heads,
    head_dim, ffn_dim and bytes_per_element (weights, activations and cache alike)."""

    def col(key):
        return np.array([float(r[key]) for r in rows], dtype=np.float64)

    width = col("bytes_per_element")
    return Cases(
        batch=col("batch"),
        prompt=col("prompt"),
        context=col("context"),
        d_model=col("d_model"),
        heads=col("n_heads"),
        kv_heads=col("n_kv_heads"),
        head_dim=col("head_dim"),
        ffn=col("ffn_dim"),
        weight_bytes=width,
        act_bytes=width,
        kv_bytes=width,
        is_decode=np.array([1.0 if r["phase"] == "decode" else 0.0 for r in rows]),
    )


def padded_size(n: int) -> int:
    """Bucket size for ``n`` cases (a power of two, at least 64): jitted functions see few
    distinct shapes, so they compile once for many grids."""
    return max(64, 1 << max(n - 1, 0).bit_length())


def _pad(cases: Cases, size: int) -> Cases:
    """``cases`` repeated from the start up to ``size`` entries (the copies are masked out)."""
    index = np.arange(size) % max(len(cases), 1)
    return cases.take(index)


# --------------------------------------------------------------------------- the model


def layer_ops(phase: Phase) -> list[Op]:
    """Kernels of one reference decoder layer on one device: GQA, attention unfused (scores
    written and read back, as XLA runs the reference layer), repeat 1."""
    ops = decoder_layer("gqa", phase, flash=False, degree=sp.Integer(1))
    return [op.repeated(1) for op in ops]


def layer_exprs(phase: Phase, model: TimeModel) -> dict[str, sp.Expr]:
    """SymPy expressions of one layer's time [s] and its parts, in the symbols of ``ARGS``.

    ``time`` is :func:`~costmodel.model.roofline.step_time`; ``compute`` and ``memory`` sum the
    kernels' compute and memory times, ``overhead`` their fixed overheads, ``hit`` is the cache
    hit fraction (0 without the cache term).
    """
    ops = [op for op in layer_ops(phase) if op.unit != "collective"]
    hit = cache_hit_fraction(ops) if model.cache else sp.Integer(0)
    values = {sy.L: 1, sy.tp: 1}
    exprs = {
        "time": step_time(ops, model),
        "compute": sum((compute_time(op, model) for op in ops), sp.Integer(0)),
        "memory": sum((memory_time(op, hit, model) for op in ops), sp.Integer(0)),
        "overhead": len(ops) * sy.kernel_overhead,
        "hit": hit,
    }
    return {k: sp.sympify(v).xreplace(values) for k, v in exprs.items()}


@cache
def compiled_layer_model(model: TimeModel) -> Callable[..., dict[str, jax.Array]]:
    """Jitted float64 function (cases, peaks, params) -> dict of per-case arrays.

    ``params`` are the six physical parameters in the order of ``PARAM_SYMBOLS``.  Both phases'
    expressions are evaluated and each case takes its own phase's.
    """
    functions = {phase: compile_exprs(layer_exprs(phase, model), ARGS) for phase in PHASES}

    def evaluate(cases: Cases, peaks: Peaks, params) -> dict[str, jax.Array]:
        prefill_context = jnp.where(cases.is_decode > 0, cases.context, cases.prompt)
        decode_prompt = jnp.ones_like(cases.prompt)
        shape = (
            cases.batch,
            jnp.where(cases.is_decode > 0, decode_prompt, cases.prompt),
            prefill_context,
            cases.d_model,
            cases.heads,
            cases.kv_heads,
            cases.head_dim,
            cases.ffn,
            cases.weight_bytes,
            cases.act_bytes,
            cases.kv_bytes,
        )
        ceilings = (peaks.flops, peaks.flops, peaks.flops, peaks.bandwidth)
        out = {phase: functions[phase](*shape, *ceilings, *params) for phase in PHASES}
        decode = cases.is_decode > 0
        return {k: jnp.where(decode, out["decode"][k], out["prefill"][k]) for k in out["decode"]}

    return jax.jit(evaluate)


# Values a term that is off passes to the compiled function; they do not enter its result.
UNUSED_TERM = Calibration(
    overlap=1.0, cache=Cache(1.0, 1.0), weight_relayout=0.0, attention_efficiency=1.0
)


def physical_params(calibration: Calibration) -> tuple[float, ...]:
    """Parameter values in the order of ``PARAM_SYMBOLS`` (terms that are off get the harmless
    values of ``UNUSED_TERM``)."""
    filled = calibration._replace(
        **{
            k: getattr(UNUSED_TERM, k)
            for k in UNUSED_TERM._fields
            if getattr(calibration, k) is None
        }
    )
    return tuple(float(filled.symbol_values()[symbol]) for symbol in PARAM_SYMBOLS)


def predict(cases: Cases, peaks: Peaks, calibration: Calibration = PURE_ROOFLINE) -> np.ndarray:
    """Predicted layer times [s] of ``cases`` under ``calibration``."""
    return np.asarray(predict_parts(cases, peaks, calibration)["time"])


def predict_parts(
    cases: Cases, peaks: Peaks, calibration: Calibration = PURE_ROOFLINE
) -> dict[str, np.ndarray]:
    """Predicted time [s] and its parts (compute, memory, overhead [s], hit [1]) per case."""
    fn = compiled_layer_model(calibration.time_model)
    n = len(cases)
    out = fn(_pad(cases, padded_size(n)), peaks, physical_params(calibration))
    return {k: np.asarray(v)[:n] for k, v in out.items()}


# --------------------------------------------------------------------------- fitting


def _logit(x: float) -> float:
    return float(np.log(x) - np.log1p(-x))


# Where the fit of a term starts when the starting calibration leaves it off.
DEFAULT_START = Calibration(overlap=4.0, weight_relayout=1.0, attention_efficiency=0.5)
FRACTION_CLIP = (1e-3, 0.999)  # starting fractions are clipped into this open interval [1]
MIN_OVERHEAD_S = 1e-9  # smallest starting per-kernel overhead [s]


def _clip(fraction: float) -> float:
    return min(max(float(fraction), FRACTION_CLIP[0]), FRACTION_CLIP[1])


def _raw(init: Calibration, peaks: Peaks) -> dict[str, jax.Array]:
    """Unconstrained parameters whose transforms give ``init`` (terms it leaves off start at
    ``DEFAULT_START``; a cache, at the memory bandwidth and 1 byte)."""
    p = float(init.overlap if init.overlap is not None else DEFAULT_START.overlap)
    cache = init.cache or Cache(1.0, peaks.bandwidth)
    ratio = max(float(cache.bandwidth) / peaks.bandwidth - 1.0, 1e-3)
    relay = init.weight_relayout if init.weight_relayout else DEFAULT_START.weight_relayout
    attention = init.attention_efficiency or DEFAULT_START.attention_efficiency
    return {
        "eta_c": jnp.float64(_logit(_clip(init.eta_compute))),
        "eta_m": jnp.float64(_logit(_clip(init.eta_memory))),
        "t_k": jnp.float64(np.log(max(float(init.kernel_overhead_s), MIN_OVERHEAD_S))),
        "overlap": jnp.float64(np.log(max(p - 1.0, 1e-3))),
        "cache": jnp.float64(np.log(max(float(cache.capacity), 1.0))),
        "cache_bw": jnp.float64(np.log(ratio)),
        "relayout": jnp.float64(np.log(float(relay))),
        "attention": jnp.float64(_logit(_clip(attention))),
    }


def _transform(raw: Mapping[str, jax.Array], peaks: Peaks) -> tuple[jax.Array, ...]:
    """Physical parameters (order of ``PARAM_SYMBOLS``) from unconstrained ones."""
    return (
        jax.nn.sigmoid(raw["eta_c"]),
        jax.nn.sigmoid(raw["eta_m"]),
        jnp.exp(raw["t_k"]),
        1.0 + jnp.exp(raw["overlap"]),
        jnp.exp(raw["cache"]),
        peaks.bandwidth * (1.0 + jnp.exp(raw["cache_bw"])),
        jnp.exp(raw["relayout"]),
        jax.nn.sigmoid(raw["attention"]),
    )


def _calibration(raw: Mapping[str, jax.Array], peaks: Peaks, model: TimeModel) -> Calibration:
    """The fitted record: the terms ``model`` leaves off are None."""
    eta_c, eta_m, t_k, p, capacity, bandwidth, relay, attn = (
        float(v) for v in _transform(raw, peaks)
    )
    return Calibration(
        eta_compute=eta_c,
        eta_memory=eta_m,
        kernel_overhead_s=t_k,
        overlap=p if model.overlap else None,
        cache=Cache(capacity, bandwidth) if model.cache else None,
        weight_relayout=relay if model.relayout else None,
        attention_efficiency=attn if model.attention else None,
    )


def log_error_loss(
    predicted: jax.Array, measured: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean squared natural-log ratio of predicted to measured times [1], optionally weighted
    (weight 0 masks a case out)."""
    squared = jnp.square(jnp.log(predicted) - jnp.log(measured))
    if weights is None:
        return jnp.mean(squared)
    return jnp.sum(weights * squared) / jnp.sum(weights)


class FitResult(NamedTuple):
    """A fitted calibration, the loss after every step, and the number of steps taken."""

    calibration: Calibration
    losses: np.ndarray
    steps: int


@cache
def _fit_runner(model: TimeModel, steps: int, learning_rate: float) -> Callable:
    """Jitted (raw params, cases, measured, peaks) -> (raw params, losses, final loss).

    Cached per (model, steps, learning rate), so repeated fits compile once.
    """
    fn = compiled_layer_model(model)
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    optimiser = optax.adam(schedule)

    def run(raw, cases, measured, weights, peaks):
        def loss_fn(params):
            predicted = fn(cases, peaks, _transform(params, peaks))["time"]
            return log_error_loss(predicted, measured, weights)

        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = optimiser.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        carry = (raw, optimiser.init(raw))
        (raw, _), losses = jax.lax.scan(step, carry, None, length=steps)
        return raw, losses, loss_fn(raw)

    return jax.jit(run)


def fit(
    cases: Cases,
    measured: np.ndarray,
    peaks: Peaks,
    model: TimeModel,
    init: Calibration,
    *,
    steps: int = 1500,
    learning_rate: float = 0.05,
) -> FitResult:
    """Fit the parameters ``model`` uses to ``measured`` times [s] of ``cases`` with Adam.

    Terms ``model`` leaves off are not fitted (their parameters do not enter the prediction).
    The learning rate decays on a cosine schedule.  Deterministic: the same inputs give the
    same result.
    """
    run = _fit_runner(model, steps, learning_rate)
    peaks_arrays = Peaks(jnp.float64(peaks.flops), jnp.float64(peaks.bandwidth))
    n = len(cases)
    size = padded_size(n)
    measured = np.asarray(measured, dtype=np.float64)[np.arange(size) % n]
    weights = (np.arange(size) < n).astype(np.float64)
    raw, losses, final = run(_raw(init, peaks), _pad(cases, size), measured, weights, peaks_arrays)
    losses = np.append(np.asarray(losses), float(final))
    return FitResult(_calibration(raw, peaks, model), losses, steps)


# --------------------------------------------------------------------------- evaluation


class ErrorSummary(NamedTuple):
    """Absolute relative errors |predicted / measured - 1| over a set of cases."""

    cases: int
    median_abs_rel_err: float
    p90_abs_rel_err: float
    max_abs_rel_err: float
    mean_signed_log_err: float


def error_summary(predicted: np.ndarray, measured: np.ndarray) -> ErrorSummary:
    """Median, 90th percentile and maximum of the absolute relative error; mean log ratio."""
    predicted = np.asarray(predicted, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    rel = np.abs(predicted / measured - 1.0)
    return ErrorSummary(
        cases=int(rel.size),
        median_abs_rel_err=float(np.median(rel)),
        p90_abs_rel_err=float(np.percentile(rel, 90)),
        max_abs_rel_err=float(np.max(rel)),
        mean_signed_log_err=float(np.mean(np.log(predicted / measured))),
    )


# --------------------------------------------------------------------------- regime check

SCALING_THRESHOLD = 0.5  # batch exponent d log t / d log B separating flat from scaling [1]
EXPONENT_TOLERANCE = 0.2  # exponents this close agree even across the threshold [1]


class RegimeCheck(NamedTuple):
    """Batch scaling of one case against its neighbour (same layer and workload, batch x2 or /2).

    Exponents are log(t2 / t1) / log(B2 / B1) [1]: about 0 when the time is flat in batch
    (memory- or overhead-bound), about 1 when it grows with the batch (compute-bound).
    ``bound`` is the part of the predicted time that dominates (compute, memory or overhead).
    ``agree_strict``: both exponents on the same side of ``SCALING_THRESHOLD``; ``agree``: that,
    or the two exponents within ``EXPONENT_TOLERANCE`` of each other (a shape near the
    threshold, where neither regime holds, cannot be called either way).
    """

    index: int
    partner: int
    measured_exponent: float
    predicted_exponent: float
    measured_regime: str
    predicted_regime: str
    bound: str
    agree: bool
    agree_strict: bool


def _regime(exponent: float) -> str:
    return "scales with batch" if exponent >= SCALING_THRESHOLD else "flat in batch"


def batch_partners(groups: Sequence[tuple], batches: Sequence[int]) -> list[int | None]:
    """For each case, the case of the same group with the next larger batch, else the next
    smaller one; None when its group has a single batch."""
    partners: list[int | None] = []
    for i, (group, batch) in enumerate(zip(groups, batches, strict=True)):
        same = [j for j, g in enumerate(groups) if g == group and j != i]
        larger = [j for j in same if batches[j] > batch]
        smaller = [j for j in same if batches[j] < batch]
        if larger:
            partners.append(min(larger, key=lambda j: batches[j]))
        elif smaller:
            partners.append(max(smaller, key=lambda j: batches[j]))
        else:
            partners.append(None)
    return partners


def regime_checks(
    groups: Sequence[tuple],
    batches: Sequence[int],
    measured: np.ndarray,
    parts: Mapping[str, np.ndarray],
) -> list[RegimeCheck]:
    """Compare predicted and measured batch scaling for every case that has a partner.

    ``parts`` are the model's per-case ``time``, ``compute``, ``memory`` and ``overhead``.
    """
    checks = []
    predicted = np.asarray(parts["time"])
    for i, j in enumerate(batch_partners(groups, batches)):
        if j is None:
            continue
        ratio = np.log(batches[j] / batches[i])
        measured_exp = float(np.log(measured[j] / measured[i]) / ratio)
        predicted_exp = float(np.log(predicted[j] / predicted[i]) / ratio)
        shares = {k: float(parts[k][i]) for k in ("compute", "memory", "overhead")}
        bound = max(shares, key=shares.__getitem__)
        checks.append(
            RegimeCheck(
                index=i,
                partner=j,
                measured_exponent=measured_exp,
                predicted_exponent=predicted_exp,
                measured_regime=_regime(measured_exp),
                predicted_regime=_regime(predicted_exp),
                bound=f"{bound}-bound",
                agree=_regime(measured_exp) == _regime(predicted_exp)
                or abs(measured_exp - predicted_exp) <= EXPONENT_TOLERANCE,
                agree_strict=_regime(measured_exp) == _regime(predicted_exp),
            )
        )
    return checks


# --------------------------------------------------------------------------- validation


class Validation(NamedTuple):
    """Everything a validation run computes from measured layer times.

    ``calibration`` is the fit of ``model`` (the calibrated model); ``basic`` the fit of the pure
    roofline form (eta_c, eta_m, t_k only: what consumers without calibration terms use);
    ``predicted``, ``predicted_basic`` and ``predicted_roofline`` are per-case times [s] of the
    three (the last with every efficiency 1 and no overhead); ``parts`` the calibrated
    prediction's compute, memory and overhead parts [s]; ``train`` a boolean mask.
    """

    model: TimeModel
    calibration: Calibration
    basic: Calibration
    losses: np.ndarray
    basic_losses: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    predicted_basic: np.ndarray
    predicted_roofline: np.ndarray
    parts: dict[str, np.ndarray]
    train: np.ndarray
    regime: list[RegimeCheck]


def validate(
    records: Sequence[Mapping],
    measured: np.ndarray,
    peaks: Peaks,
    init: Calibration,
    *,
    model: TimeModel = FULL_MODEL,
    steps: int = 1500,
) -> Validation:
    """Fit on the records whose ``split`` is ``train``, predict every record.

    ``measured`` are the records' times [s].  The cache term is dropped when ``init`` has no
    cache (None: the device reported none).  Regime checks pair held-out cases
    with held-out neighbours only.
    """
    if init.cache is None:
        model = model._replace(cache=False)
    cases = make_cases(records)
    measured = np.asarray(measured, dtype=np.float64)
    train = np.array([r["split"] == "train" for r in records])
    if not train.any():
        raise ValueError("no training cases")
    fitted = fit(cases.take(train), measured[train], peaks, model, init, steps=steps)
    basic = fit(cases.take(train), measured[train], peaks, TimeModel(), init, steps=steps)
    parts = predict_parts(cases, peaks, fitted.calibration)
    heldout = np.flatnonzero(~train)
    groups = [_group(records[i]) for i in heldout]
    batches = [int(records[i]["batch"]) for i in heldout]
    sub_parts = {k: v[heldout] for k, v in parts.items()}
    checks = [
        c._replace(index=int(heldout[c.index]), partner=int(heldout[c.partner]))
        for c in regime_checks(groups, batches, measured[heldout], sub_parts)
    ]
    return Validation(
        model=model,
        calibration=fitted.calibration,
        basic=basic.calibration,
        losses=fitted.losses,
        basic_losses=basic.losses,
        measured=measured,
        predicted=parts["time"],
        predicted_basic=predict(cases, peaks, basic.calibration),
        predicted_roofline=predict(cases, peaks, PURE_ROOFLINE),
        parts=parts,
        train=train,
        regime=checks,
    )


def _group(record: Mapping) -> tuple:
    """Cases that differ only in batch share a group."""
    keys = ("phase", "prompt", "context", "d_model", "n_heads", "n_kv_heads", "head_dim")
    return (*(record[k] for k in keys), record["ffn_dim"])


# Starting values of a fit (the fit is deterministic from them; they only need to lie in the
# basin of a good optimum): fractions of the measured peaks a CPU or GPU roughly reaches, a
# GEMM's repacking of its weight once over, attention kernels at half the others' rate.
START = Calibration(
    eta_compute=0.7,
    eta_memory=0.8,
    overlap=2.0,
    weight_relayout=1.0,
    attention_efficiency=0.5,
)
MIN_START_OVERHEAD_S = 1e-6  # starting per-kernel overhead when none was measured [s]


def starting_calibration(profile: Mapping) -> Calibration:
    """Where the fit starts, from a device profile record
    (:func:`costmodel.validate.microbench.profile_record`): ``START``, the measured per-kernel
    overhead (at least ``MIN_START_OVERHEAD_S``), and the measured cache and its bandwidth (no
    cache term where none was found)."""
    capacity = profile.get("cache_bytes") or 0
    cache = Cache(float(capacity), float(profile["cache_bandwidth_bytes_s"])) if capacity else None
    return START._replace(
        kernel_overhead_s=max(profile.get("kernel_s") or 0.0, MIN_START_OVERHEAD_S), cache=cache
    )
