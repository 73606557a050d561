"""The serving model against measured serving runs, and the fit of each engine's step overhead.

The data (``costmodel/data/serving_benchmarks``, see its SOURCE.md) are 244 closed-loop runs
of Llama-3.1-8B on an H100 (TensorRT-LLM) and an H200 (SGLang, vLLM).  Each is answered with
the serving model three ways: the pure roofline (no engine), the engine's measured kernels
alone, and the engine's kernels plus its fitted fixed cost per step.  That cost is the one
number per engine fitted here (the least mean squared log error of TPOT on the training rows,
bounded on [0, :data:`MAX_OVERHEAD_S`]); held-out rows are chosen by a salted hash of the
run's shape, a third of them, so the split has no state.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar

from costmodel.config.bind import ServingPoint, Setting, bind
from costmodel.config.load import serving_scenario
from costmodel.search import predict as predictions
from costmodel.search import uncertainty

DATA_FILE = "llama-3.1-8b.csv"
MODEL = "llama-3-8b"  # Llama-3.1-8B has Llama-3-8B's shapes (vocabulary included)
HARDWARE = {"h100_sxm": "h100-sxm", "h200_sxm": "h200"}
# Weights as the runs served them: bf16 checkpoint, or fp8 (per-tensor, or SGLang's block
# scales, priced as per-tensor fp8: the engine model has one fp8 GEMM dtype).  The KV cache
# stayed bf16 in every run.
WEIGHTS = {"": "bf16", "fp8": "fp8", "fp8_block": "fp8"}
SPLIT = "held out: sha256('serving:' + engine, isl, osl, tp, concurrency) mod 3 == 0"
MAX_OVERHEAD_S = 0.02  # the fitted step overhead's bound [s]
INTERVAL_DRAWS = 512  # draws per deployment when checking the prediction intervals
INTERVAL_METRICS = ("ttft_ms", "tpot_ms")


class Run(NamedTuple):
    """One measured serving run: the deployment, the load and the measured means [ms]."""

    hardware: str
    engine: str
    version: str
    weight_dtype: str
    tp: int
    isl: int
    osl: int
    concurrency: int
    ttft_ms: float
    tpot_ms: float


def data_path() -> Path:
    """The committed CSV (package data)."""
    return Path(str(resources.files("costmodel.data") / "serving_benchmarks" / DATA_FILE))


def runs() -> list[Run]:
    """Every measured run, in file order."""
    text = data_path().read_text()
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        out.append(
            Run(
                hardware=HARDWARE[row["system"]],
                engine=row["backend"],
                version=row["backend_version"],
                weight_dtype=WEIGHTS[row["gemm_quant_mode"]],
                tp=int(float(row["tp_size"])),
                isl=int(row["isl"]),
                osl=int(row["osl"]),
                concurrency=int(float(row["concurrency"])),
                ttft_ms=float(row["ttft_ms"]),
                tpot_ms=float(row["tpot_ms"]),
            )
        )
    return out


def held_out(run: Run) -> bool:
    """Whether ``run`` is in the held-out third (see :data:`SPLIT`)."""
    key = f"serving:{run.engine},{run.isl},{run.osl},{run.tp},{run.concurrency}"
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 3 == 0


def run_questions(
    run_list: Sequence[Run], *, engine: bool, overhead: dict[str, float] | None = None
) -> list[predictions.Question]:
    """The serving question of each run: with the engine's kernels (``engine``) or the pure
    roofline, and with ``overhead`` [s] per engine as its step overhead (None: the
    catalogue's).  Runs of one deployment share one binding."""
    bindings: dict[tuple, object] = {}
    questions = []
    for r in run_list:
        key = (r.hardware, r.engine if engine else None, r.tp, r.weight_dtype)
        if key not in bindings:
            scenario = serving_scenario(
                MODEL,
                r.hardware,
                engine=key[1],
                tp=r.tp,
                weight_dtype=r.weight_dtype,
                kv_dtype="bf16",
                source=data_path(),
                fields={},
            )
            if engine and overhead is not None:
                scenario = scenario.model_copy(update={"step_overhead_s": overhead[r.engine]})
            bindings[key] = bind(scenario, Setting(r.tp, r.weight_dtype, "bf16"))
        point = ServingPoint(r.isl, r.osl, concurrency=r.concurrency)
        questions.append(predictions.Question(bindings[key], point))
    return questions


def predict_runs(
    run_list: Sequence[Run], *, engine: bool, overhead: dict[str, float] | None = None
) -> list[dict]:
    """The serving model's answer to each run (see :func:`run_questions`)."""
    return predictions.predict(run_questions(run_list, engine=engine, overhead=overhead))


def interval_coverage(
    run_list: Sequence[Run], level: float, draws: int = INTERVAL_DRAWS
) -> dict[str, float]:
    """Share of ``run_list`` whose measured TTFT and TPOT lie inside the engine-calibrated
    prediction's interval at ``level`` (:mod:`costmodel.search.uncertainty`: the kernel fits'
    posteriors and residuals, ``draws`` draws at its fixed seed, the catalogue's step
    overhead held fixed) [1], per metric and for both at once."""
    questions = run_questions(run_list, engine=True)
    groups: dict[int, list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(id(q.binding), []).append(i)
    inside = {m: np.zeros(len(run_list), dtype=bool) for m in INTERVAL_METRICS}
    for members in groups.values():
        table, _ = uncertainty.value_table(questions[members[0]].binding, draws, uncertainty.SEED)
        metrics = uncertainty.solve_draws([questions[i] for i in members], table)
        for row, i in enumerate(members):
            for m in INTERVAL_METRICS:
                low, high = uncertainty.interval(metrics[m][row], level)
                inside[m][i] = low <= getattr(run_list[i], m) <= high
    both = inside["ttft_ms"] & inside["tpot_ms"]
    return {**{m: float(v.mean()) for m, v in inside.items()}, "both": float(both.mean())}


def log_errors(run_list: Sequence[Run], answers: Sequence[dict], key: str) -> np.ndarray:
    """log(predicted / measured) of ``key`` ("ttft_ms" or "tpot_ms") per run."""
    predicted = np.array([a[key] for a in answers], dtype=float)
    measured = np.array([getattr(r, key) for r in run_list], dtype=float)
    return np.log(predicted / measured)


def fit_overheads(run_list: Sequence[Run]) -> dict[str, float]:
    """Each engine's step overhead [s]: least mean squared log error of TPOT on ``run_list``."""
    fitted = {}
    for engine in sorted({r.engine for r in run_list}):
        mine = [r for r in run_list if r.engine == engine]

        def loss(seconds: float, mine=mine, engine=engine) -> float:
            answers = predict_runs(mine, engine=True, overhead={engine: seconds})
            return float(np.mean(log_errors(mine, answers, "tpot_ms") ** 2))

        result = minimize_scalar(
            loss, bounds=(0.0, MAX_OVERHEAD_S), method="bounded", options={"xatol": 1e-6}
        )
        fitted[engine] = float(result.x)
    return fitted


class Errors(NamedTuple):
    """Median and 90th percentile of |predicted / measured - 1| over some runs, with their
    median signed ratio predicted / measured."""

    rows: int
    median: float
    p90: float
    ratio: float


def errors(run_list: Sequence[Run], answers: Sequence[dict], key: str) -> Errors:
    """The errors of ``key`` over ``run_list``."""
    logs = log_errors(run_list, answers, key)
    rel = np.abs(np.exp(logs) - 1)
    return Errors(
        len(run_list),
        float(np.median(rel)),
        float(np.percentile(rel, 90)),
        float(np.exp(np.median(logs))),
    )
