"""Microbenchmarks of the current JAX backend: the numbers a hardware spec is made of.

* matmul throughput against size, square and decode-shaped (few rows against a large weight)
  [FLOP/s];
* streaming bandwidth against working-set size: a full reduction (reads only), a
  vector-matrix product (a weight streamed once, as decode does), and a scaled copy (read and
  write) [bytes/s].  On a CPU the curve shows the caches: a buffer that fits in L3 is read
  several times faster than one streamed from DRAM;
* the fixed cost of dispatching one jitted call, and of one more kernel inside a compiled
  program [s];
* the cache size the operating system reports (Linux sysfs), where it reports one.

Everything runs through ``jax.jit`` on the default backend, so the same code characterises a
CPU or a GPU; sizes default per backend.  Library code: no printing.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from costmodel.validate.timing import (
    DEFAULT_POLICY,
    TimingPolicy,
    device_description,
    time_fn,
)

MIB = 2**20


class MatmulPoint(NamedTuple):
    """One timed matmul (m, k) x (k, n): FLOPs [FLOP], min and median time [s], FLOP/s."""

    m: int
    k: int
    n: int
    flops: float
    min_s: float
    median_s: float
    flop_per_s: float


class BandwidthPoint(NamedTuple):
    """One timed streaming kernel: kind (read, gemv or copy), bytes moved, time, bytes/s."""

    kind: str
    working_set_bytes: int
    bytes_moved: float
    min_s: float
    median_s: float
    bytes_per_s: float


class Sizes(NamedTuple):
    """Benchmark sizes: square matmul sides, decode-matmul rows and weight side, buffer bytes."""

    square: tuple[int, ...]
    decode_rows: tuple[int, ...]
    decode_side: int
    buffers: tuple[int, ...]


CPU_SIZES = Sizes(
    square=(128, 256, 512, 1024, 2048),
    decode_rows=(1, 2, 8, 32, 128),
    decode_side=2048,
    buffers=tuple(int(x * MIB) for x in (0.25, 1, 4, 8, 16, 24, 48, 96, 256)),
)
CPU_QUICK_SIZES = Sizes(
    square=(256, 1024),
    decode_rows=(1, 8),
    decode_side=1024,
    buffers=tuple(int(x * MIB) for x in (1, 8, 96)),
)
GPU_SIZES = Sizes(
    square=(512, 1024, 2048, 4096, 8192),
    decode_rows=(1, 8, 64, 512),
    decode_side=8192,
    buffers=tuple(int(x * MIB) for x in (1, 8, 32, 128, 512, 2048)),
)
GPU_QUICK_SIZES = Sizes(
    square=(1024, 8192),
    decode_rows=(1, 64),
    decode_side=8192,
    buffers=tuple(int(x * MIB) for x in (8, 512, 2048)),
)


def default_sizes(backend: str | None = None, *, quick: bool = False) -> Sizes:
    """Sizes suited to ``backend`` (default: JAX's): small on a CPU, large on an accelerator."""
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return CPU_QUICK_SIZES if quick else CPU_SIZES
    return GPU_QUICK_SIZES if quick else GPU_SIZES


def default_dtype(backend: str | None = None):
    """float32 on a CPU (XLA:CPU computes bf16 by upcasting), bfloat16 on an accelerator."""
    backend = backend or jax.default_backend()
    return jnp.float32 if backend == "cpu" else jnp.bfloat16


def _normal(shape: Sequence[int], dtype, seed: int) -> jax.Array:
    return 0.1 * jax.random.normal(jax.random.key(seed), tuple(shape), dtype)


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def time_matmul(
    m: int, k: int, n: int, dtype=jnp.float32, policy: TimingPolicy = DEFAULT_POLICY
) -> MatmulPoint:
    """Time (m, k) x (k, n) in ``dtype``: 2·m·k·n FLOPs."""
    x = _normal((m, k), dtype, 1)
    w = _normal((k, n), dtype, 2)
    timing = time_fn(_matmul, (x, w), policy)
    flops = 2.0 * m * k * n
    return MatmulPoint(m, k, n, flops, timing.min_s, timing.median_s, flops / timing.min_s)


def _read(x: jax.Array) -> jax.Array:
    return jnp.sum(x)


def _copy(x: jax.Array) -> jax.Array:
    return x * 2


def time_stream(
    kind: str, size_bytes: int, dtype=jnp.float32, policy: TimingPolicy = DEFAULT_POLICY
) -> BandwidthPoint:
    """Time one streaming kernel over a buffer of about ``size_bytes``.

    ``read``: sum of a vector (bytes read); ``gemv``: a (1, k) x (k, n) product whose (k, n)
    weight is the buffer (weight bytes read); ``copy``: 2·x into a new buffer (bytes read plus
    written; on a CPU a fresh output buffer beyond the allocator's reuse limits also pays its
    page faults, as any kernel writing a large new array does).
    """
    itemsize = jnp.dtype(dtype).itemsize
    elements = max(size_bytes // itemsize, 1024)
    if kind == "gemv":
        k = 1024
        n = max(elements // k, 1)
        x = _normal((1, k), dtype, 3)
        w = _normal((k, n), dtype, 4)
        timing = time_fn(_matmul, (x, w), policy)
        moved = float(k * n * itemsize)
        working = k * n * itemsize
    else:
        x = _normal((elements,), dtype, 5)
        fn: Callable = _read if kind == "read" else _copy
        timing = time_fn(fn, (x,), policy)
        moved = float(elements * itemsize * (1 if kind == "read" else 2))
        working = elements * itemsize
    return BandwidthPoint(
        kind, int(working), moved, timing.min_s, timing.median_s, moved / timing.min_s
    )


def dispatch_overhead(policy: TimingPolicy = DEFAULT_POLICY) -> float:
    """Minimum wall time of a jitted call doing almost nothing (x + 1 on 8 floats) [s]."""
    x = jnp.zeros((8,), jnp.float32)
    return time_fn(lambda v: v + 1, (x,), policy).min_s


def _chain(length: int) -> Callable:
    def fn(x, w):
        for _ in range(length):
            x = jnp.tanh(x @ w)
        return x

    return fn


def kernel_overhead(
    lengths: tuple[int, int] = (4, 64), policy: TimingPolicy = DEFAULT_POLICY
) -> float:
    """Time per extra kernel inside one compiled program [s].

    A chain of dependent tiny matmuls (8x8, each followed by tanh) cannot be fused into one
    kernel; the slope of the chain's time between two lengths is the cost of one more
    (matmul + elementwise) kernel pair, halved.
    """
    w = _normal((8, 8), jnp.float32, 6)
    x = _normal((8, 8), jnp.float32, 7)
    short, long = (time_fn(_chain(n), (x, w), policy).min_s for n in lengths)
    return max(long - short, 0.0) / (lengths[1] - lengths[0]) / 2


def os_cache_bytes() -> int | None:
    """Size of the largest CPU cache the OS reports (Linux sysfs) [bytes], or None.

    Meaningful for the CPU backend only; None where sysfs is absent or unreadable.
    """
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    best = None
    try:
        entries = sorted(root.glob("index*"))
    except OSError:
        return None
    for entry in entries:
        try:
            text = (entry / "size").read_text().strip()
        except OSError:
            continue
        value = _parse_cache_size(text)
        if value is not None and (best is None or value > best):
            best = value
    return best


def _parse_cache_size(text: str) -> int | None:
    """'32768K' -> 33554432; '2M' -> 2097152; None if unparseable."""
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper()
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        return None


def cache_knee(points: Sequence[BandwidthPoint]) -> int | None:
    """Working set [bytes] beyond which a bandwidth curve falls to its large-buffer plateau.

    The largest size whose bandwidth still exceeds the geometric mean of the curve's best and
    its largest-size bandwidth; None if the curve has no such drop (no cache effect visible,
    e.g. all sizes beyond the cache).
    """
    ordered = sorted(points, key=lambda p: p.working_set_bytes)
    if len(ordered) < 3:
        return None
    best = max(p.bytes_per_s for p in ordered)
    floor = ordered[-1].bytes_per_s
    if best < 1.5 * floor:
        return None
    threshold = float(np.sqrt(best * floor))
    above = [p.working_set_bytes for p in ordered if p.bytes_per_s >= threshold]
    return max(above) if above else None


class DeviceProfile(NamedTuple):
    """Everything the microbenchmarks measured, plus the device description."""

    device: dict[str, Any]
    dtype: str
    matmul: list[MatmulPoint]
    alt_dtype: str
    alt_matmul: MatmulPoint
    bandwidth: list[BandwidthPoint]
    dispatch_s: float
    kernel_s: float
    os_cache_bytes: int | None
    cache_knee_bytes: int | None

    @property
    def peak_flops(self) -> float:
        """Best measured matmul FLOP/s at the benchmark dtype [FLOP/s]."""
        return max(p.flop_per_s for p in self.matmul)

    @property
    def stream_bandwidth(self) -> float:
        """Streaming bandwidth beyond the caches: best of read and gemv at the largest buffer
        [bytes/s]."""
        largest = max(p.working_set_bytes for p in self.bandwidth)
        return max(
            p.bytes_per_s
            for p in self.bandwidth
            if p.working_set_bytes == largest and p.kind in ("read", "gemv")
        )

    @property
    def cache_bandwidth(self) -> float:
        """Best read or gemv bandwidth at any size (cache-resident) [bytes/s]."""
        return max(p.bytes_per_s for p in self.bandwidth if p.kind in ("read", "gemv"))

    @property
    def cache_bytes(self) -> int | None:
        """Cache capacity: the OS figure where the backend is a CPU, else the curve's knee."""
        if self.device.get("backend") == "cpu" and self.os_cache_bytes:
            return self.os_cache_bytes
        return self.cache_knee_bytes


def characterise(
    *,
    quick: bool = False,
    policy: TimingPolicy = DEFAULT_POLICY,
    progress: Callable[[str], None] | None = None,
) -> DeviceProfile:
    """Run every microbenchmark on the default backend; ``progress(label)`` after each."""
    backend = jax.default_backend()
    sizes = default_sizes(backend, quick=quick)
    dtype = default_dtype(backend)
    note = progress or (lambda _label: None)
    matmul = []
    for side in sizes.square:
        matmul.append(time_matmul(side, side, side, dtype, policy))
        note(f"matmul {side}^3")
    for rows in sizes.decode_rows:
        side = sizes.decode_side
        matmul.append(time_matmul(rows, side, side, dtype, policy))
        note(f"matmul {rows}x{side}x{side}")
    side = sizes.square[-1]
    alt_dtype = jnp.bfloat16 if dtype == jnp.float32 else jnp.float32
    alt = time_matmul(side, side, side, alt_dtype, policy)
    note(f"{jnp.dtype(alt_dtype).name} matmul")
    bandwidth = []
    for kind in ("read", "gemv", "copy"):
        for size in sizes.buffers:
            bandwidth.append(time_stream(kind, size, dtype, policy))
            note(f"{kind} {size / MIB:g} MiB")
    dispatch = dispatch_overhead(policy)
    kernel = kernel_overhead(policy=policy)
    note("overheads")
    knee = cache_knee([p for p in bandwidth if p.kind == "read"])
    return DeviceProfile(
        device=device_description(),
        dtype=jnp.dtype(dtype).name,
        matmul=matmul,
        alt_dtype=jnp.dtype(alt_dtype).name,
        alt_matmul=alt,
        bandwidth=bandwidth,
        dispatch_s=dispatch,
        kernel_s=kernel,
        os_cache_bytes=os_cache_bytes() if backend == "cpu" else None,
        cache_knee_bytes=knee,
    )


def profile_record(profile: DeviceProfile) -> dict[str, Any]:
    """JSON-ready form of a profile."""
    return {
        "device": profile.device,
        "dtype": profile.dtype,
        "peak_flops": profile.peak_flops,
        "stream_bandwidth_bytes_s": profile.stream_bandwidth,
        "cache_bandwidth_bytes_s": profile.cache_bandwidth,
        "cache_bytes": profile.cache_bytes,
        "os_cache_bytes": profile.os_cache_bytes,
        "cache_knee_bytes": profile.cache_knee_bytes,
        "dispatch_s": profile.dispatch_s,
        "kernel_s": profile.kernel_s,
        "matmul": [p._asdict() for p in profile.matmul],
        "alt_dtype": profile.alt_dtype,
        "alt_matmul": profile.alt_matmul._asdict(),
        "memory_bytes": device_memory_bytes(),
        "bandwidth": [p._asdict() for p in profile.bandwidth],
    }


def _how(dtype: str, profile: DeviceProfile) -> str:
    if dtype == profile.dtype:
        return "best of the matmul sweep"
    side = profile.alt_matmul.m
    return f"one {side}^3 matmul"


def device_memory_bytes() -> int | None:
    """Memory of the default device [bytes]: the accelerator's allocator limit where JAX reports
    one, else the host's physical memory; None if neither is known."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def hardware_spec_yaml(
    profile: DeviceProfile,
    *,
    name: str,
    efficiency: dict[str, Any] | None = None,
    memory_bytes: int | None = None,
    source: str = "",
) -> str:
    """A hardware spec in the catalogue's YAML format, every figure a measurement of this run.

    Peaks are the best measured matmul rates (so a fitted compute efficiency is relative to
    what a large matmul achieves here), bandwidth the streaming figure beyond the caches.
    ``efficiency`` (keys of :class:`costmodel.config.specs.Efficiency`) is written as given;
    ``source`` (e.g. the measurements file) goes into the header comment.
    """
    device = profile.device
    date = device.get("date_utc", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    rates = {profile.dtype: profile.peak_flops / 1e12}
    rates.setdefault(profile.alt_dtype, profile.alt_matmul.flop_per_s / 1e12)
    bf16, fp32 = rates.get("bfloat16", 0.0), rates.get("float32", 0.0)
    capacity_gb = (memory_bytes or device_memory_bytes() or 0) / 1e9
    if device.get("backend") == "cpu":
        what = f"{device.get('cpu', 'CPU')}, {device.get('cpu_count')} cores, JAX CPU backend"
    else:
        what = f"{device.get('device_kind')}, JAX {device.get('backend')} backend"
    lines = [
        f"# Measured by costmodel.validate.microbench and experiments.validate_timing ({date}):",
        f"# {what}, JAX {device.get('jax_version')}, {profile.dtype} benchmarks.",
        "# Peaks are best measured rates, not datasheet figures; decimal units (T = 1e12).",
        *([f"# Measurements: {source}"] if source else []),
        f"name: {name}",
        f"description: {what} (measured {date[:10]})",
        "peak_tflops:",
        f"  bf16: {bf16:.6g}    # bfloat16 matmul, {_how('bfloat16', profile)}",
        f"  fp16: {bf16:.6g}    # taken equal to bf16 (not measured)",
        f"  fp32: {fp32:.6g}    # float32 matmul, {_how('float32', profile)}; elementwise peak",
        f"hbm_bandwidth_tb_s: {profile.stream_bandwidth / 1e12:.6g}  # streaming beyond caches",
        f"hbm_capacity_gb: {max(capacity_gb, 0.001):.4g}  # device (or host) memory",
        "link_bandwidth_gb_s: 1  # no peer link: a single device (placeholder, unused at tp 1)",
        "link_latency_us: 0",
        "usable_memory_fraction: 0.9",
    ]
    if efficiency:
        lines.append("efficiency:")
        for key, value in efficiency.items():
            text = f'"{value}"' if isinstance(value, str) else f"{value:.6g}"
            note = EFFICIENCY_NOTES.get(key, "")
            lines.append(f"  {key}: {text}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


EFFICIENCY_NOTES = {
    "compute": "fitted fraction of the matmul peak",
    "memory": "fitted fraction of the streaming bandwidth",
    "kernel_overhead_us": "fitted fixed time per kernel",
    "overlap": "fitted exponent p of (compute^p + memory^p)^(1/p); 1 = no overlap",
    "cache_mb": "fitted cache capacity for a step's weights and KV cache",
    "cache_bandwidth_tb_s": "fitted bandwidth of cache-resident traffic",
    "weight_relayout": "fitted extra traffic of multi-row matmuls / their weight bytes",
    "attention": "fitted rate fraction of attention kernels",
}


def best_of(first: DeviceProfile, second: DeviceProfile) -> DeviceProfile:
    """Two runs of the same benchmarks merged point by point: each point's faster run.

    Peaks are maxima, so interference from other processes only ever slows a benchmark down;
    a second run taken at a quieter moment can only improve the estimate.
    """

    def faster(a, b):
        return a if a.min_s <= b.min_s else b

    return first._replace(
        matmul=[faster(a, b) for a, b in zip(first.matmul, second.matmul, strict=True)],
        alt_matmul=faster(first.alt_matmul, second.alt_matmul),
        bandwidth=[faster(a, b) for a, b in zip(first.bandwidth, second.bandwidth, strict=True)],
        dispatch_s=min(first.dispatch_s, second.dispatch_s),
        kernel_s=min(first.kernel_s, second.kernel_s),
    )
