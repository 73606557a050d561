"""Test configuration: float64 JAX and hypothesis profiles.

HYPOTHESIS_PROFILE=ci (set by .ci/run) derandomises hypothesis so CI is deterministic;
no profile has a deadline, so JIT compile time never fails a test.
"""

import os

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
