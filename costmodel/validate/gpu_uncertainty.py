"""Prediction intervals for kernel latencies from the GPU calibration, and their coverage.

A fit of :mod:`costmodel.validate.gpu_fit` is one (hardware, engine, family, dtype): the
family's coefficients θ (in the fit's unconstrained coordinates u: a bounded coefficient is
lower + exp(u)) minimise the mean pseudo-Huber loss L(u) = (1/n) Σ ρ(r_i / δ) of the training
rows' log-errors r_i = log(predicted_i / measured_i), ρ(x) = sqrt(1 + x²) - 1, δ =
:data:`~costmodel.validate.gpu_fit.HUBER_DELTA`.

**Coefficient posterior (Laplace).**  Near the optimum ρ(x) ≈ x²/2, so n·L(u) is the negative
log-likelihood of Gaussian log-errors of scale δ up to the factor δ²/σ²; with the training
rows' own scale σ the posterior of u is Gaussian at the fitted optimum û with covariance

    Σ_u = σ² / (n δ²) · H⁺,    H = ∇²L(û)  (the JAX Hessian of the fit loss on the training rows),

σ² = Σ r_i² / (n - p), p the rank kept in H.  H is singular where the data does not constrain a
coefficient (a bounded coefficient driven to its bound, exp(u) → 0, has no gradient; a cache
term that no training shape reaches is flat): H is symmetrised and eigendecomposed, eigenvalues
at or below :data:`RCOND` times the largest (negative ones included: the pseudo-Huber loss is
not convex) are dropped, and the rest inverted (the Moore-Penrose pseudo-inverse).  A dropped
direction is one along which no training prediction moves, so it adds no width at training-like
shapes; it is named, not guessed, by the rank.

**Pushed through the latency.**  A row's log-latency log t(x; θ(u)) has the JAX Jacobian J(x)
in u at û (the delta method): its parameter variance is v(x) = J Σ_u Jᵀ.

**Observation noise: empirical quantiles of the training residuals.**  A kernel's latency is
not a function of its shape (clocks, tile choice, measurement noise), and the family is not the
exact law, so most of an interval's width is the residual spread, not the coefficients'.  The
training residuals of log(predicted / measured) are far from Gaussian.  Over the 303 shipped
fits with at least 20 training rows (all pairs, families and dtypes), their skewness is 0.79
in absolute value at the median and 2.7 at the 90th percentile (a family under- or
over-predicts a whole regime), their excess kurtosis 3.2 at the median, 14 at the 90th
percentile and up to 164 (80 % of the fits above 1), and the ratio (q95 - q50) / (q50 - q5)
of their quantiles runs from 0.54 to 1.6 (10th to 90th percentile of the fits).  A Gaussian of
their mean and standard deviation covers anywhere from 84 % to 99 % of a fit's own training
rows at ±1.645 sd (too wide at its centre, too narrow in heavy tails), and a Student-t is
symmetric.  The noise model is therefore the empirical distribution of each (family, dtype)'s
training residuals, chosen on training rows only: each residual scaled by c = sqrt(n / (n - p))
(the in-sample residuals of a p-coefficient fit are that much too small in mean square).  A
measured latency is then

    log measured = log t(x; θ̂) - c·e + sqrt(v(x))·z,   e ~ training residuals, z ~ N(0, 1),

and the interval at level ℓ is that sum's (1 - ℓ)/2 and (1 + ℓ)/2 quantiles (by a fixed-seed
Monte-Carlo of :data:`DRAWS` draws per fit, shared by its rows), turned back into milliseconds.
No held-out row is used to choose or scale anything.

:func:`coverage` checks the intervals on the held-out rows of the split
(:func:`costmodel.validate.gpu_fit.held_out`): the share whose measured latency lies inside.
The optimum is the shipped calibration's coefficients (the fit's own result on the same training
rows: :func:`refit_matches` re-runs :func:`costmodel.validate.gpu_fit.fit` and compares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

import numpy as np

from costmodel.config.specs import EngineCalibration, HardwareSpec
from costmodel.model import kernels
from costmodel.validate import gpu_fit

LEVEL = 0.9  # default prediction-interval level
RCOND = 1e-9  # Hessian eigenvalues at or below this share of the largest are dropped
DRAWS = 4000  # Monte-Carlo draws per fit (noise and coefficient terms)
SEED = 20261129  # fixed seed of those draws: the intervals are reproducible
CHUNK = 4096  # rows per block when taking quantiles (memory: CHUNK x DRAWS floats)


class Posterior(NamedTuple):
    """The uncertainty of one fit: the unconstrained optimum, its covariance, the kept rank,
    the training residuals of log(predicted / measured) and their scale."""

    raw: np.ndarray
    covariance: np.ndarray
    rank: int
    residuals: np.ndarray
    sigma: float


class Coverage(NamedTuple):
    """Held-out rows of a (hardware, engine), pooled and per family: inside / rows."""

    hardware: str
    engine: str
    level: float
    inside: int
    rows: int
    families: dict[str, tuple[int, int]]

    @property
    def share(self) -> float:
        """Share of held-out rows inside their interval [1]."""
        return self.inside / self.rows if self.rows else math.nan


# --------------------------------------------------------------------------- JAX pieces


def _raw(fam: kernels.Family, params: dict[str, float]) -> np.ndarray:
    """Fitted coefficients -> the fit's unconstrained coordinates (inverse of its map)."""
    out = []
    for p in fam.params:
        value = params[p.symbol.name]
        out.append(value if p.lower is None else math.log(max(value - p.lower, 1e-300)))
    return np.array(out, dtype=np.float64)


@cache
def _functions(name: str):
    """Jitted (Hessian of the fit loss, Jacobian of log latency) of family ``name`` in u."""
    import jax

    loss, log_time = gpu_fit.fit_loss(name)  # the fit's own objective, not a copy
    hessian = jax.jit(jax.hessian(loss))
    jacobian = jax.jit(jax.jacfwd(log_time))
    return hessian, jacobian, jax.jit(log_time)


def _padded(shapes: np.ndarray, *columns: np.ndarray):
    """Rows padded to a multiple of PAD (shape 1, weight 0): few shapes, few compilations."""
    n = len(shapes)
    size = max(gpu_fit.PAD, -(-n // gpu_fit.PAD) * gpu_fit.PAD)
    out = np.ones((size, shapes.shape[1]))
    out[:n] = shapes
    padded = []
    for col in columns:
        full = np.zeros(size)
        full[:n] = col
        padded.append(full)
    return out, padded


def _pinv(h: np.ndarray) -> tuple[np.ndarray, int]:
    """Pseudo-inverse of a symmetric matrix, eigenvalues <= RCOND x the largest dropped."""
    h = 0.5 * (h + h.T)
    values, vectors = np.linalg.eigh(h)
    top = float(values.max()) if len(values) else 0.0
    keep = values > RCOND * top if top > 0 else np.zeros(len(values), bool)
    inv = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    return inv, int(keep.sum())


# --------------------------------------------------------------------------- posterior


def consts_of(spec: HardwareSpec, family: str, dtype: str) -> list[float]:
    """The family's constants for ``dtype`` on ``spec``, in the family's order."""
    fam = kernels.family(family)
    values = gpu_fit.constants(spec, family, dtype)
    return [values[s] for s in fam.constants]


def posterior(
    family: str, train: gpu_fit.Rows, consts: Sequence[float], params: dict[str, float]
) -> Posterior:
    """The Laplace posterior of one fit at ``params`` (its optimum) on the training rows."""
    import jax.numpy as jnp

    fam = kernels.family(family)
    raw = _raw(fam, params)
    n, p_all = len(train.latency_ms), len(fam.params)
    log_measured = np.log(train.latency_ms * 1e-3)
    shapes, (logm, weight) = _padded(train.shapes, log_measured, np.ones(n))
    hessian, _, log_time = _functions(family)
    c = jnp.asarray(np.asarray(consts, dtype=np.float64))
    h = np.asarray(
        hessian(jnp.asarray(raw), jnp.asarray(shapes), c, jnp.asarray(logm), jnp.asarray(weight))
    ).reshape(p_all, p_all)
    residuals = np.asarray(log_time(jnp.asarray(raw), jnp.asarray(shapes), c))[:n] - log_measured
    if not np.all(np.isfinite(h)):
        h = np.zeros((p_all, p_all))
    inv, rank = _pinv(h)
    dof = max(n - rank, 1)
    sigma = float(math.sqrt(float(np.sum(residuals**2)) / dof))
    covariance = sigma**2 / (n * gpu_fit.HUBER_DELTA**2) * inv
    return Posterior(raw, covariance, rank, residuals, sigma)


def log_variance(family: str, post: Posterior, shapes: np.ndarray, consts) -> np.ndarray:
    """Per row: the variance of log latency from the coefficients (delta method)."""
    import jax.numpy as jnp

    n = len(shapes)
    if not n:
        return np.zeros(0)
    padded, _ = _padded(shapes)
    _, jacobian, _ = _functions(family)
    c = jnp.asarray(np.asarray(consts, dtype=np.float64))
    jac = np.asarray(jacobian(jnp.asarray(post.raw), jnp.asarray(padded), c))[:n]
    jac = np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(np.einsum("ij,jk,ik->i", jac, post.covariance, jac), 0.0)


def log_interval(
    post: Posterior, variance: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (low, high) offsets of log measured from log predicted at ``level``."""
    rng = np.random.default_rng(SEED)
    n = len(post.residuals)
    scale = math.sqrt(n / max(n - post.rank, 1))
    noise = -scale * rng.choice(post.residuals, size=DRAWS, replace=True)
    z = rng.standard_normal(DRAWS)
    q = [(1 - level) / 2, (1 + level) / 2]
    low, high = np.empty(len(variance)), np.empty(len(variance))
    for start in range(0, len(variance), CHUNK):
        sd = np.sqrt(variance[start : start + CHUNK])[:, None]
        lo, hi = np.quantile(noise[None, :] + sd * z[None, :], q, axis=1)
        low[start : start + CHUNK], high[start : start + CHUNK] = lo, hi
    return low, high


def interval_ms(
    family: str,
    post: Posterior,
    shapes: np.ndarray,
    consts: Sequence[float],
    level: float = LEVEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``shapes``: (predicted, low, high) latency [ms] at ``level``."""
    params = gpu_fit._to_physical(kernels.family(family), post.raw)
    predicted = gpu_fit.predict_s(family, shapes, consts, [float(v) for v in params]) * 1e3
    low, high = log_interval(post, log_variance(family, post, shapes, consts), level)
    return predicted, predicted * np.exp(low), predicted * np.exp(high)


def calibration_posterior(
    spec: HardwareSpec, calibration: EngineCalibration, family: str, dtype: str
) -> Posterior:
    """The posterior of one shipped fit (``calibration``'s coefficients of ``family`` at
    ``dtype`` on ``spec``), from its training rows in the committed tables."""
    params = calibration.families[family].dtypes[dtype].params
    data = gpu_fit.rows(spec.name, calibration.engine, family, dtype)
    if not len(data.latency_ms):
        raise ValueError(
            f"no measured {family} {dtype} rows of {calibration.engine} on {spec.name}"
        )
    held = gpu_fit.held_out(family, data.shapes)
    train = gpu_fit.Rows(data.shapes[~held], data.latency_ms[~held])
    return posterior(family, train, consts_of(spec, family, dtype), params)


def kernel_interval_ms(
    spec: HardwareSpec,
    calibration: EngineCalibration,
    family: str,
    dtype: str,
    shapes: np.ndarray,
    level: float = LEVEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``shapes`` (the family's shape columns, :data:`gpu_fit.SHAPE_COLUMNS`):
    (predicted, low, high) latency [ms] of a kernel at ``level``, from a shipped calibration."""
    post = calibration_posterior(spec, calibration, family, dtype)
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, len(gpu_fit.SHAPE_COLUMNS[family]))
    return interval_ms(family, post, shapes, consts_of(spec, family, dtype), level)


# --------------------------------------------------------------------------- coverage


def dtype_coverage(
    spec: HardwareSpec,
    engine: str,
    family: str,
    dtype: str,
    params: dict[str, float],
    level: float = LEVEL,
) -> tuple[int, int]:
    """(inside, held-out rows) of one fit: held-out rows whose measured latency lies inside
    their interval; the posterior from the training rows only."""
    data = gpu_fit.rows(spec.name, engine, family, dtype)
    held = gpu_fit.held_out(family, data.shapes)
    if not held.any() or held.all():
        return 0, 0
    consts = consts_of(spec, family, dtype)
    train = gpu_fit.Rows(data.shapes[~held], data.latency_ms[~held])
    post = posterior(family, train, consts, params)
    _, low, high = interval_ms(family, post, data.shapes[held], consts, level)
    measured = data.latency_ms[held]
    return int(np.sum((measured >= low) & (measured <= high))), int(held.sum())


def coverage(spec: HardwareSpec, calibration: EngineCalibration, level: float = LEVEL) -> Coverage:
    """Coverage of ``level`` intervals on the held-out rows of one (hardware, engine), from
    the calibration's coefficients (the fit's optimum on the training rows)."""
    families: dict[str, tuple[int, int]] = {}
    for name in kernels.ALL_FAMILIES:
        fit = calibration.families.get(name)
        if fit is None:
            continue
        inside = total = 0
        for dtype, per in sorted(fit.dtypes.items()):
            i, t = dtype_coverage(spec, calibration.engine, name, dtype, per.params, level)
            inside, total = inside + i, total + t
        if total:
            families[name] = (inside, total)
    return Coverage(
        calibration.hardware,
        calibration.engine,
        level,
        sum(i for i, _ in families.values()),
        sum(t for _, t in families.values()),
        families,
    )


def refit_matches(
    spec: HardwareSpec, engine: str, family: str, dtype: str, params: dict[str, float]
) -> float:
    """Re-run the fit (:func:`costmodel.validate.gpu_fit.fit`) on the training rows; the
    largest relative difference of its latencies from those of ``params`` over all the rows
    (0 when the fit reproduces them; coefficients along a flat direction may differ more)."""
    data = gpu_fit.rows(spec.name, engine, family, dtype)
    held = gpu_fit.held_out(family, data.shapes)
    train = gpu_fit.Rows(data.shapes[~held], data.latency_ms[~held])
    consts = consts_of(spec, family, dtype)
    again = gpu_fit.fit(family, train, consts)
    names = [p.symbol.name for p in kernels.family(family).params]
    ours = gpu_fit.predict_s(family, data.shapes, consts, [params[k] for k in names])
    theirs = gpu_fit.predict_s(family, data.shapes, consts, [again[k] for k in names])
    return float(np.max(np.abs(theirs / ours - 1)))
