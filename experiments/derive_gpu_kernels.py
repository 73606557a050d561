"""Derive the committed GPU kernel-timing subset from the published AIConfigurator tables.

    python -m experiments.derive_gpu_kernels SOURCE_DIR [--out DIR] [--only TABLE ...]

SOURCE_DIR holds the tables as published by the NVIDIA AIConfigurator project
(ai-dynamo/aiconfigurator, commit 095f58a51c4ca8e61b66ec108d86f223f8d559ce,
aic-core/src/aiconfigurator_core/systems/data/<system>/<kernel>/<engine>/<version>/, Apache-2.0).
Maintainers run this once; nothing else in the project reads SOURCE_DIR.  It needs pandas and
pyarrow (``pip install ".[data]"``), which the project does not otherwise use.

What is kept (see ``costmodel/data/gpu_kernels/SOURCE.md``) and why:

* gemm: every (n, k) pair, a seeded sample of m, for the engine's weight formats;
* context and generation attention: full attention (no sliding window), 16-bit attention math,
  the engine's most-measured kernel on that GPU, KV cache in bf16 and fp8, a seeded sample;
* allreduce: the engine's own all-reduce in its CUDA-graph mode (TensorRT-LLM has one mode);
* moe: one fused MoE layer under balanced routing (the power-law rows are left out: the model's
  families describe balanced routing), gated (SwiGLU) experts only, one kernel per shape (the
  dtype's most-measured kernel where two timed the same shape; repeats -> their median), a
  seeded sample per (GPU, engine, dtype);
* mla: DeepSeek-style MLA attention: the attention kernels alone (``context_mla``,
  ``generation_mla``) and the whole attention block (``mla_*_module``: projections, norms,
  RoPE and attention of DeepSeek-V3 on one GPU), 16-bit attention math, a seeded sample per
  (GPU, engine, table, dtype).

``--only TABLE ...`` writes only the tables named (the others are left as they are).
"""

from __future__ import annotations

from pathlib import Path

from experiments._cli import OptionError, Parser, run

# Data system name -> catalogue hardware name.
SYSTEMS = {
    "a100_sxm": "a100-sxm-80gb",
    "h100_sxm": "h100-sxm",
    "h200_sxm": "h200",
    "b200_sxm": "b200",
    "gb200": "gb200",
    "l40s": "l40s",
}
ENGINES = ("vllm", "trtllm", "sglang")
GEMM_DTYPES = ("bfloat16", "fp8", "fp8_block", "int8_wo", "int4_wo", "nvfp4")
GEMM_ROWS = 2500  # rows kept per (hardware, engine, dtype)
ATTENTION_ROWS = 2000  # rows kept per (hardware, engine, family, kv dtype)
GRAPH_ALLREDUCE = ("vLLM_custom_graph", "SGLang_CustomAllReduce_graph", "TRTLLM")
SEED = 20261129
MOE_ROWS = 400  # rows kept per (hardware, engine, dtype)
MLA_ROWS = 200  # rows kept per (hardware, engine, table, dtype) of the attention kernels
MLA_MODULE_ROWS = 120  # rows kept per (hardware, engine, table, dtype) of the whole block
MOE_SHAPE = ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts"]
MOE_SHAPE += ["moe_tp_size", "moe_ep_size"]
# The MLA tables: source file stem -> the family its rows are kept for.
MLA_TABLES = {
    "context_mla_perf": "mla_context",
    "generation_mla_perf": "mla_generation",
    "mla_context_module_perf": "mla_context_module",
    "mla_generation_module_perf": "mla_generation_module",
}
TABLES = ("gemm", "context_attention", "generation_attention", "allreduce", "moe", "mla")


def _newest(folder: Path) -> Path | None:
    """The newest version folder under ``folder`` (versions compared as dotted numbers)."""
    if not folder.is_dir():
        return None
    versions = [p for p in folder.iterdir() if p.is_dir()]
    if not versions:
        return None

    def key(p: Path):
        return [int("".join(c for c in part if c.isdigit()) or 0) for part in p.name.split(".")]

    return max(versions, key=key)


def _sample(frame, rows: int):
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=SEED)


def _gemm(pd, path: Path, hardware: str, engine: str):
    frame = pd.read_parquet(path)
    frame = frame[frame.gemm_dtype.isin(GEMM_DTYPES)]
    parts = [_sample(group, GEMM_ROWS) for _, group in frame.groupby("gemm_dtype")]
    out = pd.concat(parts)[["gemm_dtype", "m", "n", "k", "latency"]]
    out = out.rename(columns={"gemm_dtype": "dtype", "latency": "latency_ms"})
    return out.assign(hardware=hardware, engine=engine)


def _attention(pd, path: Path, hardware: str, engine: str, family: str):
    frame = pd.read_parquet(path)
    window = frame.get("window_size", 0)
    frame = frame[(window == 0) & (frame.attn_dtype == "bfloat16") & (frame.beam_width == 1)]
    kernel = frame.kernel_source.value_counts().idxmax()
    frame = frame[frame.kernel_source == kernel]
    # Generation rows time one decode step over isl + step cached tokens.
    tokens = frame.isl + frame.step if family == "generation_attention" else frame.isl
    frame = frame.assign(isl=tokens)
    parts = [_sample(group, ATTENTION_ROWS) for _, group in frame.groupby("kv_cache_dtype")]
    columns = ["kv_cache_dtype", "batch_size", "isl", "num_heads", "num_key_value_heads"]
    out = pd.concat(parts)[[*columns, "head_dim", "latency"]]
    out = out.rename(
        columns={
            "kv_cache_dtype": "dtype",
            "batch_size": "batch",
            "num_heads": "heads",
            "num_key_value_heads": "kv_heads",
            "latency": "latency_ms",
        }
    )
    return out.assign(hardware=hardware, engine=engine, kernel=kernel)


def _allreduce(pd, path: Path, hardware: str, engine: str):
    frame = pd.read_parquet(path)
    frame = frame[frame.kernel_source.isin(GRAPH_ALLREDUCE)]
    # message_size counts bf16 elements: bytes = 2 x elements gives the 8-GPU NCCL bus
    # bandwidth of 445 GB/s on H100 and 222 GB/s on A100 (bytes would give half the links'
    # achievable rate on every system), and the custom and NCCL tables agree at large sizes.
    out = frame.assign(message_bytes=frame.message_size * 2, dtype="bfloat16")
    out = out[["dtype", "num_gpus", "message_bytes", "latency"]].rename(
        columns={"latency": "latency_ms"}
    )
    return out.assign(hardware=hardware, engine=engine)


def _one_kernel(frame, dtype: str, shape: list[str]):
    """One row per (dtype, shape): where two kernels timed a shape, the dtype's most-measured
    kernel's (ties: the first name); repeated timings of one kernel -> their median."""
    counts = frame.groupby([dtype, "kernel_source"]).size().rename("count").reset_index()
    counts = counts.sort_values([dtype, "count", "kernel_source"], ascending=[True, False, True])
    order = zip(counts[dtype], counts.kernel_source, strict=True)
    rank = {key: i for i, key in enumerate(order)}
    keys = zip(frame[dtype], frame.kernel_source, strict=True)
    frame = frame.assign(kernel_rank=[rank[key] for key in keys])
    best = frame.groupby([dtype, *shape])["kernel_rank"].transform("min")
    frame = frame[frame["kernel_rank"] == best]
    keys = [dtype, *shape, "kernel_source"]
    return frame.groupby(keys, as_index=False).latency.median()


def _moe(pd, path: Path, hardware: str, engine: str):
    frame = pd.read_parquet(path)
    # Balanced routing only; gated experts only (the non-gated Relu2 kernels of Nemotron-3
    # have no gate GEMM, another kernel than the model's routed experts).
    gated = ~frame.kernel_source.str.contains("nongated")
    frame = frame[(frame.distribution == "balanced") & gated]
    if frame.empty:
        return None
    frame = _one_kernel(frame, "moe_dtype", MOE_SHAPE)
    parts = [_sample(group, MOE_ROWS) for _, group in frame.groupby("moe_dtype")]
    out = pd.concat(parts)[["moe_dtype", *MOE_SHAPE, "latency", "kernel_source"]]
    out = out.rename(
        columns={"moe_dtype": "dtype", "latency": "latency_ms", "kernel_source": "kernel"}
    )
    return out.assign(hardware=hardware, engine=engine)


def _mla(pd, folder: Path, hardware: str, engine: str):
    """The MLA tables of one (GPU, engine): one frame of every table there is."""
    found = []
    for stem, family in MLA_TABLES.items():
        path = folder / f"{stem}.parquet"
        if not path.is_file():
            continue
        frame = pd.read_parquet(path)
        frame = frame[frame.mla_dtype == "bfloat16"]
        # A module row's dtype names its projections' GEMM format and its KV cache's.
        if "gemm_type" in frame:
            frame = frame.assign(dtype=frame.gemm_type + "/" + frame.kv_cache_dtype)
            rows = MLA_MODULE_ROWS
        else:
            frame = frame.assign(dtype=frame.kv_cache_dtype)
            rows = MLA_ROWS
        # Generation rows time one decode step over isl + step cached tokens.
        tokens = frame.isl + frame.step if "generation" in family else frame.isl
        frame = frame.assign(isl=tokens)
        frame = _one_kernel(frame, "dtype", ["batch_size", "isl", "num_heads"])
        parts = [_sample(group, rows) for _, group in frame.groupby("dtype")]
        out = pd.concat(parts).rename(
            columns={
                "batch_size": "batch",
                "num_heads": "heads",
                "latency": "latency_ms",
                "kernel_source": "kernel",
            }
        )
        out = out[["dtype", "batch", "isl", "heads", "latency_ms", "kernel"]]
        found.append(out.assign(hardware=hardware, engine=engine, family=family))
    return pd.concat(found) if found else None


def derive(source: Path, out: Path, only: tuple[str, ...] = TABLES) -> dict[str, int]:
    """Write the family tables (gzip CSV) named in ``only`` under ``out``; rows written per
    table."""
    import pandas as pd  # maintainer-only dependency (the "data" extra)

    tables: dict[str, list] = {name: [] for name in only}
    for system, hardware in SYSTEMS.items():
        for engine in ENGINES:
            gemm = _newest(source / system / "gemm" / engine)
            if gemm is not None and "gemm" in tables:
                tables["gemm"].append(_gemm(pd, gemm / "gemm_perf.parquet", hardware, engine))
            attention = _newest(source / system / "attention" / engine)
            if attention is not None:
                for family in ("context_attention", "generation_attention"):
                    if family in tables:
                        path = attention / f"{family}_perf.parquet"
                        tables[family].append(_attention(pd, path, hardware, engine, family))
            comm = _newest(source / system / "comm" / engine)
            if comm is not None and "allreduce" in tables:
                path = comm / "custom_allreduce_perf.parquet"
                tables["allreduce"].append(_allreduce(pd, path, hardware, engine))
            # The newest version holding the per-shape MoE table (SGLang's B200 folder holds
            # only a DeepSeek-V4 module table: no rows from it).
            moe = _newest(source / system / "moe" / engine)
            if moe is not None and "moe" in tables and (moe / "moe_perf.parquet").is_file():
                tables["moe"].append(_moe(pd, moe / "moe_perf.parquet", hardware, engine))
            mla = _newest(source / system / "mla" / engine)
            if mla is not None and "mla" in tables:
                tables["mla"].append(_mla(pd, mla, hardware, engine))
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for family, parts in tables.items():
        frame = pd.concat([p for p in parts if p is not None])
        first = ["hardware", "engine", "dtype"]
        if "family" in frame:
            first.append("family")
        frame = frame[first + [c for c in frame.columns if c not in first]]
        frame = frame.sort_values(list(frame.columns[:-1])).reset_index(drop=True)
        frame.to_csv(
            out / f"{family}.csv.gz",
            index=False,
            float_format="%.6g",
            compression={"method": "gzip", "mtime": 0},
        )
        counts[family] = len(frame)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m experiments.derive_gpu_kernels", description=__doc__)
    parser.add_argument("source", type=Path, help="the published tables (see the docstring)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "costmodel" / "data" / "gpu_kernels",
        help="where the tables go (default: the package's data folder)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=TABLES,
        default=list(TABLES),
        metavar="TABLE",
        help=f"write only these tables ({', '.join(TABLES)}; default: all)",
    )
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise OptionError("SOURCE_DIR", f"{args.source}: not a folder of kernel tables")
    for family, rows in derive(args.source, args.out, tuple(args.only)).items():
        print(f"{family}: {rows} rows")
    return 0


if __name__ == "__main__":
    run(main)
