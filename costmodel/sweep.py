"""Sweeps: compiled cost expressions evaluated over grids of configurations.

A :class:`Grid` is the Cartesian product of :class:`Axis` objects.  An axis sets one or more
symbols at each of its points: a numeric axis (batch 1..1024) sets one symbol, a categorical
axis (a weight dtype) sets several at once (bytes per weight and the matmul peak) and carries a
label per point, and a fixed value is an axis of one point.  Grid points are numbered in C
order, the last axis fastest, and a sweep's answer names points by that flat index.

Evaluation is chunked.  A chunk is a dense block of the grid: one point of the leading axes, a
run of ``rows`` points of the split axis, and every point of the trailing axes.  Inputs enter
the compiled expression by broadcasting (no index arithmetic per configuration), so work that
depends only on the leading axes is done once per chunk, and memory is bounded by the chunk
size however large the grid is: a sweep of 10^9 configurations holds one chunk at a time.

The rows of every chunk are sharded over a one-dimensional mesh of all devices
(``jax.sharding.NamedSharding``); XLA partitions the evaluation and the reductions, so a
multi-device runtime spreads a sweep with no change to the calling code.  Reductions
(:func:`best`, :func:`first_within`) run inside the compiled chunk function and return a few
numbers per chunk; :func:`evaluate` materialises every output (for grids that fit in memory).

Library code: progress goes to a callback or a tqdm bar on stderr, never to stdout.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from costmodel.codegen import compile_exprs

DEFAULT_CHUNK = 1 << 22  # configurations per chunk: 4 Mi, 32 MiB per float64 output
SMALL_BLOCK = 1 << 16  # blocks up to this size reduce without the row trick (faster to compile)
MESH_AXIS = "sweep"

Progress = bool | Callable[[int], None]


class Axis(NamedTuple):
    """One dimension of a grid.

    ``symbols`` are set together: point ``i`` gives ``symbols[j]`` the value ``table[i, j]``.
    ``labels`` name the points (the value itself for a numeric axis).
    """

    name: str
    symbols: tuple[sp.Symbol, ...]
    table: np.ndarray  # float64, shape (size, len(symbols))
    labels: tuple[str, ...]

    @property
    def size(self) -> int:
        """Number of points on the axis."""
        return int(self.table.shape[0])


def numeric_axis(symbol: sp.Symbol, values: Sequence[float] | np.ndarray, name: str = "") -> Axis:
    """An axis setting one symbol to each of ``values`` (cast to float64)."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"axis {name or symbol} has no points")
    labels = tuple(f"{v:g}" for v in array)
    return Axis(name or str(symbol), (symbol,), array.reshape(-1, 1), labels)


def fixed(symbol: sp.Symbol, value: float) -> Axis:
    """A one-point axis: ``symbol`` held at ``value`` for the whole sweep."""
    return numeric_axis(symbol, [value])


def table_axis(name: str, rows: Mapping[str, Mapping[sp.Symbol, object]]) -> Axis:
    """A categorical axis: each labelled point sets the same symbols to its own values.

    ``table_axis("weight_dtype", {"bf16": {b_w: 2, P_mm: 989e12}, "fp8": {...}})``.
    """
    if not rows:
        raise ValueError(f"axis {name} has no points")
    labels = tuple(rows)
    symbols = tuple(rows[labels[0]])
    for label in labels:
        if tuple(rows[label]) != symbols:
            raise ValueError(f"axis {name}: point {label} sets different symbols")
    table = np.array(
        [[float(rows[label][s]) for s in symbols] for label in labels], dtype=np.float64
    ).reshape(len(labels), len(symbols))
    return Axis(name, symbols, table, labels)


class Grid(NamedTuple):
    """The Cartesian product of axes, flattened in C order (last axis fastest)."""

    axes: tuple[Axis, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Points per axis."""
        return tuple(a.size for a in self.axes)

    @property
    def size(self) -> int:
        """Number of configurations."""
        return math.prod(self.shape)

    @property
    def symbols(self) -> tuple[sp.Symbol, ...]:
        """Every symbol the grid sets, in axis order."""
        return tuple(s for a in self.axes for s in a.symbols)

    def index(self, flat: int) -> tuple[int, ...]:
        """Per-axis indices of the configuration numbered ``flat``."""
        return tuple(int(i) for i in np.unravel_index(flat, self.shape))

    def point(self, flat: int) -> dict[str, str]:
        """Axis name -> label of the configuration numbered ``flat``."""
        return {a.name: a.labels[i] for a, i in zip(self.axes, self.index(flat), strict=True)}

    def values(self, flat: int) -> dict[sp.Symbol, float]:
        """Symbol -> value at the configuration numbered ``flat``."""
        out: dict[sp.Symbol, float] = {}
        for a, i in zip(self.axes, self.index(flat), strict=True):
            out |= {s: float(a.table[i, j]) for j, s in enumerate(a.symbols)}
        return out


def grid(*axes: Axis) -> Grid:
    """A grid over ``axes``; every symbol may be set by one axis only."""
    seen: set[sp.Symbol] = set()
    for a in axes:
        clash = seen & set(a.symbols)
        if clash:
            raise ValueError(f"symbol {sorted(map(str, clash))} set by more than one axis")
        seen |= set(a.symbols)
    return Grid(tuple(axes))


# --------------------------------------------------------------------------- chunk layout


class Layout(NamedTuple):
    """How a grid is cut into chunks: axis ``split`` is taken ``rows`` points at a time."""

    split: int
    rows: int  # rows per chunk, a multiple of the device count (the last chunk is padded)
    trailing: tuple[int, ...]  # sizes of the axes after ``split``

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one chunk: (rows, *trailing)."""
        return (self.rows, *self.trailing)


def plan(shape: Sequence[int], chunk_size: int, n_devices: int = 1) -> Layout:
    """Choose the split axis and rows per chunk so a chunk holds at most about ``chunk_size``.

    The split axis is the outermost one whose trailing axes fit in a chunk; rows are rounded to
    a multiple of ``n_devices`` (at least one row per device).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    shape = tuple(int(n) for n in shape)
    split = len(shape) - 1
    while split > 0 and math.prod(shape[split:]) <= chunk_size:
        split -= 1
    inner = math.prod(shape[split + 1 :])
    rows = max(1, min(shape[split], chunk_size // inner))
    rows = max(n_devices, rows - rows % n_devices)
    return Layout(split, rows, shape[split + 1 :])


class Chunk(NamedTuple):
    """One chunk: indices of the leading axes, first row of the split axis, valid rows."""

    prefix: tuple[int, ...]
    start: int
    valid: int


def chunks(shape: Sequence[int], layout: Layout) -> Iterator[Chunk]:
    """The chunks of a grid in flat (C) order."""
    n_split = shape[layout.split]
    for prefix in itertools.product(*(range(n) for n in shape[: layout.split])):
        for start in range(0, n_split, layout.rows):
            yield Chunk(prefix, start, min(layout.rows, n_split - start))


# --------------------------------------------------------------------------- compiled sweeps


@dataclass(eq=False)
class Sweep:
    """Named SymPy expressions compiled once (float64 JAX) for evaluation over grids.

    ``symbols`` are the compiled function's arguments; a grid must set every one of them.
    Compiled chunk functions are cached per grid layout and reduction.
    """

    exprs: dict[str, sp.Expr]
    symbols: tuple[sp.Symbol, ...]
    function: Callable[..., dict[str, jax.Array]] = field(repr=False)
    _chunk_fns: dict = field(default_factory=dict, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Output names."""
        return tuple(self.exprs)


def compile_sweep(exprs: Mapping[str, sp.Expr], symbols: Sequence[sp.Symbol]) -> Sweep:
    """Compile ``exprs`` (functions of ``symbols``) with :func:`costmodel.codegen.compile_exprs`."""
    exprs = {name: sp.sympify(e) for name, e in exprs.items()}
    return Sweep(exprs, tuple(symbols), compile_exprs(exprs, list(symbols)))


def _mesh(devices: Sequence[jax.Device] | None) -> Mesh:
    return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (MESH_AXIS,))


def _block_inputs(sweep: Sweep, grid_: Grid, layout: Layout, prefix_values, rows, trailing):
    """Every argument of the sweep's function and the block dimension it varies along.

    Returns (values, dims): a scalar (dim None) for the leading axes' symbols, a 1-D array along
    dim 0 for the split axis's rows, along dim 1 + t for trailing axis t.
    """
    values: dict[sp.Symbol, jax.Array] = {}
    dims: dict[sp.Symbol, int | None] = {}
    position = 0
    for a in grid_.axes[: layout.split]:
        for s in a.symbols:
            values[s], dims[s] = prefix_values[position], None
            position += 1
    for j, s in enumerate(grid_.axes[layout.split].symbols):
        values[s], dims[s] = rows[:, j], 0
    for t, (a, table) in enumerate(zip(grid_.axes[layout.split + 1 :], trailing, strict=True)):
        for j, s in enumerate(a.symbols):
            values[s], dims[s] = table[:, j], 1 + t
    return [values[s] for s in sweep.symbols], [dims[s] for s in sweep.symbols]


def _outer(function: Callable, dims: Sequence[int | None], shape: tuple[int, ...]) -> Callable:
    """``function`` of scalars mapped over an ``ndim``-dimensional block by nested ``jax.vmap``:
    the vmap for dimension d maps the arguments that vary along d and holds the rest, so the
    result is the outer product over the block (``shape``); XLA sees broadcasting, not gathers."""
    mapped = function
    for d in reversed(range(len(shape))):
        in_axes = tuple(0 if k == d else None for k in dims)
        mapped = jax.vmap(mapped, in_axes=in_axes, axis_size=shape[d])
    return mapped


def _chunk_function(sweep: Sweep, grid_: Grid, layout: Layout, reducer: Reducer, mesh: Mesh):
    key = (tuple((a.name, a.symbols, a.size) for a in grid_.axes), layout, reducer, mesh)
    if key in sweep._chunk_fns:
        return sweep._chunk_fns[key]
    shape = layout.block_shape
    ndim = len(shape)

    def chunk_fn(prefix_values, rows, mask, trailing, *extra):
        args, dims = _block_inputs(sweep, grid_, layout, prefix_values, rows, trailing)
        outputs = _outer(sweep.function, dims, shape)(*args)
        valid = jnp.broadcast_to(mask.reshape((layout.rows,) + (1,) * (ndim - 1)), shape)

        def row(r):
            """Outputs and validity of row ``r`` of the block viewed as (-1, shape[-1]),
            recomputed: one row costs 1/rows of the block."""
            index = jnp.unravel_index(r, shape[:-1])
            row_args = [
                a if d is None or d == ndim - 1 else a[index[d]]
                for a, d in zip(args, dims, strict=True)
            ]
            row_dims = [0 if d == ndim - 1 else None for d in dims]
            row_outputs = _outer(sweep.function, row_dims, shape[-1:])(*row_args)
            row_valid = jnp.broadcast_to(mask[index[0]] if ndim > 1 else mask, shape[-1:])
            return row_outputs, row_valid

        return reducer.reduce(outputs, valid, row, *extra)

    fn = jax.jit(chunk_fn)
    sweep._chunk_fns[key] = fn
    return fn


def _sharded(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from host data (works in single- and multi-process runtimes)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _run(
    sweep: Sweep,
    grid_: Grid,
    reducer: Reducer,
    extra: tuple = (),
    *,
    chunk_size: int = DEFAULT_CHUNK,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> Iterator[tuple[Chunk, int, Any]]:
    """Yield (chunk, flat index of its first configuration, reduction) for every chunk."""
    missing = set(sweep.symbols) - set(grid_.symbols)
    if missing:
        raise ValueError(f"grid does not set {', '.join(sorted(map(str, missing)))}")
    mesh = _mesh(devices)
    n_devices = mesh.devices.size
    layout = plan(grid_.shape, chunk_size, n_devices)
    fn = _chunk_function(sweep, grid_, layout, reducer, mesh)
    row_sharding = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    trailing = tuple(
        jax.device_put(jnp.asarray(a.table), replicated) for a in grid_.axes[layout.split + 1 :]
    )
    split_table = grid_.axes[layout.split].table
    extra = tuple(jax.device_put(jnp.asarray(x, dtype=jnp.float64), replicated) for x in extra)
    bar = _progress_bar(progress, grid_.size)
    inner = math.prod(layout.trailing)
    try:
        for chunk in chunks(grid_.shape, layout):
            prefix_values = np.array(
                [
                    grid_.axes[k].table[i, j]
                    for k, i in enumerate(chunk.prefix)
                    for j in range(len(grid_.axes[k].symbols))
                ],
                dtype=np.float64,
            )
            rows = split_table[chunk.start : chunk.start + chunk.valid]
            if chunk.valid < layout.rows:  # pad with copies of the last row, masked out
                rows = np.concatenate([rows, np.repeat(rows[-1:], layout.rows - chunk.valid, 0)])
            mask = np.arange(layout.rows) < chunk.valid
            result = fn(
                jnp.asarray(prefix_values),
                _sharded(np.ascontiguousarray(rows), row_sharding),
                _sharded(mask, row_sharding),
                trailing,
                *extra,
            )
            base = int(
                np.ravel_multi_index((*chunk.prefix, chunk.start), grid_.shape[: layout.split + 1])
            )
            yield chunk, base * inner, result
            bar(chunk.valid * inner)
    finally:
        bar(None)


def _progress_bar(progress: Progress, total: int) -> Callable[[int | None], None]:
    """A callable taking configurations done (None closes); tqdm on stderr for ``True``."""
    if callable(progress):
        return lambda n: None if n is None else progress(n)
    if not progress:
        return lambda n: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="cfg", unit_scale=True, file=sys.stderr, leave=False)
    return lambda n: bar.close() if n is None else bar.update(n)


# --------------------------------------------------------------------------- reductions


class Reducer(NamedTuple):
    """A reduction run inside the compiled chunk function (hashable: it keys the jit cache).

    ``best`` and ``first_within`` reduce each row of the chunk (its last axis) first, pick the
    row, and recompute that one row to find the column: XLA's whole-array argmax is several
    times slower than a row-wise max on CPU.
    """

    kind: str  # "values", "best" or "first_within"
    objective: str = ""
    constraints: tuple[str, ...] = ()  # outputs that must be <= 0 for a feasible point
    maximise: bool = True
    count: bool = True  # count feasible configurations (costs about a third more)
    rtol: float = 0.0  # also find the first point within rtol of the chunk's best

    def _feasible(self, outputs: dict[str, jax.Array], valid: jax.Array) -> jax.Array:
        for name in self.constraints:
            valid = valid & (outputs[name] <= 0)
        return valid

    def _masked(self, outputs: dict[str, jax.Array], valid: jax.Array) -> jax.Array:
        worst = -jnp.inf if self.maximise else jnp.inf
        return jnp.where(self._feasible(outputs, valid), outputs[self.objective], worst)

    def _good(self, outputs, valid, threshold) -> jax.Array:
        score = outputs[self.objective]
        reached = (score >= threshold) if self.maximise else (score <= threshold)
        return self._feasible(outputs, valid) & reached

    def reduce(self, outputs: dict[str, jax.Array], valid: jax.Array, row, *extra):
        if self.kind == "values":
            return outputs
        if valid.size <= SMALL_BLOCK:  # small blocks: one row, no recomputation, less to compile
            outputs = {k: v.reshape(1, -1) for k, v in outputs.items()}
            valid = valid.reshape(1, -1)
            flat_outputs, flat_valid = outputs, valid

            def row(r):
                return {k: v[0] for k, v in flat_outputs.items()}, flat_valid[0]

        width = valid.shape[-1]
        if self.kind == "best":
            masked = self._masked(outputs, valid).reshape(-1, width)
            per_row = jnp.max(masked, axis=1) if self.maximise else jnp.min(masked, axis=1)
            r = jnp.argmax(per_row) if self.maximise else jnp.argmin(per_row)
            row_scores = self._masked(*row(r))
            c = jnp.argmax(row_scores) if self.maximise else jnp.argmin(row_scores)
            count = jnp.sum(self._feasible(outputs, valid)) if self.count else jnp.int64(-1)
            if self.rtol <= 0:
                return per_row[r], r * width + c, count, r * width + c
            best = per_row[r]
            threshold = (
                best - self.rtol * jnp.abs(best)
                if self.maximise
                else best + self.rtol * jnp.abs(best)
            )
            first = self._first(outputs, valid, row, threshold, width)
            return best, r * width + c, count, first
        (threshold,) = extra
        per_row = jnp.any(self._good(outputs, valid, threshold).reshape(-1, width), axis=1)
        return jnp.any(per_row), self._first(outputs, valid, row, threshold, width)

    def _first(self, outputs, valid, row, threshold, width) -> jax.Array:
        """Block index of the first feasible point whose objective reaches ``threshold``."""
        per_row = jnp.any(self._good(outputs, valid, threshold).reshape(-1, width), axis=1)
        r = jnp.argmax(per_row)  # argmax of booleans: the first True
        return r * width + jnp.argmax(self._good(*row(r), threshold))


class Best(NamedTuple):
    """Outcome of a constrained search over a grid.

    ``index`` is the flat index of the chosen configuration (None when nothing is feasible),
    ``value`` its objective, ``evaluated`` the configurations evaluated, ``feasible`` how many
    of them met every constraint.
    """

    index: int | None
    value: float
    evaluated: int
    feasible: int


def evaluate(
    sweep: Sweep,
    grid_: Grid,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> dict[str, np.ndarray]:
    """Every output at every configuration, as float64 arrays of ``grid_.shape``.

    Holds the whole result in host memory: for grids that fit; reduce larger ones with
    :func:`best`.
    """
    out = {name: np.empty(grid_.shape, dtype=np.float64) for name in sweep.names}
    flat = {name: a.reshape(-1) for name, a in out.items()}
    for chunk, first, block in _run(
        sweep, grid_, Reducer("values"), chunk_size=chunk_size, devices=devices, progress=progress
    ):
        count = chunk.valid * math.prod(grid_.shape[len(chunk.prefix) + 1 :])
        for name, values in block.items():
            flat[name][first : first + count] = np.asarray(values).reshape(-1)[:count]
    return out


def best(
    sweep: Sweep,
    grid_: Grid,
    objective: str,
    *,
    constraints: Sequence[str] = (),
    maximise: bool = True,
    rtol: float = 0.0,
    count_feasible: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> Best:
    """The feasible configuration with the best ``objective`` (every ``constraints`` output <= 0).

    Ties go to the first configuration in grid order.  With ``rtol > 0`` every configuration
    within ``rtol`` (relative) of the best value counts as tied, which a second pass over the
    grid resolves; with ``rtol == 0`` only exact float ties do, and one pass suffices.
    ``feasible`` is -1 when ``count_feasible`` is off (the count costs about a third more).
    A feasible objective must be finite.
    """
    options = {"chunk_size": chunk_size, "devices": devices, "progress": progress}
    reducer = Reducer("best", objective, tuple(constraints), maximise, count_feasible, rtol)
    # Keep the chunks' device results and read them at the end, so dispatch runs ahead.
    parts = [(first, result) for _, first, result in _run(sweep, grid_, reducer, **options)]
    summary = [
        (first, float(value), first + int(index), int(count), first + int(tie))
        for first, (value, index, count, tie) in parts
    ]
    feasible = sum(s[3] for s in summary) if count_feasible else -1
    finite = [s for s in summary if math.isfinite(s[1])]
    if not finite:
        return Best(None, math.nan, grid_.size, max(feasible, 0) if count_feasible else -1)
    pick = max if maximise else min
    value = pick(s[1] for s in finite)
    index = next(s[2] for s in finite if s[1] == value)  # first chunk holding the best
    if rtol > 0:
        threshold = value - rtol * abs(value) if maximise else value + rtol * abs(value)
        reaching = [s for s in finite if (s[1] >= threshold if maximise else s[1] <= threshold)]
        if reaching[0][1] == value:
            # The first chunk reaching the threshold holds the best value, so its own tie search
            # used this very threshold and its answer is the first point in grid order.
            index = reaching[0][4]
        else:  # an earlier chunk is within rtol with a different best: search again
            index = first_within(
                sweep,
                grid_,
                objective,
                threshold,
                constraints=constraints,
                maximise=maximise,
                **options,
            )
            assert index is not None  # the best point itself reaches the threshold
    return Best(index, value, grid_.size, feasible)


def first_within(
    sweep: Sweep,
    grid_: Grid,
    objective: str,
    threshold: float,
    *,
    constraints: Sequence[str] = (),
    maximise: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> int | None:
    """Flat index of the first feasible configuration whose objective reaches ``threshold``."""
    reducer = Reducer("first_within", objective, tuple(constraints), maximise)
    for _, first, (found, chunk_index) in _run(
        sweep,
        grid_,
        reducer,
        (threshold,),
        chunk_size=chunk_size,
        devices=devices,
        progress=progress,
    ):
        if bool(found):
            return first + int(chunk_index)
    return None
