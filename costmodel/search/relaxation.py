"""The continuous relaxation of one combination: SLSQP in u = log B with JAX derivatives.

SciPy's SLSQP solves the continuous problem in u = log B (bounds 0 .. log batch_max; loss = log
of the objective, negated when maximised; constraints 1 - value / limit >= 0), with the
derivatives of the loss and of the three constraints from JAX's automatic differentiation of
the compiled SymPy expressions (``jax.jacfwd``: one variable, four outputs, one forward pass).
The roofline's max has kinks; JAX gives the active branch's derivative and SLSQP copes.  The
relaxed batch is only a hint: :mod:`costmodel.search.certificate` makes the answer exact.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from costmodel.search.problem import CONSTRAINTS, ComboValues, Objective, ScenarioValues

if TYPE_CHECKING:
    from costmodel.compile import sweep
    from costmodel.search.problem import Problem

SLSQP_MAXITER = 100  # iterations SLSQP may take per combination
SLSQP_FTOL = 1e-12  # SLSQP's stopping tolerance on the loss (a log: relative)


class Terms(NamedTuple):
    """The relaxation at one u: the loss and one 1 - value / limit per constraint (>= 0 met)."""

    loss: object
    constraints: object


_FUNCTIONS: dict[int, tuple[object, object]] = {}  # id(sweep.function) -> (it, relaxation)
_FUNCTIONS_MAX = 32  # as many as compiled problems kept (costmodel.search.problem)


def _relaxation_of(compiled: sweep.Sweep):
    """:func:`relaxation_fn` of a compiled problem, built once per compiled function."""
    key = id(compiled.function)
    entry = _FUNCTIONS.get(key)
    if entry is None or entry[0] is not compiled.function:  # a new problem (or a reused id)
        entry = (compiled.function, relaxation_fn(compiled))
        if len(_FUNCTIONS) >= _FUNCTIONS_MAX:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[key] = entry
    return entry[1]


def relaxation_fn(compiled: sweep.Sweep):
    """Jitted ``(u, combo, scenario, objective) -> Terms and d Terms / du`` at u = log B, packed
    into one array (:func:`_unpack` reads it).

    ``combo`` and ``scenario`` are :class:`ComboValues` and :class:`ScenarioValues` of float64
    scalars; ``objective`` (an :class:`Objective`, static) names the output and direction.
    """
    import jax
    import jax.numpy as jnp

    def terms(u, combo: ComboValues, scenario: ScenarioValues, objective: Objective) -> Terms:
        out = compiled.function(jnp.exp(u), *combo.columns(), *scenario)
        log = jnp.log(out[objective.output])
        loss = -log if objective.maximise else log
        slack = [1.0 - out[c.output] / getattr(scenario, c.limit) for c in CONSTRAINTS]
        return Terms(loss, jnp.stack(slack))

    def relaxation(u, combo, scenario, objective):
        def at(v):
            return terms(v, combo, scenario, objective)

        value, slope = at(u), jax.jacfwd(at)(u)
        # One array back to the host per call (see _unpack): the call overhead dominates.
        return jnp.concatenate(
            [value.loss[None], value.constraints, slope.loss[None], slope.constraints]
        )

    return jax.jit(relaxation, static_argnums=3)


def _unpack(packed: np.ndarray) -> tuple[Terms, Terms]:
    """The relaxation's value and derivative from :func:`relaxation_fn`'s packed array."""
    n = len(CONSTRAINTS)
    value = Terms(float(packed[0]), packed[1 : 1 + n])
    slope = Terms(float(packed[1 + n]), packed[2 + n : 2 + 2 * n])
    return value, slope


class Relaxed(NamedTuple):
    """SLSQP's answer for one combination: continuous batch, success flag, iterations, and
    evaluations of the compiled relaxation."""

    batch: float
    success: bool
    iterations: int
    evaluations: int


def relax(
    model: Problem,
    combo: ComboValues,
    scenario: ScenarioValues,
    objective: Objective,
    batch_max: int,
) -> Relaxed:
    """Solve the continuous relaxation of one combination with SciPy SLSQP and JAX gradients."""
    if batch_max <= 1:  # nothing to relax
        return Relaxed(1.0, True, 0, 0)
    import jax.numpy as jnp
    import scipy.optimize

    function = _relaxation_of(model.sweep)
    combo_j = combo.map(jnp.float64)
    scenario_j = ScenarioValues(*(jnp.float64(v) for v in scenario))
    cache: dict[float, tuple[Terms, Terms]] = {}

    def at(u: np.ndarray) -> tuple[Terms, Terms]:
        key = float(u[0])
        if key not in cache:
            packed = function(np.float64(key), combo_j, scenario_j, objective)
            cache[key] = _unpack(np.asarray(packed))
        return cache[key]

    result = scipy.optimize.minimize(
        lambda u: at(u)[0].loss,
        x0=np.zeros(1),
        jac=lambda u: np.array([at(u)[1].loss]),
        method="SLSQP",
        bounds=[(0.0, math.log(batch_max))],
        constraints=[
            {
                "type": "ineq",
                "fun": lambda u: at(u)[0].constraints,
                "jac": lambda u: at(u)[1].constraints[:, None],
            }
        ],
        options={"maxiter": SLSQP_MAXITER, "ftol": SLSQP_FTOL},
    )
    batch = float(np.clip(math.exp(float(result.x[0])), 1.0, batch_max))
    return Relaxed(batch, bool(result.success), int(result.nit), len(cache))
