"""Multi-process sweeps: two local CPU processes joined by ``jax.distributed`` (two devices
each) return exactly the answers of one process; the per-process pieces (shares of the tiles,
staged combination of reductions) cover the grid once and combine like the flat reduction."""

from __future__ import annotations

import itertools
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import multihost_worker
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel.compile import sweep

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "multihost_worker.py"
PROCESSES = 2
DEVICES_PER_PROCESS = 2
WORKER_TIMEOUT_S = 300  # a worker stuck in a collective is killed after this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(tmp_path: Path) -> list[dict]:
    """Start every process of the runtime, wait for all (killing all on timeout or failure),
    and return their JSON results in process order."""
    port = _free_port()
    outputs = [tmp_path / f"process{i}.json" for i in range(PROCESSES)]
    logs = [tmp_path / f"process{i}.log" for i in range(PROCESSES)]
    procs = []
    try:
        for i in range(PROCESSES):
            with open(logs[i], "w") as log:
                command = [sys.executable, str(WORKER), str(port), str(PROCESSES), str(i)]
                command += [str(DEVICES_PER_PROCESS), str(outputs[i])]
                procs.append(
                    subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                )
        codes = [p.wait(timeout=WORKER_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, code in enumerate(codes):
        assert code == 0, f"process {i} failed:\n{logs[i].read_text()[-4000:]}"
    return [json.loads(o.read_text()) for o in outputs]


@pytest.mark.slow
def test_two_processes_return_the_single_process_answers(tmp_path):
    results = _run_workers(tmp_path)
    single = json.loads(json.dumps(multihost_worker.answers()))  # same JSON form
    for i, result in enumerate(results):
        assert result["process_index"] == i
        assert result["process_count"] == PROCESSES
        assert result["local_devices"] == DEVICES_PER_PROCESS
        assert result["devices"] == PROCESSES * DEVICES_PER_PROCESS
        assert result["answers"] == single  # exact: indices, values, counts, every output
    # The grid exercises ties across processes: within rtol the answer moves to an earlier
    # point than the exact best (found by the second pass on the multi-process runtime).
    for answers in single.values():
        exact_g, within_g = answers[4], answers[5]
        assert within_g[0] < exact_g[0]
        assert within_g[1] == exact_g[1]


# --------------------------------------------------------------------------- pure pieces


@settings(max_examples=100)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    tile=st.integers(1, 60),
    chunk=st.integers(1, 300),
    devices=st.integers(1, 4),
    processes=st.integers(1, 5),
)
def test_process_shares_cover_the_grid_once_in_order(shape, tile, chunk, devices, processes):
    layout = sweep.plan(shape, chunk, devices, tile, processes)
    covered = []
    previous_stop = 0
    for p in range(processes):
        rows = sweep.process_rows(layout.total_rows, processes, p)
        assert rows[0] == previous_stop  # contiguous, in process order
        previous_stop = rows[1]
        start, stop = sweep.flat_range(shape, layout, rows)
        mine = []
        for c in sweep.chunks(layout, rows):
            assert rows[0] <= c.start and c.start + c.valid <= rows[1]
            assert 1 <= c.valid <= layout.rows
            rows_here = c.start + np.arange(c.valid)
            starts = sweep.row_starts(shape, layout, rows_here)
            lengths = sweep.row_lengths(shape, layout, rows_here)
            for s0, n in zip(starts, lengths, strict=True):
                mine.extend(range(int(s0), int(s0 + n)))
        assert mine == list(range(start, stop))
        covered.extend(mine)
    assert previous_stop == layout.total_rows
    assert covered == list(range(math.prod(shape)))


RTOL = 1e-3
# Objectives on a few levels, some within RTOL of each other; not finite: nothing feasible.
LEVELS = (1.0, 1.0005, 2.0, 2.001, 2.0015, math.nan, -math.inf, math.inf)


def _key(part: sweep.Part) -> tuple:
    return (None if math.isnan(part.value) else part.value, *part[1:])


@settings(max_examples=200)
@given(
    values=st.lists(st.sampled_from(LEVELS), min_size=0, max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=6),
    maximise=st.booleans(),
    rtol=st.sampled_from((0.0, RTOL)),
)
def test_staged_combination_equals_the_flat_one(values, cuts, maximise, rtol):
    """One part per point (index = position): devices then processes give the flat answer,
    and a settled ``first`` is the first point within rtol of the best."""
    points = [sweep.Part(v, i, int(math.isfinite(v)), True, i) for i, v in enumerate(values)]
    flat = sweep.combine_parts(points, maximise, rtol)
    bounds = sorted({0, len(points), *(min(c, len(points)) for c in cuts)})
    groups = [points[a:b] for a, b in itertools.pairwise(bounds)]
    staged = sweep.combine_parts(
        [sweep.combine_parts(g, maximise, rtol) for g in groups], maximise, rtol
    )
    assert _key(staged) == _key(flat)
    assert flat.feasible == sum(math.isfinite(v) for v in values)
    finite = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        assert math.isnan(flat.value)
        return
    best = max(v for _, v in finite) if maximise else min(v for _, v in finite)
    assert flat.value == best
    assert flat.index == next(i for i, v in finite if v == best)
    if flat.settled:
        spread = rtol * abs(best)
        reached = [i for i, v in finite if (v >= best - spread if maximise else v <= best + spread)]
        assert flat.first == reached[0]
    else:
        assert rtol > 0  # exact search always settles
