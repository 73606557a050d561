"""The symbolic model held to XLA's cost analysis of the reference layers.

For each kind of program (a whole decoder layer, attention alone, the MLP alone, MLA decode,
the LM head, a tensor-parallel decoder layer, the Mixture-of-Experts half of a layer on one
device or sharded) this module gives

* the model's side: the kernels of :mod:`costmodel.model.layers` that the program runs (chosen
  by building block and by ``Op.role``, never by name), and from them its FLOPs,
  transcendentals, collectives and two traffic bounds, **fused** (weights, KV cache and the
  program's other inputs and outputs each move once) and **unfused** (every elementary
  operation of every kernel reads its operands and writes its result, naive attention: each
  kernel's ``Op.unfused_bytes``);
* the compiler's side: ``cost_analysis()`` of the compiled program (FLOPs, bytes accessed,
  transcendentals) and the collectives found in its optimised HLO (kind, payload bytes);
* the comparison of the two.

Counting notes (see the README, "Checked against XLA"):

* Compare in float32 (4 bytes per activation, weight and cache element): XLA on CPU upcasts
  bf16 arithmetic, so a bf16 program's counts are not those of a bf16 GPU kernel.
* XLA counts an all-reduce's reduction as one FLOP per element of its result.  The model
  keeps collectives out of its FLOPs (their time is communication time), so the XLA-convention
  per-device count is the model's compute FLOPs plus the all-reduced elements at tp > 1.
* On one device the model's all-reduce and all-gather kernels move nothing and are left out.
* XLA counts an all-to-all as no FLOPs; its payload is its result's bytes on one device.
* MoE layers: the model's costs at the reference's fixed, balanced routing (rho_e = 1, every
  expert touched, :func:`every_expert_touched`); XLA's numbers are the sum of the layer's two
  programs (:func:`program_cost`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal, NamedTuple

import sympy as sp

from costmodel.config.specs import ModelSpec
from costmodel.model import layers, moe
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.ops import ATTENTION_ROLES, ZERO, Cost, Op
from costmodel.model.phase import Phase

Kind = Literal[
    "decoder_prefill",
    "decoder_decode",
    "attention",
    "mlp",
    "mla_decode",
    "lm_head",
    "tp_decoder",
    "moe",
    "tp_moe",
]
KINDS: tuple[Kind, ...] = (
    "decoder_prefill",
    "decoder_decode",
    "attention",
    "mlp",
    "mla_decode",
    "lm_head",
    "tp_decoder",
)
MOE_KINDS: tuple[Kind, ...] = ("moe", "tp_moe")
"""Mixture-of-Experts layers (:func:`moe_cases`), on one device and sharded; the random cases
(:func:`random_cases`) draw the other kinds."""
SHARDED_KINDS = frozenset({"tp_decoder", "tp_moe"})
SINGLE_KERNEL_KINDS = frozenset({"lm_head"})
"""Kinds whose program is one kernel of the model: its bytes must equal the kernel's exactly."""

FLOAT32_BYTES = sp.Integer(4)
COLLECTIVE_OPCODES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")


class Collective(NamedTuple):
    """One collective of a program: its kind (``all_reduce``, ``all_gather``, ...) and the
    bytes of its result on one device [bytes]."""

    kind: str
    payload_bytes: int


class XlaCost(NamedTuple):
    """What XLA reports for one compiled program, per device.

    flops [FLOP], bytes_accessed [bytes], transcendentals [evaluations], and the collectives of
    its optimised HLO in program order.
    """

    flops: float
    bytes_accessed: float
    transcendentals: float
    collectives: tuple[Collective, ...]


class ModelCost(NamedTuple):
    """The symbolic model's numbers for one program at one substitution, per device.

    flops is in XLA's convention (compute FLOPs plus all-reduced elements, see the module
    note); flops_compute the model's own; bytes [bytes] the per-kernel traffic the roofline
    uses (the sum of the kernels' bytes, flash attention); bytes_kernels the same with naive
    attention; bytes_fused and bytes_unfused the two traffic bounds.
    """

    flops: float
    flops_compute: float
    transcendentals: float
    bytes: float
    bytes_kernels: float
    bytes_fused: float
    bytes_unfused: float
    collectives: tuple[Collective, ...]


# --------------------------------------------------------------------------- reading XLA


def cost_dict(compiled) -> dict[str, float]:
    """``compiled.cost_analysis()`` as one dict (current JAX returns a dict, some older
    releases a list holding one dict per program)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, Mapping):
        return dict(analysis)
    if isinstance(analysis, list | tuple) and analysis and isinstance(analysis[0], Mapping):
        return dict(analysis[0])
    raise TypeError(f"unexpected cost_analysis() result: {type(analysis).__name__}")


_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_ELEMENT_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f16": 2,
    "bf16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
}


def _shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO result type, e.g. ``f32[2,3]`` or a tuple ``(f32[2], f32[4])``."""
    total = 0
    for dtype, dims in _SHAPE.findall(shape_text):
        if dtype not in _ELEMENT_BYTES:
            continue
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _ELEMENT_BYTES[dtype]
    return total


_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>[a-z\-]+)\("
)


def hlo_collectives(hlo_text: str) -> tuple[Collective, ...]:
    """Collectives of an HLO module's text, in order: kind and result bytes per device.

    Asynchronous pairs (``all-reduce-start``/``-done``) count once, at their start, whose
    result is the payload.
    """
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        opcode = match["op"].removesuffix("-start")
        if opcode in COLLECTIVE_OPCODES and not match["op"].endswith("-done"):
            shape = match["shape"]
            if match["op"].endswith("-start") and shape.startswith("("):
                # (operand, result): the payload is the result.
                shape = _SHAPE.findall(shape)[-1]
                shape = f"{shape[0]}[{shape[1]}]"
            found.append(Collective(opcode.replace("-", "_"), _shape_bytes(shape)))
    return tuple(found)


def compiled_cost(compiled) -> XlaCost:
    """XLA's per-device numbers for a compiled program (``jit(f).lower(...).compile()``)."""
    analysis = cost_dict(compiled)
    return XlaCost(
        flops=float(analysis.get("flops", 0.0)),
        bytes_accessed=float(analysis.get("bytes accessed", 0.0)),
        transcendentals=float(analysis.get("transcendentals", 0.0)),
        collectives=hlo_collectives(compiled.as_text()),
    )


# --------------------------------------------------------------------------- the model's side


def _without_collectives(op_list: Iterable[Op]) -> list[Op]:
    return [op for op in op_list if op.role != "collective"]


def _sum(values: Iterable[sp.Expr]) -> sp.Expr:
    return sp.expand(sum(values, sp.Integer(0)))


def compute_flops(op_list: Iterable[Op]) -> sp.Expr:
    """FLOPs of one execution of every kernel (collectives carry none) [FLOP]."""
    return _sum(op.cost.flops for op in op_list)


def transcendentals(op_list: Iterable[Op]) -> sp.Expr:
    """Transcendental evaluations of one execution of every kernel [evaluations]."""
    return _sum(op.cost.transcendentals for op in op_list)


def kernel_bytes(op_list: Iterable[Op]) -> sp.Expr:
    """Traffic when every kernel reads its inputs from and writes its outputs to memory:
    the sum of the kernels' bytes (collectives excluded) [bytes]."""
    return _sum(op.cost.bytes for op in _without_collectives(op_list))


def unfused_bytes(op_list: Iterable[Op], *, joins: sp.Expr = ZERO) -> sp.Expr:
    """Traffic when nothing is fused: every elementary operation of every kernel reads its
    operands from and writes its result to memory (each kernel's ``unfused_bytes``, written
    with its costs in :mod:`costmodel.model.ops`), plus ``joins``, the bytes of data movement
    that the kernels do implicitly (joining key parts, laying expanded keys out per head)
    [bytes]."""
    return _sum([*(op.unfused_bytes for op in op_list), joins])


def weight_traffic(op_list: Iterable[Op]) -> sp.Expr:
    """Bytes of weights the kernels read, each once: matmul weights (``weight_bytes``), norm
    gains and biases (``weight_params`` in the activation dtype) [bytes]."""
    return _sum(
        op.weight_params * sy.b_a if op.role in ("norm", "bias") else op.cost.weight_bytes
        for op in op_list
    )


def kv_traffic(op_list: Iterable[Op]) -> sp.Expr:
    """Bytes of KV cache the kernels read and write (``kv_bytes``) [bytes]."""
    return _sum(op.cost.kv_bytes for op in op_list)


def fused_bytes(op_list: Iterable[Op], io_bytes: sp.Expr) -> sp.Expr:
    """Traffic when everything between the program's boundaries stays on chip: weights and KV
    cache move once (as the kernels count them, flash attention) plus ``io_bytes``, the
    program's other inputs and outputs (activations in and out, RoPE tables) [bytes]."""
    op_list = list(op_list)
    return sp.expand(weight_traffic(op_list) + kv_traffic(op_list) + io_bytes)


def all_reduced_elements(op_list: Iterable[Op], degree: int) -> sp.Expr:
    """Elements all-reduced per device per execution: XLA counts one FLOP per element of an
    all-reduce's result.  Zero on one device (no collective is emitted)."""
    if degree == 1:
        return sp.Integer(0)
    return _sum(op.cost.comm_bytes / sy.b_a for op in op_list if op.collective == "all_reduce")


def model_collectives(op_list: Iterable[Op], values: Mapping, degree: int) -> tuple:
    """The model's collectives (kind, payload bytes per device) at a substitution; none on
    one device."""
    if degree == 1:
        return ()
    return tuple(
        Collective(op.collective, int(_num(op.cost.comm_bytes, values)))
        for op in op_list
        if op.role == "collective"
    )


def _num(expr: sp.Expr, values: Mapping) -> float:
    exact = {k: sp.sympify(v) for k, v in values.items()}
    result = sp.sympify(expr).xreplace(exact)
    if result.free_symbols:
        raise ValueError(f"unsubstituted symbols {sorted(map(str, result.free_symbols))}")
    return float(result)


# --------------------------------------------------------------------------- cases


class Case(NamedTuple):
    """One program to compare: its kind, the model shape, the workload and the mesh.

    ``new_tokens`` is S and ``context`` T (prefill: T = S); ``tp`` the tensor-parallel degree
    (``tp_decoder`` and ``tp_moe``); ``phase`` applies to attention and tp_decoder; ``absorb``
    to mla_decode; ``ep`` (the expert-parallel degree) and ``attention_dp`` (data-parallel
    attention, ep = tp) to tp_moe.  A Mixture-of-Experts case runs on the B·S tokens of
    its workload (T plays no part).
    """

    kind: Kind
    spec: ModelSpec
    batch: int
    new_tokens: int
    context: int
    tp: int = 1
    phase: Phase = "decode"
    absorb: bool = True
    ep: int = 1
    attention_dp: bool = False

    @property
    def name(self) -> str:
        """A short label: kind, phase or form (and, for MoE, the model), and the workload."""
        phase = case_phase(self)
        form = "dp" if self.attention_dp else "tp"
        detail = {
            "attention": self.phase,
            "tp_decoder": f"{self.phase}-tp{self.tp}",
            "mla_decode": "absorbed" if self.absorb else "up-projected",
            "moe": f"{phase} {self.spec.name}",
            "tp_moe": f"{phase}-{form}{self.tp}-ep{self.ep} {self.spec.name}",
        }.get(self.kind)
        label = self.kind if detail is None else f"{self.kind}[{detail}]"
        if self.kind in MOE_KINDS:
            return f"{label} B={self.batch} S={self.new_tokens}"
        return f"{label} B={self.batch} S={self.new_tokens} T={self.context}"


def case_phase(case: Case) -> Phase:
    """The phase a case runs in."""
    if case.kind == "decoder_prefill":
        return "prefill"
    if case.kind in ("decoder_decode", "mla_decode", "lm_head", "mlp", *MOE_KINDS):
        return "decode" if case.new_tokens == 1 else "prefill"
    return case.phase


def phased_case(
    kind: Kind, spec: ModelSpec, phase: Phase, *, batch: int, prompt: int, context: int, **options
) -> Case:
    """A case of ``kind`` in ``phase`` whose S and T are those the phase rule
    (:mod:`costmodel.model.phase`) fixes from a prompt of ``prompt`` tokens or a context of
    ``context`` positions; ``options`` are the other :class:`Case` fields (tp, absorb)."""
    point = phases.workload(phase, batch=batch, prompt=prompt, context=context)
    return Case(kind, spec, batch, int(point[sy.S]), int(point[sy.T]), phase=phase, **options)


def _untouched(expr) -> bool:
    """Is ``expr`` the probability (1 - k/E)^N that N uniformly routed tokens miss an expert
    (:func:`costmodel.model.moe.touched_experts`)?"""
    return isinstance(expr, sp.Pow) and expr.base == 1 - sy.k_e / sy.E


def every_expert_touched(op: Op) -> Op:
    """``op`` with every expert a device stores touched: its expected-touched-experts term
    E·(1 - (1 - k/E)^N) set to E.

    The reference layers' fixed, balanced routing sends rows to every expert, so the weights
    they read are all E/ep of a device's experts; the model's uniform-routing expectation is
    what a learned router touches.  Only bytes carry the term; FLOPs do not."""

    def touched(expr):
        return sp.sympify(expr).replace(_untouched, lambda _: sp.Integer(0))

    cost = Cost(*(touched(c) for c in op.cost))
    return replace(op, cost=cost, unfused_bytes=touched(op.unfused_bytes))


def case_ops(case: Case, *, flash: bool = True) -> list[Op]:
    """The model's kernels that the case's program runs, per device (collectives included):
    the LM head, the SwiGLU kernels, an attention block (MLA decode), the attention kernels of
    a GQA layer, a whole GQA layer, or the MoE half of a layer (every expert touched, see
    :func:`every_expert_touched`)."""
    phase = case_phase(case)
    degree = sp.Integer(case.tp)
    if case.kind in MOE_KINDS:
        block = layers.moe_mlp_block(
            sy.B * sy.S, case.spec.architecture, degree, attention_dp=case.attention_dp
        )
        return [every_expert_touched(op) for op in block]
    if case.kind == "lm_head":
        return [layers.lm_head(degree=degree)]
    if case.kind == "mlp":
        return layers.swiglu(sy.B * sy.S, degree)
    if case.kind == "mla_decode":
        return layers.attention_block("mla", "decode", flash=flash, absorb=case.absorb, degree=1)
    if case.kind == "attention":
        block = layers.attention_block("gqa", phase, flash=flash, degree=degree)
        return [op for op in block if op.role in ATTENTION_ROLES]
    return layers.decoder_layer("gqa", phase, flash=flash, degree=degree)


def case_io_bytes(case: Case) -> sp.Expr:
    """Bytes of the program's inputs and outputs other than weights and KV cache [bytes]."""
    tokens = sy.B * sy.S
    if case.kind in MOE_KINDS:
        # x in and out, and the normed tokens between the two programs (written, read), on
        # the device's own tokens; under tensor parallelism a group's slot numbers (int32).
        own = tokens / case.tp if case.attention_dp else tokens
        io = 4 * own * sy.D * sy.b_a
        slots = 4 * sy.k_e / sy.ep if case.ep > 1 and not case.attention_dp else 0
        return io + slots
    if case.kind == "lm_head":
        return sy.B * sy.D * sy.b_a + sy.B * sy.V * sy.b_a
    if case.kind == "attention":
        return 2 * tokens * sy.H * sy.d_h * sy.b_a
    if case.kind == "mlp":
        return 2 * tokens * sy.D * sy.b_a
    rope_width = sy.d_rope if case.kind == "mla_decode" else sy.d_h
    return 2 * tokens * sy.D * sy.b_a + 2 * tokens * rope_width * sy.b_a


def case_values(case: Case) -> dict:
    """The substitution for every symbol the case's costs use (float32: 4 bytes everywhere)."""
    values = dict(case.spec.dims())
    values |= {sy.b_a: FLOAT32_BYTES, sy.b_w: FLOAT32_BYTES, sy.b_kv: FLOAT32_BYTES}
    values |= {sy.b_we: FLOAT32_BYTES, sy.ep: sp.Integer(case.ep), sy.rho_e: sp.Integer(1)}
    values |= {sy.tp: sp.Integer(case.tp), sy.B: case.batch}
    values |= {sy.S: case.new_tokens, sy.T: case.context}
    return values


def model_cost(case: Case) -> ModelCost:
    """The model's numbers for a case (see :class:`ModelCost`)."""
    flash_ops = case_ops(case, flash=True)
    naive_ops = case_ops(case, flash=False)
    values = case_values(case)
    compute = compute_flops(flash_ops)
    reduced = all_reduced_elements(flash_ops, case.tp)
    unfused = unfused_bytes(naive_ops, joins=case_join_bytes(case))
    return ModelCost(
        flops=_num(compute + reduced, values),
        flops_compute=_num(compute, values),
        transcendentals=_num(transcendentals(flash_ops), values),
        bytes=_num(kernel_bytes(flash_ops), values),
        bytes_kernels=_num(kernel_bytes(naive_ops), values),
        bytes_fused=_num(fused_bytes(flash_ops, case_io_bytes(case)), values),
        bytes_unfused=_num(unfused, values),
        collectives=model_collectives(flash_ops, values, case.tp),
    )


def case_join_bytes(case: Case) -> sp.Expr:
    """Data movement that the kernels do implicitly, paid as operations of their own when
    nothing is fused [bytes].

    Decode: appending the new token to the cache, as an operation on its own, reads the cache
    and writes the updated cache (2·B·T·cached bytes per token; the kernel list counts only the
    new entries).  MLA absorbed: each cached key is the latent joined to the rotary key, and
    each query the absorbed query joined to its rotary part (read both parts, write the
    whole); the per-head products W_UK and W_UV take their activations head-major and give
    them back token-major (one read and one write each).  Up-projected:
    each head's key is its expanded part joined to the shared rotary key, each query likewise,
    and the expanded values are laid out per head (read once, written once).  Zero for GQA.
    """
    if case.kind in MOE_KINDS:
        return moe_join_bytes(case)
    decode = case_phase(case) == "decode" and case.kind not in ("attention", "mlp", "lm_head")
    degree = sp.Integer(case.tp)
    update = 0
    if decode:
        kind = "mla" if case.kind == "mla_decode" else "gqa"
        cached = layers.kv_cache_elements_per_token(kind, degree)
        update = 2 * sy.B * sy.T * cached * sy.b_kv
    if case.kind != "mla_decode":
        return sp.expand(update)
    context = sy.B * sy.T
    query = 2 * sy.B * sy.S * sy.H * (sy.d_nope + sy.d_rope) * sy.b_a
    if case.absorb:
        latent_query = 2 * sy.B * sy.S * sy.H * (sy.r_kv + sy.d_rope) * sy.b_a
        # The per-head products run batched over heads: W_UK's input and W_UV's input and
        # output are laid out head-major and back (read once, written once each).
        per_head = 2 * sy.B * sy.S * sy.H * (sy.d_nope + sy.r_kv + sy.d_v) * sy.b_a
        keys = 2 * context * (sy.r_kv + sy.d_rope) * sy.b_kv
        return update + keys + latent_query + per_head
    keys = context * (sy.H * sy.d_nope * sy.b_a + sy.d_rope * sy.b_kv)
    keys += context * sy.H * (sy.d_nope + sy.d_rope) * sy.b_a
    values = 2 * context * sy.H * sy.d_v * sy.b_a
    return update + keys + values + query


def moe_join_bytes(case: Case) -> sp.Expr:
    """Data movement of an MoE layer's routing, which its kernels do implicitly (an engine's
    permute and un-permute kernels and its collectives), as passes over memory [bytes].

    With R = N·k/ep routed rows on a device: reading the routing (each of the device's
    tokens' k slots, its token and expert as two int32 coordinates, as the weights' gather
    reads them); laying the rows out per expert (each token's copy for each of its experts
    here) and back in token order before the combine, each a pass reading and writing R rows
    (4·R·D elements).  Tensor-parallel: picking the group's k/ep weights of each token when
    ep > 1 (reads N·k, writes R), and the all-reduce reading and writing N·D.

    Data-parallel attention (the device's own tokens' k copies are R, ep = tp): each
    all-to-all's send side is one pass per destination device, each reading the rows it picks
    from (the own tokens, the results) and writing that destination's share, as XLA CPU cuts
    an all-to-all into one slice per device; the all-to-all reads its buffer and writes the
    received one; the received rows are laid out per expert, the returned ones per token
    (ep·(own + R)·D + 10·R·D elements)."""
    tokens = sy.B * sy.S
    own = tokens / sy.tp if case.attention_dp else tokens
    rows = moe.routed_rows(tokens).xreplace({sy.rho_e: 1})
    routing = 2 * 4 * own * sy.k_e
    if case.attention_dp:
        moved = sy.ep * (own + rows) * sy.D + 10 * rows * sy.D
    else:
        moved = 4 * rows * sy.D
        if case.tp > 1:
            moved += 2 * tokens * sy.D
        if case.ep > 1:
            moved += tokens * sy.k_e + rows
    return sp.expand(moved * sy.b_a + routing)


def case_program(case: Case, mesh=None):
    """The reference program of a case (:mod:`costmodel.validate.reference`), in float32."""
    from costmodel.validate import reference

    spec, batch = case.spec, case.batch
    phase = case_phase(case)
    if case.kind in ("decoder_prefill", "decoder_decode"):
        return reference.decoder_layer(
            spec, phase, batch=batch, new_tokens=case.new_tokens, context=case.context
        )
    if case.kind == "tp_decoder":
        return reference.sharded_decoder_layer(
            spec,
            phase,
            tp=case.tp,
            batch=batch,
            new_tokens=case.new_tokens,
            context=case.context,
            mesh=mesh,
        )
    if case.kind == "attention":
        return reference.attention(
            spec, phase, batch=batch, new_tokens=case.new_tokens, context=case.context
        )
    if case.kind == "mlp":
        return reference.mlp(spec, batch=batch, new_tokens=case.new_tokens)
    if case.kind == "mla_decode":
        return reference.mla_decode_attention(
            spec, batch=batch, context=case.context, absorb=case.absorb
        )
    if case.kind == "lm_head":
        return reference.lm_head(spec, batch=batch)
    if case.kind in MOE_KINDS:
        return reference.moe_layer(
            spec,
            tokens=batch * case.new_tokens,
            tp=case.tp,
            ep=case.ep,
            attention_dp=case.attention_dp,
            mesh=mesh,
        )
    raise ValueError(f"unknown kind {case.kind!r}")


def program_cost(program) -> XlaCost:
    """XLA's per-device numbers for a reference program: its compiled ``fn``, or, when it
    runs as ``stages`` (:func:`costmodel.validate.reference.moe_layer`), their sum, the
    collectives in order."""
    costs = [compiled_cost(stage.compiled()) for stage in program.stages or (program,)]
    return XlaCost(
        flops=sum(c.flops for c in costs),
        bytes_accessed=sum(c.bytes_accessed for c in costs),
        transcendentals=sum(c.transcendentals for c in costs),
        collectives=tuple(c for cost in costs for c in cost.collectives),
    )


# --------------------------------------------------------------------------- random cases


TP_DEGREES = (2, 4, 8)
D_MODELS = (8, 16, 24, 32, 64, 96)
"""Widths drawn for d_model: reductions over it stay exact (see :func:`random_case`)."""


def _gqa_spec(rng, *, tp: int = 1) -> ModelSpec:
    """A small random GQA shape whose heads, KV heads and FFN width suit ``tp``."""
    from costmodel.validate.reference import small_spec

    while True:
        kv_heads = int(rng.choice((1, 2, 4)))
        group = int(rng.choice((1, 2, 4)))
        heads = kv_heads * group
        ffn = 8 * int(rng.integers(1, 9))
        if heads % tp or ffn % (2 * tp) or (kv_heads % tp and tp % kv_heads):
            continue
        return small_spec(
            d_model=int(rng.choice(D_MODELS)),
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=int(rng.choice((4, 8, 16))),
            ffn_dim=ffn,
            vocab_size=int(rng.integers(8, 129)),
        )


def _mla_spec(rng) -> ModelSpec:
    """A small random MLA shape."""
    from costmodel.config.specs import MLASpec
    from costmodel.validate.reference import small_spec

    mla = MLASpec(
        kv_lora_rank=int(rng.integers(4, 33)),
        q_lora_rank=int(rng.integers(4, 33)),
        qk_rope_head_dim=int(rng.choice((2, 4, 8))),
        qk_nope_head_dim=int(rng.integers(2, 17)),
        v_head_dim=int(rng.integers(2, 17)),
    )
    heads = int(rng.integers(2, 5))  # see random_case
    return small_spec(
        d_model=int(rng.choice(D_MODELS)),
        n_heads=heads,
        n_kv_heads=heads,
        head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
        ffn_dim=8,
        mla=mla,
    )


def random_case(kind: Kind, rng, *, tp: int | None = None, variant: int | None = None) -> Case:
    """One random small case of ``kind`` (``rng`` a numpy Generator).

    tp_decoder cases take ``tp`` or draw it from 2, 4, 8 (at 8 the KV heads, at most 4, are
    always fewer than the devices).  ``variant`` picks the phase of attention and tp_decoder
    cases (1: prefill) and the form of mla_decode (1: absorbed); None draws it.

    Two limits keep XLA's CPU count free of artefacts that no model should copy: every
    reduced length (d_model, the MLA ranks, the softmax over T) is at most 32 or a multiple of
    32, since XLA CPU pads longer reductions to a multiple of 32 and counts the padding (real
    widths such as 8192, 7168, 1536 and 512 are multiples of 32); and every contracted length
    is at least 2 (FFN width per device included), since XLA turns a product over one element
    into a multiply and counts it as 1 FLOP rather than 2.  MLA cases have at least two heads:
    with one head and one sequence every MLA product is a vector product, around which XLA
    CPU adds layout copies of the vectors (tens of bytes) that the unfused bound leaves out.
    """
    pick = int(rng.integers(2)) if variant is None else variant
    batch = int(rng.integers(1, 5))
    prompt = int(rng.integers(2, 13))
    context = int(rng.integers(2, 33))
    workload = {"batch": batch, "prompt": prompt, "context": context}
    phase: Phase = "prefill" if pick else "decode"
    if kind == "mla_decode":
        return phased_case(kind, _mla_spec(rng), "decode", **workload, absorb=bool(pick))
    if kind == "tp_decoder":
        degree = int(rng.choice(TP_DEGREES)) if tp is None else tp
        return phased_case(kind, _gqa_spec(rng, tp=degree), phase, **workload, tp=degree)
    spec = _gqa_spec(rng)
    if kind == "decoder_prefill":
        return phased_case(kind, spec, "prefill", **workload)
    if kind == "decoder_decode":
        return phased_case(kind, spec, "decode", **workload)
    if kind == "attention":
        return phased_case(kind, spec, phase, **workload)
    if kind == "mlp":
        tokens = int(rng.choice((1, prompt)))
        return Case(kind, spec, batch, tokens, tokens)
    if kind == "lm_head":
        return Case(kind, spec, batch, 1, 1)
    raise ValueError(f"unknown kind {kind!r}")


def random_cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` random cases cycling through the kinds, two tp_decoder cases per cycle of
    eight; tp_decoder cycles through tp 2, 4, 8 and the phases, mla_decode and attention
    through their two forms, so any count >= 14 holds every kind, form, phase and degree."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = [*KINDS[:-1], "tp_decoder", "tp_decoder"]
    seen: dict[str, int] = {}
    cases = []
    for i in range(count):
        kind = order[i % len(order)]
        n = seen.get(kind, 0)
        seen[kind] = n + 1
        tp = TP_DEGREES[n % len(TP_DEGREES)] if kind == "tp_decoder" else None
        variant = (n // len(TP_DEGREES)) % 2 if kind == "tp_decoder" else n % 2
        cases.append(random_case(kind, rng, tp=tp, variant=variant))
    return cases


# --------------------------------------------------------------------------- MoE cases


def moe_spec(
    name: str,
    *,
    experts: int,
    top_k: int,
    expert_ffn: int,
    shared_ffn: int = 0,
    scoring: Literal["softmax", "sigmoid"] = "softmax",
    biases: bool = False,
    activation: str = "silu",
    d_model: int = 32,
    normalise: bool = True,
) -> ModelSpec:
    """A one-layer MoE ModelSpec: ``biases`` on the router and the experts, ``normalise`` the
    top-k weights (attention sizes are placeholders: the MoE programs have none)."""
    from costmodel.config.specs import MoESpec
    from costmodel.validate.reference import small_spec

    moe = MoESpec(
        n_experts=experts,
        top_k=top_k,
        expert_ffn_dim=expert_ffn,
        shared_ffn_dim=shared_ffn,
        scoring=scoring,
        router_bias=biases,
        expert_bias=biases,
        normalise_top_k=normalise,
    )
    return small_spec(
        d_model=d_model,
        n_heads=2,
        n_kv_heads=2,
        head_dim=8,
        ffn_dim=8,
        moe=moe,
        activation=activation,
        name=name,
    )


MOE_SPECS = {
    # Mixtral: softmax over 8 experts, top-2, renormalised; no shared expert.
    "mixtral-like": moe_spec("mixtral-like", experts=8, top_k=2, expert_ffn=16),
    # DeepSeek-V3: sigmoid scores, top-k renormalised, one shared expert of the experts' width.
    "deepseek-like": moe_spec(
        "deepseek-like",
        experts=16,
        top_k=4,
        expert_ffn=8,
        shared_ffn=8,
        scoring="sigmoid",
        d_model=64,
    ),
    # gpt-oss: router and expert biases, the clamped SwiGLU; its softmax over the top-k logits
    # is the renormalised top-k of the softmax over all experts, as the model counts it.
    "gpt-oss-like": moe_spec(
        "gpt-oss-like",
        experts=8,
        top_k=4,
        expert_ffn=16,
        biases=True,
        activation="clamped_swiglu",
    ),
}


def moe_cases() -> list[Case]:
    """The fixed Mixture-of-Experts cases of the experiment: each model of :data:`MOE_SPECS`
    on one device in prefill and in decode (one token for each of as many sequences as the
    balanced routing needs, N·k = E), then sharded over 4 devices: data-parallel attention
    with tp = ep = 4 (each device's tokens a multiple of the E/k classes of the routing) and
    tensor-parallel with ep = 2 (each expert's width over the 2 devices of its group;
    DeepSeek- and gpt-oss-like, whose k/ep is 2: Mixtral's top-2 would leave one slot per
    group, a combine over one row that XLA counts as a multiply).

    Shapes keep XLA's counts free of artefacts (see :func:`random_case`): reduced widths at
    most 32 or multiples of 32, no contraction of length 1."""
    mixtral, deepseek, oss = (
        MOE_SPECS[n] for n in ("mixtral-like", "deepseek-like", "gpt-oss-like")
    )
    return [
        Case("moe", mixtral, 2, 8, 8),
        Case("moe", mixtral, 4, 1, 1),
        Case("moe", deepseek, 2, 8, 8),
        Case("moe", deepseek, 4, 1, 1),
        Case("moe", oss, 2, 4, 4),
        Case("moe", oss, 2, 1, 1),
        Case("tp_moe", mixtral, 2, 8, 8, tp=4, ep=4, attention_dp=True),
        Case("tp_moe", mixtral, 32, 1, 1, tp=4, ep=4, attention_dp=True),
        Case("tp_moe", deepseek, 16, 1, 1, tp=4, ep=4, attention_dp=True),
        Case("tp_moe", oss, 2, 8, 8, tp=4, ep=4, attention_dp=True),
        Case("tp_moe", deepseek, 2, 8, 8, tp=4, ep=2),
        Case("tp_moe", deepseek, 4, 1, 1, tp=4, ep=2),
        Case("tp_moe", oss, 2, 4, 4, tp=4, ep=2),
    ]


# --------------------------------------------------------------------------- comparison

FLOPS_TOLERANCE = 1e-9
"""Largest relative FLOPs error accepted (the counts are integers: in practice zero)."""


def relative_error(model: float, compiled: float) -> float:
    """|model - compiled| / |compiled| (0 when both are 0) [1]."""
    if compiled == 0:
        return 0.0 if model == 0 else float("inf")
    return abs(model - compiled) / abs(compiled)


def case_dims(case: Case) -> dict[str, int]:
    """The case's dimensions by name: workload, model shape (MLA ranks for mla_decode), tp."""
    spec = case.spec
    dims = {"B": case.batch, "S": case.new_tokens, "T": case.context, "D": spec.d_model}
    if case.kind in MOE_KINDS and spec.moe is not None:
        m = spec.moe
        dims |= {"E": m.n_experts, "k": m.top_k, "F_e": m.expert_ffn_dim}
        dims |= {"F_sh": m.shared_ffn_dim, "ep": case.ep}
    elif case.kind == "mla_decode" and spec.mla is not None:
        m = spec.mla
        dims |= {
            "H": spec.n_heads,
            "r_q": m.q_lora_rank,
            "r_kv": m.kv_lora_rank,
            "d_rope": m.qk_rope_head_dim,
            "d_nope": m.qk_nope_head_dim,
            "d_v": m.v_head_dim,
        }
    else:
        dims |= {"H": spec.n_heads, "H_kv": spec.n_kv_heads, "d_h": spec.head_dim}
        dims |= {"F": spec.ffn_dim, "V": spec.vocab_size}
    dims["tp"] = case.tp
    return dims


def case_form(case: Case) -> str | None:
    """The form of an MLA decode (absorbed, up-projected) or of a sharded MoE layer
    (data-parallel attention, tensor-parallel); None for other kinds."""
    if case.kind == "mla_decode":
        return "absorbed" if case.absorb else "up-projected"
    if case.kind == "tp_moe":
        return "data-parallel attention" if case.attention_dp else "tensor-parallel"
    return None


def _collective_records(collectives: Iterable[Collective]) -> list[dict[str, Any]]:
    return [{"kind": c.kind, "payload_bytes": c.payload_bytes} for c in collectives]


def compare(case: Case, mesh=None) -> dict[str, Any]:
    """Compile the case's reference program and set XLA's numbers beside the model's.

    Returns a JSON-ready record: the case (name, kind, phase, dims, dtype), FLOPs, bytes and
    transcendentals from both sides, the traffic bounds and where XLA falls between them
    (``bytes_position``: 0 at fused, 1 at unfused), the collectives of both sides, and the
    verdict of each check.  Single-kernel programs must match the kernel's bytes exactly,
    others must fall inside [fused, unfused].
    """
    compiled = program_cost(case_program(case, mesh))
    model = model_cost(case)
    single = case.kind in SINGLE_KERNEL_KINDS
    span = model.bytes_unfused - model.bytes_fused
    position = (compiled.bytes_accessed - model.bytes_fused) / span if span > 0 else None
    if single:
        bytes_ok = compiled.bytes_accessed == model.bytes
    else:
        bytes_ok = model.bytes_fused <= compiled.bytes_accessed <= model.bytes_unfused
    flops_error = relative_error(model.flops, compiled.flops)
    return {
        "name": case.name,
        "kind": case.kind,
        "phase": case_phase(case),
        "form": case_form(case),
        "dims": case_dims(case),
        "dtype": "float32",
        "flops_model": model.flops,
        "flops_xla": compiled.flops,
        "flops_rel_error": flops_error,
        "flops_model_compute": model.flops_compute,
        "flops_collective_reduction": model.flops - model.flops_compute,
        "transcendentals_model": model.transcendentals,
        "transcendentals_xla": compiled.transcendentals,
        "bytes_model": model.bytes,
        "bytes_xla": compiled.bytes_accessed,
        "bytes_fused": model.bytes_fused,
        "bytes_unfused": model.bytes_unfused,
        "bytes_kernels_naive": model.bytes_kernels,
        "bytes_position": position,
        "bytes_check": "exact" if single else "bounds",
        "collectives_model": _collective_records(model.collectives),
        "collectives_xla": _collective_records(compiled.collectives),
        "flops_ok": flops_error <= FLOPS_TOLERANCE,
        "transcendentals_ok": model.transcendentals == compiled.transcendentals,
        "bytes_ok": bytes_ok,
        "collectives_ok": model.collectives == compiled.collectives,
    }


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over comparison records: counts per kind and tp degree, the largest FLOPs
    error, and whether every check of each sort passed (MoE FLOPs and all-to-alls apart
    too)."""
    kinds: dict[str, int] = {}
    for record in records:
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    sharded = [r for r in records if r["dims"]["tp"] > 1]
    degrees: dict[str, int] = {}
    for record in sharded:
        key = str(record["dims"]["tp"])
        degrees[key] = degrees.get(key, 0) + 1
    single = [r for r in records if r["bytes_check"] == "exact"]
    exchanged = [r for r in records if any(c["kind"] == "all_to_all" for c in r["collectives_xla"])]
    bounded = [r for r in records if r["bytes_check"] == "bounds"]
    positions = [r["bytes_position"] for r in bounded if r["bytes_position"] is not None]
    return {
        "cases": len(records),
        "per_kind": kinds,
        "per_tp": degrees,
        "tp_above_kv_heads": sum(
            1 for r in sharded if r["kind"] == "tp_decoder" and r["dims"]["tp"] > r["dims"]["H_kv"]
        ),
        "dtype": "float32",
        "max_flops_rel_error": max((r["flops_rel_error"] for r in records), default=0.0),
        "all_flops_exact": all(r["flops_ok"] for r in records),
        "all_transcendentals_equal": all(r["transcendentals_ok"] for r in records),
        "all_collectives_equal": all(r["collectives_ok"] for r in sharded),
        "collective_cases": len(sharded),
        "all_single_kernel_bytes_equal": all(r["bytes_ok"] for r in single),
        "single_kernel_cases": len(single),
        "all_layer_bytes_within_bounds": all(r["bytes_ok"] for r in bounded),
        "moe_cases": sum(1 for r in records if r["kind"] in MOE_KINDS),
        "all_moe_flops_exact": all(r["flops_ok"] for r in records if r["kind"] in MOE_KINDS),
        "all_to_all_cases": len(exchanged),
        "all_to_alls_equal": all(r["collectives_ok"] for r in exchanged),
        "layer_cases": len(bounded),
        "bytes_position_min": min(positions, default=None),
        "bytes_position_max": max(positions, default=None),
        "all_passed": all(
            r["flops_ok"] and r["transcendentals_ok"] and r["bytes_ok"] and r["collectives_ok"]
            for r in records
        ),
    }


# --------------------------------------------------------------------------- textbook count


def textbook_gap(spec: ModelSpec, *, batch: int, context: int) -> dict[str, Any]:
    """The textbook decode FLOPs, 2 x parameters x tokens, against the XLA-convention count of
    the whole model (every kernel of one decode step on one device, tp = 1).

    ``batch`` sequences each decode one token against ``context`` tokens.  Parameters are all
    stored weights (embedding, layers, norms, LM head).  Returns the counts [FLOP], the
    parameter count, the XLA-convention count split into weight products, attention products
    and vector work, and ``gap_percent`` = 100 (textbook - XLA convention) / XLA convention.
    """
    kind = "mla" if spec.mla is not None else "gqa"
    ops = layers.model_ops(
        kind, "decode", tied_embeddings=spec.tie_word_embeddings, degree=sp.Integer(1)
    )
    values = dict(spec.dims()) | {sy.tp: 1}
    values |= phases.workload("decode", batch=batch, prompt=None, context=context)
    params = _num(layers.parameter_count(ops), values)
    by_unit: dict[str, float] = {"matmul": 0.0, "attention": 0.0, "vector": 0.0, "memory": 0.0}
    for op in ops:
        if op.unit != "collective":
            by_unit[op.unit] += _num(op.total.flops, values)
    counted = sum(by_unit.values())
    textbook = 2 * params * batch
    return {
        "model": spec.name,
        "batch": batch,
        "context": context,
        "parameters": params,
        "textbook_flops": textbook,
        "xla_convention_flops": counted,
        "weight_matmul_flops": by_unit["matmul"],
        "attention_flops": by_unit["attention"],
        "vector_flops": by_unit["vector"] + by_unit["memory"],
        "gap_percent": 100 * (textbook - counted) / counted,
    }
