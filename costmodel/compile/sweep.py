"""Sweeps: compiled cost expressions evaluated over grids of configurations.

A :class:`Grid` is the Cartesian product of :class:`Axis` objects.  An axis sets one or more
symbols at each of its points: a numeric axis (batch 1..1024) sets one symbol, a categorical
axis (a weight dtype) sets several at once (bytes per weight and the matmul peak) and carries a
label per point, and a fixed value is an axis of one point.  Grid points are numbered in C
order, the last axis fastest, and a sweep's answer names points by that flat index.

Layout (:func:`plan`).  The last axes whose product fits a tile (``TILE`` configurations) form
a row's inner block; the leading axes, flattened, number the rows (a last axis longer than a
tile is cut into segments, and a row is then a leading point and a segment).  A chunk is a run
of consecutive rows; the host sends only its rows' values of the leading symbols, so memory is
bounded by the chunk size however large the grid: a sweep of 10^9 configurations holds one
chunk at a time.

Evaluation.  The rows of a chunk are split over a one-dimensional mesh of the process's devices
(``jax.shard_map`` with a ``NamedSharding`` of the row table).  In a multi-process runtime
(``jax.distributed``) the rows are first split into one contiguous run per process, in process
order (:func:`process_rows`); each process sweeps its run on its own devices and the processes
exchange their few reduced numbers (``multihost_utils.process_allgather``) once per call, so
every process returns the single-process answer and the calling code is unchanged.  Each device
walks its rows a tile
at a time (``jax.lax.map``), which keeps the intermediates of the fused expression in cache; a
tile is the scalar cost function under nested ``jax.vmap`` (one per tile dimension), i.e. the
outer product of the row values and the inner axes, so XLA broadcasts instead of gathering and
computes work that depends on fewer axes once per point of those axes.  Reductions
(:func:`best`, :func:`first_within`) run per tile and return a few numbers per device, which
the host combines (no collectives inside the compiled function); :func:`evaluate` materialises
every output on every process (for grids that fit in memory).

Library code: progress goes to a callback or a tqdm bar on stderr, never to stdout.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from costmodel.compile.codegen import compile_exprs

DEFAULT_CHUNK = 1 << 22  # configurations per chunk when every output comes back: 4 Mi
REDUCE_CHUNK = 1 << 25  # per chunk when reduced on device (only the row table travels): 32 Mi
TILE = 1 << 17  # configurations per tile: 1 MiB per float64 intermediate, cache-resident
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
    """How a grid is cut for evaluation.

    Axis ``lead`` is cut into ``segments`` pieces of ``inner[0]`` points (the last piece
    padded); a tile is one point of the axes before it, one piece of it, and every point of
    the axes after it, so its block has shape ``inner``.  Tiles are numbered in C order over
    (leading point, piece), which is the grid's flat order.  A chunk is ``rows`` consecutive
    tiles, split evenly over the devices.
    """

    lead: int
    inner: tuple[int, ...]
    segments: int
    rows: int
    total_rows: int

    @property
    def inner_size(self) -> int:
        """Configurations in one tile."""
        return math.prod(self.inner)


def plan(
    shape: Sequence[int], chunk_size: int = 0, n_devices: int = 1, tile: int = 0, processes: int = 1
) -> Layout:
    """Cut a grid of ``shape`` into tiles of about ``tile`` configurations (the axes after the
    cut whole, the cut axis in pieces) and chunks of about ``chunk_size`` configurations (at
    least one tile per device, at most one process's share of the tiles rounded up to whole
    tiles per device, so a small grid is not padded out to a full chunk)."""
    chunk_size = chunk_size or DEFAULT_CHUNK
    tile = tile or TILE
    if chunk_size < 1 or tile < 1 or processes < 1:
        raise ValueError("chunk_size, tile and processes must be positive")
    shape = tuple(int(n) for n in shape)
    lead = len(shape) - 1
    while lead > 0 and math.prod(shape[lead:]) <= tile:
        lead -= 1
    after = math.prod(shape[lead + 1 :])
    piece = min(shape[lead], max(1, tile // after))
    segments = -(-shape[lead] // piece)
    inner = (piece, *shape[lead + 1 :])
    total_rows = math.prod(shape[:lead]) * segments
    rows = max(1, chunk_size // math.prod(inner)) // n_devices * n_devices
    share = -(-total_rows // processes)
    rows = min(max(rows, n_devices), -(-share // n_devices) * n_devices)
    return Layout(lead, inner, segments, rows, total_rows)


def process_rows(total_rows: int, processes: int = 1, index: int = 0) -> tuple[int, int]:
    """The tiles ``[start, stop)`` that process ``index`` of ``processes`` sweeps: contiguous
    runs of ``ceil(total_rows / processes)`` tiles in process order (the last ones may be
    short or empty), so the processes' results, in process order, are in grid order."""
    share = -(-total_rows // processes)
    return min(index * share, total_rows), min((index + 1) * share, total_rows)


class Chunk(NamedTuple):
    """Tiles ``start`` .. ``start + valid - 1`` of the grid (the chunk is padded to its rows)."""

    start: int
    valid: int


def chunks(layout: Layout, rows: tuple[int, int] | None = None) -> Iterator[Chunk]:
    """The chunks of tiles ``rows`` (``[start, stop)``; default: every tile) in flat (C)
    order."""
    start, stop = rows if rows is not None else (0, layout.total_rows)
    for first in range(start, stop, layout.rows):
        yield Chunk(first, min(layout.rows, stop - first))


def row_starts(shape: Sequence[int], layout: Layout, rows: np.ndarray) -> np.ndarray:
    """Flat index of the first configuration of each tile."""
    after = math.prod(layout.inner[1:])
    point, segment = np.divmod(rows, layout.segments)
    return (point * shape[layout.lead] + segment * layout.inner[0]) * after


def row_lengths(shape: Sequence[int], layout: Layout, rows: np.ndarray) -> np.ndarray:
    """Configurations in each tile (the last piece of the cut axis may be short)."""
    segment = rows % layout.segments
    piece = np.minimum(layout.inner[0], shape[layout.lead] - segment * layout.inner[0])
    return piece * math.prod(layout.inner[1:])


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
    """Compile ``exprs`` (functions of ``symbols``) with ``codegen.compile_exprs``."""
    exprs = {name: sp.sympify(e) for name, e in exprs.items()}
    return Sweep(exprs, tuple(symbols), compile_exprs(exprs, list(symbols)))


def _mesh(devices: Sequence[jax.Device] | None) -> Mesh:
    """A one-dimensional mesh of ``devices`` (default: every device of this process)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    here = jax.process_index()
    if any(d.process_index != here for d in devices):
        raise ValueError(
            "devices must belong to this process: in a multi-process runtime each process "
            "sweeps its share of the grid on its own devices"
        )
    return Mesh(np.asarray(devices), (MESH_AXIS,))


def _outer(function: Callable, dims: Sequence[tuple[int, ...]], shape: tuple[int, ...]):
    """``function`` of scalars mapped over a block of ``shape`` by nested ``jax.vmap``.

    Argument k varies along the block dimensions ``dims[k]`` (its array has one axis per such
    dimension, in order); the vmap for dimension d maps exactly those arguments and holds the
    rest, so the result is the outer product over the block and XLA sees broadcasting.
    """
    mapped = function
    for d in reversed(range(len(shape))):
        in_axes = tuple(0 if d in k else None for k in dims)
        mapped = jax.vmap(mapped, in_axes=in_axes, axis_size=shape[d])
    return mapped


def row_table(grid_: Grid, layout: Layout, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """Per tile of a chunk: the values of the symbols of the axes before the cut, then the
    piece of the cut axis, as float64 columns; and which tiles are real (the rest pad)."""
    rows = chunk.start + np.arange(layout.rows)
    mask = np.arange(layout.rows) < chunk.valid
    point, segment = np.divmod(np.minimum(rows, layout.total_rows - 1), layout.segments)
    columns = []
    if layout.lead:
        index = np.unravel_index(point, tuple(a.size for a in grid_.axes[: layout.lead]))
        for a, i in zip(grid_.axes[: layout.lead], index, strict=True):
            columns.extend(a.table[i, j] for j in range(len(a.symbols)))
    columns.append(segment.astype(np.float64))
    return np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float64), mask


def inner_tables(grid_: Grid, layout: Layout) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Tables of the cut axis, as (pieces, piece length, symbols), padded with its last value,
    and of the axes after it; and which points of each piece are real."""
    cut, *after = grid_.axes[layout.lead :]
    length = layout.segments * layout.inner[0]
    padded = np.concatenate([cut.table, np.repeat(cut.table[-1:], length - cut.size, 0)])
    valid = (np.arange(length) < cut.size).reshape(layout.segments, -1)
    pieces = padded.reshape(layout.segments, layout.inner[0], -1)
    return (pieces, *(a.table for a in after)), valid


def _tile_evaluator(sweep: Sweep, grid_: Grid, layout: Layout, hoist: bool = True):
    """Two functions over a device's tiles.

    ``prepare(table, inner)`` evaluates, for every tile at once, the subexpressions that vary
    along fewer tile dimensions (:func:`staging`); ``evaluate_tile(row, hoisted, inner,
    piece_valid)`` then gives (outputs, valid) over one tile's block ``layout.inner``, in which
    the leading symbols are scalars.  Hoisted values enter the tile loop as inputs, so XLA cannot
    fuse them into the loop over the whole tile and recompute them per configuration.  Without
    ``hoist`` (a grid of one tile per device: nothing to gain, more to compile) the expressions
    are evaluated as compiled.
    """
    shape = layout.inner
    cut, *after = grid_.axes[layout.lead :]
    leading = tuple(s for a in grid_.axes[: layout.lead] for s in a.symbols)
    dims: dict[sp.Symbol, tuple[int, ...]] = {s: () for s in leading}
    dims |= {s: (0,) for s in cut.symbols}
    for t, a in enumerate(after):
        dims |= {s: (1 + t,) for s in a.symbols}
    arg_dims = [dims[s] for s in sweep.symbols]
    stage = staging(sweep, arg_dims) if hoist else Staging((), sweep.function)

    def arguments(row, inner):
        values: dict[sp.Symbol, jax.Array] = {s: row[j] for j, s in enumerate(leading)}
        segment = row[-1].astype(jnp.int32)
        values |= {s: inner[0][segment, :, j] for j, s in enumerate(cut.symbols)}
        for a, table in zip(after, inner[1:], strict=True):
            values |= {s: table[:, j] for j, s in enumerate(a.symbols)}
        return [values[s] for s in sweep.symbols]

    def hoisted_values(row, inner):
        args = arguments(row, inner)
        out = []
        for d, _, used, function in stage.hoisted:
            sub_shape = tuple(shape[k] for k in d)
            sub_dims = [tuple(d.index(k) for k in arg_dims[i]) for i in used]
            out.extend(_outer(function, sub_dims, sub_shape)(*(args[i] for i in used)))
        return tuple(out)

    def prepare(table, inner):
        return jax.vmap(hoisted_values, in_axes=(0, None))(table, inner)

    h_dims = [d for d, hs, _, _ in stage.hoisted for _ in hs]

    padded = layout.segments * layout.inner[0] != cut.size  # the last piece has padding

    def evaluate_tile(row, hoisted, inner, piece_valid):
        """(outputs, valid): ``valid`` marks the real points, None when all are real."""
        valid = None
        if padded:
            segment = row[-1].astype(jnp.int32)
            valid = jnp.broadcast_to(
                piece_valid[segment].reshape((-1,) + (1,) * (len(shape) - 1)), shape
            )
        args = [*arguments(row, inner), *hoisted]
        outputs = _outer(stage.final, [*arg_dims, *h_dims], shape)(*args)
        return outputs, valid

    return prepare, evaluate_tile


def _chunk_function(sweep: Sweep, grid_: Grid, layout: Layout, reducer: Reducer, mesh: Mesh):
    key = (tuple((a.name, a.symbols, a.size) for a in grid_.axes), layout, reducer, mesh)
    if key in sweep._chunk_fns:
        return sweep._chunk_fns[key]
    n_devices = mesh.devices.size
    prepare, evaluate_tile = _tile_evaluator(
        sweep, grid_, layout, hoist=layout.total_rows > n_devices
    )
    local_rows = layout.rows // n_devices
    tile_size = layout.inner_size

    def local(table, row_mask, inner, piece_valid, *extra):
        """One device's share of the chunk, tile by tile (lax.map keeps each tile's
        intermediates in cache instead of materialising the whole share)."""
        hoisted = prepare(table, inner)

        def per_tile(tile):
            row, real, h = tile
            outputs, valid = evaluate_tile(row, h, inner, piece_valid)
            return reducer.mask_tile(reducer.reduce_tile(outputs, valid, *extra), real)

        if reducer.kind == "best" and reducer.rtol > 0 and local_rows * n_devices == 1:
            # One tile holds the whole chunk: find its first point within rtol of its best from
            # the same evaluation (half the program to compile).
            first_h = jax.tree.map(lambda x: x[0], hoisted)
            outputs, valid = evaluate_tile(table[0], first_h, inner, piece_valid)
            value, index, count = reducer.reduce_tile(outputs, valid)
            spread = reducer.rtol * jnp.abs(value)
            threshold = value - spread if reducer.maximise else value + spread
            found, first = reducer._first(outputs, valid, threshold)
            return jax.tree.map(lambda x: x[None], (value, index, count, found, first))
        parts = jax.lax.map(per_tile, (table, row_mask, hoisted))
        if reducer.kind == "values":
            return {k: v.reshape((1, local_rows, *layout.inner)) for k, v in parts.items()}
        combined = reducer.combine(parts, tile_size)
        if reducer.kind == "best" and reducer.rtol > 0:
            # Second look at the tiles: the first point within rtol of this device's best.
            best = combined[0]
            spread = reducer.rtol * jnp.abs(best)
            threshold = best - spread if reducer.maximise else best + spread

            def first_tile(tile):
                row, real, h = tile
                outputs, valid = evaluate_tile(row, h, inner, piece_valid)
                found, index = reducer._first(outputs, valid, threshold)
                return found & real, index

            found, index = reducer.combine_first(
                jax.lax.map(first_tile, (table, row_mask, hoisted)), tile_size
            )
            combined = (*combined[:3], found, index)
        return jax.tree.map(lambda x: x[None], combined)

    spec = PartitionSpec(MESH_AXIS)
    # No collectives: each device returns its own reduction and the host combines them (XLA's
    # CPU collectives can deadlock when forced host devices outnumber the cores).
    chunk_fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, spec, PartitionSpec(), PartitionSpec())
        + (PartitionSpec(),) * reducer.n_extra,
        out_specs=spec,
    )
    fn = jax.jit(chunk_fn)
    sweep._chunk_fns[key] = fn
    return fn


def _sharded(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from host data (works in single- and multi-process runtimes)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


class Share(NamedTuple):
    """This process's part of a sweep: its device ``mesh``, the grid's ``layout`` and the tiles
    ``[rows[0], rows[1])`` it sweeps (every tile in a single-process runtime)."""

    mesh: Mesh
    layout: Layout
    rows: tuple[int, int]


def share(
    grid_: Grid,
    chunk_size: int = DEFAULT_CHUNK,
    tile: int = TILE,
    devices: Sequence[jax.Device] | None = None,
) -> Share:
    """How this process of the JAX runtime (``jax.process_index()`` of
    ``jax.process_count()``) cuts ``grid_`` and which tiles it sweeps."""
    mesh = _mesh(devices)
    processes = jax.process_count()
    layout = plan(grid_.shape, chunk_size, mesh.devices.size, tile, processes)
    return Share(mesh, layout, process_rows(layout.total_rows, processes, jax.process_index()))


def _run(
    sweep: Sweep,
    grid_: Grid,
    part: Share,
    reducer: Reducer,
    extra: tuple = (),
    progress: Progress = False,
) -> Iterator[tuple[Chunk, Any]]:
    """Yield (chunk, reduction) for every chunk of this process's tiles, in order."""
    mesh, layout, rows = part
    fn = _chunk_function(sweep, grid_, layout, reducer, mesh)
    row_sharding = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    inner, piece_valid = inner_tables(grid_, layout)
    inner = tuple(jax.device_put(jnp.asarray(t), replicated) for t in inner)
    piece_valid = jax.device_put(jnp.asarray(piece_valid), replicated)
    extra = tuple(jax.device_put(jnp.asarray(x, dtype=jnp.float64), replicated) for x in extra)
    start, stop = flat_range(grid_.shape, layout, rows)
    bar = _progress_bar(progress, stop - start)
    try:
        for chunk in chunks(layout, rows):
            table, mask = row_table(grid_, layout, chunk)
            result = fn(
                _sharded(table, row_sharding),
                _sharded(mask, row_sharding),
                inner,
                piece_valid,
                *extra,
            )
            yield chunk, result
            done = chunk.start + np.arange(chunk.valid)
            bar(int(row_lengths(grid_.shape, layout, done).sum()))
    finally:
        bar(None)


def flat_range(shape: Sequence[int], layout: Layout, rows: tuple[int, int]) -> tuple[int, int]:
    """The flat indices ``[start, stop)`` of tiles ``[rows[0], rows[1])`` (consecutive tiles
    hold consecutive configurations)."""

    def start(row: int) -> int:
        if row >= layout.total_rows:
            return math.prod(shape)
        return int(row_starts(shape, layout, np.array([row]))[0])

    return start(rows[0]), start(rows[1])


def _check_symbols(sweep: Sweep, grid_: Grid) -> None:
    missing = set(sweep.symbols) - set(grid_.symbols)
    if missing:
        raise ValueError(f"grid does not set {', '.join(sorted(map(str, missing)))}")


def _gather(tree: Any) -> Any:
    """Every process's ``tree`` of NumPy arrays (the same shapes on every process), stacked
    on a new first axis in process order (one process: its own, with that axis added)."""
    if jax.process_count() == 1:  # what process_allgather returns, without its overhead
        return jax.tree.map(lambda a: np.asarray(a)[None], tree)
    return multihost_utils.process_allgather(jax.tree.map(np.asarray, tree))


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

    Per tile: ``best`` takes the best of each row of the tile (its last axis), then the best
    row, then the column within that row (a whole-tile argmax is several times slower in XLA
    on CPU); tiles, then devices, are combined keeping the first on ties.
    """

    kind: str  # "values", "best" or "first_within"
    objective: str = ""
    constraints: tuple[str, ...] = ()  # outputs that must be <= 0 for a feasible point
    maximise: bool = True
    count: bool = True  # count feasible configurations
    rtol: float = 0.0  # also find the first point within rtol of the chunk's best

    @property
    def n_extra(self) -> int:
        """Extra runtime arguments: the threshold of ``first_within``."""
        return 1 if self.kind == "first_within" else 0

    def _feasible(self, outputs: dict[str, jax.Array], valid: jax.Array | None) -> jax.Array:
        """Points meeting every constraint (and real, when ``valid`` marks the real ones)."""
        feasible = valid
        for name in self.constraints:
            met = outputs[name] <= 0
            feasible = met if feasible is None else feasible & met
        if feasible is None:
            return jnp.ones(outputs[self.objective].shape, dtype=bool)
        return jnp.broadcast_to(feasible, outputs[self.objective].shape)

    def _masked(self, outputs, valid) -> jax.Array:
        worst = -jnp.inf if self.maximise else jnp.inf
        return jnp.where(self._feasible(outputs, valid), outputs[self.objective], worst)

    def _first(self, outputs, valid, threshold) -> tuple[jax.Array, jax.Array]:
        """Whether any feasible point of a tile reaches ``threshold``; the first that does."""
        score = outputs[self.objective]
        reached = (score >= threshold) if self.maximise else (score <= threshold)
        good = (self._feasible(outputs, valid) & reached).reshape(-1, score.shape[-1])
        per_row = jnp.any(good, axis=1)
        r = jnp.argmax(per_row)  # argmax of booleans: the first True
        return per_row[r], r * good.shape[1] + jnp.argmax(good[r])

    def mask_tile(self, result, real: jax.Array):
        """A tile's result, void when the tile only pads its chunk (``real`` False)."""
        if self.kind == "values":
            return result
        if self.kind == "first_within":
            return result[0] & real, result[1]
        value, index, count = result
        worst = -jnp.inf if self.maximise else jnp.inf
        return jnp.where(real, value, worst), index, jnp.where(real, count, 0)

    def reduce_tile(self, outputs: dict[str, jax.Array], valid: jax.Array | None, *extra):
        if self.kind == "values":
            return outputs
        if self.kind == "first_within":
            return self._first(outputs, valid, extra[0])
        width = outputs[self.objective].shape[-1]
        masked = self._masked(outputs, valid).reshape(-1, width)
        per_row = jnp.max(masked, axis=1) if self.maximise else jnp.min(masked, axis=1)
        r = jnp.argmax(per_row) if self.maximise else jnp.argmin(per_row)
        c = jnp.argmax(masked[r]) if self.maximise else jnp.argmin(masked[r])
        count = jnp.sum(self._feasible(outputs, valid)) if self.count else jnp.int64(0)
        return per_row[r], r * masked.shape[1] + c, count

    def _pick(self, values: jax.Array) -> jax.Array:
        return jnp.argmax(values) if self.maximise else jnp.argmin(values)  # first on ties

    def combine(self, parts, block: int):
        """Tiles (stacked on axis 0, each ``block`` configurations) -> one result."""
        if self.kind == "first_within":
            return self.combine_first(parts, block)
        values, index, count = parts
        t = self._pick(values)
        return (
            values[t],
            t * block + index[t],
            jnp.sum(count),
            jnp.bool_(True),
            t * block + index[t],
        )

    def combine_first(self, parts, block: int):
        found, index = parts
        t = jnp.argmax(found)
        return found[t], t * block + index[t]


class Best(NamedTuple):
    """Outcome of a constrained search over a grid.

    ``index`` is the flat index of the chosen configuration (None when nothing is feasible),
    ``value`` its objective, ``evaluated`` the configurations evaluated, ``feasible`` how many
    of them met every constraint (-1 when not counted).
    """

    index: int | None
    value: float
    evaluated: int
    feasible: int


class Part(NamedTuple):
    """The reduction of a run of consecutive configurations (one device's share of a chunk, one
    process's share of the grid): its best feasible objective ``value`` (not finite when none is
    feasible), the flat ``index`` of its first point holding it, its ``feasible`` count, and,
    when ``settled``, the flat index ``first`` of its first feasible point within rtol of
    ``value``."""

    value: float
    index: int
    feasible: int
    settled: bool
    first: int


def _threshold(value: float, rtol: float, maximise: bool) -> float:
    """The objective a point must reach to count as tied with ``value`` (computed as on the
    device, so the two agree bit for bit)."""
    spread = rtol * abs(value)
    return value - spread if maximise else value + spread


def combine_parts(parts: Sequence[Part], maximise: bool, rtol: float = 0.0) -> Part:
    """Consecutive parts, in grid order, as one part.

    The best value and its first holder come from the parts' own; the first point within rtol
    of the best lies in the first part reaching the threshold, and is known (settled) when that
    part's own best is the best, since it searched with this very threshold; otherwise it takes
    a second pass (:func:`first_within`).  Combining in stages (devices, then processes) gives
    the result of combining every device part at once.
    """
    feasible = sum(p.feasible for p in parts)
    finite = [p for p in parts if math.isfinite(p.value)]
    if not finite:
        return Part(math.nan, -1, feasible, False, -1)
    value = (max if maximise else min)(p.value for p in finite)
    index = next(p.index for p in finite if p.value == value)
    if rtol <= 0:
        return Part(value, index, feasible, True, index)
    threshold = _threshold(value, rtol, maximise)
    reaching = next(
        p for p in finite if (p.value >= threshold if maximise else p.value <= threshold)
    )
    settled = reaching.value == value and reaching.settled
    return Part(value, index, feasible, settled, reaching.first if settled else -1)


def _flat(grid_: Grid, layout: Layout, chunk: Chunk, index: int) -> int:
    """Flat grid index of configuration ``index`` of a chunk (row-major over its rows)."""
    row, column = divmod(int(index), layout.inner_size)
    return int(row_starts(grid_.shape, layout, np.array([chunk.start + row]))[0]) + column


def evaluate(
    sweep: Sweep,
    grid_: Grid,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    tile: int = TILE,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> dict[str, np.ndarray]:
    """Every output at every configuration, as float64 arrays of ``grid_.shape``.

    Holds the whole result in host memory (on every process): for grids that fit; reduce
    larger ones with :func:`best`.
    """
    _check_symbols(sweep, grid_)
    part = share(grid_, chunk_size, tile, devices)
    layout = part.layout
    processes = jax.process_count()
    ranges = [
        flat_range(grid_.shape, layout, process_rows(layout.total_rows, processes, p))
        for p in range(processes)
    ]
    start = ranges[jax.process_index()][0]
    width = max(b - a for a, b in ranges)
    mine = {name: np.zeros(width, dtype=np.float64) for name in sweep.names}
    for chunk, block in _run(sweep, grid_, part, Reducer("values"), progress=progress):
        rows = chunk.start + np.arange(chunk.valid)
        lengths = row_lengths(grid_.shape, layout, rows)
        keep = np.arange(layout.inner_size)[None, :] < lengths[:, None]
        first = int(row_starts(grid_.shape, layout, rows[:1])[0]) - start
        for name, values in block.items():
            piece = np.asarray(values).reshape(layout.rows, -1)[: chunk.valid][keep]
            mine[name][first : first + piece.size] = piece
    gathered = _gather(mine)
    return {
        name: np.concatenate(
            [gathered[name][p, : b - a] for p, (a, b) in enumerate(ranges)]
        ).reshape(grid_.shape)
        for name in sweep.names
    }


def best(
    sweep: Sweep,
    grid_: Grid,
    objective: str,
    *,
    constraints: Sequence[str] = (),
    maximise: bool = True,
    rtol: float = 0.0,
    count_feasible: bool = True,
    chunk_size: int = REDUCE_CHUNK,
    tile: int = TILE,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> Best:
    """The feasible configuration with the best ``objective`` (every ``constraints`` output <= 0).

    Ties go to the first configuration in grid order.  With ``rtol > 0`` every configuration
    within ``rtol`` (relative) of the best value counts as tied: each chunk (on each device)
    finds its first point within rtol of its own best, and a second pass settles the rare case
    of two chunks within rtol of each other.  ``feasible`` is -1 when ``count_feasible`` is
    off.  A feasible objective must be finite.  In a multi-process runtime every process
    returns the same answer.
    """
    _check_symbols(sweep, grid_)
    part = share(grid_, chunk_size, tile, devices)
    layout = part.layout
    reducer = Reducer("best", objective, tuple(constraints), maximise, count_feasible, rtol)
    # Keep the chunks' device results and read them at the end, so dispatch runs ahead.
    results = list(_run(sweep, grid_, part, reducer, progress=progress))
    parts = []  # per chunk and device, in grid order
    for chunk, result in results:
        values, index, count, found, first = (np.asarray(x) for x in result)
        block = layout.rows // len(values) * layout.inner_size
        for d in range(len(values)):
            parts.append(
                Part(
                    float(values[d]),
                    _flat(grid_, layout, chunk, d * block + int(index[d])),
                    int(count[d]),
                    bool(found[d]),
                    _flat(grid_, layout, chunk, d * block + int(first[d])),
                )
            )
    local = combine_parts(parts, maximise, rtol)
    gathered = _gather(tuple(np.asarray(v) for v in local))  # each field: one per process
    processes = [
        Part(float(value), int(index), int(feasible), bool(settled), int(first))
        for value, index, feasible, settled, first in zip(*gathered, strict=True)
    ]
    total = combine_parts(processes, maximise, rtol)
    feasible = total.feasible if count_feasible else -1
    if not math.isfinite(total.value):
        return Best(None, math.nan, grid_.size, feasible)
    if rtol <= 0 or total.settled:
        return Best(total.first, total.value, grid_.size, feasible)
    # An earlier chunk is within rtol with a different best: search again.
    index = first_within(
        sweep,
        grid_,
        objective,
        _threshold(total.value, rtol, maximise),
        constraints=constraints,
        maximise=maximise,
        chunk_size=chunk_size,
        tile=tile,
        devices=devices,
        progress=progress,
    )
    assert index is not None  # the best point itself reaches the threshold
    return Best(index, total.value, grid_.size, feasible)


def first_within(
    sweep: Sweep,
    grid_: Grid,
    objective: str,
    threshold: float,
    *,
    constraints: Sequence[str] = (),
    maximise: bool = True,
    chunk_size: int = REDUCE_CHUNK,
    tile: int = TILE,
    devices: Sequence[jax.Device] | None = None,
    progress: Progress = False,
) -> int | None:
    """Flat index of the first feasible configuration whose objective reaches ``threshold``.

    Each process stops at its own first hit; the first process with one holds the answer."""
    _check_symbols(sweep, grid_)
    part = share(grid_, chunk_size, tile, devices)
    layout = part.layout
    reducer = Reducer("first_within", objective, tuple(constraints), maximise)
    hit = -1
    for chunk, (found, index) in _run(sweep, grid_, part, reducer, (threshold,), progress):
        found, index = np.asarray(found), np.asarray(index)
        block = layout.rows // len(found) * layout.inner_size
        hits = np.flatnonzero(found)
        if hits.size:
            d = int(hits[0])
            hit = _flat(grid_, layout, chunk, d * block + int(index[d]))
            break
    every = [int(h) for h in _gather(np.array(hit, dtype=np.int64)) if h >= 0]
    return every[0] if every else None


# --------------------------------------------------------------------------- staging


class Hoist(sp.Function):
    """A subexpression evaluated on its own, lower-dimensional shape: printed as
    ``jax.lax.optimization_barrier``, which stops XLA fusing it into (and recomputing it in)
    the loop over the whole tile."""

    nargs = 1


def _stage(expr: sp.Expr, dims: Mapping[sp.Symbol, frozenset]) -> tuple[sp.Expr, frozenset]:
    """``expr`` with every maximal subexpression that varies along fewer tile dimensions than
    its parent wrapped in :class:`Hoist`; the arguments of a sum or product are first grouped
    by the dimensions they vary along (reassociation: exact algebra, float results agree to
    rounding).  Returns the staged expression and the dimensions it varies along."""
    if expr.is_Atom:
        return expr, dims.get(expr, frozenset())
    parts = [_stage(a, dims) for a in expr.args]
    full = frozenset().union(*(d for _, d in parts))

    def hoisted(node: sp.Expr, d: frozenset) -> sp.Expr:
        return Hoist(node) if d != full and not node.is_Atom else node

    if isinstance(expr, sp.Add | sp.Mul):
        groups: dict[frozenset, list[sp.Expr]] = {}
        for node, d in parts:
            groups.setdefault(d, []).append(node)
        if len(groups) == 1:
            return expr.func(*(node for node, _ in parts), evaluate=False), full
        args = [
            hoisted(members[0] if len(members) == 1 else expr.func(*members, evaluate=False), d)
            for d, members in sorted(groups.items(), key=lambda kv: (len(kv[0]), sorted(kv[0])))
        ]
        return expr.func(*args, evaluate=False), full
    return expr.func(*(hoisted(node, d) for node, d in parts), evaluate=False), full


def _pull_positive(expr: sp.Expr, symbols: Sequence[sp.Symbol]) -> sp.Expr:
    """Max(s·a, s·b) -> s·Max(a, b) for a positive grid symbol s common to every argument
    (exact, since s > 0), so the Max varies along fewer dimensions."""

    def pull(m):
        for s in symbols:
            if not s.is_positive:
                continue
            quotients = [sp.expand(a / s) for a in m.args]
            if all(s not in q.free_symbols for q in quotients):
                return s * m.func(*quotients)
        return m

    return expr.replace(lambda e: isinstance(e, sp.Max | sp.Min), pull)


class Staging(NamedTuple):
    """A sweep's expressions split for a tile whose argument k varies along ``dims[k]``.

    ``hoisted``: per set of tile dimensions D, the symbols standing for subexpressions that vary
    along D only, the arguments they use, and a scalar function computing them; they are
    evaluated before the tile loop, once per point of D.  ``final``: the outputs as a scalar
    function of the arguments and the hoisted symbols.
    """

    hoisted: tuple[tuple[tuple[int, ...], tuple[sp.Symbol, ...], tuple[int, ...], Callable], ...]
    final: Callable


def _scalar_function(args: Sequence[sp.Symbol], exprs: Sequence[sp.Expr]) -> Callable:
    lambdified = sp.lambdify(list(args), list(exprs), modules="jax", cse=True)

    def function(*values):
        outputs = lambdified(*(jnp.asarray(v, dtype=jnp.float64) for v in values))
        return tuple(jnp.asarray(o, dtype=jnp.float64) for o in outputs)

    return function


def staging(sweep: Sweep, dims: Sequence[tuple[int, ...]]) -> Staging:
    """Split the sweep's expressions for a tile (cached per ``dims``, one entry per symbol)."""
    key = ("staging", tuple(dims))
    if key in sweep._chunk_fns:
        return sweep._chunk_fns[key]
    dim_of = {s: frozenset(d) for s, d in zip(sweep.symbols, dims, strict=True)}
    positive = [s for s in sweep.symbols if dim_of[s]]
    staged = [_stage(_pull_positive(e, positive), dim_of)[0] for e in sweep.exprs.values()]
    hoisted: dict[sp.Expr, sp.Symbol] = {}

    def strip(e: sp.Expr) -> sp.Expr:
        return e.replace(lambda x: isinstance(x, Hoist), lambda x: x.args[0])

    def extract(e: sp.Expr) -> sp.Expr:
        if isinstance(e, Hoist):
            inner = strip(e.args[0])
            if inner not in hoisted:
                hoisted[inner] = sp.Symbol(f"_h{len(hoisted)}", real=True)
            return hoisted[inner]
        if e.is_Atom:
            return e
        return e.func(*(extract(a) for a in e.args), evaluate=False)

    finals = [extract(e) for e in staged]
    groups: dict[tuple[int, ...], list[sp.Expr]] = {}
    for e in hoisted:
        d = tuple(sorted(frozenset().union(*(dim_of.get(s, frozenset()) for s in e.free_symbols))))
        groups.setdefault(d, []).append(e)
    stages = []
    for d, exprs in sorted(groups.items()):
        used = sorted(set().union(*(e.free_symbols for e in exprs)), key=sweep.symbols.index)
        stages.append(
            (
                d,
                tuple(hoisted[e] for e in exprs),
                tuple(sweep.symbols.index(u) for u in used),
                _scalar_function(used, exprs),
            )
        )
    h_symbols = [h for _, hs, _, _ in stages for h in hs]
    final_fn = _scalar_function([*sweep.symbols, *h_symbols], finals)
    names = sweep.names

    def final(*values):
        return dict(zip(names, final_fn(*values), strict=True))

    result = Staging(tuple(stages), final)
    sweep._chunk_fns[key] = result
    return result
