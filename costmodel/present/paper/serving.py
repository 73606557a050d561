"""The paper's section on serving (``sec:serving``): the continuous-batching model's equations,
printed from :mod:`costmodel.model.serving`, and the fixed facts of its two checks.

The equations are the model's own expressions.  To keep them readable, a few of its quantities
are held as symbols while the expressions are built (:func:`held`: the tokens a decoding
sequence gains per step, the prompt tokens a request computes, the Poisson probabilities and
the Poisson tail), and afterwards the step-time moments, the prefill wait and the other
repeated pieces are given names (:func:`steady_forms`, :func:`disaggregated_forms`).  Every
name comes with its expression (``Forms.definitions``); :func:`expand` substitutes them back,
and the tests check that this recovers the model's expressions exactly, so the printed forms
cannot drift from the ones the predictions evaluate.  A name that no longer matches its piece
of the model leaves a step-time call behind, which :func:`steady_forms` refuses.

The facts of the checks (:func:`grid_text`, :func:`runs_table`, :func:`busiest_text`) are read
from code and committed data only: the simulation grid's constants, the measured runs and the
fitted step overheads, and the arithmetic of the measured run whose prefill would need most of
its GPU.  Nothing here simulates or predicts, so the paper check stays fast; the results of the
slow commands are named, not quoted, in the hand-written prose.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import NamedTuple

import sympy as sp

from costmodel.config.bind import Setting, bind
from costmodel.config.load import hardware_catalogue, serving_scenario, step_overheads
from costmodel.model import serving
from costmodel.model import symbols as sy
from costmodel.model.layers import model_ops
from costmodel.model.roofline import totals
from costmodel.present.paper.latex import (
    LATEX_NAMES,
    code,
    count,
    escape,
    generated,
    si,
    sig,
    tabular,
)
from costmodel.validate import serving_check, serving_data

# --------------------------------------------------------------------------- display symbols

step = sp.Function("t")  # a mixed step's time: t(decoding sequences, prefill tokens) [s]
pieces = sp.Function("f")  # the step time as a function of its prefill tokens alone [s]

tau_s = sp.Symbol("tau_s", positive=True)  # tokens a decoding sequence gains per step
prompt_c = sp.Symbol("S_c", positive=True)  # prompt tokens a request computes
decode_n = sp.Symbol("N_dec", positive=True)  # decode steps per request after the first token
budget_p = sp.Symbol("N_p", positive=True)  # the step's budget left to prefill
wait = sp.Symbol("t_wait", nonnegative=True)  # wait for earlier prompts' chunks
extra = sp.Symbol("delta_p", nonnegative=True)  # a prompt's extra step time, all its chunks
busy = sp.Symbol("rho_t", nonnegative=True)  # share of time spent prefilling (open loop)
ttft = sp.Symbol("TTFT", positive=True)  # time to first token, in other outputs
mean = sp.Symbol("m", nonnegative=True)  # expected prompts per step
tail_mass = sp.Symbol("Pi_4", nonnegative=True)  # P(G >= EXACT_TERMS)
tail_mean = sp.Symbol("gbar_4", positive=True)  # E[G | G >= EXACT_TERMS]
arrivals = sp.Symbol("g", integer=True, nonnegative=True)  # prompts reaching one step
decode_t = sp.Symbol("t_dec", positive=True)  # a decode replica's step (disaggregated)
decoding = sp.Symbol("t_D", positive=True)  # the time a request spends decoding (open loop)
service_t = sp.Symbol("t_svc", positive=True)  # one prompt's prefill (disaggregated)
load_p = sp.Symbol("rho_p", nonnegative=True)  # a prefill replica's load (disaggregated)
usable = sp.Symbol("M_u", positive=True)  # usable memory per GPU [bytes]
weights = sp.Symbol("M_wt", positive=True)  # weights per GPU [bytes]
workspace = sp.Symbol("M_ws", nonnegative=True)  # a full step's workspace per GPU [bytes]
per_token = sp.Symbol("m_kv", positive=True)  # one token's KV bytes per GPU [bytes]
capacity = sp.Symbol("C_kv", positive=True)  # KV-cache tokens of the replica [tokens]
block = sp.Symbol("b_blk", positive=True, integer=True)  # tokens per KV page [tokens]
probabilities = tuple(
    sp.Symbol(f"p_{g}", nonnegative=True) for g in range(serving.EXACT_TERMS)
)  # P(G = g), g < EXACT_TERMS

# Step-time kernels by what they scale with (serving.StepParts), as placeholders.
part_tokens = sp.Function(r"t_{tok}")
part_decode = sp.Function(r"t_{da}")
part_prefill = sp.Function(r"t_{pa}")
part_head = sp.Function(r"t_{head}")

NAMES: dict[sp.Symbol, str] = {
    **LATEX_NAMES,
    tau_s: r"\tau_s",
    prompt_c: "S_c",
    decode_n: r"N_{dec}",
    budget_p: "N_p",
    wait: r"t_{wait}",
    extra: r"\delta_p",
    busy: r"\rho_t",
    ttft: r"\mathrm{TTFT}",
    mean: "m",
    tail_mass: r"\Pi_4",
    tail_mean: r"\bar g_4",
    arrivals: "g",
    decode_t: r"t_{dec}",
    decoding: r"t_D",
    service_t: r"t_{svc}",
    load_p: r"\rho_p",
    usable: r"M_{u}",
    weights: r"M_{wt}",
    workspace: r"M_{ws}",
    per_token: r"m_{kv}",
    capacity: r"C_{kv}",
    block: r"b_{blk}",
    **{p: f"p_{g}" for g, p in enumerate(probabilities)},
}


def tex(expr) -> str:
    """LaTeX of a serving expression with the section's symbol names."""
    return sp.latex(sp.sympify(expr), symbol_names=NAMES)


def settle(expr: sp.Expr) -> sp.Expr:
    """``expr`` with its Min and Max evaluated (the model leaves them unevaluated to spare
    SymPy's simplifier; evaluated, min(0, N_p) prints as 0)."""
    return sp.sympify(expr).replace(
        lambda e: isinstance(e, (sp.Min, sp.Max)), lambda e: e.func(*e.args)
    )


# --------------------------------------------------------------------------- the forms


@contextmanager
def held(*, poisson: bool = False, tail: bool = False) -> Iterator[None]:
    """Build the model's expressions with the tokens a decoding sequence gains per step and the
    prompt tokens a request computes held as symbols (with ``poisson`` the Poisson
    probabilities p_g too, with ``tail`` the Poisson tail); the originals are restored on exit.
    The model's own combination of them is unchanged; their definitions are printed apart."""
    stand_ins = {
        "tokens_per_step": lambda *args, **kwargs: tau_s,
        "prefill_tokens": lambda *args, **kwargs: prompt_c,
    }
    if poisson:
        stand_ins["poisson"] = lambda g, mean: probabilities[g]
    if tail:
        stand_ins["poisson_tail"] = lambda mean, start=serving.EXACT_TERMS: (tail_mass, tail_mean)
    saved = {name: getattr(serving, name) for name in stand_ins}
    try:
        for name, stand_in in stand_ins.items():
            setattr(serving, name, stand_in)
        yield
    finally:
        for name, original in saved.items():
            setattr(serving, name, original)


def tail_forms() -> tuple[sp.Expr, sp.Expr]:
    """The Poisson tail (:func:`costmodel.model.serving.poisson_tail`) in terms of the
    probabilities p_g: its mass and its conditional mean (with the mass named)."""
    with held(poisson=True):
        mass, conditional = serving.poisson_tail(mean)
    return mass, settle(conditional.subs(mass, tail_mass))


def held_definitions() -> dict[sp.Symbol, sp.Expr]:
    """What :func:`held` holds as symbols, as the model defines it (with ``m`` for the mean of
    the prompts reaching a step)."""
    tail = serving.poisson_tail(mean)
    out = {tau_s: serving.tokens_per_step(), prompt_c: serving.prefill_tokens()}
    out |= {p: serving.poisson(g, mean) for g, p in enumerate(probabilities)}
    return out | {tail_mass: tail[0], tail_mean: tail[1]}


def mixed_step(per_query_attention: bool = False) -> sp.Expr:
    """One mixed step of placeholder kernels (:func:`costmodel.model.serving.mixed_step_time`):
    token kernels of B·S tokens, decode attention of B sequences with S new tokens over T,
    prefill attention of B prompts of S tokens, the LM head over B·S positions."""
    B, S, T = sy.B, sy.S, sy.T
    parts = serving.StepParts(
        part_tokens(B * S), part_decode(B, S, T), part_prefill(B, S, T), part_head(B * S)
    )
    return serving.mixed_step_time(parts, per_query_attention=per_query_attention)


def mixture_forms() -> serving.Mixture:
    """The Poisson mixture of a step time f(P) with ``m`` prompts expected per step, each of
    S_c tokens, and N_p prefill tokens to a step (probabilities and tail held)."""
    with held(poisson=True, tail=True):
        mix = serving.mixture(pieces, mean, prompt_c, budget_p)
    return serving.Mixture(*(settle(x) for x in mix))


class Forms(NamedTuple):
    """Printed forms of a steady state: ``outputs`` by name (ttft, tpot, throughput,
    in_flight, load) in terms of named pieces, and ``definitions``, each name's expression in
    the model's terms (tokens per step and computed prompt tokens held, see :func:`held`)."""

    outputs: dict[str, sp.Expr]
    definitions: dict[sp.Symbol, sp.Expr]


OUTPUTS = ("ttft", "tpot", "throughput", "in_flight", "load")


def others_share(closed: bool) -> sp.Expr:
    """The share of the requests in flight that a given request shares its steps with, as the
    model has it: (c - 1)/c in a closed loop (not itself), 1 in an open one."""
    return (sy.c_conc - 1) / sy.c_conc if closed else sp.Integer(1)


def _named(expr: sp.Expr, names: Mapping[sp.Expr, sp.Expr]) -> sp.Expr:
    """``expr`` with each piece replaced by its name, in order."""
    for piece, name in names.items():
        expr = expr.subs(piece, name)
    return expr


def _check_named(forms: Mapping[str, sp.Expr], what: str) -> None:
    left = [k for k, v in forms.items() if v.has(step)]
    if left:
        raise ValueError(
            f"{what}: {', '.join(left)} still call the step time: the names of "
            "costmodel.present.paper.serving no longer match costmodel.model.serving"
        )


@lru_cache(maxsize=2)
def steady_forms(closed: bool) -> Forms:
    """The steady state of one replica (:func:`costmodel.model.serving.steady_state`) with
    its step-time moments, wait, budget and rates named."""
    n = sy.n_d
    share = others_share(closed)
    with held():
        steady = serving.steady_state(step, closed=closed)
        others, seen = n * share, steady.admitted * share
        first = serving.mixture(lambda p: step(others, p), seen, prompt_c, steady.budget).carrying
        full = step(others, steady.budget)
        chunks = serving.chunk_steps(prompt_c, steady.budget)
        prompt_step = sp.Min(prompt_c, steady.budget, evaluate=False)
        gained = (step(others, prompt_step) - step(others, 0)) * chunks
        waited = serving.prefill_wait(sy.m_adm * share, prompt_c, budget_p, sy.t_full)
    names: dict[sp.Expr, sp.Expr] = {
        steady.mixture.mean: sy.t_bar,
        2 * steady.mixture.mean: 2 * sy.t_bar,
        steady.mixture.mean_square: sy.t_step2,
        first: sy.t_first,
        full: sy.t_full,
    }
    definitions: dict[sp.Symbol, sp.Expr] = {
        decode_n: steady.decode_steps,
        sy.m_adm: n / decode_n,
        budget_p: steady.budget,
        sy.t_bar: steady.mixture.mean,
        sy.t_step2: steady.mixture.mean_square,
        sy.t_first: first,
        sy.t_full: full,
        wait: waited,
    }
    if not closed:
        names[gained] = extra
        definitions[extra] = gained
        definitions[busy] = sy.m_adm * extra / sy.t_bar
    outputs = {}
    for name in OUTPUTS:
        expr = _named(getattr(steady, name), names)
        expr = expr.subs(steady.budget, budget_p).subs(steady.admitted, sy.m_adm)
        expr = expr.subs(waited, wait).subs(sy.N_out - 1, decode_n * tau_s)
        if not closed:
            expr = expr.subs(sy.m_adm * extra / sy.t_bar, busy)
        outputs[name] = settle(expr)
    for name in ("tpot", "throughput", "in_flight"):
        outputs[name] = outputs[name].subs(outputs["ttft"], ttft)
    definitions[ttft] = outputs["ttft"]
    if not closed:
        # The time a request spends decoding: the model's throughput is n_d over it.
        spent = sy.n_d / outputs["throughput"]
        outputs = {k: v.subs(spent, decoding) for k, v in outputs.items()}
        definitions[decoding] = spent
    _check_named(outputs, f"steady state, {'closed' if closed else 'open'} loop")
    return Forms(outputs, {k: settle(v) for k, v in definitions.items()})


@lru_cache(maxsize=2)
def disaggregated_forms(closed: bool) -> Forms:
    """The steady state of x_p prefill and y_d decode replicas
    (:func:`costmodel.model.serving.disaggregated_state`) with the decode step, one prompt's
    prefill and the prefill replicas' load named."""
    n = sy.n_d
    with held():
        steady = serving.disaggregated_state(step, closed=closed)
        decode = step(1 + n * others_share(closed), 0)
        prompt_step = sp.Min(prompt_c, sy.N_budget, evaluate=False)
        service = step(0, prompt_step) * serving.chunk_steps(prompt_c, sy.N_budget)
    names = {decode: decode_t, service: service_t}
    load = _named(steady.load, names).subs(sy.N_out - 1, decode_n * tau_s)
    definitions: dict[sp.Symbol, sp.Expr] = {
        decode_n: steady.decode_steps,
        decode_t: decode,
        service_t: service,
        load_p: load,
    }
    outputs = {}
    for name in OUTPUTS:
        expr = _named(getattr(steady, name), names).subs(sy.N_out - 1, decode_n * tau_s)
        outputs[name] = settle(expr.subs(load, load_p) if name != "load" else expr)
    outputs["in_flight"] = outputs["in_flight"].subs(outputs["ttft"], ttft)
    definitions[ttft] = outputs["ttft"]
    _check_named(outputs, f"disaggregated, {'closed' if closed else 'open'} loop")
    return Forms(outputs, {k: settle(v) for k, v in definitions.items()})


def capacity_forms() -> tuple[sp.Expr, sp.Expr]:
    """KV-cache tokens of a replica (:func:`costmodel.model.serving.kv_capacity_tokens`) and the
    requests whose whole KV fits (:func:`~costmodel.model.serving.fitting_requests`)."""
    tokens = serving.kv_capacity_tokens(weights, workspace, per_token, usable)
    fits = serving.fitting_requests(capacity, sy.N_prompt + sy.N_out, block)
    return tokens, fits


def expand(expr: sp.Expr, definitions: Mapping[sp.Symbol, sp.Expr], *, rounds: int = 16):
    """``expr`` with every named piece replaced by its definition, until none is left."""
    for _ in range(rounds):
        nxt = expr.xreplace(dict(definitions))
        if nxt == expr:
            return nxt
        expr = nxt
    raise ValueError("definitions do not terminate")


# --------------------------------------------------------------------------- printing

GRAPH_RESERVE = sp.Symbol("M_graph", positive=True)  # the CUDA-graph reserve, named to print
NAMES[GRAPH_RESERVE] = r"M_{graph}"
spill = sp.Symbol("sigma", nonnegative=True)  # steps' worth of prompt tokens the budget spills
NAMES[spill] = r"\sigma"


def _terms(expr: sp.Expr) -> list[sp.Expr]:
    """The terms of a sum, each with its nested cases folded into one."""
    return [sp.piecewise_fold(t) for t in sp.Add.make_args(expr)]


def _ordered(expr: sp.Expr, leading: tuple) -> list[sp.Expr]:
    """The terms of ``expr``: first those holding ``leading``'s symbols or functions, in that
    order, then the rest."""

    def rank(term: sp.Expr) -> int:
        return next((i for i, lead in enumerate(leading) if term.has(lead)), len(leading))

    return sorted(_terms(expr), key=rank)


def _lines(terms, per_line: int = 1) -> str:
    """Terms of a sum as an aligned block, ``per_line`` terms a line."""
    texts = [tex(t) for t in terms]
    rows = [" + ".join(texts[i : i + per_line]) for i in range(0, len(texts), per_line)]
    body = r" \\ &+ ".join(rows).replace("+ -", "- ")
    return r"\begin{aligned}[t] &" + body + r"\end{aligned}"


def _equation(label: str, body: str) -> str:
    return rf"\begin{{equation}}\label{{eq:serving-{label}}}" + f"\n{body}\n" + r"\end{equation}"


def _gather(label: str, rows: list[str]) -> str:
    """Several short relations on one numbered line."""
    return _equation(label, r",\qquad ".join(rows))


def step_block() -> tuple[str, sp.Expr]:
    """The mixed step's equation, and the decode-attention term the engine path uses instead
    of the one printed."""
    roofline, engine = mixed_step(False), mixed_step(True)
    terms = _ordered(roofline, (part_tokens, sy.t_sched, part_decode, part_prefill, part_head))
    own = [t for t in _terms(engine) if t not in terms]
    if len(own) != 1:
        raise ValueError("the engine's mixed step differs from the roofline's in more than a term")
    lhs = tex(step(sy.n_d, sy.P))
    return _equation("step", rf"{lhs} = {_lines(terms, per_line=3)}"), own[0]


def mixture_spill(mix: serving.Mixture) -> sp.Expr:
    """The mixture mean's spill fraction: the coefficient of f(N_p) - f(0)."""
    term = next(t for t in sp.Add.make_args(mix.mean) if t.has(pieces(budget_p)))
    return sp.Mul(*(f for f in sp.Mul.make_args(term) if not f.has(pieces)))


def squared_mean(mean_t: sp.Expr) -> sp.Expr:
    """``mean_t`` with every value of the step time squared."""
    return mean_t.replace(lambda e: isinstance(e, pieces), lambda e: e**2)


def _mixture_lines(expr: sp.Expr, sigma: sp.Expr) -> str:
    named = expr.subs(sigma, spill)
    return _lines(_ordered(named, (*probabilities, tail_mass, spill)), per_line=3)


def mixture_block() -> str:
    """The Poisson probabilities and tail, and the mixture's mean, mean square and carrying
    step of a generic step time f(P)."""
    mix = mixture_forms()
    sigma = mixture_spill(mix)
    if mix.mean_square != squared_mean(mix.mean):
        raise ValueError("the mixture's mean square is no longer its mean of f^2: print it")
    mass, conditional = tail_forms()
    return "\n".join(
        [
            _gather(
                "poisson",
                [
                    rf"p_g = {tex(serving.poisson(arrivals, mean))}",
                    rf"\Pi_4 = {tex(mass)}",
                    rf"\bar g_4 = {tex(conditional)}",
                ],
            ),
            _equation("mean", rf"\mathcal{{M}}_1[f, m] = {_mixture_lines(mix.mean, sigma)}"),
            _equation(
                "carrying", rf"\mathcal{{M}}_c[f, m] = {_mixture_lines(mix.carrying, sigma)}"
            ),
            _equation("spill", rf"\sigma = {tex(sigma)}"),
        ]
    )


def _rows(label: str, rows: list[list[tuple[str, str]]]) -> str:
    """Relations ``name = text``, the given ones on each row, rows centred one under another."""
    lines = [r",\quad ".join(f"{name} = {text}" for name, text in row) for row in rows]
    return _equation(label, r"\begin{gathered}" + r", \\ ".join(lines) + r"\end{gathered}")


def workload_block() -> str:
    """Tokens per step, computed prompt tokens, decode steps, admissions, the prefill budget."""
    forms = steady_forms(True).definitions
    return _rows(
        "workload",
        [
            [
                (r"\tau_s", tex(serving.tokens_per_step())),
                ("S_c", tex(serving.prefill_tokens())),
                (r"N_{dec}", tex(forms[decode_n])),
            ],
            [(tex(sy.m_adm), tex(forms[sy.m_adm])), ("N_p", tex(forms[budget_p]))],
        ],
    )


omega = sp.Symbol("omega", positive=True)  # the share of others, as printed
NAMES[omega] = r"\omega"


def moment_bindings(share_of_others: sp.Expr) -> dict[sp.Symbol, sp.Expr]:
    """The named moments and waits of the steady state as the section prints them, with
    ``share_of_others`` the share of the in-flight requests a given one sees as others
    (:func:`others_share`): t̄ and its square are the mixture (:func:`mixture_forms`, m_a·share
    prompts a step) of the step with 1 + n_d·share sequences decoding (the request itself
    among them), t_first the carrying step with n_d·share decoding (its own prompt in the
    step), t_full the step with the budget full of prompts, t_wait the M/D/1 prefill wait."""
    n = sy.n_d
    seen = sy.m_adm * share_of_others
    with held():
        mix = serving.mixture(lambda p: step(1 + n * share_of_others, p), seen, prompt_c, budget_p)
        first = serving.mixture(lambda p: step(n * share_of_others, p), seen, prompt_c, budget_p)
    return {
        sy.t_bar: mix.mean,
        sy.t_step2: mix.mean_square,
        sy.t_first: first.carrying,
        sy.t_full: step(n * share_of_others, budget_p),
        wait: serving.prefill_wait(seen, prompt_c, budget_p, sy.t_full),
    }


def steady_block() -> str:
    """The named moments, the closed loop's and the open loop's outputs."""
    P, seen = sy.P, sy.m_adm * omega
    shown = moment_bindings(omega)
    moments = _gather(
        "moments",
        [
            rf"{tex(name)} = \mathcal{{M}}_{{{kind}}}\big[{tex(fn)},\ {tex(seen)}\big]"
            for name, kind, fn in (
                (sy.t_bar, 1, step(1 + sy.n_d * omega, P)),
                (sy.t_step2, 2, step(1 + sy.n_d * omega, P)),
                (sy.t_first, "c", step(sy.n_d * omega, P)),
            )
        ],
    )
    waits = _gather(
        "wait",
        [
            rf"{tex(sy.t_full)} = {tex(shown[sy.t_full])}",
            rf"t_{{wait}} = {tex(shown[wait])}",
            rf"\omega = {tex(others_share(True))}\ \text{{(closed)}},\ "
            rf"{tex(others_share(False))}\ \text{{(open)}}",
        ],
    )
    out = steady_forms(True).outputs
    closed = _rows(
        "closed",
        [
            [(r"\mathrm{TTFT}", tex(out["ttft"])), (r"\mathrm{TPOT}", tex(out["tpot"]))],
            [
                ("X", tex(out["throughput"])),
                (tex(sy.c_conc), tex(out["in_flight"])),
                (r"\rho", tex(out["load"])),
            ],
        ],
    )
    forms = steady_forms(False)
    out, defs = forms.outputs, forms.definitions
    gained = defs[extra].subs(defs[budget_p], budget_p)
    opened = _rows(
        "open",
        [
            [(r"\mathrm{TTFT}", tex(out["ttft"])), (r"\mathrm{TPOT}", tex(out["tpot"]))],
            [
                (r"\lambda = X", tex(out["throughput"])),
                (r"\bar c", tex(out["in_flight"])),
                (r"\rho_t", tex(defs[busy])),
            ],
            [("t_D", tex(defs[decoding])), (r"\delta_p", tex(gained))],
        ],
    )
    return "\n".join([moments, waits, closed, opened])


def disaggregated_block() -> str:
    """A disaggregated deployment's outputs, with its decode step and one prompt's prefill."""
    forms = disaggregated_forms(True)
    out, defs = forms.outputs, forms.definitions
    return _rows(
        "disaggregated",
        [
            [(r"\mathrm{TTFT}", tex(out["ttft"])), (r"\mathrm{TPOT}", tex(out["tpot"]))],
            [("X", tex(out["throughput"])), (r"\rho_p", tex(out["load"]))],
            [
                (r"t_{svc}", tex(defs[service_t])),
                (r"t_{dec}", tex(disaggregated_decode(omega))),
            ],
        ],
    )


def disaggregated_decode(share_of_others: sp.Expr) -> sp.Expr:
    """A decode replica's step as printed: 1 + n_d·share sequences decoding, no prompts."""
    return step(1 + sy.n_d * share_of_others, 0)


def capacity_block() -> str:
    """KV-cache tokens of a replica and the requests whose whole KV fits."""
    tokens, fits = capacity_forms()
    tokens = tokens.subs(serving.GRAPH_RESERVE_BYTES, GRAPH_RESERVE)
    reserve = sp.Pow(2, sp.Integer(sp.log(serving.GRAPH_RESERVE_BYTES, 2)), evaluate=False)
    return _gather(
        "capacity",
        [
            rf"C_{{kv}} = {tex(tokens)}",
            rf"M_{{graph}} = {sp.latex(reserve)}\,\mathrm{{B}}",
            rf"c_{{fit}} = "
            rf"{sp.latex(fits, symbol_names=NAMES, fold_short_frac=True)}",
        ],
    )


# --------------------------------------------------------------------------- the checks


class EngineRuns(NamedTuple):
    """One engine's measured runs: GPU, engine version, weight formats, runs and held-out runs,
    the fitted step overhead [s], and the run whose prefill alone needs the largest share of
    its GPU's dense matmul peak, with that share and how many runs need more than half."""

    engine: str
    hardware: str
    version: str
    weight_dtypes: tuple[str, ...]
    runs: int
    held_out: int
    step_overhead_s: float
    busiest: serving_data.Run
    busiest_share: float
    above_half: int


def implied_prefill(run: serving_data.Run) -> tuple[float, float, float]:
    """What a measured closed-loop run implies if it was a steady closed loop: requests/s by
    Little's law, c / (TTFT + (osl - 1) TPOT); the prefill FLOPs of one prompt per GPU (the
    model's count: dense scores, section 2); and the prefill FLOP/s per GPU these need."""
    rate = run.concurrency / ((run.ttft_ms + (run.osl - 1) * run.tpot_ms) / 1e3)
    flops = _prefill_flops(run.hardware, run.tp, run.weight_dtype).xreplace({sy.S: run.isl})
    return rate, float(flops), rate * float(flops)


@cache
def _prefill_flops(hardware: str, tp: int, weight_dtype: str) -> sp.Expr:
    """FLOPs per GPU of prefilling one prompt of S tokens, values substituted."""
    scenario = serving_scenario(
        serving_data.MODEL,
        hardware,
        engine=None,
        tp=tp,
        weight_dtype=weight_dtype,
        kv_dtype="bf16",
        source=serving_data.data_path(),
        fields={},
    )
    binding = bind(scenario, Setting(tp, weight_dtype, "bf16"), calibrated=False)
    flops = totals(model_ops(scenario.model.attention_kind, "prefill")).flops
    return flops.xreplace(binding.values).xreplace({sy.B: 1, sy.T: sy.S})


@cache
def _matmul_peak(hardware: str, weight_dtype: str) -> float:
    return float(hardware_catalogue()[hardware].matmul_peak(weight_dtype))


def peak_share(run: serving_data.Run) -> float:
    """The share of the GPU's dense matmul peak (at the run's weight format) that the run's
    prefill alone needs as a steady closed loop (:func:`implied_prefill`)."""
    return implied_prefill(run)[2] / _matmul_peak(run.hardware, run.weight_dtype)


def engine_runs() -> list[EngineRuns]:
    """The committed measured runs by engine (``costmodel/data/serving_benchmarks``)."""
    every = serving_data.runs()
    overheads = step_overheads().seconds
    out = []
    for engine in sorted({r.engine for r in every}):
        mine = [r for r in every if r.engine == engine]
        shares = [peak_share(r) for r in mine]
        top = max(range(len(mine)), key=shares.__getitem__)
        out.append(
            EngineRuns(
                engine,
                mine[0].hardware,
                mine[0].version,
                tuple(sorted({r.weight_dtype for r in mine})),
                len(mine),
                sum(serving_data.held_out(r) for r in mine),
                overheads.get(engine, 0.0),
                mine[top],
                shares[top],
                sum(s > 0.5 for s in shares),
            )
        )
    return out


def runs_table(records: list[EngineRuns] | None = None) -> str:
    """The measured runs by engine with the fitted step overhead and the largest implied
    prefill load (a table)."""
    records = engine_runs() if records is None else records
    rows = []
    for r in records:
        b = r.busiest
        rows.append(
            (
                r.engine,
                code(r.hardware),
                escape(r.version),
                "/".join(r.weight_dtypes),
                f"{r.runs} ({r.held_out})",
                f"${sig(r.step_overhead_s * 1e3)}$",
                f"{b.tp}, {b.isl}/{b.osl}, {b.concurrency}",
                f"${sig(100 * r.busiest_share)}$",
                str(r.above_half),
            )
        )
    header = [
        "engine",
        "GPU",
        "version",
        "weights",
        "runs (held out)",
        r"$t_{sched}$ [ms]",
        r"busiest: $\mathit{tp}$, in/out, $c_r$",
        r"\% of peak",
        r"$> 50\%$",
    ]
    return tabular("lllllrlrr", header, rows)


def grid_text() -> str:
    """The simulation grid of the closed-form check, from its constants."""
    sc = serving_check
    pairs = ", ".join(f"{i}/{o}" for i, o in sc.LENGTHS)
    concurrencies = ", ".join(str(c) for c in sc.CONCURRENCY)
    shares = ", ".join(f"{s:g}" for s in sc.RATE_SHARES)
    points = len(sc.LENGTHS) * (len(sc.CONCURRENCY) + len(sc.RATE_SHARES))
    return (
        f"The simulation grid ({code('costmodel/validate/serving_check.py')}): "
        f"prompt/output lengths {pairs}, each at concurrencies {concurrencies} and at open-loop "
        f"rates of {shares} times the closed form's at concurrency {sc.CONCURRENCY[-1]}, "
        f"{points} points; at least {count(sc.REQUESTS)} requests a point, the first "
        f"${sig(100 * sc.WARMUP, 2)}\\%$ (and {sc.WARMUP_COHORTS} waves) left out, output "
        f"lengths uniform within $\\pm{sig(100 * sc.SPREAD, 2)}\\%$. The bound: "
        f"${sig(100 * sc.TOLERANCE, 1)}\\%$ on the mean TTFT and TPOT.\n"
    )


def busiest_text(records: list[EngineRuns] | None = None) -> str:
    """The arithmetic of the measured run whose prefill needs most of its GPU's peak."""
    records = engine_runs() if records is None else records
    worst = max(records, key=lambda r: r.busiest_share)
    run = worst.busiest
    rate, flops, needed = implied_prefill(run)
    hardware = hardware_catalogue()[run.hardware]
    peaks = {
        d: float(hardware.peak_flops(d))
        for d in ("bf16", "fp8")
        if getattr(hardware.peak_tflops, d)
    }
    peak_text = " and ".join(f"${si(v, 'FLOP/s')}$ ({d})" for d, v in peaks.items())
    return (
        f"Table~\\ref{{tab:serving-runs}} lists the measured runs. The busiest, {worst.engine} "
        f"at $\\mathit{{tp}} = {run.tp}$, {run.isl}/{run.osl} tokens, concurrency "
        f"{run.concurrency}, TTFT ${sig(run.ttft_ms, 4)}$ ms, TPOT ${sig(run.tpot_ms, 3)}$ ms, "
        f"would as a steady closed loop complete $c_r / (\\mathrm{{TTFT}} + "
        f"(N_{{out}} - 1)\\,\\mathrm{{TPOT}}) = {sig(rate)}$ requests/s, "
        f"${sig(rate * run.isl)}$ prompt tokens/s; at ${si(flops, 'FLOP')}$ a prompt per GPU "
        f"(the model's count) that is ${si(needed, 'FLOP/s')}$ per GPU for prefill alone, "
        f"against dense peaks of {peak_text}.\n"
    )


def serving_section() -> str:
    """The section's generated part: every equation of the serving model, the simulation grid
    and the measured runs."""
    step_eq, engine_decode = step_block()
    roofline_decode = next(t for t in _terms(mixed_step(False)) if t.has(part_decode))
    records = engine_runs()
    parts = [
        r"\paragraph{The mixed step.}",
        "With placeholders for the kernels that scale with tokens ($t_{tok}$), decode "
        "attention ($t_{da}$ of $B$ sequences with $S$ new tokens over $T$), prefill "
        "attention ($t_{pa}$ of $B$ prompts of $S$ tokens) and the LM head "
        "($t_{head}$ of $B$ positions), \\file{mixed\\_step\\_time} builds",
        step_eq,
        "on the roofline path. On the engine path the decode attention term's last case is "
        f"${tex(engine_decode.args[-1].expr)}$ instead of "
        f"${tex(roofline_decode.args[-1].expr)}$, and its middle case likewise.",
        r"\paragraph{Workload.}",
        step_note(),
        workload_block(),
        r"\paragraph{Prompts per step.}",
        "$G \\sim$ Poisson($m$) prompts reach a step; a step time $f(P)$ is mixed over them "
        "(\\file{mixture}), with $\\mathcal{M}_2[f, m] = \\mathcal{M}_1[f^2, m]$:",
        mixture_block(),
        r"\paragraph{The steady state.}",
        "\\file{steady\\_state}, its moments, wait and budget named:",
        steady_block(),
        r"\paragraph{Disaggregated serving.}",
        f"\\file{{disaggregated\\_state}}, with ${tex(sy.x_pre)}$ prefill and "
        f"${tex(sy.y_dec)}$ decode replicas:",
        disaggregated_block(),
        r"\paragraph{KV capacity.}",
        "Per GPU: usable memory $M_{u}$, weights $M_{wt}$, a full step's "
        "workspace $M_{ws}$, one token's KV $m_{kv}$:",
        capacity_block(),
        r"\paragraph{The checks.}",
        grid_text(),
        busiest_text(records),
        r"\begin{table}[htbp]\centering\footnotesize",
        runs_table(records),
        r"\caption{Measured runs of Llama-3.1-8B, the fitted step overheads, and the run whose "
        r"prefill, as a steady closed loop, needs most of the GPU's dense matmul peak (last "
        r"column: runs needing over half).}\label{tab:serving-runs}",
        r"\end{table}",
    ]
    return generated("\n".join(parts) + "\n")


def step_note() -> str:
    """How the step's S and T are set when the model is compiled."""

    return f"Compiled, $S = S_c$ and $T = {tex(serving.decode_context())}$ (the mean context):"
