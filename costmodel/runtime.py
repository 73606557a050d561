"""The only code that changes process state: float64 JAX, CPU devices, compile cache, plots.

Nothing in costmodel touches process state at import.  Command-line jobs and the test
configuration call :func:`configure` once, before any JAX computation; library code that needs
float64 checks it with :func:`require_x64` and says what to do when it is off.
"""

from __future__ import annotations

import os
from pathlib import Path

X64_HINT = "call costmodel.runtime.configure() (or jax.config.update('jax_enable_x64', True)) first"


def configure(
    *,
    x64: bool = True,
    cpu_devices: int | None = None,
    compile_cache: str | Path | None = None,
    plot_backend: str | None = "Agg",
) -> None:
    """Set up the process for costmodel.

    ``x64``: float64 in JAX (the compiled cost model needs it).  ``cpu_devices``: expose this
    many CPU devices to JAX (must run before JAX's backend starts; ``None`` leaves it).
    ``compile_cache``: a directory for XLA's persistent compilation cache (``None``: no cache).
    ``plot_backend``: matplotlib's backend, set only if matplotlib has not drawn yet.
    """
    import jax

    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))
    jax.config.update("jax_enable_x64", bool(x64))
    if compile_cache is not None:
        jax.config.update("jax_compilation_cache_dir", str(compile_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if plot_backend is not None:
        os.environ.setdefault("MPLBACKEND", plot_backend)
        import sys

        if "matplotlib" in sys.modules:
            import matplotlib

            matplotlib.use(plot_backend)


def x64_enabled() -> bool:
    """Whether JAX computes in float64."""
    import jax

    return bool(jax.config.jax_enable_x64)


def require_x64() -> None:
    """Raise a clear error if JAX is not in float64 mode (the cost model would silently lose
    precision, and large integer products would overflow)."""
    if not x64_enabled():
        raise RuntimeError(f"costmodel needs float64 JAX: {X64_HINT}")
