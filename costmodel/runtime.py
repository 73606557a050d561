"""The only code that changes process state: float64 JAX, CPU devices, compile cache, plots.

Nothing in costmodel touches process state at import.  Command-line jobs and the test
configuration call :func:`configure` once, before any JAX computation; library code that needs
float64 checks it with :func:`require_x64` and says what to do when it is off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

CACHE_WARNING = "persistent compilation cache"  # in JAX's warning about an unreadable entry
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


def cache_dir(root: str | Path) -> Path:
    """The compilation cache for this JAX and jaxlib: entries of another version are never
    read (they would only fail), and clearing one version leaves the others."""
    import jax
    import jaxlib

    return Path(root) / f"jax-{jax.__version__}-jaxlib-{jaxlib.__version__}"


@contextlib.contextmanager
def compilation_cache(root: str | Path | None) -> Iterator[Path | None]:
    """Run the body with JAX's persistent compilation cache in :func:`cache_dir` of ``root``
    (None: no cache).  If JAX warns that it cannot read an entry, the version's cache is
    removed afterwards (the next run rebuilds it) and one note goes to stderr; other warnings
    pass through unchanged."""
    if root is None:
        yield None
        return
    directory = cache_dir(root)
    configure(compile_cache=directory, plot_backend=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield directory
        finally:
            corrupt = [w for w in caught if CACHE_WARNING in str(w.message)]
            for w in caught:
                if w not in corrupt:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            if corrupt:
                shutil.rmtree(directory, ignore_errors=True)
                print(
                    f"note: {len(corrupt)} unreadable compilation cache entries; cleared "
                    f"{directory} (the next run rebuilds it)",
                    file=sys.stderr,
                )
