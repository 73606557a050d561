"""The symbolic model held to XLA's cost analysis of the reference layers.

For each kind of program (a whole decoder layer, attention alone, the MLP alone, MLA decode,
the LM head, a tensor-parallel decoder layer) this module gives

* the model's side: the kernels of :mod:`costmodel.layers` that the program runs, and from them
  its FLOPs, transcendentals, collectives and two traffic bounds, **fused** (weights, KV cache
  and the program's other inputs and outputs each move once) and **unfused** (every kernel
  reads its inputs and writes its outputs, naive attention);
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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

import sympy as sp

from costmodel import layers
from costmodel import symbols as sy
from costmodel.ops import Op
from costmodel.specs import ModelSpec

Kind = Literal[
    "decoder_prefill", "decoder_decode", "attention", "mlp", "mla_decode", "lm_head", "tp_decoder"
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
    note); flops_compute the model's own; bytes [bytes] is the single-kernel traffic (the sum of
    the kernels' bytes in the flash form); bytes_fused and bytes_unfused the two traffic bounds.
    """

    flops: float
    flops_compute: float
    transcendentals: float
    bytes: float
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

    Asynchronous pairs (``all-reduce-start``/``-done``) count once, at their start.
    """
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        opcode = match["op"].removesuffix("-start")
        if opcode in COLLECTIVE_OPCODES and not match["op"].endswith("-done"):
            found.append(Collective(opcode.replace("-", "_"), _shape_bytes(match["shape"])))
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
    return [op for op in op_list if op.unit != "collective"]


def _sum(values: Iterable[sp.Expr]) -> sp.Expr:
    return sp.expand(sum(values, sp.Integer(0)))


def compute_flops(op_list: Iterable[Op]) -> sp.Expr:
    """FLOPs of one execution of every kernel (collectives carry none) [FLOP]."""
    return _sum(op.cost.flops for op in op_list)


def transcendentals(op_list: Iterable[Op]) -> sp.Expr:
    """Transcendental evaluations of one execution of every kernel [evaluations]."""
    return _sum(op.cost.transcendentals for op in op_list)


def unfused_bytes(op_list: Iterable[Op]) -> sp.Expr:
    """Traffic when every kernel reads its inputs from and writes its outputs to memory:
    the sum of the kernels' bytes (collectives excluded) [bytes]."""
    return _sum(op.cost.bytes for op in _without_collectives(op_list))


def weight_traffic(op_list: Iterable[Op]) -> sp.Expr:
    """Bytes of weights the kernels read, each once: matmul weights (``weight_bytes``) and
    norm gains (``weight_params`` in the activation dtype) [bytes]."""
    total = []
    for op in op_list:
        if op.unit == "vector":
            total.append(op.weight_params * sy.b_a)
        else:
            total.append(op.cost.weight_bytes)
    return _sum(total)


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
        if op.unit == "collective"
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
    (``tp_decoder`` only); ``phase`` applies to attention and tp_decoder; ``absorb`` to
    mla_decode.
    """

    kind: Kind
    spec: ModelSpec
    batch: int
    new_tokens: int
    context: int
    tp: int = 1
    phase: layers.Phase = "decode"
    absorb: bool = True

    @property
    def name(self) -> str:
        """A short label: kind, phase or form, and the workload."""
        detail = {
            "attention": self.phase,
            "tp_decoder": f"{self.phase}-tp{self.tp}",
            "mla_decode": "absorbed" if self.absorb else "up-projected",
        }.get(self.kind)
        label = self.kind if detail is None else f"{self.kind}[{detail}]"
        return f"{label} B={self.batch} S={self.new_tokens} T={self.context}"


def case_phase(case: Case) -> layers.Phase:
    """The phase a case runs in."""
    if case.kind == "decoder_prefill":
        return "prefill"
    if case.kind in ("decoder_decode", "mla_decode", "lm_head", "mlp"):
        return "decode" if case.new_tokens == 1 else "prefill"
    return case.phase


def case_ops(case: Case, *, flash: bool = True) -> list[Op]:
    """The model's kernels that the case's program runs, per device (collectives included)."""
    phase = case_phase(case)
    if case.kind == "lm_head":
        ops = layers.model_ops("gqa", "decode", degree=sp.Integer(1))
        return [op for op in ops if op.name == "lm_head"]
    if case.kind == "mla_decode":
        ops = layers.decoder_layer("mla", "decode", flash=flash, absorb=case.absorb, degree=1)
        names = [op.name for op in ops]
        return ops[: names.index("attn_residual") + 1]
    ops = layers.decoder_layer("gqa", phase, flash=flash, degree=sp.Integer(case.tp))
    if case.kind == "attention":
        return [op for op in ops if op.name.startswith("attention")]
    if case.kind == "mlp":
        return [op for op in ops if op.name in MLP_KERNELS]
    return ops


MLP_KERNELS = ("gate_proj", "up_proj", "silu", "gate_mul", "down_proj")


def case_io_bytes(case: Case) -> sp.Expr:
    """Bytes of the program's inputs and outputs other than weights and KV cache [bytes]."""
    tokens = sy.B * sy.S
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
    return ModelCost(
        flops=_num(compute + reduced, values),
        flops_compute=_num(compute, values),
        transcendentals=_num(transcendentals(flash_ops), values),
        bytes=_num(unfused_bytes(flash_ops), values),
        bytes_fused=_num(fused_bytes(flash_ops, case_io_bytes(case)), values),
        bytes_unfused=_num(unfused_bytes(naive_ops), values),
        collectives=model_collectives(flash_ops, values, case.tp),
    )


def case_program(case: Case, mesh=None):
    """The reference program of a case (:mod:`costmodel.reference`), in float32."""
    from costmodel import reference

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
    raise ValueError(f"unknown kind {case.kind!r}")
