"""The 70B decode sweep of experiments.bench_sweep on a multi-process (multi-host) JAX runtime.

    python -m experiments.sweep_multihost --coordinator HOST:PORT --processes N --process-id I
        [--cpu-devices K] [--contexts N] [--batch-max N]

Every host runs the same command with its own ``--process-id`` (0 .. N-1; HOST:PORT is
process 0's address, reachable from every host).  Each process joins the runtime
(``jax.distributed.initialize``), then makes the same ``sweep.best`` call as a single process
would: each sweeps its share of the grid on its own devices, and every process prints the same
answer (one JSON object).  With ``--processes 1`` no runtime is joined: the single-process
answer, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator

from experiments._cli import Parser, positive_int, print_json, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser(prog="python -m experiments.sweep_multihost", description=__doc__)
    parser.add_argument("--coordinator", default="127.0.0.1:12355", help="process 0's HOST:PORT")
    parser.add_argument("--processes", type=positive_int, default=1, help="processes in all")
    parser.add_argument("--process-id", type=int, default=0, help="this process, 0..N-1")
    parser.add_argument("--cpu-devices", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--contexts", type=positive_int, default=256, help="context values")
    parser.add_argument("--batch-max", type=positive_int, default=1024, help="largest batch")
    args = parser.parse_args(argv)
    if not 0 <= args.process_id < args.processes:
        parser.error(f"--process-id: must be in 0..{args.processes - 1}")
    return args


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what native libraries write to file descriptor 1 to stderr for the body."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(args: argparse.Namespace) -> int:
    """Join the runtime, sweep, print this process's answer."""
    import jax

    from costmodel import runtime
    from costmodel.compile import sweep
    from experiments.bench_sweep import FREE, bench_grid, decode_model

    runtime.configure(cpu_devices=args.cpu_devices)
    with _stdout_to_stderr():  # gloo's connection notes go to stderr, the JSON alone to stdout
        if args.processes > 1:
            jax.distributed.initialize(
                coordinator_address=args.coordinator,
                num_processes=args.processes,
                process_id=args.process_id,
            )
        grid = bench_grid(args.contexts, args.batch_max)
        compiled = sweep.compile_sweep(decode_model(), FREE)
        started = time.perf_counter()
        found = sweep.best(  # the same call as in one process
            compiled, grid, "throughput_per_gpu", constraints=("tpot_slack", "memory_slack")
        )
        seconds = time.perf_counter() - started
    print_json(
        {
            "process": jax.process_index(),
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "local_devices": jax.local_device_count(),
            "n_configs": grid.size,
            "best_index": found.index,
            "best_point": grid.point(found.index) if found.index is not None else None,
            "throughput_per_gpu": found.value,
            "feasible": found.feasible,
            "seconds_with_compile": seconds,
        }
    )
    if args.processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    run(main, parse=parse_args)
