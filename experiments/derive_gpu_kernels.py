"""Derive the committed GPU kernel-timing subset from the published AIConfigurator tables.

    python -m experiments.derive_gpu_kernels SOURCE_DIR [--out DIR]

SOURCE_DIR holds the tables as published by the NVIDIA AIConfigurator project
(ai-dynamo/aiconfigurator, commit 095f58a51c4ca8e61b66ec108d86f223f8d559ce,
aic-core/src/aiconfigurator_core/systems/data/<system>/<kernel>/<engine>/<version>/, Apache-2.0).
Maintainers run this once; nothing else in the project reads SOURCE_DIR.  It needs pandas and
pyarrow (``pip install ".[data]"``), which the project does not otherwise use.

What is kept (see ``costmodel/data/gpu_kernels/SOURCE.md``) and why:

* gemm: every (n, k) pair, a seeded sample of m, for the engine's weight formats;
* context and generation attention: full attention (no sliding window), 16-bit attention math,
  the engine's most-measured kernel on that GPU, KV cache in bf16 and fp8, a seeded sample;
* allreduce: the engine's own all-reduce in its CUDA-graph mode (TensorRT-LLM has one mode).
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


def derive(source: Path, out: Path) -> dict[str, int]:
    """Write the four family tables (gzip CSV) under ``out``; rows written per family."""
    import pandas as pd  # maintainer-only dependency (the "data" extra)

    tables: dict[str, list] = {
        "gemm": [],
        "context_attention": [],
        "generation_attention": [],
        "allreduce": [],
    }
    for system, hardware in SYSTEMS.items():
        for engine in ENGINES:
            gemm = _newest(source / system / "gemm" / engine)
            if gemm is not None:
                tables["gemm"].append(_gemm(pd, gemm / "gemm_perf.parquet", hardware, engine))
            attention = _newest(source / system / "attention" / engine)
            if attention is not None:
                for family in ("context_attention", "generation_attention"):
                    path = attention / f"{family}_perf.parquet"
                    tables[family].append(_attention(pd, path, hardware, engine, family))
            comm = _newest(source / system / "comm" / engine)
            if comm is not None:
                path = comm / "custom_allreduce_perf.parquet"
                tables["allreduce"].append(_allreduce(pd, path, hardware, engine))
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for family, parts in tables.items():
        frame = pd.concat(parts)
        first = ["hardware", "engine", "dtype"]
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
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        raise OptionError("SOURCE_DIR", f"{args.source}: not a folder of kernel tables")
    for family, rows in derive(args.source, args.out).items():
        print(f"{family}: {rows} rows")
    return 0


if __name__ == "__main__":
    run(main)
