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
seeded with :data:`SEED` (the intervals are reproducible).  In each draw, every fit the
question's step uses (:func:`costmodel.config.bind.engine_fits`, plus the bf16 GEMM fit of the
LM head) draws one multiplicative latency error for its family, bound to the family's latency
factor (:func:`costmodel.model.engine.latency_factor`, exactly 1 in every prediction):

    factor = exp(-c·e + s·z),   e ~ the fit's training residuals,  z ~ N(0, 1),

which is gpu_uncertainty's kernel model (log measured = log t - c·e + sqrt(v)·z) with

(a) the coefficients' part s·z: the Laplace posterior pushed through the family's log latency
    by the delta method (v(x) = J Σ_u Jᵀ: gpu_uncertainty's ``log_variance``), summarised per
    fit as s = sqrt(mean v) over the fit's own training shapes (:func:`fit_sd`; "delta", the
    default), and
(b) the noise part: e drawn with replacement from the fit's training residuals, c = sqrt(n /
    (n - p)).

Why the delta method and not the coefficients themselves ("laplace": u ~ N(û, Σ_u) mapped to
θ = θ̂ + (θ̂ - lower)·expm1(u - û) for a bounded coefficient, θ = u otherwise, with the factor
exp(-c·e); kept as ``coefficients="laplace"``): along directions the data barely constrain
the posterior's marginal sd in u reaches 13 (``q_moe``) to 88 (``c_moe_c2``) for the H100 vLLM
MoE fit and ~10 for attention fits, and drawn that far out through exp and the family's soft
maximum some draws' latencies are absurd.  Measured on Llama-3 steps (1024 prompt and 256
output tokens): under "laplace" the TPOT draws of Llama-3-8B reach 515x the central value
under TensorRT-LLM on H200 (fp8; 1.5 % of draws above 2x), 40 % of them are NaN under SGLang
on H100 (fp8 weights), and Qwen3-235B-A22B under vLLM on H100 (tp 8, fp8) gets a 0.95
quantile of 1e17 ms; under "delta" the same 8B draws (vLLM, SGLang, TensorRT-LLM) stay
within 0.91-1.11x of the central value (5-95 %), at most 4.7x (a heavy training residual).
The delta method is what the validated kernel intervals use (about 89 % held-out coverage at
0.9), and it keeps a draw's coefficient error at the size the data support.  Under "delta"
the coefficients stay at θ̂, so the LM head's bf16 GEMM coefficients and ``t_elem`` are the
fit's; its latency factor is the weights' GEMM factor when the weights are bf16 (the same
fit, the same draw) and the bf16 GEMM fit's own draw otherwise (under "laplace" likewise for
its coefficients).

Assumptions, stated: the error of a family is *fully correlated within the step* (one factor
per family per draw, shared by every launch of that family in every step of the steady state:
a family that runs slow on this GPU runs slow everywhere) and *independent across families*;
the residual's distribution and the coefficients' log-sd do not depend on the shape (each is
the fit's over its training rows: an operating point outside them gets no extra width); the
coefficient and noise parts are independent.  The kernels priced by bandwidth (norms, RoPE,
...) and the ring model's collectives carry no error; the engine's fitted step overhead, the
KV capacity (memory) and the workload are held fixed.  The factor does not depend on the
concurrency, so with a fixed seed each draw's times rise with it as the central ones do.

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
from costmodel.validate import gpu_fit, gpu_uncertainty
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
COEFFICIENTS = ("delta", "laplace")  # how the coefficients' uncertainty is drawn (module doc)
SLO_METRICS = ("ttft_ms", "tpot_ms")  # what an SLO may limit (at most these) [ms]
METHOD = {
    "delta": (
        "Monte Carlo over the engine calibration's fits: one latency factor per family per "
        "draw, exp(-c*e + s*z) with e a training residual and s the Laplace posterior's "
        "delta-method log-sd (correlated within a family, independent across families); "
        "fixed seed"
    ),
    "laplace": (
        "Monte Carlo over the engine calibration's fits: coefficients drawn from the Laplace "
        "posterior and one residual latency factor exp(-c*e) per family per draw (correlated "
        "within a family, independent across families); fixed seed"
    ),
}


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
    """What one fit's draw sets: the family's coefficient symbols by parameter index (drawn
    under "laplace" only), and the families whose latency factor takes its drawn error."""

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


_SDS: dict[tuple, float] = {}


def fit_sd(binding: Binding, family: str, dtype: str, post: Posterior) -> float:
    """The coefficients' log-latency sd of one fit: sqrt of the mean over the fit's training
    shapes of the delta method's variance J Σ_u Jᵀ
    (:func:`costmodel.validate.gpu_uncertainty.log_variance`) [1, natural log]; 0 without
    covariance."""
    if not np.any(post.covariance):
        return 0.0
    scenario = binding.scenario
    calibration = scenario.kernels
    key = (scenario.hardware.name, calibration.hardware, calibration.engine, family, dtype)
    if key not in _SDS:
        data = gpu_fit.rows(scenario.hardware.name, calibration.engine, family, dtype)
        train = data.shapes[~gpu_fit.held_out(family, data.shapes)]
        consts = gpu_uncertainty.consts_of(scenario.hardware, family, dtype)
        variance = gpu_uncertainty.log_variance(family, post, train, consts)
        _SDS[key] = float(np.sqrt(np.mean(variance))) if len(variance) else 0.0
    return _SDS[key]


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
    coefficients: str = "delta",
) -> tuple[np.ndarray, list[str]]:
    """The compiled step function's binding arguments for every draw (draws x arguments, in
    :attr:`ServingFunctions.values` order), and the fits drawn ("family/dtype").  Each fit in
    (family, dtype) order takes its normals (one per draw under "delta", one per coefficient
    under "laplace"), then its residuals, from one generator seeded with ``seed``;
    ``posteriors`` overrides a fit's posterior (tests)."""
    if coefficients not in COEFFICIENTS:
        raise ValueError(
            f"coefficients must be one of {', '.join(COEFFICIENTS)}, not {coefficients!r}"
        )
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
        if coefficients == "laplace":
            z = rng.standard_normal((draws, len(fitted)))
            theta = coefficient_draws(family, fitted, post, z)
            for symbol, i in target.symbols:
                if symbol in column:
                    table[:, column[symbol]] = theta[:, i]
            factor = np.ones(draws)
        else:
            factor = np.exp(fit_sd(binding, family, dtype, post) * rng.standard_normal(draws))
        if len(post.residuals):
            factor = factor * residual_factors(post, rng.choice(post.residuals, size=draws))
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
    # a draw the model cannot answer (NaN: a drawn coefficient far out) has no steady state
    failed = ~np.isfinite(got["ttft_s"] + got["tpot_s"] + got["throughput_rps"])
    got["stable"] = got["stable"].astype(bool) & ~failed
    for k in ("ttft_s", "tpot_s"):
        got[k] = np.where(failed, np.inf, got[k])
    got["throughput_rps"] = np.where(
        failed & np.isnan(got["throughput_rps"]), 0.0, got["throughput_rps"]
    )
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
    coefficients: str = "delta",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every draw's :data:`METRICS` and ``stable`` (arrays of shape (1, draws), units as
    predict's), and the fits drawn ("family/dtype"); see :func:`serving_interval`."""
    require_calibration(question.binding)
    table, names = value_table(question.binding, draws, seed, posteriors, coefficients)
    return solve_draws([question], table), names


def serving_interval(
    question: Question,
    level: float = LEVEL,
    *,
    slo: dict[str, float] | None = None,
    draws: int = DRAWS,
    seed: int = SEED,
    posteriors: Mapping[tuple[str, str], Posterior] | None = None,
    coefficients: str = "delta",
) -> ServingInterval:
    """Prediction intervals at ``level`` of ``question``'s :data:`METRICS` and the probability
    of meeting ``slo`` (``{"ttft_ms": ..., "tpot_ms": ...}``, either or both), by ``draws``
    Monte-Carlo draws seeded with ``seed`` (see the module doc; ``coefficients``: "delta" or
    "laplace").  ``posteriors`` replaces fits' posteriors by (family, fit dtype) (tests).
    :class:`NoCalibrationError` for a question without an engine calibration."""
    check_level(level)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    if slo is not None:
        check_slo(slo)
    binding = question.binding
    metrics, names = draw_metrics(
        question, draws=draws, seed=seed, posteriors=posteriors, coefficients=coefficients
    )
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
        method=METHOD[coefficients],
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
