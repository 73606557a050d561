"""The paper's generated sections that come from the model itself: symbol and convention
tables, the per-kernel cost tables, the derivations' expressions and their numbers.

Each function returns LaTeX source; numbers are the pure roofline (achievable fractions 1, no
kernel overhead) of the catalogued hardware, so a calibration of a device's efficiency does not
change the derivations (measured results have their own sections).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import sympy as sp

from costmodel.config.bind import Setting, scenario_ops, substitution
from costmodel.config.load import hardware_catalogue, model_catalogue
from costmodel.config.specs import Efficiency, HardwareSpec, ModelSpec, Scenario
from costmodel.model import derivations as dv
from costmodel.model import ops
from costmodel.model import phase as phases
from costmodel.model import symbols as sy
from costmodel.model.calibration import PURE_ROOFLINE
from costmodel.model.dtypes import bytes_per_element
from costmodel.model.layers import decoder_layer, model_ops, model_parameters, parameter_count
from costmodel.model.memory import kv_cache_bytes
from costmodel.model.ops import Cost, Op
from costmodel.model.parallel import ring_all_reduce_time
from costmodel.model.roofline import op_time, seed_decode_time, step_time, totals
from costmodel.present.paper.latex import (
    code,
    count,
    generated,
    kernel_bytes,
    kernel_flops,
    num,
    si,
    sig,
    softmax_cols,
    softmax_rows,
    tabular,
    tex,
    tex_fraction,
    tex_lines,
    tokens,
    width,
)
from costmodel.present.report import decode_table, op_records, seed_decode_table


def pure_roofline(scenario: Scenario) -> Scenario:
    """The scenario with its hardware calibrated as
    :data:`costmodel.model.calibration.PURE_ROOFLINE` (fractions 1, no overhead, no term)."""
    efficiency = Efficiency.from_calibration(PURE_ROOFLINE)
    hardware = scenario.hardware.model_copy(update={"efficiency": efficiency})
    return scenario.model_copy(update={"hardware": hardware})


def values_of(scenario: Scenario, setting: Setting | None = None) -> dict:
    """Pure-roofline substitution for every non-workload symbol of the scenario (default
    setting: tp 1, bf16 weights and KV cache)."""
    return substitution(scenario, setting or Setting(), calibrated=False)


def ridge_batch_of(hardware: HardwareSpec, weight_dtype: str, group_size: int = 128) -> float:
    """Weights-only ridge batch b_w·P_mm/(2W) of ``hardware`` with ``weight_dtype`` weights."""
    values = {
        sy.b_w: bytes_per_element(weight_dtype, group_size),
        sy.peak_matmul: hardware.matmul_peak(weight_dtype),
        sy.hbm_bandwidth: hardware.hbm_bandwidth,
    }
    return num(dv.ridge_batch().weights_only, values)


# --------------------------------------------------------------------------- sections


def conventions_table() -> str:
    """Counting conventions printed from the op constructors, for generic sizes."""
    t, w, r, c = tokens, width, softmax_rows, softmax_cols
    entries = [
        ("matmul (t, k) x (k, n)", ops.matmul("m", t, dv.k_in, dv.n_out)),
        ("RMSNorm over w", ops.rmsnorm("n", t, w)),
        ("SiLU", ops.silu("s", t, w)),
        ("add or multiply", ops.elementwise_binary("e", t, w)),
        ("RoPE, one head of width w", ops.rope("r", t, 1, w)),
        ("embedding gather", ops.embedding("g", t, sy.V, w)),
    ]
    rows = [
        (
            label,
            f"${tex(op.cost.flops)}$",
            f"${tex(op.cost.transcendentals)}$",
            f"${tex(sp.factor(op.cost.bytes))}$",
        )
        for label, op in entries
    ]
    rows.append(
        ("softmax, r rows of c", f"${tex(ops.softmax_flops(r, c))}$", f"${tex(r * c)}$", "(fused)")
    )
    return generated(tabular("lccc", ["kernel", "FLOPs", "transcendentals", "bytes"], rows))


def symbol_table() -> str:
    """Every model symbol with its meaning's unit (:data:`costmodel.model.symbols.UNITS`)."""
    rows = []
    for symbol in sy.EVERY:
        unit = sy.unit_of(symbol).replace("^2", "$^2$")  # GPUs^2: the power in math mode
        rows.append((f"${tex(symbol)}$", code(str(symbol)), unit))
    groups = 3  # side by side, so that the table takes a third of a page
    height = -(-len(rows) // groups)
    rows += [("", "", "")] * (groups * height - len(rows))
    columns = [rows[i * height : (i + 1) * height] for i in range(groups)]
    joined = [tuple(cell for row in line for cell in row) for line in zip(*columns, strict=True)]
    return generated(
        tabular(
            "@{\\qquad}".join(["lll"] * groups),
            ["symbol", "code", "unit"] * groups,
            joined,
        )
    )


def ridge_table(catalogue: Mapping[str, HardwareSpec] | None = None) -> str:
    """Ridge point and weights-only ridge batch of every catalogued device per weight dtype."""
    catalogue = catalogue or hardware_catalogue()
    dtypes = ("bf16", "fp8", "int8", "int4")
    rows = []
    for name in sorted(catalogue):
        hardware = catalogue[name]
        ridge = float(hardware.ridge_point("bf16"))
        rows.append((code(name), sig(ridge), *(sig(ridge_batch_of(hardware, d)) for d in dtypes)))
    header = ["device", r"$P_{\mathrm{bf16}}/W$", *(f"$B^*$ {d}" for d in dtypes)]
    return generated(tabular("lrrrrr", header, rows))


_REGIME = {"memory-bound": "mem", "compute-bound": "comp", "communication": "comm"}


def kernel_table(phase: str, kind: str = "gqa") -> str:
    """Symbolic per-kernel costs of one decoder layer at tp = 1 (prefill T = S, decode S = 1)."""
    workload = phases.rule(phase)
    rows = []
    for op in decoder_layer(kind, phase, degree=1):
        cost = Cost(*(sp.expand(f.xreplace(workload)) for f in op.cost))
        moved = cost.comm_bytes if op.unit == "collective" else cost.bytes
        cost = cost._replace(flops=sp.factor(cost.flops))
        mark = r"$^\dagger$" if op.unit == "collective" else ""
        rows.append(
            (
                code(op.name),
                op.unit,
                f"${tex(cost.flops)}$",
                f"${tex(moved)}${mark}",
                f"${tex(cost.transcendentals)}$",
            )
        )
    return generated(tabular("llccc", ["kernel", "unit", "FLOPs", "bytes", "transc."], rows))


def kernel_numbers(scenario: Scenario, batch: int, context: int) -> str:
    """Per-kernel numbers of the scenario's model, prefill beside decode, at tp = 1, bf16."""
    values = values_of(scenario)
    prompt = scenario.workload.prompt_tokens
    records = {}
    for phase in ("prefill", "decode"):
        point = values | phases.workload(phase, batch=batch, prompt=prompt, context=context)
        records[phase] = op_records(scenario_ops(scenario, phase), point)
    rows = []
    for pre, dec in zip(records["prefill"], records["decode"], strict=True):
        cells = [code(pre["name"]), str(pre["repeat"])]
        for rec in (pre, dec):
            moved = rec["bytes_read"] + rec["bytes_written"]
            intensity = rec["intensity_flop_per_byte"]
            cells += [
                f"${si(rec['flops'])}$" if rec["flops"] else "0",
                f"${si(moved or rec['comm_bytes'])}$",
                f"${sig(intensity)}$" if intensity is not None else "--",
                _REGIME[rec["regime"]],
                f"${si(rec['time_s'] * rec['repeat'], 's')}$",
            ]
        rows.append(cells)
    head = (
        r" & & \multicolumn{5}{c}{prefill, $S = T = " + str(prompt) + r"$}"
        r" & \multicolumn{5}{c}{decode, $T = " + str(context) + r"$} \\"
        "\n"
        r"\cmidrule(lr){3-7}\cmidrule(lr){8-12}"
    )
    header = ["kernel", r"$\times$"] + ["FLOPs", "bytes", "FLOP/B", "regime", "time"] * 2
    return generated(tabular("lr" + "rrrlr" * 2, header, rows, head_extra=head))


def seed_table(scenario: Scenario, contexts: Sequence[int]) -> str:
    """The seed post's weights-only decode table beside the full per-kernel model's."""
    scenario = pure_roofline(scenario)
    seed = seed_decode_table(scenario)
    full = {context: decode_table(scenario, Setting(), context) for context in contexts}
    rows = []
    for i, row in enumerate(seed):
        cells = [
            str(row["batch"]),
            sig(row["intensity_flop_per_byte"]),
            f"{row['latency_ms']:.1f}",
            count(row["throughput_tok_s"]),
            f"{100 * row['utilisation']:.2f}",
        ]
        for context in contexts:
            other = full[context][i]
            cells += [
                sig(other["intensity_flop_per_byte"]),
                f"{other['latency_ms']:.1f}",
                count(other["throughput_tok_s"]),
            ]
        rows.append(cells)
    head = r" & \multicolumn{4}{c}{weights only (the post)}"
    rules = r"\cmidrule(lr){2-5}"
    for j, context in enumerate(contexts):
        head += r" & \multicolumn{3}{c}{full model, $T = " + count(context) + "$}"
        start = 6 + 3 * j
        rules += rf"\cmidrule(lr){{{start}-{start + 2}}}"
    head += r" \\" + "\n" + rules
    header = ["$B$", "FLOP/B", "ms", "tok/s", r"util.\,\%"] + ["FLOP/B", "ms", "tok/s"] * len(
        contexts
    )
    return generated(tabular("r" + "rrrr" + "rrr" * len(contexts), header, rows, head_extra=head))


# --------------------------------------------------------------------------- derivations

BATCHES = (1, 8, 64)
LONG_CONTEXT = 32768
TP_DEGREES = (1, 2, 4, 8, 16)
QUANTISED = ("fp8", "int8", "int4")


def roofline_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the roofline itself: the time of one kernel, the seed's decode time, ridges."""
    hardware = scenario.hardware
    kind = scenario.model.attention_kind
    dims = scenario.model.dims()
    generic = Op("kernel", Cost(flops=kernel_flops, bytes_read=kernel_bytes), "matmul")
    a100 = hardware_catalogue()["a100-sxm-80gb"]
    return {
        "eq-op-time": tex(op_time(generic)),
        "eq-seed-time": tex(seed_decode_time()),
        "eq-ring": tex(ring_all_reduce_time(dv.payload)),
        "eq-int4-bytes": tex(bytes_per_element("int4", scenario.search.group_size)),
        "group-size": str(scenario.search.group_size),
        "name-model": code(scenario.model.name),
        "name-hardware": code(hardware.name),
        "name-hardware-description": hardware.description,
        "peak-bf16": sig(float(hardware.peak_flops("bf16")) / 1e12),
        "peak-fp8": sig(float(hardware.peak_flops("fp8")) / 1e12),
        "peak-vector": sig(float(hardware.peak_flops("fp32")) / 1e12),
        "bandwidth": sig(float(hardware.hbm_bandwidth) / 1e12),
        "link-bandwidth": sig(float(hardware.link_bandwidth) / 1e9),
        "link-latency": sig(float(hardware.link_latency) * 1e6),
        "ridge": sig(float(hardware.ridge_point("bf16"))),
        "ridge-a100": sig(float(a100.ridge_point("bf16"))),
        "prompt": count(scenario.workload.prompt_tokens),
        "n-gpus": str(scenario.n_gpus),
        "layer-kernels": str(len(decoder_layer(scenario.model.attention_kind, "decode"))),
        "params": sig(num(parameter_count(model_ops(kind, "decode", degree=1)), dims) / 1e9, 4),
        "nominal-params": sig((scenario.model.nominal_params or 0) / 1e9, 3),
        "long-context": count(LONG_CONTEXT),
        "gate-shape": rf"{dims[sy.D]}\times{dims[sy.F]}",
        "context": count(scenario.workload.default_context),
    }


def intensity_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the intensity limits and the scenario model's matmul intensities."""
    result = dv.matmul_intensity()
    values = values_of(scenario)
    layer = dv.layer_matmul_intensity(scenario.model.attention_kind)
    dims = {dv.k_in: values[sy.D], dv.n_out: values[sy.F]}
    prompt = scenario.workload.prompt_tokens
    entries = {
        "eq-mm-intensity": tex(result.intensity),
        "eq-mm-decode": tex(result.decode),
        "eq-mm-decode-limit": tex(result.decode_wide_limit),
        "eq-mm-prefill-limit": tex(result.prefill_wide_limit),
        "eq-mm-token-limit": tex(result.token_limit),
        "mm-token-limit-gate": sig(num(result.token_limit, values | dims)),
        "prefill-layer-intensity": sig(num(layer, values | {sy.B: 1, sy.S: prompt})),
    }
    for batch in (1, 16, 64, 256):
        entries[f"decode-layer-intensity-b{batch}"] = sig(
            num(layer, values | {sy.B: batch} | phases.rule("decode"))
        )
    total = totals(scenario_ops(scenario, "prefill"))
    point = values | phases.workload("prefill", batch=1, prompt=prompt, context=None)
    entries["prefill-step-intensity"] = sig(num(total.flops, point) / num(total.bytes, point))
    return entries


def ridge_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the ridge-batch derivation at the scenario's hardware and model."""
    result = dv.ridge_batch(scenario.model.attention_kind)
    values = values_of(scenario)
    hardware = scenario.hardware
    entries = {
        "eq-ridge-seed": tex(result.weights_only),
        "eq-ridge-matmul": tex(result.matmul),
        "eq-ridge-general": tex_fraction(result.general),
        "eq-phi": tex_lines(result.phi, 50),
        "eq-beta0": tex(result.beta_0),
        "eq-beta1": tex_lines(result.beta_1, 50),
        "ridge-matmul-gate": sig(
            num(result.matmul, values | {dv.k_in: values[sy.D], dv.n_out: values[sy.F]})
        ),
        "ridge-context-limit": count(math.floor(num(result.context_limit, values))),
    }
    for dtype in ("bf16", "fp8", "int8", "int4"):
        entries[f"ridge-batch-{dtype}"] = sig(ridge_batch_of(hardware, dtype))
    for context in (1, 128, 512):
        entries[f"ridge-whole-t{context}"] = sig(num(result.whole_model, values | {sy.T: context}))
    return entries


def kv_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the context at which KV-cache traffic equals weight traffic."""
    result = dv.kv_weight_crossover(scenario.model.attention_kind)
    values = values_of(scenario)
    fp8 = values_of(scenario, Setting(kv_dtype="fp8"))
    entries = {
        "eq-kv-bytes": tex(result.kv_bytes),
        "eq-weight-bytes": tex(result.weight_bytes),
        "eq-kv-context": tex(result.context_leading),
    }
    for batch in BATCHES:
        point = {sy.B: batch}
        entries[f"kv-context-b{batch}"] = count(num(result.context, values | point))
        entries[f"kv-context-fp8-b{batch}"] = count(num(result.context, fp8 | point))
    return entries


def quantisation_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the memory-bound quantisation speed-up."""
    result = dv.quantisation_speedup(scenario.model.attention_kind)
    return {
        "eq-quant-seed": tex(result.weights_only),
        "eq-quant-general": tex(result.general),
        "eq-quant-mw": tex(result.weight_elements),
        "eq-quant-ridge": tex(result.ridge_ratio),
    }


def quantisation_table(scenario: Scenario) -> str:
    """Speed-up over bf16 weights, weights-only and full model, and the ridge batch."""
    result = dv.quantisation_speedup(scenario.model.attention_kind)
    context = scenario.workload.default_context
    hardware = scenario.hardware
    rows = []
    for dtype in QUANTISED:
        values = values_of(scenario, Setting(weight_dtype=dtype))
        cells = [dtype, f"${tex(values[sy.b_w])}$", sig(num(result.weights_only, values))]
        for batch in BATCHES:
            point = values | {sy.B: batch, sy.T: context}
            cells.append(sig(num(result.full, point)))
        cells.append(sig(ridge_batch_of(hardware, dtype, scenario.search.group_size)))
        rows.append(cells)
    header = ["weights", "$b_w$", "$2/b_w$", *(f"$B = {b}$" for b in BATCHES), "$B^*$"]
    head = (
        r" & & & \multicolumn{3}{c}{full model, $T = " + count(context) + r"$} & \\"
        "\n"
        r"\cmidrule(lr){4-6}"
    )
    return generated(tabular("lrrrrrr", header, rows, head_extra=head))


def flash_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the FlashAttention traffic reduction and the prefill times with and without."""
    result = dv.flash_reduction(scenario.model.attention_kind)
    values = values_of(scenario)
    prompt = scenario.workload.prompt_tokens
    point = values | phases.workload("prefill", batch=1, prompt=prompt, context=None)
    kind = scenario.model.attention_kind
    times = {}
    for flash in (True, False):
        op_list = model_ops(
            kind, "prefill", flash=flash, tied_embeddings=scenario.model.tie_word_embeddings
        )
        times[flash] = num(step_time(op_list), point)
    return {
        "eq-flash-naive": tex(result.naive_bytes),
        "eq-flash-flash": tex(result.flash_bytes),
        "eq-flash-saved": tex(result.saved_bytes),
        "eq-flash-ratio": tex(result.prefill_ratio),
        "eq-flash-slope": tex(result.prefill_ratio_slope),
        "flash-flops-difference": tex(result.flops_difference),
        "flash-ratio": sig(num(result.prefill_ratio, point)),
        "flash-slope-inverse": sig(1 / num(result.prefill_ratio_slope, point), 2),
        "flash-saved-layer": si(num(result.saved_bytes, point), "B"),
        "flash-prefill-time": si(times[True], "s"),
        "naive-prefill-time": si(times[False], "s"),
    }


def mla_values(scenario: Scenario, mla_model: str = "deepseek-v3-mla") -> dict[str, str]:
    """Macros of the MLA cache reduction: the scenario's GQA model against an MLA model."""
    result = dv.mla_reduction()
    gqa_dims = scenario.model.dims()
    mla_spec: ModelSpec = model_catalogue()[mla_model]
    mla_dims = mla_spec.dims()
    kv_bytes = {sy.b_kv: bytes_per_element("bf16")}

    def cache_per_token(kind: str, dims: Mapping) -> float:
        return num(kv_cache_bytes(kind, sy.T, 1), dims | kv_bytes | {sy.B: 1, sy.T: 1})

    context = LONG_CONTEXT
    gqa_token = cache_per_token(scenario.model.attention_kind, gqa_dims)
    mla_token = cache_per_token("mla", mla_dims)
    return {
        "eq-mla-gqa": tex(result.gqa),
        "eq-mla-mla": tex(result.mla),
        "eq-mla-ratio": tex(result.ratio),
        "name-mla-model": code(mla_spec.name),
        "mla-elements": count(num(result.mla, mla_dims)),
        "mla-gqa-elements": count(num(result.gqa, gqa_dims)),
        "mla-ratio-vs-gqa": sig(num(result.gqa, gqa_dims) / num(result.mla, mla_dims)),
        "mla-ratio-vs-mha": sig(num(result.ratio, mla_dims)),
        "mla-mha-elements": count(num(result.gqa, mla_dims)),
        "mla-token-bytes": count(mla_token),
        "gqa-token-bytes": count(gqa_token),
        "mla-cache-32k": si(mla_token * context, "B"),
        "gqa-cache-32k": si(gqa_token * context, "B"),
    }


def tensor_parallel_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the tensor-parallel derivation and its crossover degree."""
    result = dv.tensor_parallel(scenario.model.attention_kind)
    values = values_of(scenario)
    context = scenario.workload.default_context
    entries = {
        "eq-tp-payload": tex(result.payload),
        "eq-tp-ar": tex(result.all_reduce_time),
        "eq-tp-ms": tex_lines(result.sharded, 50),
        "eq-tp-mr": tex(result.replicated),
        "eq-tp-time": tex(result.memory_bound_time),
        "eq-tp-quadratic": tex(result.quadratic),
        "eq-tp-fastest": tex(result.fastest),
    }
    for batch in BATCHES:
        point = values | {sy.B: batch, sy.T: context}
        aggregates = {
            dv.sharded_bytes: num(result.sharded, point),
            dv.replicated_bytes: num(result.replicated, point),
            dv.payload: num(result.payload, point),
        }
        entries[f"tp-ms-b{batch}"] = si(aggregates[dv.sharded_bytes], "B")
        entries[f"tp-crossover-b{batch}"] = sig(num(result.crossover, point | aggregates))
        entries[f"tp-fastest-b{batch}"] = sig(num(result.fastest, point | aggregates))
    return entries


def tensor_parallel_table(scenario: Scenario, batches: Sequence[int] = (1, 64)) -> str:
    """Per-layer decode time against tp (exact per-kernel roofline) and communication's share."""
    result = dv.tensor_parallel(scenario.model.attention_kind)
    values = values_of(scenario)
    context = scenario.workload.default_context
    rows = []
    for degree in TP_DEGREES:
        cells = [str(degree)]
        for batch in batches:
            point = values | {sy.B: batch, sy.T: context, sy.tp: degree}
            total = num(result.layer_time, point)
            comm = num(result.communication_time, point | {dv.payload: num(result.payload, point)})
            cells += [f"${si(total, 's')}$", f"${si(comm, 's')}$", f"{100 * comm / total:.0f}"]
        rows.append(cells)
    head = (
        "".join(r" & \multicolumn{3}{c}{$B = " + str(b) + "$}" for b in batches)
        + r" \\"
        + "\n"
        + "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(batches)))
    )
    header = [r"$\mathit{tp}$"] + ["layer", "all-reduces", r"\%"] * len(batches)
    return generated(tabular("r" + "rrr" * len(batches), header, rows, head_extra=head))


# The published configurations the paper's architecture table lists (tests/data/hf holds each
# config.json; tests/test_architectures.py holds the catalogue equal to them and each count to
# what transformers builds).
PUBLISHED_MODELS = (
    "llama-3-8b",
    "llama-3.1-405b",
    "mistral-7b",
    "phi-3-mini",
    "qwen2.5-72b",
    "qwen3-32b",
    "gemma-2-9b",
    "gemma-3-27b",
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "gpt-oss-120b",
    "deepseek-v3",
)
MOE_MODELS = ("mixtral-8x7b", "gpt-oss-120b", "qwen3-235b-a22b", "deepseek-v3")


def _parameters(spec: ModelSpec) -> int:
    stored = model_parameters(spec.architecture, sp.Integer(1))
    return int(stored.xreplace(spec.dims() | {sy.ep: 1}))


def _features(spec: ModelSpec) -> str:
    """What a model's layers run beyond a Llama layer, in a few words."""
    out = []
    if spec.mla is not None:
        out.append("MLA")
    elif spec.n_kv_heads < spec.n_heads:
        out.append(f"GQA {spec.n_heads}/{spec.n_kv_heads}")
    else:
        out.append("MHA")
    if spec.sliding_window is not None:
        window = spec.sliding_window
        out.append(f"window {window.tokens} on {window.layers}/{spec.n_layers}")
    if spec.qkv_bias:
        out.append("biases")
    if spec.qk_norm:
        out.append("q/k norms")
    if spec.attention_sinks:
        out.append("sinks")
    if spec.moe is not None:
        moe = spec.moe
        shared = ", shared" if moe.shared_ffn_dim else ""
        dense = f", {moe.dense_layers} dense" if moe.dense_layers else ""
        out.append(f"MoE {moe.top_k}/{moe.n_experts}{shared}{dense}")
    return ", ".join(out)


def architectures_table() -> str:
    """The published configurations the model reads: layers, features, exact parameters."""
    catalogue = model_catalogue()
    rows = []
    for name in PUBLISHED_MODELS:
        spec = catalogue[name]
        rows.append((code(name), str(spec.n_layers), _features(spec), count(_parameters(spec))))
    return generated(tabular("lrlr", ["model", "$L$", "layers run", "parameters"], rows))


def moe_values(scenario: Scenario) -> dict[str, str]:
    """Macros of the expert-reads derivation and its half-touched batch for the MoE models."""
    result = dv.expert_reads()
    catalogue = model_catalogue()
    values = {
        "eq-moe-touched": tex(result.touched),
        "eq-moe-one": tex(result.one_token),
        "eq-moe-every": tex(result.every_expert),
        "eq-moe-half": tex(result.half_tokens),
        "eq-moe-per-expert": tex(result.per_expert),
        "moe-published-count": str(len(PUBLISHED_MODELS)),
    }
    for name in MOE_MODELS:
        dims = catalogue[name].dims()
        values[f"moe-half-{name}"] = sig(num(result.half_tokens, dims), 3)
    return values
