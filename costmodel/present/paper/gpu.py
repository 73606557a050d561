"""The paper's section on the GPU calibration: the measured kernel families' terms, the data and
the fit, and the shipped calibrations' held-out errors.

Three sources, none of them refitted here:

* the kernel families (:mod:`costmodel.model.kernels`).  The generic form of a family's
  latency is assembled from placeholder symbols (:data:`GENERIC`) and printed;
  :func:`instantiate` puts a family's own FLOPs, bytes, efficiencies and extra terms into it,
  and the tests check that this is the family's ``time`` exactly, so the printed form cannot
  drift from the one that is fitted;
* the fit's settings (:mod:`costmodel.validate.gpu_fit`) and the committed measurements it reads
  (``costmodel/data/gpu_kernels``; :func:`data_facts` counts what the section says about them);
* the shipped engine calibrations (``costmodel/catalogue/engines/<hardware>/<engine>.json``):
  their held-out errors per family beside the pure roofline's, read as they are.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import NamedTuple

import numpy as np
import sympy as sp

from costmodel.config import catalogue
from costmodel.config.load import load_engine_calibration, load_hardware
from costmodel.config.specs import EngineCalibration, FamilyFit, FitErrors
from costmodel.model import engine as engines
from costmodel.model import kernels
from costmodel.model import symbols as sy
from costmodel.model.kernels import Family
from costmodel.present.paper.latex import (
    LATEX_NAMES,
    code,
    count,
    escape,
    generated,
    kernel_bytes,
    kernel_flops,
    sig,
    tabular,
)
from costmodel.validate import gpu_fit

Pair = tuple[str, str]  # (hardware, engine)

FAMILY_LABELS = {
    "gemm": "GEMM",
    "context_attention": "prefill attention",
    "generation_attention": "decode attention",
    "allreduce": "all-reduce",
    "moe": "MoE layer",
    "mla_context": "MLA prefill core",
    "mla_generation": "MLA decode core",
    "mla_context_module": "MLA prefill block",
    "mla_generation_module": "MLA decode block",
}
FIGURE_PAIR: Pair = ("h100-sxm", "vllm")  # the pair whose predicted-vs-measured figure is shown
GPU_FIGURE = "gpu_predicted_vs_measured.png"


class Target(NamedTuple):
    """Largest acceptable held-out median and 90th percentile of |predicted / measured - 1|
    (None: no target)."""

    median: float
    p90: float | None = None


TARGETS = {
    "gemm": Target(0.08, 0.20),
    "context_attention": Target(0.12),
    "generation_attention": Target(0.12),
    "allreduce": Target(0.12),
    "moe": Target(0.15),  # the target for vLLM on H100 and H200
    "mla_context": Target(0.12),
    "mla_generation": Target(0.12),
    "mla_context_module": Target(0.12),
    "mla_generation_module": Target(0.12),
}

# What the section counts in the measurements (data_facts).
LARGE_CACHE_BYTES = 256e6  # decode rows reading at least this much cache: far beyond any L2
JUMP_FACTOR = 2.0  # a latency step between m and m + 1 rows of one GEMM weight shape
FLOOR_FACTOR = 10.0  # a dtype whose fastest GEMM is this many times the bf16 one has a floor

# --------------------------------------------------------------------------- printing

# Placeholders of the generic form (printing only; instantiate() replaces every one).
t_launch = sp.Symbol("t_launch", positive=True)
t_c = sp.Symbol("t_c", positive=True)
t_m = sp.Symbol("t_m", positive=True)
t_x = sp.Symbol("t_x", nonnegative=True)
q = sp.Symbol("q", positive=True)
eta_c = sp.Symbol("eta_c", positive=True)
eta_m = sp.Symbol("eta_m", positive=True)
z = sp.Symbol("z", real=True)
peak = sp.Symbol("P", positive=True)
bandwidth = sp.Symbol("W", positive=True)
hit = sp.Symbol("rho", positive=True)
capacity = sp.Symbol("C", positive=True)
cache_rate = sp.Symbol("W_cache", positive=True)
shape_value = sp.Symbol("x", positive=True)
heads_read = sp.Symbol("h_read", positive=True)
group = sp.Symbol("g", positive=True)
group_limit = sp.Symbol("G", positive=True)
step = sp.Symbol("s", positive=True)
group_ratio = sp.Symbol("r", positive=True)
LOGS = {  # the scaled logarithm of each shape variable, as the tables print it
    name: sp.Symbol(f"ell_{name}", real=True) for name in ("m", "n", "k")
}

switch_step = sp.Symbol("sigma_s", positive=True)  # a GEMM's kernel-switch step, printed

GPU_NAMES: dict[sp.Symbol, str] = {
    switch_step: r"\sigma_{\mathrm{s}}",
    sp.Symbol("t_gemm_switch", positive=True): r"t_{\mathrm{s}}",
    kernels.SWITCH_ROWS: r"m_{\mathrm{s}}",
    t_launch: r"t_{\mathrm{launch}}",
    t_c: "t_c",
    t_m: "t_m",
    t_x: r"t_{\mathrm{x}}",
    eta_c: r"\eta_c",
    eta_m: r"\eta_m",
    peak: "P",
    bandwidth: "W",
    hit: r"\rho",
    capacity: "C",
    cache_rate: r"W_{\mathrm{cache}}",
    heads_read: r"\tilde h_{\mathrm{kv}}",
    kernels.h_kv: r"h_{\mathrm{kv}}",
    kernels.b_x: "b_x",
    engines.t_elem: r"t_{\mathrm{elem}}",
    **{symbol: rf"\ell_{name}" for name, symbol in LOGS.items()},
}


class Generic(NamedTuple):
    """The generic latency of a family and the definitions of its parts.  Sums keep their
    terms in printing order (:func:`ordered`)."""

    time: tuple[sp.Expr, ...]  # t_launch + (t_c^q + t_m^q)^(1/q) + t_x
    compute: sp.Expr  # t_c = F / (eta_c P)
    memory: tuple[sp.Expr, ...]  # t_m = M ((1 - rho)/(eta_m W) + rho / W_cache)
    hit: sp.Expr  # rho = C^k / (C^k + M^k)
    efficiency: sp.Expr  # eta = 1 / (1 + e^-z)
    log: sp.Expr  # ell_x = ln x / ln 2^10
    heads_read: tuple[sp.Expr, ...]  # h_kv + h s
    step: sp.Expr  # s = r^16 / (1 + r^16)
    ratio: sp.Expr  # r = g / G


def _sigmoid(x: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-x))


def generic() -> Generic:
    """The generic form, built from the constants the families are built with."""
    sharp = kernels.CACHE_SHARPNESS
    ratio = group_ratio**kernels.GROUP_SHARPNESS
    return Generic(
        time=(t_launch, (t_c**q + t_m**q) ** (1 / q), t_x),
        compute=kernel_flops / (eta_c * peak),
        memory=(kernel_bytes, (1 - hit) / (eta_m * bandwidth), hit / cache_rate),
        hit=capacity**sharp / (capacity**sharp + kernel_bytes**sharp),
        efficiency=_sigmoid(z),
        log=sp.log(shape_value) / kernels.LOG_SCALE,
        heads_read=(kernels.h_kv, kernels.h * step),
        step=ratio / (1 + ratio),
        ratio=group / group_limit,
    )


def total(terms: Sequence[sp.Expr]) -> sp.Expr:
    """A sum of :class:`Generic` terms as one expression."""
    return sp.Add(*terms)


def memory_time(form: Generic) -> sp.Expr:
    """t_m as one expression: bytes times the sum of its two rates."""
    moved, *rates = form.memory
    return moved * sp.Add(*rates)


def ordered(terms: Sequence[sp.Expr]) -> str:
    """LaTeX of a sum with its terms in the given order."""
    return " + ".join(gtex(t) for t in terms)


class Parts(NamedTuple):
    """A family taken apart: its fitted symbols by role and its extra terms."""

    launch: sp.Symbol
    overlap: sp.Symbol | None  # q (None: no compute term)
    capacity: sp.Symbol | None  # C (None: no cache term)
    cache_rate: sp.Symbol | None
    group_limit: sp.Symbol | None  # G of the decode attention
    compute_z: sp.Expr | None  # the exponent of eta_c's sigmoid (None: no compute term)
    memory_z: sp.Expr
    extras: tuple[sp.Expr, ...]  # the terms added to launch + body
    peak: sp.Symbol | None
    bandwidth: sp.Symbol


def _param(fam: Family, prefix: str, suffix: str = "") -> sp.Symbol | None:
    found = [
        p.symbol
        for p in fam.params
        if p.symbol.name.startswith(prefix) and p.symbol.name.endswith(suffix)
    ]
    return found[0] if found else None


def parts(fam: Family) -> Parts:
    """The roles of a family's symbols and terms, found in its ``time``."""
    launch = _param(fam, "t_", "_launch")
    if launch is None:
        raise ValueError(f"{fam.name}: no launch time")
    exponents = {}
    for atom in fam.time.atoms(sp.exp):
        exponent = -atom.args[0]
        names = {s.name for s in exponent.free_symbols}
        kind = "c" if any(n.startswith(f"c_{fam.name}_c") for n in names) else "m"
        exponents[kind] = sp.expand(exponent)
    extras = tuple(
        term
        for term in sp.Add.make_args(fam.time)
        if term != launch and not term.has(sp.Max) and not term.has(sp.exp)
    )
    peaks = [s for s in fam.constants if s in (sy.peak_matmul, sy.peak_attention)]
    bandwidths = [s for s in fam.constants if s in (sy.hbm_bandwidth, sy.link_bandwidth)]
    return Parts(
        launch=launch,
        overlap=_param(fam, "q_"),
        capacity=_param(fam, "C_"),
        cache_rate=_param(fam, "W_", "_cache"),
        group_limit=_param(fam, "G_"),
        compute_z=exponents.get("c"),
        memory_z=exponents["m"],
        extras=extras,
        peak=peaks[0] if peaks else None,
        bandwidth=bandwidths[0],
    )


def instantiate(fam: Family) -> sp.Expr:
    """The generic form with the family's own parts put in: equal to ``fam.time``."""
    form = generic()
    part = parts(fam)
    moved = fam.bytes
    memory = memory_time(form)
    if part.capacity is not None:
        rho = form.hit.xreplace({capacity: part.capacity, kernel_bytes: moved})
        memory = memory.xreplace({hit: rho, cache_rate: part.cache_rate})
    else:
        memory = memory.xreplace({hit: 0})
    memory = memory.xreplace(
        {
            kernel_bytes: moved,
            eta_m: form.efficiency.xreplace({z: part.memory_z}),
            bandwidth: part.bandwidth,
        }
    )
    extra = sp.Add(*part.extras)
    if part.compute_z is None:  # no FLOPs: the memory time alone
        return part.launch + memory + extra
    compute = form.compute.xreplace(
        {
            kernel_flops: fam.flops,
            eta_c: form.efficiency.xreplace({z: part.compute_z}),
            peak: part.peak,
        }
    )
    return total(form.time).xreplace(
        {t_launch: part.launch, t_c: compute, t_m: memory, q: part.overlap, t_x: extra}
    )


def shape_logs(fam: Family) -> tuple[sp.Expr, ...]:
    """The shape quantities whose scaled logarithms the efficiencies are polynomials in,
    read from the degree-one terms of the memory efficiency's exponent."""
    z_m = parts(fam).memory_z
    found = []
    i = 1
    while True:
        coefficient = sp.Symbol(f"c_{fam.name}_m{i}")
        term = z_m.coeff(coefficient)
        argument = sp.simplify(term * kernels.LOG_SCALE)
        if term == 0 or not isinstance(argument, sp.log):
            break
        found.append(argument.args[0])
        i += 1
    return tuple(found)


def polynomial_degree(fam: Family) -> int:
    """The degree of the efficiencies' polynomial (from the number of its coefficients)."""
    size = len([p for p in fam.params if p.symbol.name.startswith(f"c_{fam.name}_m")])
    variables = shape_logs(fam)
    for degree in range(0, 8):
        if len(kernels.monomials(variables, degree)) == size:
            return degree
    raise ValueError(f"{fam.name}: {size} coefficients are no full polynomial")


def param_names(fam: Family) -> dict[sp.Symbol, str]:
    """LaTeX names of a family's fitted symbols, without the family in them."""
    names = {}
    for p in fam.params:
        name = p.symbol.name
        if name.endswith("_launch"):
            names[p.symbol] = r"t_{\mathrm{launch}}"
        elif name.endswith("_quant"):
            names[p.symbol] = r"a_{\mathrm{q}}"
        elif name.endswith("_block"):
            names[p.symbol] = r"a_{\mathrm{b}}"
        elif name.endswith("_hop"):
            names[p.symbol] = r"t_{\mathrm{hop}}"
        elif name.startswith("G_"):
            names[p.symbol] = "G"
        elif name.startswith("C_"):
            names[p.symbol] = "C"
        elif name.endswith("_cache"):
            names[p.symbol] = r"W_{\mathrm{cache}}"
        elif name.startswith("q_"):
            names[p.symbol] = "q"
    return names


def gtex(
    expr: sp.Expr, extra: Mapping[sp.Symbol, str] | None = None, *, inline: bool = False
) -> str:
    """LaTeX with the paper's and this section's symbol names (``inline``: a/b, not a
    fraction)."""
    names = {**LATEX_NAMES, **GPU_NAMES, **(extra or {})}
    return sp.latex(sp.sympify(expr), symbol_names=names, fold_short_frac=inline)


def decode_bytes(fam: Family) -> sp.Expr:
    """The decode attention's bytes with the KV heads read written as one symbol."""
    part = parts(fam)
    if part.group_limit is None:
        return fam.bytes
    return fam.bytes.xreplace({part.group_limit: sp.oo}).xreplace({kernels.h_kv: heads_read})


def families_table() -> str:
    """Each family: shape, FLOPs, bytes, extra term, the logs its efficiencies are polynomials
    in, and its number of fitted coefficients."""
    rows = []
    for name in kernels.FAMILIES:
        fam = kernels.family(name)
        names = param_names(fam)
        logs = ", ".join(gtex(x) for x in shape_logs(fam))
        step = kernels.kernel_switch(kernels.m, kernels.SWITCH_ROWS)
        extras = [term.subs(step, switch_step) for term in parts(fam).extras]
        rows.append(
            (
                FAMILY_LABELS[name],
                "$" + ", ".join(gtex(s) for s in fam.shape) + "$",
                f"${gtex(fam.flops)}$",
                f"${gtex(decode_bytes(fam))}$",
                f"${gtex(sp.Add(*extras), names)}$" if extras else "--",
                f"${logs}$ ({polynomial_degree(fam)})",
                str(len(fam.params)),
            )
        )
    header = [
        "family",
        "shape",
        r"FLOPs $\mathcal{F}$",
        r"bytes $\mathcal{M}$",
        r"extra $t_{\mathrm{x}}$",
        r"$\ell$ of (degree)",
        "terms",
    ]
    return generated(tabular("lllllll", header, rows))


def _source_commit() -> tuple[str, str]:
    """The AIConfigurator commit and date the committed measurements were derived from."""
    text = resources.files(gpu_fit.DATA_PACKAGE).joinpath("SOURCE.md").read_text()
    found = re.search(r"commit\s+`([0-9a-f]{40})`\s+\((\d{4}-\d{2}-\d{2})\)", text)
    if found is None:
        raise ValueError("costmodel/data/gpu_kernels/SOURCE.md names no commit")
    return found.group(1), found.group(2)


def term_values() -> dict[str, str]:
    """Macros of the section's expressions and of the fit's settings."""
    form = generic()
    gemm = kernels.family("gemm")
    decode = kernels.family("generation_attention")
    monomials = kernels.monomials(tuple(LOGS.values()), polynomial_degree(gemm))
    commit, date = _source_commit()
    elementwise = engines.EngineKernel(
        "x", "elementwise", {}, sp.Integer(1), sp.Integer(0), kernel_bytes
    )
    group_of = kernels.h / kernels.h_kv
    return {
        "eq-gpu-time": ordered(form.time),
        "eq-gpu-compute": gtex(form.compute),
        "eq-gpu-memory": gtex(form.memory[0]) + r"\left(" + ordered(form.memory[1:]) + r"\right)",
        "eq-gpu-hit": gtex(form.hit),
        "eq-gpu-efficiency": gtex(form.efficiency),
        "eq-gpu-log": gtex(form.log),
        "eq-gpu-monomials": ", ".join(gtex(m) for m in monomials),
        "eq-gpu-roofline-gemm": gtex(gemm.roofline),
        "eq-gpu-heads-read": ordered(form.heads_read),
        "eq-gpu-step": gtex(form.step),
        "eq-gpu-switch": gtex(kernels.kernel_switch(kernels.m, kernels.SWITCH_ROWS)),
        "eq-gpu-ratio": gtex(form.ratio),
        "eq-gpu-group": gtex(group_of, inline=True),
        "eq-gpu-decode-bytes": gtex(decode_bytes(decode)),
        "eq-gpu-elementwise": gtex(engines.kernel_time(elementwise)),
        "gpu-gemm-monomials": str(len(monomials)),
        "gpu-gemm-coefficients": str(
            len([p for p in gemm.params if p.symbol.name.startswith("c_")])
        ),
        "gpu-gemm-terms": str(len(gemm.params)),
        "gpu-gemm-degree": str(polynomial_degree(gemm)),
        "gpu-cache-sharpness": str(kernels.CACHE_SHARPNESS),
        "gpu-group-sharpness": str(kernels.GROUP_SHARPNESS),
        "gpu-output-bytes": str(kernels.OUTPUT_BYTES),
        "gpu-huber-delta": f"{gpu_fit.HUBER_DELTA:g}",
        "gpu-adam-steps": count(gpu_fit.ADAM_STEPS),
        "gpu-adam-rate": f"{gpu_fit.ADAM_RATE:g}",
        "gpu-lbfgs-steps": count(gpu_fit.LBFGS_STEPS),
        "gpu-group-start": f"{kernels.GROUP_START:g}",
        "name-gpu-split": escape(gpu_fit.SPLIT),
        "name-gpu-commit": code(commit[:12]),
        "name-gpu-commit-date": date,
        "name-gpu-digest": code(gpu_fit.data_digest()),
    }


# --------------------------------------------------------------------------- the data


class DataFacts(NamedTuple):
    """What the section says about the measurements themselves.

    ``decode_over_peak``: per pair, grouped-query decode rows that read at least
    :data:`LARGE_CACHE_BYTES` of cache, how many of them finish faster than reading that cache
    once at the HBM peak, and the largest such speed over the peak.  ``jumps``: per GEMM dtype,
    adjacent (m, m + 1) measurements of one weight shape, how many change by
    :data:`JUMP_FACTOR` or more, and the largest change.  ``floors``: per (hardware, engine,
    dtype), the fastest GEMM measured [ms]."""

    decode_over_peak: dict[Pair, tuple[int, int, float]]
    jumps: dict[str, tuple[int, int, float]]
    floors: dict[tuple[str, str, str], float]


def data_facts(pairs: Sequence[Pair]) -> DataFacts:
    """Count :class:`DataFacts` in the committed measurements of ``pairs``."""
    over: dict[Pair, tuple[int, int, float]] = {}
    for hardware, engine in pairs:
        spec = load_hardware(catalogue.path("hardware", hardware))
        hbm = float(spec.hbm_bandwidth)
        large = faster = 0
        fastest = 0.0
        for dtype in gpu_fit.dtypes(hardware, engine, "generation_attention"):
            data = gpu_fit.rows(hardware, engine, "generation_attention", dtype)
            batch, context, heads, kv_heads, width = data.shapes.T
            cache = 2 * float(kernels.KV_BYTES[dtype]) * batch * kv_heads * context * width
            chosen = (cache >= LARGE_CACHE_BYTES) & (heads > kv_heads)
            speed = cache[chosen] / (data.latency_ms[chosen] * 1e-3) / hbm
            large += int(chosen.sum())
            faster += int((speed > 1).sum())
            fastest = max([fastest, *speed.tolist()])
        over[(hardware, engine)] = (large, faster, fastest)
    header, rows = gpu_fit.table("gemm")
    column = {name: header.index(name) for name in ("hardware", "engine", "dtype", "m", "n", "k")}
    latency = header.index("latency_ms")
    wanted = set(pairs)
    by_shape: dict[tuple, dict[float, float]] = defaultdict(dict)
    floors: dict[tuple[str, str, str], float] = {}
    for row in rows:
        hardware, engine, dtype = (row[column[c]] for c in ("hardware", "engine", "dtype"))
        if (hardware, engine) not in wanted:
            continue
        key = (hardware, engine, dtype)
        floors[key] = min(floors.get(key, np.inf), row[latency])
        by_shape[(*key, row[column["n"]], row[column["k"]])][row[column["m"]]] = row[latency]
    jumps: dict[str, list] = defaultdict(lambda: [0, 0, 1.0])
    for key, times in sorted(by_shape.items()):
        tally = jumps[key[2]]
        for m, value in times.items():
            if m + 1 in times:
                change = max(times[m + 1] / value, value / times[m + 1])
                tally[0] += 1
                tally[1] += change >= JUMP_FACTOR
                tally[2] = max(tally[2], change)
    return DataFacts(
        over,
        {d: (int(a), int(b), float(c)) for d, (a, b, c) in sorted(jumps.items())},
        floors,
    )


# --------------------------------------------------------------------------- calibrations


def shipped_calibrations() -> dict[Pair, EngineCalibration]:
    """Every calibration in the catalogue, by (hardware, engine), sorted."""
    return {
        pair: load_engine_calibration(catalogue.engine_path(*pair))
        for pair in catalogue.engine_pairs()
    }


def misses(name: str, fit: FamilyFit) -> list[str]:
    """The statistics (``median``, ``p90``) of a family's held-out errors that miss its
    target."""
    target = TARGETS[name]
    held = fit.heldout
    out = []
    if held.median is not None and held.median > target.median:
        out.append("median")
    if target.p90 is not None and held.p90 is not None and held.p90 > target.p90:
        out.append("p90")
    return out


def _percent(value: float | None, bold: bool = False, decimals: int = 1) -> str:
    if value is None:
        return "--"
    text = f"{100 * value:.{decimals}f}"
    return rf"\textbf{{{text}}}" if bold else text


def _pair(pair: Pair) -> str:
    return code(f"{pair[0]}/{pair[1]}")


def _listing(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def results_table(calibrations: Mapping[Pair, EngineCalibration]) -> str:
    """Held-out median and p90 per family and pair, with the pure roofline's median; entries
    that miss their target in bold."""
    rows = []
    previous = None
    for pair, calibration in calibrations.items():
        cells = [code(pair[0]) if pair[0] != previous else "", pair[1]]
        previous = pair[0]
        for name in kernels.FAMILIES:
            fit = calibration.families.get(name)
            if fit is None:
                cells += ["--", "--", "--"]
                continue
            missed = misses(name, fit)
            cells += [
                _percent(fit.heldout.median, "median" in missed),
                _percent(fit.heldout.p90, "p90" in missed),
                _percent(fit.roofline_heldout.median, decimals=0),
            ]
        rows.append(cells)
    head = (
        " & "
        + "".join(r" & \multicolumn{3}{c}{" + FAMILY_LABELS[f] + "}" for f in kernels.FAMILIES)
        + r" \\"
        + "\n"
        + "".join(rf"\cmidrule(lr){{{3 + 3 * i}-{5 + 3 * i}}}" for i in range(4))
    )
    header = ["hardware", "engine"] + ["med.", "p90", "roof."] * len(kernels.FAMILIES)
    return tabular("ll" + "rrr" * len(kernels.FAMILIES), header, rows, head_extra=head)


def _rows(fits: Sequence[FitErrors]) -> int:
    return sum(f.n for f in fits)


def _data_sentence(calibrations: Mapping[Pair, EngineCalibration]) -> str:
    digest = gpu_fit.data_digest()
    stale = [pair for pair, c in calibrations.items() if f"sha256 {digest}" not in c.source]
    counts = []
    for name in kernels.FAMILIES:
        fits = [c.families[name] for c in calibrations.values() if name in c.families]
        train = _rows([f.train for f in fits])
        held = _rows([f.heldout for f in fits])
        counts.append(f"{count(train + held)} {FAMILY_LABELS[name]} rows ({count(held)} held out)")
    engines_seen = sorted({engine for _, engine in calibrations})
    hardware_seen = sorted({hardware for hardware, _ in calibrations})
    text = (
        "Read from the shipped calibrations, "
        + code("costmodel/catalogue/engines/<hardware>/<engine>.json")
        + f" (written by {code('python -m experiments.calibrate_gpu')}; nothing is refitted "
        + f"for the paper): {len(calibrations)} pairs of {len(hardware_seen)} GPUs "
        + f"({', '.join(code(h) for h in hardware_seen)}) and {len(engines_seen)} engines "
        + f"({', '.join(engines_seen)}), {_listing(counts)}. "
    )
    if stale:
        text += (
            "The calibrations of "
            + _listing([_pair(p) for p in stale])
            + " were fitted to other data than the committed tables. "
        )
    else:
        text += "Every one was fitted to the committed tables (the digest above). "
    return text


def _dtype_detail(name: str, fit: FamilyFit, stat: str) -> str:
    """``; dtype value, ...`` of the dtypes of a pooled miss whose own ``stat`` misses too
    (empty for a family fitted at one dtype)."""
    if len(fit.dtypes) < 2:
        return ""
    limit = getattr(TARGETS[name], stat)
    worse = [
        f"{code(d)} {_percent(getattr(r.heldout, stat))}"
        for d, r in sorted(fit.dtypes.items())
        if getattr(r.heldout, stat) is not None and getattr(r.heldout, stat) > limit
    ]
    return "; " + ", ".join(worse) if worse else ""


def _miss_sentences(calibrations: Mapping[Pair, EngineCalibration]) -> tuple[str, int]:
    """Which pairs miss which target, as sentences, and the number of entries that miss."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    total = 0
    for pair, calibration in calibrations.items():
        for name in kernels.FAMILIES:
            fit = calibration.families.get(name)
            if fit is None:
                continue
            missed = misses(name, fit)
            total += bool(missed)
            for stat in missed:
                value = getattr(fit.heldout, stat)
                found[(name, stat)].append(
                    f"{_pair(pair)} ({_percent(value)}\\,\\%{_dtype_detail(name, fit, stat)})"
                )
    parts_ = [
        f"the {FAMILY_LABELS[name]} {stat} on " + _listing(where)
        for (name, stat), where in sorted(
            found.items(), key=lambda item: (kernels.FAMILIES.index(item[0][0]), item[0][1])
        )
    ]
    if len(parts_) > 1:
        return "; ".join(parts_[:-1]) + "; and " + parts_[-1], total
    return "".join(parts_), total


def _decode_sentence(calibrations: Mapping[Pair, EngineCalibration], facts: DataFacts) -> str:
    """The decode-attention misses whose measurements read the cache faster than the HBM peak."""
    out = []
    for pair, calibration in calibrations.items():
        fit = calibration.families.get("generation_attention")
        large, faster, fastest = facts.decode_over_peak.get(pair, (0, 0, 0.0))
        if fit is None or not misses("generation_attention", fit) or not faster:
            continue
        out.append(
            f"The decode attention of {_pair(pair)} was measured faster than its own traffic "
            f"allows: of its {count(large)} grouped-query rows that read at least "
            f"${sig(LARGE_CACHE_BYTES / 1e6)}$\\,MB of cache, far more than an L2 cache holds, "
            f"{count(faster)} (${100 * faster / large:.0f}$\\,\\%) finish before the cache "
            f"could have been read once at the datasheet HBM bandwidth, at up to "
            f"${sig(fastest, 3)}$ times that bandwidth. No choice of the family's coefficients "
            "(efficiencies at most 1, the cache read at least once per KV head) can follow "
            "such rows."
        )
    return " ".join(out)


def _gemm_sentences(calibrations: Mapping[Pair, EngineCalibration], facts: DataFacts) -> str:
    """Per GEMM dtype: fits whose own p90 misses; jumps between m and m+1; launch floors."""
    target = TARGETS["gemm"].p90
    per_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for calibration in calibrations.values():
        fit = calibration.families.get("gemm")
        for dtype, result in sorted(fit.dtypes.items()) if fit else ():
            per_dtype[dtype][0] += 1
            per_dtype[dtype][1] += bool(result.heldout.p90 and result.heldout.p90 > target)
    fits = sum(n for n, _ in per_dtype.values())
    bad = sum(b for _, b in per_dtype.values())
    missing = sorted(
        ((d, n, b) for d, (n, b) in per_dtype.items() if b), key=lambda x: (-x[2] / x[1], x[0])
    )
    clean = sorted(d for d, (_, b) in per_dtype.items() if not b)
    text = (
        f"Fitted one dtype at a time, {bad} of the {fits} GEMM fits have a held-out p90 above "
        f"${100 * target:.0f}$\\,\\%: "
        + _listing([f"{b} of the {n} {code(d)} fits" for d, n, b in missing])
        + (f", none of the {_listing([code(d) for d in clean])} ones" if clean else "")
        + ". "
    )
    jumps = [(d, j) for d, j in facts.jumps.items() if j[1]]
    if jumps:
        jumps.sort(key=lambda item: -item[1][1])
        text += (
            "The measured GEMM latencies are not smooth in the shape: where rows $m$ and $m+1$ "
            "of one weight shape are both measured, the latency changes by a factor of "
            f"${JUMP_FACTOR:g}$ or more in "
            + _listing([f"{count(b)} of the {count(a)} of {code(d)}" for d, (a, b, _) in jumps])
            + f" (by up to ${sig(max(j[2] for _, j in jumps), 2)}\\times$): the library switches "
            "to another kernel, and a smooth function of the shape can only average over "
            "the step. "
        )
    floors: dict[tuple[str, str], list[tuple[str, float, float]]] = defaultdict(list)
    for (hardware, engine, dtype), fastest in sorted(facts.floors.items()):
        base = facts.floors.get((hardware, engine, "bfloat16"))
        if base and dtype != "bfloat16" and fastest > FLOOR_FACTOR * base:
            floors[(engine, dtype)].append((hardware, fastest, base))
    if floors:
        described = [
            f"{engine}'s {code(dtype)} GEMMs never take less than "
            + _listing([f"${sig(f, 2)}$\\,ms on {code(h)}" for h, f, _ in where])
            + f", against ${sig(1e3 * min(b for _, _, b in where), 2)}$--"
            + f"${sig(1e3 * max(b for _, _, b in where), 2)}$\\,$\\mu$s for its bf16 ones"
            for (engine, dtype), where in sorted(floors.items())
        ]
        text += (
            "Some dtypes carry a fixed floor: "
            + "; ".join(described)
            + ". The launch term absorbs such a floor. "
        )
    return text


def gpu_section(
    calibrations: Mapping[Pair, EngineCalibration], facts: DataFacts | None = None
) -> str:
    """The calibration's results: the data read, the table, the misses and the figure."""
    if not calibrations:
        return generated(
            r"\emph{Not yet available.} No engine calibration is shipped under "
            + code("costmodel/catalogue/engines/")
            + f"; {code('python -m experiments.calibrate_gpu')} writes them.\n"
        )
    calibrations = dict(sorted(calibrations.items()))
    facts = facts if facts is not None else data_facts(list(calibrations))
    missed, total = _miss_sentences(calibrations)
    entries = sum(name in c.families for c in calibrations.values() for name in kernels.FAMILIES)
    target = TARGETS
    text = _data_sentence(calibrations) + (
        "Table~\\ref{tab:gpu} gives each family's held-out errors beside the pure roofline's.\n\n"
        + r"\begin{table}[htbp]\centering\footnotesize"
        + "\n"
        + r"\setlength{\tabcolsep}{3pt}"
        + "\n"
        + results_table(calibrations)
        + r"\caption{Held-out $|$predicted$/$measured$-1|$ in per cent per (GPU, engine) and "
        r"family, all dtypes pooled: median and 90th percentile of the calibrated family, and "
        r"the median of the pure roofline (datasheet peaks) on the same rows. Bold: above the "
        f"target (GEMM median ${100 * target['gemm'].median:.0f}$\\,\\%, p90 "
        f"${100 * target['gemm'].p90:.0f}$\\,\\%; attention and all-reduce median "
        f"${100 * target['allreduce'].median:.0f}$\\,\\%).}}\\label{{tab:gpu}}"
        + "\n"
        + r"\end{table}"
        + "\n\n"
    )
    better = all(
        fit.heldout.median is not None
        and fit.roofline_heldout.median is not None
        and fit.heldout.median < fit.roofline_heldout.median
        for c in calibrations.values()
        for name, fit in c.families.items()
        if name in kernels.FAMILIES
    )
    if total:
        text += f"{total} of the {entries} entries miss their target: {missed}. "
    else:
        text += f"All {entries} entries meet their targets. "
    if better:
        text += "Every calibrated median is below the pure roofline's. "
    decode = _decode_sentence(calibrations, facts)
    text += ("\n\n" + decode if decode else "") + "\n\n" + _gemm_sentences(calibrations, facts)
    text += "\n\n" + experts_block(calibrations)
    text += "\n\n" + figure_block(calibrations)
    return generated("\n".join(line.rstrip() for line in text.rstrip().splitlines()) + "\n")


def experts_block(calibrations: Mapping[Pair, EngineCalibration]) -> str:
    """The Mixture-of-Experts and MLA families: a sentence and a table of held-out medians
    beside the pure roofline's (empty when no calibration has them)."""
    names = [n for n in kernels.MOE_FAMILIES if any(n in c.families for c in calibrations.values())]
    pairs = {p: c for p, c in calibrations.items() if any(n in c.families for n in names)}
    if not names:
        return ""
    rows, previous, missed = [], None, []
    for pair, calibration in pairs.items():
        cells = [code(pair[0]) if pair[0] != previous else "", pair[1]]
        previous = pair[0]
        for name in names:
            fit = calibration.families.get(name)
            if fit is None:
                cells += ["--", "--"]
                continue
            miss = "median" in misses(name, fit)
            if miss:
                missed.append(f"{FAMILY_LABELS[name]} on {_pair(pair)}")
            cells += [
                _percent(fit.heldout.median, miss),
                _percent(fit.roofline_heldout.median, decimals=0),
            ]
        rows.append(cells)
    head = (
        " & "
        + "".join(r" & \multicolumn{2}{c}{" + FAMILY_LABELS[n] + "}" for n in names)
        + r" \\"
        + "\n"
        + "".join(rf"\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(names)))
    )
    header = ["hardware", "engine"] + ["med.", "roof."] * len(names)
    table = tabular("ll" + "rr" * len(names), header, rows, head_extra=head)
    verdict = (
        "Every median meets its target (MoE 15\\,\\%, MLA 12\\,\\%). "
        if not missed
        else "Above target (bold): " + _listing(missed) + ". "
    )
    return (
        "The Mixture-of-Experts and MLA layers have families of their own, fitted the same way "
        "to the source's \\texttt{moe} and \\texttt{mla} tables (table~\\ref{tab:gpu-experts}): "
        "a fused MoE layer (routed experts, top-k, permutation and weighted sum, balanced "
        "routing) whose FLOPs and bytes are the model's own expert kernels, and MLA attention as "
        "the core kernel and as the whole attention block, prefill and decode. " + verdict
        + "\n\n" + r"\begin{table}[htbp]\centering\footnotesize" + "\n"
        + r"\setlength{\tabcolsep}{3pt}" + "\n" + table
        + r"\caption{Held-out median $|$predicted$/$measured$-1|$ in per cent of the MoE and MLA "
        r"families per (GPU, engine), all dtypes pooled, beside the pure roofline's median; "
        r"held-out rows are whole expert configurations (MoE) or (batch, heads) pairs and "
        r"token counts (MLA).}\label{tab:gpu-experts}" + "\n" + r"\end{table}" + "\n"
    )  # fmt: skip


def figure_block(calibrations: Mapping[Pair, EngineCalibration]) -> str:
    """The figure environment of :data:`GPU_FIGURE` (drawn by figures.gpu_calibration_plot)."""
    if FIGURE_PAIR not in calibrations:
        return ""
    hardware, engine = FIGURE_PAIR
    return (
        r"\begin{figure}[htbp]\centering" + "\n"
        + rf"\includegraphics[width=0.76\linewidth]{{{GPU_FIGURE}}}" + "\n"
        + rf"\caption{{Predicted against measured kernel latency of {engine} on the "
        + rf"{code(hardware)}, every measured row of each family (all dtypes): calibrated "
        + r"family on training rows (grey) and held-out rows (blue), pure roofline on the "
        + r"held-out rows (faint red), with the held-out medians of each. Drawn by "
        + code("python -m experiments.paper")
        + " from the shipped calibration and the measured tables, as "
        + code("python -m experiments.calibrate_gpu --plot")
        + r" draws it.}"
        + r"\label{fig:gpu}" + "\n"
        + r"\end{figure}" + "\n"
    )  # fmt: skip
