"""The paper's what-if section: the crossovers' closed forms and numbers, a worked example of
exact elasticities and an inverse question, and the kernels' prediction-interval coverage.

The crossovers are SymPy, cheap, and computed here from the same expressions the code solves
(:func:`costmodel.model.derivations.fp8_int4_crossover`,
:func:`~costmodel.model.derivations.tensor_parallel_halving`,
:func:`costmodel.model.crossover.crossover`).  The worked example (a JAX compile of the serving
model's derivatives, several seconds) and the coverage (every held-out kernel row, over a
minute) are read from recordings under ``paper/data/``: the ``--json`` output of the commands
in :data:`RECORDINGS`, stored by ``python -m experiments.paper --record whatif`` (or
``kernel_coverage``).  Without a recording the part says which command provides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sympy as sp

from costmodel.config.specs import Scenario
from costmodel.model import derivations as dv
from costmodel.model import symbols as sy
from costmodel.model.crossover import crossover
from costmodel.present.paper.latex import (
    code,
    count,
    generated,
    num,
    sig,
    tabular,
    tex,
    tex_fraction,
)
from costmodel.present.paper.model import values_of


class Recording(NamedTuple):
    """Commands whose ``--json`` outputs are stored together as paper/data/<name>.json, one
    key per command."""

    name: str
    commands: tuple[tuple[str, str, tuple[str, ...]], ...]  # (key, experiments module, args)


# The worked example: Llama-3-8B on one H100 SXM, bf16, closed loop, pure roofline.
QUESTION = (
    "--model", "llama-3-8b", "--hardware", "h100-sxm", "--tp", "1", "--weight-dtype", "bf16",
    "--kv-dtype", "bf16", "--isl", "1024", "--osl", "256", "--concurrency", "32",
)  # fmt: skip
TPOT_TARGET_MS = 5  # the inverse question: least HBM bandwidth for this TPOT
CLIENTS_TPOT_MS = 10  # and the most clients for this one
# Serving-level intervals (costmodel.search.uncertainty): the worked example under an engine's
# calibration, with the probability of meeting a TPOT target.
SERVING_INTERVAL = "serving_interval"
INTERVAL_ENGINE = "vllm"
INTERVAL_TPOT_MS = 10
INTERVAL = (
    "--engine", INTERVAL_ENGINE, "--interval", "0.9", "--slo", f"tpot_ms<={INTERVAL_TPOT_MS}",
)  # fmt: skip
SOLVE_BANDWIDTH = ("--solve", "hbm_bandwidth_tb_s", "--subject-to", f"tpot_ms<={TPOT_TARGET_MS}")
SOLVE_CLIENTS = ("--solve", "concurrency", "--subject-to", f"tpot_ms<={CLIENTS_TPOT_MS}")
RECORDINGS = {
    "whatif": Recording(
        "whatif",
        (
            ("sensitivity", "whatif", (*QUESTION, "--sensitivity", "--json")),
            ("bandwidth", "whatif", (*QUESTION, *SOLVE_BANDWIDTH, "--json")),
            ("clients", "whatif", (*QUESTION, *SOLVE_CLIENTS, "--json")),
        ),
    ),
    "kernel_coverage": Recording(
        "kernel_coverage", (("coverage", "calibrate_gpu", ("--coverage", "--json")),)
    ),
    SERVING_INTERVAL: Recording(
        SERVING_INTERVAL,
        (("interval", "whatif", (*QUESTION, *INTERVAL, "--json")),),
    ),
}
METRIC_HEADS = {
    "ttft_ms": "TTFT",
    "tpot_ms": "TPOT",
    "output_tok_s_per_gpu": "tok/s/GPU",
    "cost_usd_per_1m_tokens": r"\$/Mtok",
}
PARAMETER_NAMES = {
    "hbm_bandwidth_tb_s": "HBM bandwidth $W$",
    "isl": "prompt length",
    "osl": "output length",
    "concurrency": "clients $c_r$",
    "request_rate": r"request rate $\lambda$",
    "step_overhead": "step overhead",
}
SHARE_NAMES = {"tokens": "token kernels"}  # the decode step's parts, as the recording names them
SHOWN_KINDS = ("hardware", "workload", "engine")
ENGINES = {"vllm": "vLLM", "sglang": "SGLang", "trtllm": "TRT-LLM"}
HALVING_DEGREE = 8  # tp of the halving example (two replicas of tp 4)


def commands(recording: Recording) -> list[str]:
    """The shell commands of a recording, as a user would type them."""
    out = []
    for _, module, args in recording.commands:
        shown = [f'"{a}"' if "<" in a or ">" in a else a for a in args]
        out.append(" ".join([f"python -m experiments.{module}", *shown]))
    return out


def _missing(name: str) -> str:
    return (
        r"\emph{Not yet recorded.} "
        + f"{code(f'python -m experiments.paper --record {name}')} stores the output of "
        + " and ".join(code(c) for c in commands(RECORDINGS[name]))
        + f" as {code(f'paper/data/{name}.json')}, and this paragraph fills in.\n"
    )


# --------------------------------------------------------------------------- crossovers


def _llama(scenario: Scenario) -> dict:
    """The scenario's pure-roofline values with both formats' peaks and int4's group."""
    hardware = scenario.hardware
    values = values_of(scenario)
    values = {k: v for k, v in values.items() if k not in (sy.b_w, sy.peak_matmul)}
    return values | {
        sy.peak_bf16: hardware.matmul_peak("int4"),
        dv.peak_fp8: hardware.matmul_peak("fp8"),
        dv.group_size: sp.Integer(scenario.search.group_size),
    }


def crossover_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the two crossovers: closed forms and their values for the scenario's model
    and device (fp8 against int4 weights; one tp replica against two of tp/2)."""
    values = _llama(scenario)
    context = scenario.workload.default_context
    fp8 = dv.fp8_int4_crossover(scenario.model.attention_kind)
    mlp = values | {dv.k_in: values[sy.D], dv.n_out: values[sy.F]}
    at_context = {k: sp.sympify(v) for k, v in (values | {sy.T: context}).items()}
    step = crossover(
        fp8.fp8_step.xreplace(at_context), fp8.int4_step.xreplace(at_context), sy.B, 1, 4096
    )
    if not step.exact or (step.below, step.above) != ("b", "a"):
        raise ArithmeticError("the fp8/int4 step crossover is not the closed form it was")
    halving = dv.tensor_parallel_halving(scenario.model.attention_kind)
    bf16 = values | {
        sy.T: context,
        sy.tp: sp.Integer(HALVING_DEGREE),
        sy.b_w: sp.Integer(2),
        sy.peak_matmul: scenario.hardware.matmul_peak("bf16"),
    }
    exact_bf16 = {k: sp.sympify(v) for k, v in bf16.items()}
    whole = crossover(
        halving.large_step.xreplace(exact_bf16),
        halving.small_step.xreplace(exact_bf16),
        sy.B,
        1,
        4096,
    )
    fp8_halving = num(halving.batch, bf16 | {sy.b_w: sp.Integer(1)})
    return {
        "eq-fp8-int4": tex_fraction(fp8.batch),
        "eq-fp8-int4-meets": tex(sp.Eq(fp8.int4_meets, fp8.fp8_meets)),
        "fp8-int4-mlp": sig(num(fp8.batch, mlp), 4),
        "fp8-int4-step": sig(float(step.point), 5),
        "eq-fp8-int4-step-exact": tex(step.point),
        "eq-tp-halving": tex(halving.batch),
        "tp-halving-degree": str(HALVING_DEGREE),
        "tp-halving-half": str(HALVING_DEGREE // 2),
        "tp-halving-layer": sig(num(halving.batch, bf16), 4),
        "tp-halving-step": sig(float(whole.point), 4),
        "name-tp-halving-fp8": (
            f"from the first sequence (the closed form gives ${sig(fp8_halving)}$)"
            if fp8_halving < 1
            else f"above ${sig(fp8_halving)}$ sequences"
        ),
    }


# --------------------------------------------------------------------------- worked example


def _pct(share: float) -> str:
    return f"{100 * share:.0f}\\,\\%"


def _elasticity(value: float | None) -> str:
    if value is None:
        return "--"
    return "0" if value == 0 else f"${value:+.4f}$"


def _zero_names(names: list[str]) -> str:
    """``peak_tflops.fp8``, ``link_latency_us``, ... as 'the fp8 peak, memory, the links'."""
    peaks = [n.split(".", 1)[1] for n in names if n.startswith("peak_tflops.")]
    parts = []
    if peaks:
        listed = ", ".join(peaks[:-1]) + (" and " if len(peaks) > 1 else "") + peaks[-1]
        parts.append(f"the {listed} peak{'s' if len(peaks) > 1 else ''}")
    if any(n in ("hbm_capacity_gb", "usable_memory_fraction") for n in names):
        parts.append("memory")
    if any(n.startswith(("link_", "scale_out_")) for n in names):
        parts.append("the links")
    others = [
        n for n in names
        if not n.startswith(("peak_tflops.", "link_", "scale_out_"))
        and n not in ("hbm_capacity_gb", "usable_memory_fraction")
    ]  # fmt: skip
    parts += [_parameter(n) for n in others]
    return ", ".join(parts)


def _parameter(name: str) -> str:
    if name.startswith("peak_tflops."):
        return rf"{name.split('.', 1)[1]} peak $P$"
    return PARAMETER_NAMES.get(name, code(name))


def _shown(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The hardware figures and workload numbers (and an engine's step overhead): the inputs
    every recording has; other kinds, where the command gives them, are left to the README."""
    return [r for r in data["elasticities"] if r["kind"] in SHOWN_KINDS]


def _nonzero(row: Mapping[str, Any]) -> bool:
    return any(row[m] for m in METRIC_HEADS)


def sensitivity_part(recorded: Mapping[str, Any] | None) -> str:
    """The worked example: its question, where its elasticities come from, the inverse
    questions (the elasticities themselves are :func:`tables`'s)."""
    if recorded is None:
        return generated(_missing("whatif"))
    data = recorded["sensitivity"]
    question = data["question"]
    shown = _shown(data)
    zero = [r["parameter"] for r in shown if not _nonzero(r)]
    hardware = [r for r in shown if r["kind"] == "hardware"]
    sums = {m: sum(r[m] for r in hardware) for m in ("ttft_ms", "tpot_ms")}
    shares = sorted(data["decode_step_shares"].items(), key=lambda kv: -kv[1])
    bandwidth, clients = recorded["bandwidth"], recorded["clients"]
    solved = bandwidth["at_solution"]
    text = (
        r"\paragraph{A worked example.} "
        + f"{code(question['model'])} on one {code(question['hardware'])}, "
        + f"{question['weight_dtype']} weights and cache, {count(question['isl'])}-token prompts, "
        + f"{count(question['osl'])}-token outputs, {count(question['concurrency'])} clients, "
        + f"pure roofline: TTFT {sig(question['ttft_ms'])}\\,ms, TPOT "
        + f"{sig(question['tpot_ms'])}\\,ms, {sig(question['decode_batch'])} sequences "
        + "decoding. Table~\\ref{tab:whatif} ranks the elasticities that are not zero; the "
        + f"other {len(zero)} inputs ({_zero_names(zero)}) come out exactly 0. Decode is "
        + f"{data['regime']} at this batch (a step is "
        + ", ".join(f"{_pct(v)} {SHARE_NAMES.get(k, k)}" for k, v in shares if v >= 0.005)
        + "), so TPOT follows $W$ more than $P$. Multiplying every peak and bandwidth by $s$ "
        + "divides a pure-roofline time by $s$, so its hardware elasticities sum to $-1$: "
        + f"here ${sums['tpot_ms']:.6f}$ for TPOT and ${sums['ttft_ms']:.6f}$ for TTFT. "
        + f"The least HBM bandwidth with TPOT $\\le {TPOT_TARGET_MS}$\\,ms is "
        + f"${bandwidth['solution']:.5g}$\\,TB/s (the device has "
        + f"{sig(bandwidth['current_value'])}; re-evaluated, TPOT is the target to "
        + f"${sig(abs(solved['tpot_ms'] / TPOT_TARGET_MS - 1), 2)}$ relative), and with "
        + f"TPOT $\\le {CLIENTS_TPOT_MS}$\\,ms the deployment takes up to "
        + f"{count(clients['solution'])} clients.\n"
    )
    return generated(text)


# --------------------------------------------------------------------------- kernel intervals


def _pairs(recorded: Mapping[str, Any]) -> list[dict[str, Any]]:
    return recorded["coverage"]["coverage"]  # the command prints {"coverage": [pairs]}


def _pair(p: Mapping[str, Any]) -> str:
    return f"{code(p['hardware'])} / {ENGINES[p['engine']]}"


def coverage_part(recorded: Mapping[str, Any] | None) -> str:
    """The held-out coverage of the kernels' intervals, summarised (the GPU x engine table is
    :func:`tables`'s)."""
    if recorded is None:
        return generated(_missing("kernel_coverage"))
    pairs = _pairs(recorded)
    low = min(pairs, key=lambda p: p["coverage"])
    high = max(pairs, key=lambda p: p["coverage"])
    inside = sum(p["inside"] for p in pairs)
    total = sum(p["rows"] for p in pairs)
    return generated(
        f"At level {pairs[0]['level']:g} the intervals cover "
        + f"{100 * inside / total:.1f}\\,\\% of all {count(total)} held-out rows, from "
        + f"{100 * low['coverage']:.1f}\\,\\% ({_pair(low)}) to "
        + f"{100 * high['coverage']:.1f}\\,\\% ({_pair(high)}) per pair "
        + "(table~\\ref{tab:coverage}).\n"
    )


# --------------------------------------------------------------------------- the tables


def _elasticity_table(recorded: Mapping[str, Any]) -> str:
    rows = [r for r in _shown(recorded["sensitivity"]) if _nonzero(r)]
    return tabular(
        "l" + "r" * len(METRIC_HEADS),
        ["$x$", *METRIC_HEADS.values()],
        [[_parameter(r["parameter"]), *(_elasticity(r[m]) for m in METRIC_HEADS)] for r in rows],
    )


def _coverage_table(recorded: Mapping[str, Any]) -> str:
    pairs = _pairs(recorded)
    by = {(p["hardware"], p["engine"]): p for p in pairs}
    engines = [e for e in ENGINES if any(p["engine"] == e for p in pairs)]

    def cell(gpu: str, engine: str) -> str:
        p = by.get((gpu, engine))
        return "--" if p is None else f"{100 * p['coverage']:.1f}"

    gpus = sorted({p["hardware"] for p in pairs})
    rows = [[code(g), *(cell(g, e) for e in engines)] for g in gpus]
    return tabular("l" + "r" * len(engines), ["GPU", *(ENGINES[e] for e in engines)], rows)


def tables(whatif: Mapping[str, Any] | None, coverage: Mapping[str, Any] | None) -> str:
    """One float, side by side: the worked example's nonzero elasticities and the kernels'
    held-out coverage (each as its own table; a missing recording leaves its side out)."""
    sides = []
    if whatif is not None:
        sides.append(
            r"\begin{minipage}[b]{0.56\linewidth}\centering" + "\n"
            + _elasticity_table(whatif)
            + r"\caption{Nonzero elasticities $\partial\ln m/\partial\ln x$ of the worked "
            + "example, ranked by the largest; from "
            + code("paper/data/whatif.json")
            + r".}\label{tab:whatif}" + "\n"
            + r"\end{minipage}"
        )  # fmt: skip
    if coverage is not None:
        level = _pairs(coverage)[0]["level"]
        sides.append(
            r"\begin{minipage}[b]{0.4\linewidth}\centering" + "\n"
            + _coverage_table(coverage)
            + rf"\caption{{Held-out kernel rows inside their {level:g} interval (\%); from "
            + code("paper/data/kernel_coverage.json")
            + r".}\label{tab:coverage}" + "\n"
            + r"\end{minipage}"
        )  # fmt: skip
    if not sides:
        return generated("")
    return generated(
        r"\begin{table}[htbp]\centering\footnotesize\setlength{\tabcolsep}{3pt}" + "\n"
        + "\\hfill\n".join(sides) + "\n"
        + r"\end{table}" + "\n"
    )  # fmt: skip


# --------------------------------------------------------------------------- serving intervals


def serving_interval_part(recorded: Mapping[str, Any] | None) -> str:
    """One sentence: the worked example's serving intervals under an engine's calibration."""
    if recorded is None:
        return generated(_missing(SERVING_INTERVAL))
    data = recorded["interval"]
    central = data["question"]
    low, high = data["intervals"]["tpot_ms"]
    ttft_low, ttft_high = data["intervals"]["ttft_ms"]
    engine = ENGINES.get(central["engine"], central["engine"])
    return generated(
        f"For the worked example under {engine}'s calibration ({count(data['draws'])} draws, "
        + f"fixed seed), TPOT is {sig(central['tpot_ms'])}\\,ms with a {data['level']:g} "
        + f"interval of {sig(low)} to {sig(high)}\\,ms, TTFT {sig(central['ttft_ms'])}\\,ms "
        + f"({sig(ttft_low)} to {sig(ttft_high)}), and TPOT $\\le {data['slo']['tpot_ms']:g}$"
        + f"\\,ms is met in {100 * data['probability_meeting_slo']:.0f}\\,\\% of the draws (the "
        + f"pure roofline predicts {sig(data['roofline']['tpot_ms'])}\\,ms).\n"
    )
