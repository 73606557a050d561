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

The facts of the checks (:func:`checks_table`) are read from code and committed data only: the
simulation grid's constants, the measured runs and the fitted step overheads, and the
arithmetic of one measured vLLM run.  Nothing here simulates or predicts: the paper check stays
fast, and the results of the slow commands are quoted in the hand-written prose by command.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

import sympy as sp

from costmodel.model import serving
from costmodel.model import symbols as sy
from costmodel.present.paper.latex import LATEX_NAMES, code, count, generated, sig, tabular

# --------------------------------------------------------------------------- display symbols

step = sp.Function("t")  # a mixed step's time: t(decoding sequences, prefill tokens) [s]
pieces = sp.Function("f")  # the step time as a function of its prefill tokens alone [s]

tau_s = sp.Symbol("tau_s", positive=True)  # tokens a decoding sequence gains per step
prompt_c = sp.Symbol("S_c", positive=True)  # prompt tokens a request computes
decode_n = sp.Symbol("N_dec", positive=True)  # decode steps per request after the first token
budget_p = sp.Symbol("N_p", positive=True)  # the step's budget left to prefill
share = sp.Symbol("omega", positive=True)  # share of the in-flight requests that are others
wait = sp.Symbol("t_wait", nonnegative=True)  # wait for earlier prompts' chunks
extra = sp.Symbol("delta_p", nonnegative=True)  # a prompt's extra step time, all its chunks
busy = sp.Symbol("rho_t", nonnegative=True)  # share of time spent prefilling (open loop)
ttft = sp.Symbol("TTFT", positive=True)  # time to first token, in other outputs
mean = sp.Symbol("m", nonnegative=True)  # expected prompts per step
tail_mass = sp.Symbol("Pi_4", nonnegative=True)  # P(G >= EXACT_TERMS)
tail_mean = sp.Symbol("gbar_4", positive=True)  # E[G | G >= EXACT_TERMS]
arrivals = sp.Symbol("g", integer=True, nonnegative=True)  # prompts reaching one step
decode_t = sp.Symbol("t_dec", positive=True)  # a decode replica's step (disaggregated)
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
part_tokens = sp.Function(r"t_{\mathrm{tok}}")
part_decode = sp.Function(r"t_{\mathrm{da}}")
part_prefill = sp.Function(r"t_{\mathrm{pa}}")
part_head = sp.Function(r"t_{\mathrm{head}}")

NAMES: dict[sp.Symbol, str] = {
    **LATEX_NAMES,
    tau_s: r"\tau_s",
    prompt_c: "S_c",
    decode_n: r"N_{\mathrm{dec}}",
    budget_p: "N_p",
    share: r"\omega",
    wait: r"t_{\mathrm{wait}}",
    extra: r"\delta_p",
    busy: r"\rho_t",
    ttft: r"\mathrm{TTFT}",
    mean: "m",
    tail_mass: r"\Pi_4",
    tail_mean: r"\bar g_4",
    arrivals: "g",
    decode_t: r"t_{\mathrm{dec}}",
    service_t: r"t_{\mathrm{svc}}",
    load_p: r"\rho_p",
    usable: r"M_{\mathrm{u}}",
    weights: r"M_{\mathrm{wt}}",
    workspace: r"M_{\mathrm{ws}}",
    per_token: r"m_{\mathrm{kv}}",
    capacity: r"C_{\mathrm{kv}}",
    block: r"b_{\mathrm{blk}}",
    sy.t_bar: r"\bar t",
    sy.t_step2: r"\overline{t^2}",
    sy.t_first: r"t_{\mathrm{first}}",
    sy.t_full: r"t_{\mathrm{full}}",
    sy.m_adm: "m_a",
    sy.N_prompt: r"N_{\mathrm{prompt}}",
    sy.N_out: r"N_{\mathrm{out}}",
    sy.N_budget: "N_b",
    sy.c_conc: "c",
    sy.n_d: "n_d",
    sy.q: "q",
    sy.P: "P",
    sy.h_prefix: "h",
    sy.k_draft: "k",
    sy.a_accept: "a",
    sy.t_sched: r"t_{\mathrm{sched}}",
    sy.x_pre: "x_p",
    sy.y_dec: "y_d",
    sy.t_xfer: r"t_{\mathrm{xfer}}",
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
def held(*, poisson: bool = False) -> Iterator[None]:
    """Build the model's expressions with the tokens a decoding sequence gains per step and the
    prompt tokens a request computes held as symbols (and, with ``poisson``, the Poisson
    probabilities and tail); the originals are restored on exit.  The model's own combination
    of them is unchanged; their definitions are printed on their own."""
    stand_ins = {
        "tokens_per_step": lambda *args, **kwargs: tau_s,
        "prefill_tokens": lambda *args, **kwargs: prompt_c,
    }
    if poisson:
        stand_ins["poisson"] = lambda g, mean: probabilities[g]
        stand_ins["poisson_tail"] = lambda mean, start=serving.EXACT_TERMS: (tail_mass, tail_mean)
    saved = {name: getattr(serving, name) for name in stand_ins}
    try:
        for name, stand_in in stand_ins.items():
            setattr(serving, name, stand_in)
        yield
    finally:
        for name, original in saved.items():
            setattr(serving, name, original)


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
    with held(poisson=True):
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
    _check_named(outputs, f"steady state, {'closed' if closed else 'open'} loop")
    return Forms(outputs, {k: settle(v) for k, v in definitions.items()})


def moment_bindings(closed: bool) -> dict[sp.Symbol, tuple[sp.Expr, sp.Expr]]:
    """Which step function and mean prompts per step each named moment is the mixture of
    (:func:`mixture_forms`), with ``share`` for the others' share: t̄ and its square and
    t_full at 1 + n_d·share sequences (the request itself decoding), t_first at n_d·share
    (its own prompt in the step), all with m_a·share prompts expected per step."""
    P = sy.P
    seen = sy.m_adm * share
    return {
        sy.t_bar: (step(1 + sy.n_d * share, P), seen),
        sy.t_step2: (step(1 + sy.n_d * share, P), seen),
        sy.t_first: (step(sy.n_d * share, P), seen),
    }


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
