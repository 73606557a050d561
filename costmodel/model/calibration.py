"""A device's calibration: the one record of the roofline's efficiency values and optional terms.

The per-kernel roofline (:mod:`costmodel.model.roofline`) takes achievable fractions eta_c and
eta_m of the peaks, a fixed time t_k per kernel, and four optional calibration terms (overlap,
cache, weight relayout, attention rate).  :class:`Calibration` holds those values in SI units;
a term that is ``None`` is off, and that is the only way to say so.  Which terms an expression
must include (:class:`TimeModel`) is derived from the record, never stated beside it.

:data:`PURE_ROOFLINE` is the pure roofline: fractions 1, no overhead, every term off.  A
hardware spec's ``Efficiency`` converts to and from this record
(:meth:`costmodel.config.specs.Efficiency.calibration`), and
:mod:`costmodel.validate.calibrate` fits it.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from costmodel.model import symbols as sy

# A value of the record: a Python float (a fit) or an exact SymPy number (a spec's decimal).
Real = float | int | sp.Expr


class TimeModel(NamedTuple):
    """Which calibration terms the per-kernel time includes; all off is the pure roofline."""

    overlap: bool = False
    cache: bool = False
    relayout: bool = False
    attention: bool = False


class Cache(NamedTuple):
    """A cache serving a step whose working set fits: capacity [bytes], bandwidth [bytes/s]."""

    capacity: Real
    bandwidth: Real


class Calibration(NamedTuple):
    """Efficiency values of the roofline on one device, SI units; ``None``: the term is off.

    eta_compute, eta_memory: achievable fractions of the peak FLOP/s and bandwidth [1];
    kernel_overhead_s: fixed time per kernel [s]; overlap: exponent p of (c^p + m^p)^(1/p)
    [1]; cache: see :class:`Cache`; weight_relayout: extra weight traffic of multi-row
    matmuls over their weight bytes [1]; attention_efficiency: attention kernels' fraction of
    the other kernels' rates [1].
    """

    eta_compute: Real = 1
    eta_memory: Real = 1
    kernel_overhead_s: Real = 0
    overlap: Real | None = None
    cache: Cache | None = None
    weight_relayout: Real | None = None
    attention_efficiency: Real | None = None

    @property
    def time_model(self) -> TimeModel:
        """The calibration terms this record switches on."""
        return TimeModel(
            overlap=self.overlap is not None,
            cache=self.cache is not None,
            relayout=self.weight_relayout is not None,
            attention=self.attention_efficiency is not None,
        )

    def symbol_values(self) -> dict[sp.Symbol, sp.Expr]:
        """Substitution for eta_c, eta_m, t_k and the symbols of the terms that are on."""
        values = {
            sy.eta_compute: sp.sympify(self.eta_compute),
            sy.eta_memory: sp.sympify(self.eta_memory),
            sy.kernel_overhead: sp.sympify(self.kernel_overhead_s),
        }
        if self.overlap is not None:
            values[sy.overlap] = sp.sympify(self.overlap)
        if self.cache is not None:
            values[sy.cache_capacity] = sp.sympify(self.cache.capacity)
            values[sy.cache_bandwidth] = sp.sympify(self.cache.bandwidth)
        if self.weight_relayout is not None:
            values[sy.relayout] = sp.sympify(self.weight_relayout)
        if self.attention_efficiency is not None:
            values[sy.attention_efficiency] = sp.sympify(self.attention_efficiency)
        return values


PURE_ROOFLINE = Calibration()  # fractions 1, no overhead, no term: the roofline as published
