"""Test configuration: the runtime (float64 JAX, Agg plots) and hypothesis profiles.

HYPOTHESIS_PROFILE=ci (set by .ci/run) derandomises hypothesis so CI is deterministic;
no profile has a deadline, so JIT compile time never fails a test.
"""

import os

from hypothesis import HealthCheck, settings

from costmodel import runtime

runtime.configure()

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
