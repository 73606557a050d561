"""Measuring a device: microbenchmarks, then the reference layers under the timing protocol.

One JSON-ready record (the measurements file) that :mod:`costmodel.validate.calibrate` fits and
``python -m experiments.validate_timing`` writes; the protocol itself (rounds, contention,
waiting for a quiet moment) is :mod:`costmodel.validate.timing`'s.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from costmodel.validate import microbench
from costmodel.validate.timing import (
    SILENT,
    Progress,
    Protocol,
    case_record,
    cpu_snapshot,
    foreign_share,
    load_average,
    time_layers,
    timing_grid,
)


def measure_device(
    *, quick: bool, protocol: Protocol, progress: Progress = SILENT
) -> dict[str, Any]:
    """Microbenchmarks and layer timings on the current backend, as one JSON-ready record
    (the measurements file: device, dtype, protocol, load, contention, profile, cases).

    The microbenchmarks are run again, and the better of the two kept, when other processes
    were busy during the first run.
    """
    grid = timing_grid(quick=quick)
    sizes = microbench.default_sizes(quick=quick)
    bench_steps = len(sizes.square) + len(sizes.decode_rows) + 2 + 3 * len(sizes.buffers)
    dtype = microbench.default_dtype()
    width = jax.numpy.dtype(dtype).itemsize
    limit = protocol.contention_limit
    load_start = load_average()
    start = time.perf_counter()
    progress.plan(bench_steps)
    before = cpu_snapshot()
    profile = microbench.characterise(quick=quick, policy=protocol.policy, progress=progress.step)
    bench_share = foreign_share(before, cpu_snapshot())
    timers, waited = time_layers(grid, dtype, protocol, progress)
    if bench_share is not None and bench_share > limit:
        progress.plan(bench_steps)
        before = cpu_snapshot()
        again = microbench.characterise(quick=quick, policy=protocol.policy, progress=progress.step)
        bench_share = min(bench_share, foreign_share(before, cpu_snapshot()) or 1)
        profile = microbench.best_of(profile, again)
    rows = []
    for case, timer in zip(grid, timers, strict=True):
        result = timer.result(limit)
        rows.append(
            case_record(case, width)
            | {
                "min_s": result.min_s,
                "median_s": result.median_s,
                "reps": result.reps,
                "compile_s": result.compile_s,
                "rounds": len(timer.rounds),
                "clean_rounds": len(timer.clean_rounds(limit)),
                "foreign_cpu_share": timer.shares,
            }
        )
    return {
        "device": profile.device,
        "dtype": jax.numpy.dtype(dtype).name,
        "quick": quick,
        "rounds": protocol.rounds,
        "policy": protocol.policy._asdict(),
        "load_average": {"start": load_start, "end": load_average()},
        "contention": {
            "limit": limit,
            "microbench_foreign_cpu_share": bench_share,
            "cases_with_clean_round": sum(bool(r["clean_rounds"]) for r in rows),
            "waited_for_quiet_s": waited,
        },
        "measure_wall_s": time.perf_counter() - start,
        "profile": microbench.profile_record(profile),
        "cases": rows,
    }
