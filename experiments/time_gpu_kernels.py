"""Time the kernels the GPU calibration models on the GPU at hand, with PyTorch (not run in CI).

    python -m experiments.time_gpu_kernels OUT.csv [--quick] [--only KIND ...]

Needs PyTorch with CUDA (not a dependency of this project: it runs on a GPU machine, and its
CSV is what the project keeps, under ``costmodel/data/device_kernels/``, compared with the
calibrated model by ``python -m experiments.check_device_kernels``).  Rows:

* ``gemm``: ``torch.mm`` in bf16 (cuBLAS) and ``torch._scaled_mm`` in fp8 e4m3 with per-tensor
  scales (cuBLASLt), y[m, n] = x[m, k] · W[n, k]ᵀ, at the weight shapes of Llama-3-8B (tp 1) and
  Llama-3-70B (tp 8) and m from 1 to 8192.
* ``gemm_quant`` (``--only fp8_linear``; not in the default run): an fp8 linear layer as an
  engine runs one, the bf16 activations quantised to fp8 at a static per-tensor scale (one fused
  kernel, ``torch.compile``) and then ``torch._scaled_mm``, at the GEMM rows' shapes.
* ``context_attention``: causal ``scaled_dot_product_attention`` over a prompt of ``isl`` tokens,
  grouped-query heads (``enable_gqa``), head dim 128, bf16.
* ``generation_attention``: one query token per sequence against ``isl`` cached tokens.
* ``prefill_step``: one whole prefill of ``batch`` prompts of ``isl`` tokens, same model.
* ``decode_step``: one whole decode step of a Llama-3-8B-shaped model (random bf16 weights,
  32 layers, LM head), ``batch`` sequences at ``isl`` cached tokens, in plain PyTorch (no paged
  cache, no rotary embedding, no sampling, no engine scheduler).
* ``copy`` / ``peak``: a device-to-device copy and an 8192³ bf16 product, the ceilings seen.

Method: each measurement is a CUDA graph of R calls, replayed 5 times after a warm-up, timed with
CUDA events; the row is the median replay time / R [ms].  GEMM weights rotate over enough copies
that one pass reads over 4x the L2 cache (as a model's layers do: a weight is not in L2 when its
layer comes round again); an attention call's K/V likewise.  Inputs are random normal.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import statistics
import sys
from functools import partial

REPLAYS = 5
L2_PASS_BYTES = 4 * 60 * 2**20  # read per graph pass: 4x the H100/H200 L2 (50/60 MB)
TARGET_MS = 2.0  # a graph's replay runs at least this long
MAX_CALLS = 256
HEAD_DIM = 128
FP8_MAX = 448.0  # largest finite float8 e4m3fn
GEMM_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# (n, k) of each weight GEMM: Llama-3-8B at tp 1 (fused QKV, O, fused gate/up, down) and
# Llama-3-70B at tp 8; from the models' config.json (hidden 4096/8192, intermediate 14336/28672,
# 32/64 query and 8 KV heads of 128).
GEMM_SHAPES = (
    (6144, 4096),
    (4096, 4096),
    (28672, 4096),
    (4096, 14336),
    (1280, 8192),
    (8192, 1024),
    (7168, 8192),
    (8192, 3584),
)
HEADS = ((32, 8), (8, 1))  # (query heads, KV heads) per GPU: 8B at tp 1, 70B at tp 8
CONTEXT = [(b, s) for b in (1, 4, 16) for s in (128, 512, 2048, 8192) if b * s <= 32768]
GENERATION = [(b, s) for b in (1, 8, 32, 128, 256) for s in (256, 1024, 4096, 16384)]
STEPS = ((1, 1024), (8, 1024), (32, 1024), (64, 2048), (128, 1024), (256, 512))
PREFILLS = ((1, 128), (1, 512), (1, 2048), (1, 8192), (4, 512), (4, 2048), (8, 1024), (16, 512))
KINDS = ("ceiling", "gemm", "fp8_linear", "attention", "step")
DEFAULT_KINDS = ("ceiling", "gemm", "attention", "step")  # what the committed H200 file holds
COLUMNS = (
    "family",
    "dtype",
    "m",
    "n",
    "k",
    "batch",
    "isl",
    "heads",
    "kv_heads",
    "head_dim",
    "calls",
    "measured_ms",
    "kernel",
)


def _graph_ms(torch, calls) -> float:
    """Median time [ms] of one of ``calls`` (callables), captured in one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    del graph
    return statistics.median(times)


def _copies(nbytes: int) -> int:
    """Buffers of ``nbytes`` to rotate over so that one pass reads :data:`L2_PASS_BYTES`."""
    return max(1, min(MAX_CALLS, math.ceil(L2_PASS_BYTES / nbytes)))


def _calls(estimate_ms: float, copies: int) -> int:
    """Calls in a graph: every copy at least once and :data:`TARGET_MS` of work."""
    return max(copies, min(MAX_CALLS, math.ceil(TARGET_MS / max(estimate_ms, 1e-4))))


def _row(**fields) -> dict:
    return {c: fields.get(c, "") for c in COLUMNS}


def _fp8_row(torch, family: str, kernel: str, shape: tuple[int, int, int], calls) -> dict | None:
    """An fp8 row of ``calls`` timed; None (said on stderr) for a shape cuBLASLt's fp8 path
    refuses."""
    m, n, k = shape
    try:
        measured = _graph_ms(torch, calls)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        print(f"{family} fp8 m={m} n={n} k={k} skipped: {reason}", file=sys.stderr)
        return None
    return _row(
        family=family,
        dtype="fp8",
        m=m,
        n=n,
        k=k,
        calls=len(calls),
        measured_ms=measured,
        kernel=kernel,
    )


def gemm_rows(torch, quick: bool):
    """bf16 and fp8 weight GEMMs."""
    ms = GEMM_M[::3] if quick else GEMM_M
    for n, k in GEMM_SHAPES[:2] if quick else GEMM_SHAPES:
        copies = _copies(2 * n * k)
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        w8 = [w.to(torch.float8_e4m3fn) for w in weights[: _copies(n * k)]]
        one = torch.ones((), device="cuda", dtype=torch.float32)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            est = max(2 * m * n * k / 700e12, 2 * n * k / 4e12) * 1e3
            calls = _calls(est, copies)
            fns = [partial(torch.mm, x, weights[i % copies].t(), out=out) for i in range(calls)]
            yield _row(
                family="gemm",
                dtype="bfloat16",
                m=m,
                n=n,
                k=k,
                calls=calls,
                measured_ms=_graph_ms(torch, fns),
                kernel="torch.mm",
            )
            x8 = x.to(torch.float8_e4m3fn)
            est8 = max(2 * m * n * k / 1400e12, n * k / 4e12) * 1e3
            calls8 = _calls(est8, len(w8))
            fns8 = [
                partial(
                    torch._scaled_mm,
                    x8,
                    w8[i % len(w8)].t(),
                    scale_a=one,
                    scale_b=one,
                    out_dtype=torch.bfloat16,
                )
                for i in range(calls8)
            ]
            row = _fp8_row(torch, "gemm", "torch._scaled_mm", (m, n, k), fns8)
            if row is not None:
                yield row
        del weights, w8
        torch.cuda.empty_cache()


def _quantiser(torch):
    """Activations to fp8 e4m3 at a static per-tensor scale in one fused kernel (compiled by
    ``torch.compile``, shapes dynamic), as an fp8 linear layer quantises its input before the
    GEMM; the eager two-kernel form where compiling fails.  Returns (function, its name)."""

    def quantise(x, inverse_scale):
        return (x * inverse_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)

    probe = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    scale = torch.ones((), device="cuda", dtype=torch.float32)
    try:
        fused = torch.compile(quantise, dynamic=True)
        fused(probe, scale)
        return fused, "compiled quantise + torch._scaled_mm"
    except Exception as exc:  # no compiler on this machine: eager is still a real timing
        print(f"torch.compile unavailable ({type(exc).__name__}): eager quantise", file=sys.stderr)
        return quantise, "eager quantise + torch._scaled_mm"


def fp8_linear_rows(torch, quick: bool):
    """fp8 linear layers: bf16 activations quantised to fp8 (one kernel), then the fp8 GEMM,
    at the same shapes as :func:`gemm_rows` (family ``gemm_quant``)."""
    quantise, kernel = _quantiser(torch)
    ms = GEMM_M[::3] if quick else GEMM_M
    one = torch.ones((), device="cuda", dtype=torch.float32)
    for n, k in GEMM_SHAPES[:2] if quick else GEMM_SHAPES:
        w8 = [
            torch.randn(n, k, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn)
            for _ in range(_copies(n * k))
        ]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

            def linear(w, x=x):
                return torch._scaled_mm(
                    quantise(x, one), w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16
                )

            est = max(2 * m * n * k / 1400e12, n * k / 4e12) * 1e3
            calls = _calls(est, len(w8))
            fns = [partial(linear, w8[i % len(w8)]) for i in range(calls)]
            row = _fp8_row(torch, "gemm_quant", kernel, (m, n, k), fns)
            if row is not None:
                yield row
        del w8
        torch.cuda.empty_cache()


def _sdpa(torch):
    """Scaled-dot-product attention with grouped-query heads: the flash or memory-efficient
    kernel where this PyTorch runs grouped heads in one, else its default choice (probed once on
    a small call; the kernel used is recorded in each row)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q = torch.randn(2, 8, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, 16, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(fused):
            sdpa(q, k, k, enable_gqa=True)
    except RuntimeError:
        fused = None

    def call(q, k, v, causal):
        if fused is None:
            return sdpa(q, k, v, is_causal=causal, enable_gqa=True)
        with sdpa_kernel(fused):
            return sdpa(q, k, v, is_causal=causal, enable_gqa=True)

    return call, "sdpa(flash|efficient)" if fused else "sdpa(default)"


def attention_rows(torch, quick: bool):
    """Prefill (causal, isl x isl) and decode (1 x isl) attention, bf16."""
    sdpa, kernel = _sdpa(torch)
    cases = [("context_attention", b, s) for b, s in CONTEXT]
    cases += [("generation_attention", b, s) for b, s in GENERATION]
    if quick:
        cases = cases[::5]
    for family, batch, isl in cases:
        for heads, kv_heads in HEADS:
            q_len = isl if family == "context_attention" else 1
            kv_bytes = 2 * 2 * batch * kv_heads * isl * HEAD_DIM
            copies = _copies(kv_bytes) if family == "generation_attention" else 1
            q = torch.randn(batch, heads, q_len, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
            kv = [
                (
                    torch.randn(
                        batch, kv_heads, isl, HEAD_DIM, device="cuda", dtype=torch.bfloat16
                    ),
                    torch.randn(
                        batch, kv_heads, isl, HEAD_DIM, device="cuda", dtype=torch.bfloat16
                    ),
                )
                for _ in range(copies)
            ]
            flops = 4 * batch * heads * q_len * isl * HEAD_DIM
            est = max(flops / 400e12, kv_bytes / 3e12) * 1e3
            calls = _calls(est, copies)
            causal = family == "context_attention"
            fns = [partial(sdpa, q, *kv[i % copies], causal) for i in range(calls)]
            yield _row(
                family=family,
                dtype="bfloat16",
                batch=batch,
                isl=isl,
                heads=heads,
                kv_heads=kv_heads,
                head_dim=HEAD_DIM,
                calls=calls,
                measured_ms=_graph_ms(torch, fns),
                kernel=kernel,
            )
            del kv, q
            torch.cuda.empty_cache()


def step_rows(torch, quick: bool):
    """Whole decode steps (``batch`` sequences at ``isl`` cached tokens) and prefill steps
    (``batch`` prompts of ``isl`` tokens, causal attention, logits of each last token) of a
    Llama-3-8B-shaped model in plain PyTorch."""
    hidden, inter, layers, vocab, heads, kv_heads = 4096, 14336, 32, 128256, 32, 8
    sdpa, _ = _sdpa(torch)
    f = torch.nn.functional

    def rand(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02

    weights = [
        (
            rand((heads + 2 * kv_heads) * HEAD_DIM, hidden),
            rand(hidden, heads * HEAD_DIM),
            rand(2 * inter, hidden),
            rand(hidden, inter),
        )
        for _ in range(layers)
    ]
    head = rand(vocab, hidden)
    norm = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)

    def rest_of_layer(x, a, wo, w13, w2):
        """The residual after attention output ``a``: O projection, then the SwiGLU MLP."""
        x = x + a @ wo.t()
        gu = f.rms_norm(x, (hidden,), norm) @ w13.t()
        return x + (f.silu(gu[:, :inter]) * gu[:, inter:]) @ w2.t()

    def row(family, batch, isl, call):
        return _row(
            family=family,
            dtype="bfloat16",
            batch=batch,
            isl=isl,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=HEAD_DIM,
            calls=1,
            measured_ms=_graph_ms(torch, [call]),
            kernel="llama-3-8b-shaped, torch",
        )

    for batch, isl in STEPS[::3] if quick else STEPS:
        caches = [
            (rand(batch, kv_heads, isl + 1, HEAD_DIM), rand(batch, kv_heads, isl + 1, HEAD_DIM))
            for _ in range(layers)
        ]
        x0 = rand(batch, hidden)

        def step(x0=x0, caches=caches, batch=batch, isl=isl):
            x = x0
            for (wqkv, wo, w13, w2), (kc, vc) in zip(weights, caches, strict=True):
                h = f.rms_norm(x, (hidden,), norm)
                qkv = h @ wqkv.t()
                q = qkv[:, : heads * HEAD_DIM].view(batch, heads, 1, HEAD_DIM)
                kv = qkv[:, heads * HEAD_DIM :].view(batch, 2, kv_heads, 1, HEAD_DIM)
                kc[:, :, isl : isl + 1].copy_(kv[:, 0])
                vc[:, :, isl : isl + 1].copy_(kv[:, 1])
                a = sdpa(q, kc, vc, False).reshape(batch, heads * HEAD_DIM)
                x = rest_of_layer(x, a, wo, w13, w2)
            return f.rms_norm(x, (hidden,), norm) @ head.t()

        yield row("decode_step", batch, isl, step)
        del caches
        torch.cuda.empty_cache()
    for batch, isl in PREFILLS[::3] if quick else PREFILLS:
        x0 = rand(batch * isl, hidden)

        def prefill(x0=x0, batch=batch, isl=isl):
            x = x0
            for wqkv, wo, w13, w2 in weights:
                qkv = f.rms_norm(x, (hidden,), norm) @ wqkv.t()
                q, k, v = (
                    qkv.view(batch, isl, heads + 2 * kv_heads, HEAD_DIM)
                    .transpose(1, 2)
                    .split([heads, kv_heads, kv_heads], dim=1)
                )
                a = sdpa(q, k, v, True).transpose(1, 2).reshape(batch * isl, heads * HEAD_DIM)
                x = rest_of_layer(x, a, wo, w13, w2)
            last = x.view(batch, isl, hidden)[:, -1]  # logits of each prompt's last token
            return f.rms_norm(last, (hidden,), norm) @ head.t()

        yield row("prefill_step", batch, isl, prefill)
        del x0
        torch.cuda.empty_cache()


def ceiling_rows(torch):
    """A device-to-device copy (bytes read + written / time) and an 8192^3 bf16 product."""
    a = torch.empty(2**30, device="cuda", dtype=torch.uint8)  # 1 GiB
    b = torch.empty_like(a)
    yield _row(
        family="copy",
        dtype="uint8",
        m=2**30,
        calls=4,
        measured_ms=_graph_ms(torch, [partial(b.copy_, a)] * 4),
        kernel="copy_",
    )
    del a, b
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    yield _row(
        family="peak",
        dtype="bfloat16",
        m=8192,
        n=8192,
        k=8192,
        calls=10,
        measured_ms=_graph_ms(torch, [partial(torch.mm, x, y, out=out)] * 10),
        kernel="torch.mm",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.time_gpu_kernels")
    parser.add_argument("out", help="CSV to write")
    parser.add_argument("--quick", action="store_true", help="a few shapes of each kind")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=KINDS,
        default=DEFAULT_KINDS,
        help=f"what to time (default: {' '.join(DEFAULT_KINDS)})",
    )
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    print(
        f"# {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    timers = {
        "ceiling": lambda: ceiling_rows(torch),
        "gemm": lambda: gemm_rows(torch, args.quick),
        "fp8_linear": lambda: fp8_linear_rows(torch, args.quick),
        "attention": lambda: attention_rows(torch, args.quick),
        "step": lambda: step_rows(torch, args.quick),
    }
    kinds = [(name, timers[name]()) for name in KINDS if name in args.only]
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for name, rows in kinds:
            count = 0
            for row in rows:
                row["measured_ms"] = f"{row['measured_ms']:.6g}"
                writer.writerow(row)
                handle.flush()
                count += 1
            print(f"{name}: {count} rows", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
