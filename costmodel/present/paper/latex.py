"""LaTeX printing for the paper: expressions with the paper's symbol names, numbers rounded to
fixed significant digits, booktabs tables, and the ``\\val{key}`` macro file.

Everything is deterministic text: no clock, no machine, sorted keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sympy as sp

from costmodel.model import derivations as dv
from costmodel.model import symbols as sy

# Generic sizes of the counting conventions, declared with their units in symbols.py.
kernel_flops, kernel_bytes = sy.kernel_flops, sy.kernel_bytes
tokens, width = sy.tokens, sy.width
softmax_rows, softmax_cols = sy.softmax_rows, sy.softmax_cols

LATEX_NAMES: dict[sp.Symbol, str] = {
    sy.H_kv: r"H_{\mathrm{kv}}",
    sy.d_h: "d_h",
    sy.r_q: "r_q",
    sy.r_kv: r"r_{\mathrm{kv}}",
    sy.d_rope: r"d_{\mathrm{rope}}",
    sy.d_nope: r"d_{\mathrm{nope}}",
    sy.d_v: "d_v",
    sy.b_w: "b_w",
    sy.b_a: "b_a",
    sy.b_kv: r"b_{\mathrm{kv}}",
    sy.tp: r"\mathit{tp}",
    sy.peak_matmul: r"P_{\mathrm{mm}}",
    sy.peak_attention: r"P_{\mathrm{attn}}",
    sy.peak_vector: r"P_{\mathrm{vec}}",
    sy.hbm_bandwidth: "W",
    sy.link_bandwidth: r"W_{\mathrm{link}}",
    sy.link_latency: r"\tau",
    sy.eta_compute: r"\eta_c",
    sy.eta_memory: r"\eta_m",
    sy.kernel_overhead: "t_k",
    sy.n_params: "N_p",
    dv.sharded_bytes: "M_s",
    dv.replicated_bytes: "M_r",
    dv.payload: "X",
    dv.flops_per_sequence: r"\phi",
    dv.bytes_fixed: r"\beta_0",
    dv.bytes_per_sequence: r"\beta_1",
    sy.weight_elements: "M_w",
    sy.other_bytes: "M_o",
    sy.peak_bf16: r"P_{\mathrm{bf16}}",
    sy.peak_fp8: r"P_{\mathrm{fp8}}",
    sy.peak_expert: r"P_{\mathrm{mm},e}",
    sy.b_we: r"b_{w,e}",
    sy.ep: r"\mathit{ep}",
    sy.W_win: r"W_{\mathrm{win}}",
    sy.L_win: r"L_{\mathrm{win}}",
    sy.L_dense: r"L_{\mathrm{dense}}",
    sy.F_sh: r"F_{\mathrm{sh}}",
    kernel_flops: r"\mathcal{F}",
    kernel_bytes: r"\mathcal{M}",
}


def tex(expr: Any) -> str:
    """LaTeX of a SymPy expression with the paper's symbol names."""
    return sp.latex(sp.sympify(expr), symbol_names=LATEX_NAMES)


def tex_lines(expr: sp.Expr, width: int = 64) -> str:
    """LaTeX of a sum broken over lines of at most ``width`` characters of source (an
    ``aligned`` block), so that a long expression fits the column.  A rational multiple of a
    sum keeps its factor in front."""
    expr = sp.sympify(expr)
    factor, body = expr.as_coeff_Mul()
    if not isinstance(body, sp.Add):
        return tex(expr)
    lines: list[str] = [""]
    for term in body.as_ordered_terms():
        text = tex(term)
        joined = text if text.startswith("-") else "+ " + text
        if lines[-1] and _visible(lines[-1]) + _visible(joined) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {joined}" if lines[-1] else joined
    first = lines[0].removeprefix("+ ")
    body_tex = first + "".join(r" \\ &\quad " + line for line in lines[1:])
    block = r"\begin{aligned}[t] &" + body_tex + r"\end{aligned}"
    if factor == 1:
        return block
    return tex(factor) + r"\left(" + block + r"\right)"


def tex_fraction(expr: sp.Expr) -> str:
    """LaTeX of a quotient with the signs of numerator and denominator both flipped when
    that removes a leading minus: -a/(b - c) prints as a/(c - b)."""
    numerator, denominator = sp.fraction(sp.together(sp.sympify(expr)))
    if numerator.could_extract_minus_sign():
        numerator, denominator = -numerator, -denominator
    bottom = sp.latex(sp.expand(denominator), symbol_names=LATEX_NAMES, order="rev-lex")
    return rf"\frac{{{tex(numerator)}}}{{{bottom}}}"


def _visible(text: str) -> int:
    """Rough printed width of LaTeX math source: characters that are not markup."""
    for markup in (r"\mathrm", r"\left", r"\right", "{", "}", "_", "^", " "):
        text = text.replace(markup, "")
    return len(text)


def sig(value: float, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits, as LaTeX text (math-safe).

    Large and small magnitudes get a power of ten; integers below 10^6 print in full with
    thin-space grouping: ``sig(295.2) == "295"``, ``sig(424203.8) == "424\\,000"``.
    """
    if value == 0:
        return "0"
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    exponent = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - exponent)
    if rounded != 0:
        exponent = math.floor(math.log10(abs(rounded)))
    if exponent >= 6 or exponent < -3:
        mantissa = rounded / 10**exponent
        text = f"{mantissa:.{digits - 1}f}".rstrip("0").rstrip(".")
        return rf"{text}\times 10^{{{exponent}}}"
    decimals = max(digits - 1 - exponent, 0)
    text = f"{rounded:,.{decimals}f}"
    return text.replace(",", r"\,")


def count(value: float) -> str:
    """An integer (``value`` rounded) with thin-space grouping: ``count(32768) == "32\\,768"``."""
    return f"{round(value):,}".replace(",", r"\,")


_PREFIXES = (
    (1e15, "P"),
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, r"\mu "),
    (1e-9, "n"),
)


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """``value`` with an SI prefix, e.g. ``si(2.75e11, "FLOP") == "275\\,\\mathrm{GFLOP}"``."""
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits - 1}e}")
    factor, prefix = next(((f, p) for f, p in _PREFIXES if abs(rounded) >= f), _PREFIXES[-1])
    text = sig(rounded / factor, digits)
    suffix = prefix + unit
    return rf"{text}\,\mathrm{{{suffix}}}" if suffix else text


def num(expr: Any, values: Mapping[sp.Symbol, Any]) -> float:
    """``expr`` evaluated exactly at ``values``, then rounded to a float."""
    exact_values = {k: sp.sympify(v) for k, v in values.items()}
    result = sp.sympify(expr).xreplace(exact_values)
    if result.free_symbols:
        names = ", ".join(sorted(str(s) for s in result.free_symbols))
        raise ValueError(f"unsubstituted symbols: {names}")
    return float(result)


def code(name: str) -> str:
    """A kernel, file or command name in typewriter type, LaTeX-escaped, breakable after
    ``/``, ``.``, ``-`` and ``_`` (typewriter spaces do not stretch)."""
    escaped = name.replace("_", r"\_\allowbreak{}")
    for char in ("/", ".", "-"):
        escaped = escaped.replace(char, char + r"\allowbreak{}")
    return r"\texttt{" + escaped + "}"


def escape(text: str) -> str:
    """Plain text made safe for LaTeX: its special characters escaped."""
    out = []
    for char in text:
        if char == "\\":
            out.append(r"\textbackslash{}")
        elif char in "&%$#_{}":
            out.append("\\" + char)
        elif char in "~^":
            out.append(rf"\{char}{{}}")
        else:
            out.append(char)
    return "".join(out)


def macro_file(entries: Mapping[str, str]) -> str:
    """``\\setval{key}{value}`` lines, sorted by key, after the definition of ``\\val``.

    Keys ``eq-*`` hold math to be placed inside math mode, ``name-*`` text; every other value
    is a number wrapped in ``\\ensuremath`` so that it works in text and in math.
    """
    lines = [
        "% Generated by python -m experiments.paper: do not edit.",
        r"\makeatletter",
        r"\providecommand{\setval}[2]{\expandafter\def\csname cm@#1\endcsname{#2}}",
        r"\providecommand{\val}[1]{\ifcsname cm@#1\endcsname\csname cm@#1\endcsname"
        r"\else\PackageError{costmodel}{undefined generated value #1}{}\fi}",
        r"\makeatother",
    ]
    for key in sorted(entries):
        if not key.replace("-", "").isalnum():
            raise ValueError(f"bad macro key {key!r}")
        value = entries[key]
        if not key.startswith(("eq-", "name-")):
            value = rf"\ensuremath{{{value}}}"
        lines.append(rf"\setval{{{key}}}{{{value}}}")
    return "\n".join(lines) + "\n"


def tabular(
    columns: str, header: Sequence[str], rows: Iterable[Sequence[str]], *, head_extra: str = ""
) -> str:
    """A booktabs tabular."""
    out = [rf"\begin{{tabular}}{{{columns}}}", r"\toprule"]
    if head_extra:
        out.append(head_extra)
    out.append(" & ".join(header) + r" \\")
    out.append(r"\midrule")
    out.extend(" & ".join(row) + r" \\" for row in rows)
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def generated(text: str) -> str:
    """Prefix a generated file with its do-not-edit line."""
    return "% Generated by python -m experiments.paper: do not edit.\n" + text
