"""costmodel.validate.gpu_uncertainty and ``calibrate_gpu --coverage``.

The fast tests check the pieces (the pseudo-inverse, the interval's quantiles, the Laplace
posterior of one small shipped fit, the options); the slow ones check coverage on one whole
(hardware, engine) and that the fit reproduces a shipped optimum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from costmodel.config import catalogue
from costmodel.config.load import load_engine_calibration, load_hardware
from costmodel.model import kernels
from costmodel.validate import gpu_fit
from costmodel.validate import gpu_uncertainty as gu

HARDWARE = "h100-sxm"
ENGINE = "vllm"


def _shipped():
    spec = load_hardware(catalogue.path("hardware", HARDWARE))
    return spec, load_engine_calibration(catalogue.engine_path(HARDWARE, ENGINE))


def _allreduce(spec, calibration):
    dtype = sorted(calibration.families["allreduce"].dtypes)[0]
    params = calibration.families["allreduce"].dtypes[dtype].params
    data = gpu_fit.rows(spec.name, ENGINE, "allreduce", dtype)
    held = gpu_fit.held_out("allreduce", data.shapes)
    return dtype, params, data, held


def test_pinv_drops_flat_and_negative_directions():
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    h = q @ np.diag([4.0, 2.0, 0.0, -1.0]) @ q.T
    inv, rank = gu._pinv(h)
    assert rank == 2
    np.testing.assert_allclose(inv, q[:, :2] @ np.diag([0.25, 0.5]) @ q[:, :2].T, atol=1e-12)
    full, rank = gu._pinv(np.diag([2.0, 5.0]))
    assert rank == 2
    np.testing.assert_allclose(full, np.diag([0.5, 0.2]))


def _post(residuals, rank=0):
    return gu.Posterior(np.zeros(1), np.zeros((1, 1)), rank, np.asarray(residuals), 0.0)


def test_interval_without_coefficient_spread_is_the_residual_quantiles():
    residuals = np.random.default_rng(1).standard_t(3, 5000) * 0.1
    low, high = gu.log_interval(_post(residuals), np.zeros(3), 0.9)
    # measured = predicted * exp(-e): the interval is minus the residuals' quantiles.
    want_low, want_high = -np.quantile(residuals, [0.95, 0.05])
    np.testing.assert_allclose(low, want_low, atol=0.02)
    np.testing.assert_allclose(high, want_high, atol=0.02)
    assert np.all(low == low[0]) and np.all(high == high[0])


def test_interval_widens_with_coefficient_variance_and_level():
    post = _post(np.random.default_rng(2).normal(0, 0.05, 400))
    low, high = gu.log_interval(post, np.array([0.0, 0.01, 0.1]), 0.9)
    assert np.all(np.diff(high - low) > 0)
    low80, high80 = gu.log_interval(post, np.array([0.01]), 0.8)
    assert high80[0] - low80[0] < high[1] - low[1]
    # A Gaussian of variance s² + v: the interval is ±1.645 sqrt(s² + v) (Monte-Carlo error).
    assert high[2] - low[2] == pytest.approx(2 * 1.645 * math.sqrt(0.05**2 + 0.1), rel=0.05)


def test_laplace_posterior_of_a_shipped_fit():
    spec, calibration = _shipped()
    dtype, params, data, held = _allreduce(spec, calibration)
    consts = gu.consts_of(spec, "allreduce", dtype)
    train = gpu_fit.Rows(data.shapes[~held], data.latency_ms[~held])
    post = gu.posterior("allreduce", train, consts, params)
    n_params = len(params)
    assert post.covariance.shape == (n_params, n_params)
    assert 1 <= post.rank <= n_params
    np.testing.assert_allclose(post.covariance, post.covariance.T, atol=1e-15)
    assert np.linalg.eigvalsh(post.covariance).min() >= -1e-12 * abs(post.covariance).max()
    assert len(post.residuals) == len(train.latency_ms)
    assert 0 < post.sigma < 1
    # The shipped coefficients are the fit's optimum: the intervals hold the predictions.
    predicted, low, high = gu.interval_ms("allreduce", post, data.shapes[held], consts)
    assert np.all(low < predicted * 1.5) and np.all(high > predicted / 1.5)
    assert np.all(low < high) and np.all(low > 0)
    inside, rows = gu.dtype_coverage(spec, ENGINE, "allreduce", dtype, params)
    assert rows == int(held.sum()) and 0 <= inside <= rows


def test_kernel_interval_from_a_shipped_calibration():
    spec, calibration = _shipped()
    dtype, params, data, held = _allreduce(spec, calibration)
    shapes = data.shapes[held][:3]
    predicted, low, high = gu.kernel_interval_ms(spec, calibration, "allreduce", dtype, shapes)
    consts = gu.consts_of(spec, "allreduce", dtype)
    names = [p.symbol.name for p in kernels.family("allreduce").params]
    want = gpu_fit.predict_s("allreduce", shapes, consts, [params[k] for k in names]) * 1e3
    np.testing.assert_allclose(predicted, want, rtol=1e-9)
    assert np.all(low < high) and np.all(low > 0)
    wide = gu.kernel_interval_ms(spec, calibration, "allreduce", dtype, shapes, 0.99)
    assert np.all(wide[1] <= low) and np.all(wide[2] >= high)


def test_coverage_share():
    cov = gu.Coverage("h", "e", 0.9, 9, 10, {"gemm": (9, 10)})
    assert cov.share == 0.9
    assert math.isnan(gu.Coverage("h", "e", 0.9, 0, 0, {}).share)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--level", "0.9"], "--level: needs --coverage"),
        (["--coverage", "--level", "1.5"], "--level: expected a level in (0, 1)"),
        (["--coverage", "--level", "nan"], "--level: expected a level in (0, 1)"),
        (["--coverage", "--family", "gemm"], "--coverage: fits nothing; drop --family"),
    ],
)
def test_bad_coverage_options(argv, words, capsys):
    from experiments.calibrate_gpu import parse_args

    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    assert words in capsys.readouterr().err


def test_coverage_options():
    from experiments.calibrate_gpu import parse_args

    args = parse_args(["--coverage", "--hardware", HARDWARE])
    assert args.coverage and args.level == 0.9
    assert parse_args(["--coverage", "--level", "0.5"]).level == 0.5
    plain = parse_args([])
    assert not plain.coverage and plain.level is None


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_coverage_of_one_pair_is_near_its_level(capsys):
    from experiments.calibrate_gpu import coverage, parse_args

    assert (
        coverage(parse_args(["--coverage", "--hardware", HARDWARE, "--engine", ENGINE, "--json"]))
        == 0
    )
    import json

    (result,) = json.loads(capsys.readouterr().out)["coverage"]
    assert (result["hardware"], result["engine"], result["level"]) == (HARDWARE, ENGINE, 0.9)
    assert 0.80 <= result["coverage"] <= 0.97, result
    assert result["rows"] == sum(f["rows"] for f in result["families"].values())


@pytest.mark.slow
def test_the_fit_reproduces_the_shipped_optimum():
    spec, calibration = _shipped()
    dtype, params, _, _ = _allreduce(spec, calibration)
    assert gu.refit_matches(spec, ENGINE, "allreduce", dtype, params) < 1e-3
