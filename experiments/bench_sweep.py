"""Benchmark: configurations per second of the full per-kernel Llama-3-70B decode model.

    python -m experiments.bench_sweep [--json] [--contexts N] [--batch-max N] [--repeats N]
        [--billion]

One grid, three evaluators, one run.  The grid: tp {1, 2, 4, 8} x weight dtype {bf16, fp8, int8,
int4} x KV dtype {bf16, fp8} x context (``--contexts`` values, 512..131072) x batch
1..``--batch-max``.  At each configuration: the decode step time (every kernel's roofline time
summed, configs/h100_70b.yaml's model and hardware), throughput per GPU, memory per GPU and the
TPOT and memory constraints; the answer is the best feasible throughput and where it is.

(a) JAX: ``costmodel.compile.sweep.best``: jitted, nested-vmap tiles, chunked, sharded over the
local
    devices.  XLA runs one device's tile loop on one thread, so this script exposes one CPU
    device per core (``--xla_force_host_platform_device_count``, unless XLA_FLAGS already sets
    a device count).
(b) NumPy: the same SymPy expressions lambdified to NumPy, on the same tiles (the leading
    symbols as scalars, the other axes broadcast), the same masked argmax; NumPy is timed at
    several block sizes and its fastest is reported.
(c) Python: the same expressions lambdified to ``math``, one configuration at a time, on a
    strided subset of the same grid (a full pass would take hours).

Each path runs once to warm up (compilation is reported apart), then the timed repeats are
interleaved (JAX, NumPy, JAX, ...) so that a busy machine slows both alike; medians are
reported.  Also: the optimiser's wall time against the brute-force verifier on the scenario,
and with ``--billion`` a sweep of 10^9 configurations (a cheap model) with its peak memory.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time
from typing import Any

import numpy as np
import sympy as sp

from costmodel.compile import sweep
from costmodel.config.bind import Setting, bind, substitution
from costmodel.config.load import load_scenario
from costmodel.model import phase
from costmodel.model import symbols as sy
from costmodel.model.memory import memory_per_gpu
from costmodel.model.roofline import step_time
from costmodel.search import optimise as opt
from costmodel.search import verifier
from experiments._cli import positive_int, print_json, run

CONFIG = "configs/h100_70b.yaml"
TPS = (1, 2, 4, 8)
WEIGHTS = ("bf16", "fp8", "int8", "int4")
KVS = ("bf16", "fp8")
FREE = (sy.B, sy.T, sy.tp, sy.b_w, sy.b_kv, sy.peak_matmul)
NUMPY_BLOCKS = (1 << 14, 1 << 16, 1 << 18, 1 << 20)  # configurations per NumPy call
JAX_INNER = 8  # JAX sweeps per timed repeat


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_sweep", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--contexts", type=positive_int, default=2048, help="context values")
    parser.add_argument("--batch-max", type=positive_int, default=1024, help="largest batch")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per path")
    parser.add_argument("--python-configs", type=positive_int, default=50_000)
    parser.add_argument("--billion", action="store_true", help="also sweep 10^9 configurations")
    return parser.parse_args(argv)


def decode_model(config: str = CONFIG) -> dict[str, sp.Expr]:
    """The decode outputs as expressions of FREE, every other constant substituted."""
    scenario = load_scenario(config)
    binding = bind(scenario)  # values and the spec's time model together
    constants = {k: v for k, v in binding.values.items() if k not in FREE} | phase.rule("decode")
    tpot = step_time(binding.ops("decode"), binding.time_model).xreplace(constants)
    memory = memory_per_gpu(
        scenario.model.attention_kind, scenario.model.tie_word_embeddings
    ).total.xreplace(constants)
    limit_s = sp.Rational(repr(scenario.slo.tpot_ms)) / 1000
    return {
        "tpot_s": tpot,
        "throughput_per_gpu": sy.B / (sy.tp * tpot),
        "tpot_slack": tpot - limit_s,
        "memory_slack": memory - scenario.hardware.usable_memory,
    }


def bench_grid(n_contexts: int, batch_max: int, config: str = CONFIG) -> sweep.Grid:
    """tp x weight dtype x KV dtype x context x batch."""
    scenario = load_scenario(config)

    def combo(w: str, k: str) -> dict:
        v = substitution(scenario, Setting(1, w, k), calibrated=True)
        return {s: v[s] for s in (sy.b_w, sy.b_kv, sy.peak_matmul)}

    return sweep.grid(
        sweep.numeric_axis(sy.tp, TPS, "tp"),
        sweep.table_axis(
            "weight_dtype",
            {w: {s: combo(w, "bf16")[s] for s in (sy.b_w, sy.peak_matmul)} for w in WEIGHTS},
        ),
        sweep.table_axis("kv_dtype", {k: {sy.b_kv: combo("bf16", k)[sy.b_kv]} for k in KVS}),
        sweep.numeric_axis(
            sy.T, np.unique(np.round(np.geomspace(512, 131072, n_contexts))), "context"
        ),
        sweep.numeric_axis(sy.B, np.arange(1, batch_max + 1), "batch"),
    )


def numpy_best(fn, grid: sweep.Grid, chunk_size: int, block: int) -> tuple[float, int]:
    """Best feasible throughput and its flat index, NumPy on the sweep's layout.

    Tiles of about ``block`` configurations, as the JAX sweep cuts them: the leading symbols
    are scalars, the cut axis's piece and the later axes enter by broadcasting.
    """
    layout = sweep.plan(grid.shape, chunk_size, 1, block)
    (pieces, *after), piece_valid = sweep.inner_tables(grid, layout)
    ndim = len(layout.inner)
    cut_axis, *after_axes = grid.axes[layout.lead :]
    leading = [s for a in grid.axes[: layout.lead] for s in a.symbols]
    fixed = {}
    for t, (a, table) in enumerate(zip(after_axes, after, strict=True)):
        shape = [1] * ndim
        shape[1 + t] = a.size
        fixed |= {s: table[:, j].reshape(shape) for j, s in enumerate(a.symbols)}
    best, where = -math.inf, -1
    for chunk in sweep.chunks(layout):
        table, _ = sweep.row_table(grid, layout, chunk)
        starts = sweep.row_starts(grid.shape, layout, chunk.start + np.arange(chunk.valid))
        for r in range(chunk.valid):
            row = table[r]
            segment = int(row[-1])
            values = dict(fixed) | {s: row[j] for j, s in enumerate(leading)}
            for j, s in enumerate(cut_axis.symbols):
                values[s] = pieces[segment, :, j].reshape((-1,) + (1,) * (ndim - 1))
            _, throughput, tpot_slack, memory_slack = fn(*(values[s] for s in FREE))
            ok = (tpot_slack <= 0) & (memory_slack <= 0)
            ok = ok & piece_valid[segment].reshape((-1,) + (1,) * (ndim - 1))
            masked = np.broadcast_to(np.where(ok, throughput, -np.inf), layout.inner).reshape(-1)
            i = int(np.argmax(masked))
            if masked[i] > best:
                best, where = float(masked[i]), int(starts[r]) + i
    return best, where


def python_best(fn, grid: sweep.Grid, n_configs: int) -> tuple[float, int, int]:
    """Best feasible throughput over every ``stride``-th configuration, one call per config."""
    stride = max(1, grid.size // n_configs)
    best, where, count = -math.inf, -1, 0
    for flat in range(0, grid.size, stride):
        v = grid.values(flat)
        _, throughput, tpot_slack, memory_slack = fn(*(v[s] for s in FREE))
        count += 1
        if tpot_slack <= 0 and memory_slack <= 0 and throughput > best:
            best, where = throughput, flat
    return best, where, count


def _timed(fn) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def billion_sweep() -> dict[str, Any]:
    """10^9 configurations of a cheap two-symbol model in 4 Mi chunks: time and peak memory."""
    x, y = sp.symbols("x y", positive=True)
    cheap = sweep.compile_sweep({"f": sp.Max(x * y, 3 * x + 7) / (x + y), "c": x - y}, [x, y])
    grid = sweep.grid(
        sweep.numeric_axis(x, np.arange(1, 31_624)),
        sweep.numeric_axis(y, np.linspace(1, 9, 31_623)),
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, found = _timed(
        lambda: sweep.best(
            cheap, grid, "f", constraints=("c",), progress=True, count_feasible=False
        )
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "n_configs": grid.size,
        "seconds": seconds,
        "configs_per_s": grid.size / seconds,
        "peak_rss_mb_before": before / 1024,
        "peak_rss_mb_after": after / 1024,
        "best_index": found.index,
    }


def main(argv: list[str] | None = None) -> int:
    import jax

    args = parse_args(argv)
    exprs = decode_model()
    grid = bench_grid(args.contexts, args.batch_max)
    compiled = sweep.compile_sweep(exprs, FREE)
    numpy_fn = sp.lambdify(FREE, list(exprs.values()), modules="numpy", cse=True)
    math_fn = sp.lambdify(FREE, list(exprs.values()), modules="math", cse=True)
    chunk = sweep.REDUCE_CHUNK
    options = {"chunk_size": chunk, "count_feasible": False}
    constraints = ("tpot_slack", "memory_slack")

    def run_jax():
        return sweep.best(compiled, grid, "throughput_per_gpu", constraints=constraints, **options)

    # NumPy gets the same chunks, evaluated in blocks of several sizes (small blocks keep its
    # temporaries in cache, large ones save Python overhead); its best size is reported.
    numpy_blocks = {f"numpy_block_{b}": b for b in NUMPY_BLOCKS}

    jax_first, found = _timed(run_jax)
    numpy_first = 0.0
    numpy_answers = set()
    for block in numpy_blocks.values():
        seconds, answer = _timed(lambda b=block: numpy_best(numpy_fn, grid, chunk, b))
        numpy_first = max(numpy_first, seconds)
        numpy_answers.add(answer)
    times: dict[str, list[float]] = {"jax": []} | {k: [] for k in numpy_blocks}
    for _ in range(args.repeats):  # interleaved, so a busy machine slows every path alike
        # The JAX sweep takes tens of ms: average several back-to-back runs per repeat.
        times["jax"].append(_timed(lambda: [run_jax() for _ in range(JAX_INNER)])[0] / JAX_INNER)
        for name, block in numpy_blocks.items():
            times[name].append(_timed(lambda b=block: numpy_best(numpy_fn, grid, chunk, b))[0])
    python_seconds, (python_value, _, python_count) = _timed(
        lambda: python_best(math_fn, grid, args.python_configs)
    )
    medians = {k: statistics.median(v) for k, v in times.items()}
    jax_s = medians["jax"]
    numpy_name = min(numpy_blocks, key=lambda k: medians[k])
    numpy_s = medians[numpy_name]
    ((numpy_value, numpy_index),) = numpy_answers if len(numpy_answers) == 1 else ((0.0, -1),)

    scenario = load_scenario(CONFIG)
    optimise_cold, optimum = _timed(lambda: opt.optimise(scenario))
    brute_cold, brute = _timed(lambda: verifier.brute_force(scenario))
    optimise_warm = statistics.median(_timed(lambda: opt.optimise(scenario))[0] for _ in range(3))
    brute_warm = statistics.median(
        _timed(lambda: verifier.brute_force(scenario))[0] for _ in range(3)
    )

    result: dict[str, Any] = {
        "model": "llama-3-70b decode, per-kernel roofline (configs/h100_70b.yaml)",
        "grid": {a.name: a.size for a in grid.axes},
        "n_configs": grid.size,
        "devices": len(jax.devices()),
        "device_kind": jax.devices()[0].device_kind,
        "chunk_size": chunk,
        "tile": sweep.TILE,
        "repeats": args.repeats,
        "configs_per_s_jax": grid.size / jax_s,
        "configs_per_s_numpy": grid.size / numpy_s,
        "configs_per_s_python": python_count / python_seconds,
        "jax_over_numpy": numpy_s / jax_s,
        "seconds_median": medians,
        "seconds_all": times,
        "numpy_best_block": numpy_blocks[numpy_name],
        "configs_per_s_numpy_by_block": {
            numpy_blocks[k]: grid.size / medians[k] for k in numpy_blocks
        },
        "jax_first_call_seconds": jax_first,
        "numpy_first_call_seconds": numpy_first,
        "python_configs": python_count,
        "python_seconds": python_seconds,
        "best": {
            "throughput_tok_s_per_gpu": found.value,
            "configuration": grid.point(found.index),
            "numpy_agrees": numpy_index == found.index
            and math.isclose(numpy_value, found.value, rel_tol=1e-12),
            "python_subset_best": python_value,
        },
        "optimiser": {
            "scenario": CONFIG,
            "optimise_seconds_first": optimise_cold,
            "brute_force_seconds_first": brute_cold,
            "optimise_seconds_warm": optimise_warm,
            "brute_force_seconds_warm": brute_warm,
            "brute_force_configs": brute.evaluated,
            "agree": verifier.agree(optimum.best, brute.best),
        },
    }
    if args.billion:
        result["billion"] = billion_sweep()
    if args.json:
        print_json(result)
    else:
        print(
            f"{grid.size:,} configurations of the 70B decode model on {result['devices']} "
            f"device(s): JAX {result['configs_per_s_jax']:.3g}/s, NumPy "
            f"{result['configs_per_s_numpy']:.3g}/s ({result['jax_over_numpy']:.1f}x slower), "
            f"Python loop {result['configs_per_s_python']:.3g}/s"
        )
        print(
            f"optimiser {optimise_warm * 1e3:.0f} ms warm ({optimise_cold:.2f} s first call) vs "
            f"brute force {brute_warm * 1e3:.0f} ms warm ({brute_cold:.2f} s first call), "
            f"{'agree' if result['optimiser']['agree'] else 'DISAGREE'}"
        )
        if args.billion:
            b = result["billion"]
            print(
                f"10^9 sweep: {b['seconds']:.1f} s ({b['configs_per_s']:.3g}/s), peak RSS "
                f"{b['peak_rss_mb_after']:.0f} MB"
            )
    return 0


if __name__ == "__main__":
    # One XLA CPU device per core, so the sharded sweep spreads over every core (XLA runs one
    # fused loop on one thread).
    run(main, cpu_devices=os.cpu_count() or 1)
