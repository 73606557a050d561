"""One process of a multi-process sweep, run by tests/test_multihost.py.

    python tests/multihost_worker.py PORT NUM_PROCESSES PROCESS_ID CPU_DEVICES OUTPUT

Joins a ``jax.distributed`` runtime of NUM_PROCESSES local processes (coordinator on
127.0.0.1:PORT), each with CPU_DEVICES CPU devices, runs :func:`answers` and writes them to the
file OUTPUT as JSON (not stdout: the gloo collectives print there).  :func:`answers` is also
what the test computes in its own single process, so the calling code is the same in both
runtimes.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import sympy as sp

from costmodel.compile import sweep

x, y, z = sp.symbols("x y z", positive=True)
EXPRS = {
    "f": sp.Max(x * y, 7 * x + 3 * z) / (x + y) - z / 5,
    "c": x - 3 * y,  # <= 0 is feasible
    # A plateau: the best is at the largest x, but every point with x * y >= 60 is within
    # TIES_RTOL of it, the first of them in another process's share of the grid.
    "g": sp.Min(x * y, 60) + x / 1000,
}
# (chunk_size, tile): several chunks per process and a cut axis in short pieces; a few chunks;
# one tile for the whole grid (the second process has nothing to sweep).
CUTS = ((10, 7), (64, 16), (10_000, 10_000))
TIES_RTOL = 1e-3  # wide enough that points of different chunks and processes tie


def problem() -> tuple[sweep.Sweep, sweep.Grid]:
    """The compiled expressions and the grid every process sweeps."""
    compiled = sweep.compile_sweep(EXPRS, [x, y, z])
    grid = sweep.grid(
        sweep.numeric_axis(x, np.arange(1, 30)),
        sweep.numeric_axis(y, np.linspace(1, 9, 13)),
        sweep.table_axis("z", {f"z{i}": {z: 0.5 * i} for i in range(3)}),
    )
    return compiled, grid


def answers() -> dict[str, list]:
    """best (exact and within rtol, maximising and minimising), first_within and evaluate on
    :func:`problem` at each cut of :data:`CUTS`, as JSON-ready lists."""
    compiled, grid = problem()
    out: dict[str, list] = {}
    for chunk, tile in CUTS:
        cut = {"chunk_size": chunk, "tile": tile}
        results = []
        for maximise in (True, False):
            for rtol in (0.0, TIES_RTOL):
                b = sweep.best(
                    compiled, grid, "f", constraints=("c",), maximise=maximise, rtol=rtol, **cut
                )
                results.append([b.index, b.value, b.evaluated, b.feasible])
        for rtol in (0.0, TIES_RTOL):
            b = sweep.best(compiled, grid, "g", rtol=rtol, count_feasible=False, **cut)
            results.append([b.index, b.value, b.evaluated, b.feasible])
        for threshold in (4.0, 6.0, 1e9):
            results.append(sweep.first_within(compiled, grid, "f", threshold, **cut))
        values = sweep.evaluate(compiled, grid, **cut)
        results.append({name: v.tolist() for name, v in values.items()})
        out[f"{chunk},{tile}"] = results
    return out


def main(argv: list[str]) -> int:
    port, num_processes, process_id, cpu_devices = (int(a) for a in argv[:4])
    import jax

    from costmodel import runtime

    runtime.configure(cpu_devices=cpu_devices)
    # CPU collectives across processes: gloo, JAX 0.10's default (named so a changed default
    # cannot silently break the gathers).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=120,
    )
    try:
        result = {
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "devices": jax.device_count(),
            "local_devices": jax.local_device_count(),
            "answers": answers(),
        }
    finally:
        jax.distributed.shutdown()
    with open(argv[4], "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
