"""Prediction intervals for serving predictions, from the GPU calibration's posterior.

A serving prediction under an engine calibration (:func:`costmodel.search.predict.predict`)
times every step with the calibration's fitted kernel families (GEMM, attention, all-reduce,
MoE, MLA; :mod:`costmodel.model.engine`).  Those fits are uncertain in two ways, both modelled
per (hardware, engine, family, dtype) fit by :mod:`costmodel.validate.gpu_uncertainty`: the
coefficients (a Laplace posterior over the fit's unconstrained coordinates u, θ = lower + exp(u)
for a bounded coefficient, else θ = u) and the observation noise (the empirical training
residuals e of log(predicted / measured), scaled by c = sqrt(n / (n - p))).  Its kernel
intervals cover about 89 % of held-out kernel rows at 0.9.

**Method: Monte Carlo with common random numbers.**  :data:`DRAWS` draws from a generator
seeded with :data:`SEED` (the intervals are reproducible).  In each draw, for every fit the
question's step uses (:func:`costmodel.config.bind.engine_fits`, plus the bf16 GEMM fit the LM
head and ``t_elem`` use):

(a) the coefficients: u ~ N(û, Σ_u) (Σ_u from its eigendecomposition; directions the data do
    not constrain have zero variance), mapped to θ = θ̂ + (θ̂ - lower)·expm1(u - û) for a
    bounded coefficient (= lower + exp(u) exactly in real arithmetic, and exactly θ̂ at u = û),
    θ = u otherwise;
(b) one multiplicative latency error of the family, exp(-c·e) with e drawn (with replacement)
    from the fit's training residuals, bound to the family's latency factor
    (:func:`costmodel.model.engine.latency_factor`, exactly 1 in every prediction).

Assumptions, stated: the error of a family is *fully correlated within the step* (one factor
per family per draw, shared by every launch of that family in every step of the steady state:
a family that runs slow on this GPU runs slow everywhere) and *independent across families*
and between a fit's coefficients and its residual; the residual's distribution does not
depend on the shape (it is the pooled training residuals of the fit); the coefficient and
noise draws are independent.  The kernels priced by bandwidth (norms, RoPE, ...) and the ring
model's collectives carry no error except through ``t_elem`` (the bf16 GEMM fit's launch
coefficient, drawn with that fit); the engine's fitted step overhead, the KV capacity (memory)
and the workload are held fixed.  The bf16 GEMM coefficients of the LM head are drawn with the
bf16 GEMM fit: the same draw as the weights' GEMM when the weights are bf16, that fit's own
draw otherwise; the LM head's latency factor likewise.

All draws of one question are solved in one vectorised call of the compiled serving model
(:mod:`costmodel.compile.serving`: the coefficients and factors are arguments of the compiled
step function).  The interval at level ℓ is the draws' (1 - ℓ)/2 and (1 + ℓ)/2 quantiles
(``inverted_cdf``: each end is a drawn value, so an unstable draw's infinite time stays
infinite); the probability of meeting an SLO is the share of draws that are stable and meet
every limit.  The central prediction is predict's own answer (all factors 1, the fitted
coefficients), and the pure roofline's (``calibrated=False``) is reported beside it, never
mixed in.  A question without an engine calibration has no posterior to draw from:
:class:`NoCalibrationError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import sympy as sp

from costmodel.compile import serving as compiled
from costmodel.config.bind import Binding, bind, engine_fits
from costmodel.model import engine as engines
from costmodel.model import kernels
from costmodel.search import predict as predictions
from costmodel.search.predict import Question
from costmodel.validate import gpu_uncertainty
from costmodel.validate.gpu_uncertainty import Posterior

LEVEL = 0.9  # default interval level
DRAWS = 2048  # Monte-Carlo draws of one question (a power of two: no padded rows)
SEARCH_DRAWS = 256  # draws per candidate when the optimiser checks P(meet SLO)
CHUNK_ROWS = 2048  # rows of one compiled call (every call padded to it: one compilation)
SEED = 20261130  # fixed seed: the intervals and probabilities are reproducible
METRICS = (
    "ttft_ms",
    "tpot_ms",
    "request_latency_s",
    "output_tok_s",
    "output_tok_s_per_gpu",
    "request_throughput_rps",
)
SLO_METRICS = ("ttft_ms", "tpot_ms")  # what an SLO may limit (at most these) [ms]
METHOD = (
    "Monte Carlo over the engine calibration's fits: Laplace-posterior coefficients and one "
    "empirical-residual latency factor per family per draw (correlated within a family, "
    "independent across families); fixed seed"
)


class NoCalibrationError(ValueError):
    """A question timed without an engine calibration (the roofline): no posterior to draw."""


class ServingInterval(NamedTuple):
    """Prediction intervals of one serving question.

    ``central``: predict's answer under the engine calibration; ``roofline``: predict's answer
    under the pure roofline (``calibrated=False``), apart; ``intervals``: metric -> (low, high)
    at ``level`` (units as predict's: ms, s, tokens/s, requests/s); ``probability``: share of
    draws meeting ``slo`` (None without one); ``stable``: share of draws with a steady state;
    ``fits``: the fits drawn ("family/dtype")."""

    central: dict[str, Any]
    roofline: dict[str, Any]
    intervals: dict[str, tuple[float, float]]
    probability: float | None
    slo: dict[str, float] | None
    stable: float
    level: float
    draws: int
    seed: int
    fits: list[str]
    method: str


class FitDraw(NamedTuple):
    """What one fit's draw sets: the family's coefficient symbols by parameter index, and the
    families whose latency factor takes its residual error."""

    symbols: tuple[tuple[sp.Symbol, int], ...]
    factors: tuple[str, ...]


# --------------------------------------------------------------------------- which fits


def require_calibration(binding: Binding) -> None:
    """:class:`NoCalibrationError` unless ``binding`` is timed by an engine calibration."""
    scenario = binding.scenario
    if binding.engine is None or scenario.kernels is None:
        raise NoCalibrationError(
            f"prediction intervals need an engine calibration: {scenario.model.name} on "
            f"{scenario.hardware.name} is timed by the "
            f"{predictions.time_model_name(binding)} (give an engine with a calibration)"
        )


def fit_draws(binding: Binding) -> dict[tuple[str, str], FitDraw]:
    """The fits ``binding``'s step uses, by (family, fit dtype), and what each one's draw
    sets.  The bf16 GEMM fit sets the LM head's ``<name>_bf16`` coefficients, ``t_elem`` (its
    launch coefficient) and the ``gemm_bf16`` factor, merged with the weights' GEMM fit when
    that is the same fit (bf16 weights)."""
    require_calibration(binding)
    scenario = binding.scenario
    out: dict[tuple[str, str], FitDraw] = {}

    def add(key, symbols, factors):
        old = out.get(key, FitDraw((), ()))
        out[key] = FitDraw(old.symbols + tuple(symbols), old.factors + tuple(factors))

    for fit in engine_fits(scenario.kernels, binding.setting, scenario.model):
        params = kernels.family(fit.family).params
        add((fit.family, fit.dtype), [(p.symbol, i) for i, p in enumerate(params)], [fit.family])
    params = kernels.family("gemm").params
    launch = [i for i, p in enumerate(params) if p.symbol.name == "t_gemm_launch"]
    bf16 = [(engines.bf16_symbol(p.symbol), i) for i, p in enumerate(params)]
    add(("gemm", "bfloat16"), [*bf16, (engines.t_elem, launch[0])], ["gemm_bf16"])
    return dict(sorted(out.items()))


_POSTERIORS: dict[tuple, Posterior] = {}


def fit_posterior(binding: Binding, family: str, dtype: str) -> Posterior:
    """The Laplace posterior of one fit of ``binding``'s calibration (computed once per
    process and (hardware, calibration, family, dtype) names:
    :func:`costmodel.validate.gpu_uncertainty.calibration_posterior`, with the hardware spec
    of the first binding asking; the fit's own constants are the catalogue spec's, so a
    what-if spec with other figures should not be the first to ask)."""
    scenario = binding.scenario
    calibration = scenario.kernels
    key = (scenario.hardware.name, calibration.hardware, calibration.engine, family, dtype)
    if key not in _POSTERIORS:
        try:
            _POSTERIORS[key] = gpu_uncertainty.calibration_posterior(
                scenario.hardware, calibration, family, dtype
            )
        except (ValueError, KeyError) as err:  # no committed training rows of that fit
            raise NoCalibrationError(
                f"no posterior for the {family} {dtype} fit of {calibration.engine} on "
                f"{calibration.hardware}: {err}"
            ) from None
    return _POSTERIORS[key]


# --------------------------------------------------------------------------- draws


def coefficient_draws(
    family: str, fitted: Sequence[float], post: Posterior, z: np.ndarray
) -> np.ndarray:
    """Coefficients of ``family`` for each row of standard normals ``z`` (draws x p): u - û
    = z · sqrt(Σ_u) (eigendecomposition, negative eigenvalues clipped to 0), then θ = θ̂ +
    (θ̂ - lower)·expm1(u - û) for a bounded coefficient, θ̂ + (u - û) for a free one, with θ̂
    = ``fitted`` (exactly θ̂ where u = û) [the coefficients' units]."""
    values, vectors = np.linalg.eigh(0.5 * (post.covariance + post.covariance.T))
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    deviation = z @ root.T
    theta = np.asarray(fitted, dtype=np.float64)[None, :]
    out = np.empty_like(deviation)
    for i, p in enumerate(kernels.family(family).params):
        if p.lower is None:
            out[:, i] = theta[0, i] + deviation[:, i]
        else:
            out[:, i] = theta[0, i] + (theta[0, i] - p.lower) * np.expm1(deviation[:, i])
    return out


def residual_factors(post: Posterior, e: np.ndarray) -> np.ndarray:
    """Multiplicative latency errors exp(-c·e) of drawn training residuals ``e``, c =
    sqrt(n / (n - p)) (gpu_uncertainty's scaling of in-sample residuals) [1]."""
    n = len(post.residuals)
    scale = math.sqrt(n / max(n - post.rank, 1))
    return np.exp(-scale * e)


def value_table(
    binding: Binding,
    draws: int,
    seed: int,
    posteriors: Mapping[tuple[str, str], Posterior] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The compiled step function's binding arguments for every draw (draws x arguments, in
    :attr:`ServingFunctions.values` order), and the fits drawn ("family/dtype").  Each fit in
    (family, dtype) order takes its normals, then its residuals, from one generator seeded
    with ``seed``; ``posteriors`` overrides a fit's posterior (tests)."""
    fns = predictions.functions(binding)
    column = {s: i for i, s in enumerate(fns.values)}
    base = np.array([float(binding.values[s]) for s in fns.values], dtype=np.float64)
    table = np.tile(base, (draws, 1))
    rng = np.random.default_rng(seed)
    calibration = binding.scenario.kernels
    names = []
    for (family, dtype), target in fit_draws(binding).items():
        post = (posteriors or {}).get((family, dtype)) or fit_posterior(binding, family, dtype)
        terms = calibration.terms(family, dtype)
        fitted = [terms[p.symbol.name] for p in kernels.family(family).params]
        theta = coefficient_draws(family, fitted, post, rng.standard_normal((draws, len(fitted))))
        if len(post.residuals):
            factor = residual_factors(post, rng.choice(post.residuals, size=draws))
        else:
            factor = np.ones(draws)
        for symbol, i in target.symbols:
            if symbol in column:
                table[:, column[symbol]] = theta[:, i]
        for name in target.factors:
            symbol = engines.latency_factor(name)
            if symbol in column:
                table[:, column[symbol]] = factor
        names.append(f"{family}/{dtype}")
    return table, names


# --------------------------------------------------------------------------- solving


def solve_draws(questions: Sequence[Question], table: np.ndarray) -> dict[str, np.ndarray]:
    """Every question (one binding, one loop: closed or open, aggregated or not) at every row
    of ``table`` (draws x the binding's arguments), in one call of the compiled serving model:
    predict's metrics, each (questions x draws), plus ``stable``."""
    binding = questions[0].binding
    loop = (questions[0].point.closed, questions[0].point.disaggregated)
    fns = predictions.functions(binding)
    nq, draws = len(questions), len(table)
    work = [binding.serving_values(q.point) for q in questions]
    limits = [predictions.capacity(binding, q.point)[1] for q in questions]
    arrival = [q.point.concurrency if loop[0] else q.point.request_rate for q in questions]
    rows = nq * draws

    def column(per_question, per_draw=None):
        if per_draw is None:
            return np.repeat(np.asarray(per_question, dtype=np.float64), draws)
        return np.tile(per_draw, nq)

    columns = {s: column([float(w[s]) for w in work]) for s in compiled.WORKLOAD}
    arrivals, limit = column(arrival), column(limits)
    values = [column(None, table[:, i]) for i in range(table.shape[1])]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, CHUNK_ROWS):  # one compiled shape: every chunk padded to it
        end = min(start + CHUNK_ROWS, rows)

        out = compiled.solver(fns, loop)(
            {s: _chunk(c, start, end) for s, c in columns.items()},
            _chunk(arrivals, start, end),
            _chunk(limit, start, end),
            [_chunk(v, start, end) for v in values],
        )
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v)[: end - start])
    got = {k: np.concatenate(v).reshape(nq, draws) for k, v in parts.items()}
    osl = np.array([q.point.osl for q in questions], dtype=np.float64)[:, None]
    gpus = np.array([binding.setting.tp * q.point.replicas for q in questions])[:, None]
    ttft, tpot, rate = got["ttft_s"], got["tpot_s"], got["throughput_rps"]
    return {
        "ttft_ms": ttft * 1e3,
        "tpot_ms": tpot * 1e3,
        "request_latency_s": ttft + (osl - 1) * tpot,
        "output_tok_s": rate * osl,
        "output_tok_s_per_gpu": rate * osl / gpus,
        "request_throughput_rps": rate,
        "stable": got["stable"].astype(bool),
    }


def _chunk(full: np.ndarray, start: int, end: int) -> jnp.ndarray:
    """Rows ``start:end`` of ``full`` padded (copies of the first) to :data:`CHUNK_ROWS`."""
    piece = full[start:end]
    return jnp.asarray(np.concatenate([piece, np.repeat(piece[:1], CHUNK_ROWS - len(piece))]))


# --------------------------------------------------------------------------- summaries


def check_level(level: float) -> None:
    """ValueError unless 0 < ``level`` < 1."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must lie strictly between 0 and 1, not {level}")


def check_slo(slo: Mapping[str, float]) -> None:
    """ValueError unless ``slo`` limits only :data:`SLO_METRICS`, each by a positive number."""
    unknown = sorted(set(slo) - set(SLO_METRICS))
    if unknown or not slo:
        raise ValueError(f"an SLO limits {' and/or '.join(SLO_METRICS)}, not {unknown or 'none'}")
    for name, limit in slo.items():
        if not limit > 0:
            raise ValueError(f"SLO {name} must be positive, not {limit}")


def interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of ``samples`` (drawn values: inverted
    CDF, so an infinite draw stays infinite rather than becoming NaN)."""
    check_level(level)
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(low), float(high)


def meet_share(metrics: Mapping[str, np.ndarray], slo: Mapping[str, float]) -> np.ndarray:
    """Share of draws (the last axis) that are stable and meet every limit of ``slo`` [1]."""
    check_slo(slo)
    meets = np.asarray(metrics["stable"], dtype=bool)
    for name, limit in slo.items():
        meets = meets & (np.asarray(metrics[name]) <= limit)
    return meets.mean(axis=-1)


# --------------------------------------------------------------------------- public


def draw_metrics(
    question: Question,
    *,
    draws: int = DRAWS,
    seed: int = SEED,
    posteriors: Mapping[tuple[str, str], Posterior] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every draw's :data:`METRICS` and ``stable`` (arrays of shape (1, draws), units as
    predict's), and the fits drawn ("family/dtype"); see :func:`serving_interval`."""
    require_calibration(question.binding)
    table, names = value_table(question.binding, draws, seed, posteriors)
    return solve_draws([question], table), names


def serving_interval(
    question: Question,
    level: float = LEVEL,
    *,
    slo: dict[str, float] | None = None,
    draws: int = DRAWS,
    seed: int = SEED,
    posteriors: Mapping[tuple[str, str], Posterior] | None = None,
) -> ServingInterval:
    """Prediction intervals at ``level`` of ``question``'s :data:`METRICS` and the probability
    of meeting ``slo`` (``{"ttft_ms": ..., "tpot_ms": ...}``, either or both), by ``draws``
    Monte-Carlo draws seeded with ``seed`` (see the module doc).  ``posteriors`` replaces
    fits' posteriors by (family, fit dtype) (tests).  :class:`NoCalibrationError` for a
    question without an engine calibration."""
    check_level(level)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    if slo is not None:
        check_slo(slo)
    binding = question.binding
    metrics, names = draw_metrics(question, draws=draws, seed=seed, posteriors=posteriors)
    scenario, setting = binding.scenario, binding.setting
    roofline = Question(bind(scenario, setting, calibrated=False), question.point)
    central, plain = predictions.predict([question, roofline])
    return ServingInterval(
        central=central,
        roofline=plain,
        intervals={m: interval(metrics[m][0], level) for m in METRICS},
        probability=None if slo is None else float(meet_share(metrics, slo)[0]),
        slo=None if slo is None else dict(slo),
        stable=float(np.mean(metrics["stable"][0])),
        level=level,
        draws=draws,
        seed=seed,
        fits=names,
        method=METHOD,
    )


def meet_probabilities(
    questions: Sequence[Question],
    slo: Mapping[str, float],
    *,
    draws: int = SEARCH_DRAWS,
    seed: int = SEED,
) -> np.ndarray:
    """P(meet ``slo``) of every question [1]: questions of one binding and loop are solved
    together, every one with the same draws (common random numbers: a draw that meets the SLO
    at a concurrency meets it at every lower one whenever the serving model's times rise with
    concurrency).  :class:`NoCalibrationError` for a question without an engine calibration."""
    check_slo(slo)
    out = np.empty(len(questions))
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(questions):
        require_calibration(q.binding)
        key = (id(q.binding), q.point.closed, q.point.disaggregated)
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        binding = questions[members[0]].binding
        table, _ = value_table(binding, draws, seed)
        metrics = solve_draws([questions[i] for i in members], table)
        out[members] = meet_share(metrics, slo)
    return out
