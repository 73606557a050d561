"""Wall-clock timing of compiled JAX functions, and a description of the device they ran on.

The harness compiles ahead of time (so compile time is reported apart from run time), runs a
few warm-up calls, then repeats the call until a time budget or a repetition cap is reached,
blocking on every output.  It keeps the minimum (the least disturbed run: the figure the model
is fitted to) and the median (what a user sees on a busy machine) [s].

Library code: no printing, no argument parsing.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax


class Timing(NamedTuple):
    """Result of timing one compiled function.

    min_s and median_s [s] over ``reps`` timed calls; compile_s [s] is the ahead-of-time
    compile, not included in the others.
    """

    min_s: float
    median_s: float
    reps: int
    compile_s: float


class TimingPolicy(NamedTuple):
    """How long to time a function: warm-up calls, repetition bounds, time budget [s]."""

    warmup: int = 2
    min_reps: int = 5
    max_reps: int = 200
    budget_s: float = 0.25


DEFAULT_POLICY = TimingPolicy(budget_s=0.15)
QUICK_POLICY = TimingPolicy(warmup=1, min_reps=3, max_reps=50, budget_s=0.08)


def compile_fn(fn: Callable, args: Sequence[Any]) -> tuple[Callable, float]:
    """Jit and compile ``fn`` for ``args`` ahead of time; returns (compiled, seconds taken)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def repeat_calls(
    compiled: Callable,
    args: Sequence[Any],
    policy: TimingPolicy = DEFAULT_POLICY,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Wall-clock seconds of repeated blocking calls of ``compiled(*args)``, after warm-up.

    At least ``policy.min_reps`` and at most ``policy.max_reps`` calls; stops once the timed
    calls have used ``policy.budget_s`` seconds.
    """
    for _ in range(policy.warmup):
        jax.block_until_ready(compiled(*args))
    samples: list[float] = []
    spent = 0.0
    while len(samples) < policy.max_reps and (
        len(samples) < policy.min_reps or spent < policy.budget_s
    ):
        start = clock()
        jax.block_until_ready(compiled(*args))
        elapsed = clock() - start
        samples.append(elapsed)
        spent += elapsed
    return samples


def time_fn(fn: Callable, args: Sequence[Any], policy: TimingPolicy = DEFAULT_POLICY) -> Timing:
    """Compile ``fn`` for ``args`` and time it: min and median of repeated calls [s]."""
    compiled, compile_s = compile_fn(fn, args)
    samples = repeat_calls(compiled, args, policy)
    return Timing(min(samples), statistics.median(samples), len(samples), compile_s)


def load_average() -> float | None:
    """The 1-minute load average of the host, or None where the OS does not report it."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


class CpuSnapshot(NamedTuple):
    """Cumulative CPU time of the whole host (busy and total, all CPUs) and of this process
    (all threads), in clock ticks, from Linux /proc."""

    total: int
    busy: int
    own: int


def cpu_snapshot() -> CpuSnapshot | None:
    """The host's and this process's CPU ticks so far, or None where /proc is not available."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        with open("/proc/self/stat") as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return None
    after_name = stat[stat.rindex(")") + 2 :].split()
    own = int(after_name[11]) + int(after_name[12])  # utime + stime (fields 14 and 15)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return CpuSnapshot(total=total, busy=total - idle, own=own)


def foreign_share(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """Fraction of the host's CPU time between two snapshots used by other processes [1].

    About 0 on a quiet machine; a measurement taken while it is large was competing for the
    cores.  None when either snapshot is missing or no time passed (tick resolution 10 ms).
    """
    if before is None or after is None or after.total <= before.total:
        return None
    foreign = (after.busy - before.busy) - (after.own - before.own)
    return max(foreign, 0) / (after.total - before.total)


def wait_for_quiet(limit: float, *, window_s: float = 0.5, timeout_s: float = 10.0) -> float | None:
    """Sample other processes' CPU share over ``window_s`` windows until one is at most
    ``limit`` or ``timeout_s`` has passed; returns the last share (None where unknown)."""
    deadline = time.perf_counter() + timeout_s
    share = None
    while True:
        before = cpu_snapshot()
        time.sleep(window_s)
        share = foreign_share(before, cpu_snapshot())
        if share is None or share <= limit or time.perf_counter() >= deadline:
            return share


def device_description() -> dict[str, Any]:
    """What the measurements ran on: JAX backend, device kind, CPU, versions, date (UTC)."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax_version": jax.__version__,
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _carry_donated(args: tuple, outputs: Any, donate: Sequence[int]) -> tuple:
    """Arguments for the next call: each donated argument replaced by the output that updates
    it (the first later output of the same shape and dtype, in order)."""
    if not donate:
        return args
    flat = list(outputs) if isinstance(outputs, tuple | list) else [outputs]
    candidates = flat[1:]
    new_args = list(args)
    for index in donate:
        want = (args[index].shape, args[index].dtype)
        for j, out in enumerate(candidates):
            if (out.shape, out.dtype) == want:
                new_args[index] = out
                candidates = candidates[j + 1 :]
                break
        else:
            raise ValueError(f"no output updates donated argument {index}")
    return tuple(new_args)


def compile_program(fn: Callable, args: Sequence[Any], donate: Sequence[int] = ()):
    """``fn`` compiled for ``args`` with ``donate_argnums=donate``; (compiled, seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=tuple(donate)).lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_compiled(
    compiled: Callable,
    args: Sequence[Any],
    donate: Sequence[int] = (),
    policy: TimingPolicy = DEFAULT_POLICY,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Wall-clock seconds of repeated blocking calls of ``compiled``, after warm-up.

    Donated arguments (a KV cache updated in place) cannot be reused after a call, so each
    call is fed the outputs that replace them, as a serving loop does.  Repetitions as in
    :func:`repeat_calls`.
    """
    current = tuple(args)
    for _ in range(policy.warmup):
        outputs = jax.block_until_ready(compiled(*current))
        current = _carry_donated(current, outputs, donate)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < policy.max_reps and (
        len(samples) < policy.min_reps or spent < policy.budget_s
    ):
        begin = clock()
        outputs = jax.block_until_ready(compiled(*current))
        elapsed = clock() - begin
        current = _carry_donated(current, outputs, donate)
        samples.append(elapsed)
        spent += elapsed
    return samples


def time_program(
    fn: Callable,
    args: Sequence[Any],
    donate: Sequence[int] = (),
    policy: TimingPolicy = DEFAULT_POLICY,
) -> Timing:
    """Compile ``fn`` (donating ``donate``) and time it: min and median of repeated calls [s]."""
    compiled, compile_s = compile_program(fn, args, donate)
    samples = time_compiled(compiled, args, donate, policy)
    return Timing(min(samples), statistics.median(samples), len(samples), compile_s)


# --------------------------------------------------------------------------- layer timings


class LayerDims(NamedTuple):
    """Shape of one Llama-style decoder layer [elements, heads]."""

    name: str
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int


class LayerCase(NamedTuple):
    """One layer to time: its dims, phase, batch [sequences], prompt S and context T [tokens],
    and which split (``train`` or ``heldout``) it belongs to."""

    dims: LayerDims
    phase: str
    batch: int
    prompt: int
    context: int
    split: str

    @property
    def key(self) -> tuple:
        """Identity of the case without its split."""
        return (self.dims.name, self.phase, self.batch, self.prompt, self.context)


DIMS = {
    "d512": LayerDims("d512", 512, 8, 2, 64, 1408),
    "d768": LayerDims("d768", 768, 12, 4, 64, 2048),
    "d1024": LayerDims("d1024", 1024, 16, 4, 64, 2816),
    "d1536": LayerDims("d1536", 1536, 12, 4, 128, 4096),
    "d2048": LayerDims("d2048", 2048, 16, 4, 128, 5632),
}
TRAIN_DIMS = ("d512", "d1024", "d2048")
HELDOUT_DIMS = ("d768", "d1536")
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64)


KV_BUFFER_LIMIT = 32 * 2**20  # largest K (or V) cache buffer a decode case may hold [bytes]


def kv_buffer_bytes(case: LayerCase, bytes_per_element: int = 4) -> int:
    """Bytes of one of the decode case's two cache buffers, B·T·H_kv·d_h elements (0 in
    prefill, whose keys and values are outputs, not a held cache)."""
    if case.phase != "decode":
        return 0
    dims = case.dims
    return case.batch * case.context * dims.n_kv_heads * dims.head_dim * bytes_per_element


def _decode(dims: str, batches, context: int, split: str) -> list[LayerCase]:
    cases = [LayerCase(DIMS[dims], "decode", b, 1, context, split) for b in batches]
    return [c for c in cases if kv_buffer_bytes(c) <= KV_BUFFER_LIMIT]


def _prefill(dims: str, shapes, split: str) -> list[LayerCase]:
    return [LayerCase(DIMS[dims], "prefill", b, s, s, split) for b, s in shapes]


def timing_grid(*, quick: bool = False) -> list[LayerCase]:
    """The layer shapes to time, split into training and held-out cases.

    Training: three model widths (d_model 512, 1024, 2048), decode at contexts 256 and 1024 over
    batches 1-64, and prefill of 32-1024 tokens.  Held out, never fitted: two other widths
    (768 and 1536) at a context (512) and prompt lengths the training set lacks, and the
    training widths at context 512 and a prompt of 192.  Held-out decode sweeps batch in powers
    of two so each case has a neighbour for the batch-scaling (regime) check; held-out prefill
    comes in pairs of batch 1 and 2.  ``quick`` keeps a small subset for smoke runs.

    Decode cases whose K or V cache buffer would exceed ``KV_BUFFER_LIMIT`` (32 MiB) are left
    out: on XLA:CPU the key-cache product works on a transposed temporary copy of the cache,
    and beyond glibc's 32 MiB mmap threshold that fresh buffer page-faults on every call, an
    allocator effect the cost model does not describe.  Prefill prompts likewise keep the score
    matrix (B·H·S² elements) below that size.
    """
    if quick:
        return (
            _decode("d512", (1, 8, 64), 256, "train")
            + _decode("d1024", (1, 8, 32), 1024, "train")
            + _prefill("d512", ((1, 64), (2, 256)), "train")
            + _prefill("d1024", ((1, 32), (1, 256)), "train")
            + _decode("d768", (1, 2, 16, 32), 512, "heldout")
            + _prefill("d768", ((1, 128), (2, 128)), "heldout")
        )
    train = []
    for dims in TRAIN_DIMS:
        train += _decode(dims, DECODE_BATCHES, 256, "train")
        train += _decode(dims, DECODE_BATCHES, 1024, "train")
    train += _prefill("d512", ((1, 32), (1, 128), (2, 256), (4, 128), (1, 768)), "train")
    train += _prefill("d1024", ((1, 32), (1, 128), (2, 256), (4, 128), (1, 512)), "train")
    train += _prefill("d2048", ((1, 32), (1, 128), (2, 256), (1, 512)), "train")
    heldout = []
    for dims in HELDOUT_DIMS:
        heldout += _decode(dims, DECODE_BATCHES, 512, "heldout")
        heldout += _prefill(dims, ((1, 64), (2, 64), (1, 384), (2, 384)), "heldout")
    for dims in TRAIN_DIMS:
        heldout += _decode(dims, (2, 4, 24, 48), 512, "heldout")
    heldout += _prefill("d1024", ((1, 192), (2, 192)), "heldout")
    return train + heldout


def case_record(case: LayerCase, bytes_per_element: int) -> dict[str, Any]:
    """Flat JSON-ready description of a case (the keys :func:`calibrate.make_cases` reads)."""
    return {
        "dims": case.dims.name,
        "phase": case.phase,
        "batch": case.batch,
        "prompt": case.prompt,
        "context": case.context,
        "d_model": case.dims.d_model,
        "n_heads": case.dims.n_heads,
        "n_kv_heads": case.dims.n_kv_heads,
        "head_dim": case.dims.head_dim,
        "ffn_dim": case.dims.ffn_dim,
        "bytes_per_element": bytes_per_element,
        "split": case.split,
    }


def layer_program(case: LayerCase, dtype):
    """The reference decoder layer (:mod:`costmodel.validate.reference`) for ``case``."""
    from costmodel.validate import reference
    from costmodel.validate.reference import small_spec

    spec = small_spec(
        d_model=case.dims.d_model,
        n_heads=case.dims.n_heads,
        n_kv_heads=case.dims.n_kv_heads,
        head_dim=case.dims.head_dim,
        ffn_dim=case.dims.ffn_dim,
    )
    if case.phase == "decode":
        return reference.decoder_layer(
            spec, "decode", batch=case.batch, context=case.context, dtype=dtype
        )
    return reference.decoder_layer(
        spec, "prefill", batch=case.batch, new_tokens=case.prompt, dtype=dtype
    )


class LayerTimer:
    """A reference layer compiled once and timed as often as asked (fresh inputs each time).

    ``timings`` holds every call's seconds so far; ``result()`` summarises them: the minimum
    over all rounds, the median of the per-round medians.
    """

    def __init__(self, case: LayerCase, dtype):
        self.program = layer_program(case, dtype)
        args = self.program.abstract_args()
        self.compiled, self.compile_s = compile_program(self.program.fn, args, self.program.donate)
        self.rounds: list[list[float]] = []
        self.shares: list[float | None] = []

    def measure(self, policy: TimingPolicy = DEFAULT_POLICY) -> float | None:
        """One round of repeated calls on freshly drawn inputs; returns the share of the host's
        CPU that other processes used meanwhile (None where unknown)."""
        args = self.program.example_args(jax.random.key(len(self.rounds)))
        before = cpu_snapshot()
        self.rounds.append(time_compiled(self.compiled, args, self.program.donate, policy))
        share = foreign_share(before, cpu_snapshot())
        self.shares.append(share)
        return share

    def clean_rounds(self, limit: float) -> list[int]:
        """Rounds during which other processes used at most ``limit`` of the CPU (or unknown)."""
        return [i for i, s in enumerate(self.shares) if s is None or s <= limit]

    def result(self, limit: float = 1.0) -> Timing:
        """Minimum over the calls of the clean rounds (all rounds if none is clean), median of
        their medians [s]."""
        chosen = self.clean_rounds(limit) or list(range(len(self.rounds)))
        samples = [t for i in chosen for t in self.rounds[i]]
        median = statistics.median(statistics.median(self.rounds[i]) for i in chosen)
        return Timing(min(samples), median, len(samples), self.compile_s)


def time_layer(case: LayerCase, dtype, policy: TimingPolicy = DEFAULT_POLICY) -> Timing:
    """Compile and time the reference layer of ``case`` on random inputs (one round) [s]."""
    timer = LayerTimer(case, dtype)
    timer.measure(policy)
    return timer.result()


# --------------------------------------------------------------------------- the protocol


class Protocol(NamedTuple):
    """How a validation run measures on a machine that other processes share.

    Every layer is compiled once and timed in ``rounds`` passes over the whole grid, so a burst
    of load from elsewhere spoils one pass of a case, not all of its samples.  A round is clean
    when other processes used at most ``contention_limit`` of the host's CPU meanwhile; a case
    none of whose rounds was clean gets up to ``extra_rounds`` more, each after waiting up to
    ``quiet_wait_s`` for a quiet moment (``quiet_budget_s`` of waiting in all) [s].
    """

    rounds: int = 2
    contention_limit: float = 0.10
    extra_rounds: int = 3
    quiet_wait_s: float = 10.0
    quiet_budget_s: float = 180.0
    policy: TimingPolicy = DEFAULT_POLICY


DEFAULT_PROTOCOL = Protocol()
QUICK_PROTOCOL = Protocol(rounds=1, policy=QUICK_POLICY)


class Progress(NamedTuple):
    """Callbacks of a long measurement: ``plan(n)`` when n more steps are planned,
    ``step(label)`` after each step."""

    plan: Callable[[int], None] = lambda _n: None
    step: Callable[[str], None] = lambda _label: None


SILENT = Progress()


def time_layers(
    grid: Sequence[LayerCase], dtype, protocol: Protocol, progress: Progress = SILENT
) -> tuple[list[LayerTimer], float]:
    """Time every case of ``grid`` by ``protocol``; returns the timers and the seconds spent
    waiting for quiet moments."""
    timers: list[LayerTimer] = []
    waited = 0.0
    limit = protocol.contention_limit
    progress.plan(protocol.rounds * len(grid))
    for round_index in range(protocol.rounds + protocol.extra_rounds):
        todo: Sequence[int] = range(len(grid))
        if round_index >= protocol.rounds:
            todo = [i for i, t in enumerate(timers) if not t.clean_rounds(limit)]
            progress.plan(len(todo))
        for i in todo:
            if round_index == 0:
                timers.append(LayerTimer(grid[i], dtype))
            elif round_index >= protocol.rounds and waited < protocol.quiet_budget_s:
                begin = time.perf_counter()
                wait_for_quiet(limit, timeout_s=protocol.quiet_wait_s)
                waited += time.perf_counter() - begin
            timers[i].measure(protocol.policy)
            case = grid[i]
            progress.step(
                f"round {round_index + 1} {case.dims.name} {case.phase} "
                f"B{case.batch} S{case.prompt} T{case.context}"
            )
    return timers, waited
