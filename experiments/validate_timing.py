"""Predict real wall-clock time: measure this device, calibrate the cost model, validate it.

    python -m experiments.validate_timing [--json] [--quick] [--from-data PATH]
        [--save-data PATH] [--write-spec PATH] [--out DIR] [--steps N]

Runs on the current JAX backend (CPU or GPU, unchanged): microbenchmarks (matmul rate, streaming
bandwidth, dispatch and per-kernel overhead, cache size), then times the reference decoder
layers (costmodel.validate.reference) over a grid of shapes in prefill and decode, fits the
efficiency parameters with optax through the compiled cost model on the training shapes, and reports
the error on held-out shapes beside the pure roofline's.  Writes the measurements (JSON), a
predicted-against-measured plot and a calibrated hardware spec (YAML) under --out. ``--from-data``
re-fits stored measurements without timing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from costmodel.config.specs import ConfigError
from costmodel.present.timing_plots import predicted_vs_measured_figure
from costmodel.validate import calibrate, microbench, timing
from experiments._cli import positive_int, print_json, run

DEFAULT_OUT = Path("results/validate_timing")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.validate_timing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small grid, for smoke runs")
    parser.add_argument("--from-data", metavar="PATH", help="fit stored measurements (JSON)")
    parser.add_argument("--save-data", metavar="PATH", help="also write the measurements here")
    parser.add_argument("--write-spec", metavar="PATH", help="also write the calibrated spec here")
    parser.add_argument(
        "--spec-name", metavar="NAME", help="name in the written spec (default BACKEND-measured)"
    )
    parser.add_argument("--out", metavar="DIR", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--steps", type=positive_int, default=1500, help="Adam steps per fit")
    parser.add_argument(
        "--rounds", type=positive_int, help="passes over the layer grid (default 2; quick 1)"
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- measuring


CONTENTION_LIMIT = 0.10  # a round is clean if other processes used at most this CPU share
EXTRA_ROUNDS = 3  # further rounds for cases without a clean one
QUIET_WAIT_S = 10.0  # before an extra round, wait up to this long for a quiet moment [s]
QUIET_BUDGET_S = 180.0  # total waiting allowed in one run [s]


def measure(quick: bool, rounds: int) -> dict[str, Any]:
    """Microbenchmarks and layer timings on the current backend, as one JSON-ready record.

    Every layer is compiled once and timed in ``rounds`` passes over the whole grid, so a burst
    of load from elsewhere on the machine spoils one pass of a case, not all of its samples.
    Each round notes the share of the host's CPU other processes used meanwhile; a case none of
    whose rounds was clean (share <= CONTENTION_LIMIT) gets up to EXTRA_ROUNDS more, each after
    waiting (a bounded time) for a quiet moment, and its times come from its clean rounds only
    when it has any.
    """
    grid = timing.timing_grid(quick=quick)
    sizes = microbench.default_sizes(quick=quick)
    bench_steps = len(sizes.square) + len(sizes.decode_rows) + 2 + 3 * len(sizes.buffers)
    policy = timing.QUICK_POLICY if quick else timing.DEFAULT_POLICY
    dtype = microbench.default_dtype()
    load_start = timing.load_average()
    start = time.perf_counter()
    with tqdm(total=bench_steps + rounds * len(grid), file=sys.stderr, unit="step") as bar:

        def note(label: str) -> None:
            bar.set_description(label)
            bar.update()

        before = timing.cpu_snapshot()
        profile = microbench.characterise(quick=quick, policy=policy, progress=note)
        bench_share = timing.foreign_share(before, timing.cpu_snapshot())
        timers: list[timing.LayerTimer] = []
        waited = 0.0
        for round_index in range(rounds + EXTRA_ROUNDS):
            todo = range(len(grid))
            if round_index >= rounds:
                todo = [i for i, t in enumerate(timers) if not t.clean_rounds(CONTENTION_LIMIT)]
                bar.total += len(todo)
            for i in todo:
                case = grid[i]
                bar.set_description(
                    f"round {round_index + 1} {case.dims.name} {case.phase} "
                    f"B{case.batch} S{case.prompt} T{case.context}"
                )
                if round_index == 0:
                    timers.append(timing.LayerTimer(case, dtype))
                elif round_index >= rounds and waited < QUIET_BUDGET_S:
                    begin = time.perf_counter()
                    timing.wait_for_quiet(CONTENTION_LIMIT, timeout_s=QUIET_WAIT_S)
                    waited += time.perf_counter() - begin
                timers[i].measure(policy)
                bar.update()
        if bench_share is not None and bench_share > CONTENTION_LIMIT:
            bar.total += bench_steps
            before = timing.cpu_snapshot()
            again = microbench.characterise(quick=quick, policy=policy, progress=note)
            bench_share = min(bench_share, timing.foreign_share(before, timing.cpu_snapshot()) or 1)
            profile = microbench.best_of(profile, again)
    rows = []
    for case, timer in zip(grid, timers, strict=True):
        result = timer.result(CONTENTION_LIMIT)
        row = timing.case_record(case, jnp.dtype(dtype).itemsize)
        row |= {
            "min_s": result.min_s,
            "median_s": result.median_s,
            "reps": result.reps,
            "compile_s": result.compile_s,
            "rounds": len(timer.rounds),
            "clean_rounds": len(timer.clean_rounds(CONTENTION_LIMIT)),
            "foreign_cpu_share": timer.shares,
        }
        rows.append(row)
    return {
        "device": profile.device,
        "dtype": jnp.dtype(dtype).name,
        "quick": quick,
        "rounds": rounds,
        "policy": policy._asdict(),
        "load_average": {"start": load_start, "end": timing.load_average()},
        "contention": {
            "limit": CONTENTION_LIMIT,
            "microbench_foreign_cpu_share": bench_share,
            "cases_with_clean_round": sum(bool(r["clean_rounds"]) for r in rows),
            "waited_for_quiet_s": waited,
        },
        "measure_wall_s": time.perf_counter() - start,
        "profile": microbench.profile_record(profile),
        "cases": rows,
    }


def load_data(path: str) -> dict[str, Any]:
    """Stored measurements; a missing or malformed file is a ConfigError (exit 2)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(file, "", "no such file")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(file, "", f"malformed JSON: {err}") from None
    for key in ("device", "profile", "cases"):
        if key not in data:
            raise ConfigError(file, key, "Field required")
    return data


# --------------------------------------------------------------------------- fitting


def initial_calibration(profile: dict[str, Any]) -> calibrate.Calibration:
    """Starting point of the fit, from the microbenchmarks: cache size and bandwidth as measured
    (no cache term where none was found), an overhead of a few microseconds."""
    cache = profile.get("cache_bytes") or 0
    return calibrate.Calibration(
        eta_compute=0.7,
        eta_memory=0.8,
        kernel_overhead_s=max(profile.get("kernel_s") or 0.0, 1e-6),
        overlap=2.0,
        cache_bytes=float(cache),
        cache_bandwidth=float(profile["cache_bandwidth_bytes_s"]),
        weight_relayout=1.0,
        attention_efficiency=0.5,
    )


def _errors(predicted, measured) -> dict[str, Any]:
    return calibrate.error_summary(predicted, measured)._asdict()


def _params(cal: calibrate.Calibration) -> dict[str, Any]:
    return {
        "eta_compute": cal.eta_compute,
        "eta_memory": cal.eta_memory,
        "kernel_overhead_us": cal.kernel_overhead_s * 1e6,
        "overlap": cal.overlap if np.isfinite(cal.overlap) else None,
        "cache_mb": cal.cache_bytes / 1e6 if cal.cache_bytes > 0 else None,
        "cache_bandwidth_gb_s": cal.cache_bandwidth / 1e9 if cal.cache_bytes > 0 else None,
        "weight_relayout": cal.weight_relayout if cal.weight_relayout > 0 else None,
        "attention_efficiency": (
            cal.attention_efficiency if cal.attention_efficiency != 1.0 else None
        ),
    }


def _clean(row: dict[str, Any]) -> bool:
    """Whether a case had a round with little CPU used by other processes (True if unknown)."""
    return row.get("clean_rounds", 1) > 0


def summarise(data: dict[str, Any], result: calibrate.Validation) -> dict[str, Any]:
    """The JSON report: device, calibration, errors per split, roofline, regime agreement."""
    rows = data["cases"]
    train, heldout = result.train, ~result.train
    clean = np.array([_clean(row) for row in rows])
    measured = result.measured
    regime = result.regime
    cases = []
    for i in np.flatnonzero(heldout):
        row = rows[i]
        cases.append(
            {
                "dims": row["dims"],
                "phase": row["phase"],
                "batch": row["batch"],
                "prompt": row["prompt"],
                "context": row["context"],
                "measured_ms": measured[i] * 1e3,
                "predicted_ms": float(result.predicted[i]) * 1e3,
                "roofline_ms": float(result.predicted_roofline[i]) * 1e3,
                "rel_err": float(result.predicted[i] / measured[i] - 1),
                "roofline_rel_err": float(result.predicted_roofline[i] / measured[i] - 1),
                "uncontended": _clean(row),
            }
        )
    by_index = {c.index: c for c in regime}
    heldout_index = list(np.flatnonzero(heldout))
    for case, i in zip(cases, heldout_index, strict=True):
        check = by_index.get(int(i))
        if check is not None:
            case |= {
                "partner_batch": rows[check.partner]["batch"],
                "measured_exponent": check.measured_exponent,
                "predicted_exponent": check.predicted_exponent,
                "measured_regime": check.measured_regime,
                "predicted_regime": check.predicted_regime,
                "bound": check.bound,
                "regime_agrees": check.agree,
                "regime_agrees_strictly": check.agree_strict,
            }
    profile = data["profile"]
    return {
        "device": data["device"],
        "calibration": {
            "fitted_on": "train",
            "terms": result.model._asdict(),
            "parameters": _params(result.calibration),
            "efficiency": calibrate.efficiency_fields(result.calibration, "fitted"),
            "peaks": {
                "flops": profile["peak_flops"],
                "bandwidth_bytes_s": profile["stream_bandwidth_bytes_s"],
            },
            "loss_start": float(result.losses[0]),
            "loss_end": float(result.losses[-1]),
            "steps": int(len(result.losses) - 1),
        },
        "train": _errors(result.predicted[train], measured[train]),
        "heldout": _errors(result.predicted[heldout], measured[heldout]),
        "roofline_only": _errors(result.predicted_roofline[heldout], measured[heldout]),
        "heldout_uncontended": _errors(result.predicted[heldout & clean], measured[heldout & clean])
        if (heldout & clean).any()
        else None,
        "basic_calibration": {
            "parameters": _params(result.basic),
            "train": _errors(result.predicted_basic[train], measured[train]),
            "heldout": _errors(result.predicted_basic[heldout], measured[heldout]),
        },
        "regime": {
            "cases": len(regime),
            "agree": sum(c.agree for c in regime),
            "agree_strict": sum(c.agree_strict for c in regime),
            "threshold_exponent": calibrate.SCALING_THRESHOLD,
            "exponent_tolerance": calibrate.EXPONENT_TOLERANCE,
            "heldout_regimes": {
                r: sum(c.measured_regime == r for c in regime)
                for r in ("flat in batch", "scales with batch")
            },
        },
        "measurement": {
            "dtype": data.get("dtype"),
            "quick": data.get("quick"),
            "load_average": data.get("load_average"),
            "measure_wall_s": data.get("measure_wall_s"),
            "policy": data.get("policy"),
            "rounds": data.get("rounds"),
            "contention": data.get("contention"),
            "cases": len(rows),
        },
        "microbench": {
            k: profile.get(k)
            for k in (
                "peak_flops",
                "stream_bandwidth_bytes_s",
                "cache_bandwidth_bytes_s",
                "cache_bytes",
                "dispatch_s",
                "kernel_s",
            )
        },
        "heldout_cases": cases,
    }


# --------------------------------------------------------------------------- output


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_tables(report: dict[str, Any], console: Console) -> None:
    device = report["device"]
    measurement = report["measurement"]
    load = measurement.get("load_average") or {}
    contention = measurement.get("contention") or {}
    console.print(
        f"[bold]{device.get('device_kind')}[/bold] on {device.get('cpu')} "
        f"({device.get('cpu_count')} CPUs), JAX {device['jax_version']} {device['backend']}; "
        f"{measurement['cases']} layer shapes in {measurement.get('dtype')}, "
        f"load average {load.get('start', float('nan')):.2f} at start, "
        f"{load.get('end', float('nan')):.2f} at end; "
        f"{contention.get('cases_with_clean_round', '?')} shapes timed while other processes "
        f"used <= {100 * contention.get('limit', float('nan')):.0f}% of the CPU"
    )
    summary = Table(title="absolute relative error of predicted layer time", title_justify="left")
    for column in ("model", "cases", "median", "p90", "max"):
        summary.add_column(column, justify="left" if column == "model" else "right")
    rows = [
        ("calibrated, train", report["train"]),
        ("calibrated, held-out", report["heldout"]),
        ("roofline form calibrated, held-out", report["basic_calibration"]["heldout"]),
        ("pure roofline, held-out", report["roofline_only"]),
    ]
    quiet = report.get("heldout_uncontended")
    if quiet and quiet["cases"] < report["heldout"]["cases"]:
        rows.insert(2, ("calibrated, held-out timed on a quiet machine", quiet))
    for name, err in rows:
        summary.add_row(
            name,
            str(err["cases"]),
            _pct(err["median_abs_rel_err"]),
            _pct(err["p90_abs_rel_err"]),
            _pct(err["max_abs_rel_err"]),
        )
    console.print(summary)
    params = report["calibration"]["parameters"]
    console.print(
        "calibrated: "
        + ", ".join(f"{k} {v:.4g}" for k, v in params.items() if v is not None)
        + f"; terms {report['calibration']['terms']}"
    )
    cases = Table(title="held-out cases", title_justify="left")
    for column in (
        "layer",
        "phase",
        "B",
        "S",
        "T",
        "measured ms",
        "predicted ms",
        "err",
        "roofline ms",
        "exp meas/pred",
        "regime",
    ):
        cases.add_column(column, justify="right")
    for case in report["heldout_cases"]:
        exponents = (
            f"{case['measured_exponent']:.2f}/{case['predicted_exponent']:.2f}"
            if "measured_exponent" in case
            else "-"
        )
        agrees = case.get("regime_agrees")
        cases.add_row(
            case["dims"] + ("" if case.get("uncontended", True) else "*"),
            case["phase"],
            str(case["batch"]),
            str(case["prompt"]),
            str(case["context"]),
            f"{case['measured_ms']:.3f}",
            f"{case['predicted_ms']:.3f}",
            f"{100 * case['rel_err']:+.1f}%",
            f"{case['roofline_ms']:.3f}",
            exponents,
            "-" if agrees is None else ("agrees" if agrees else "DIFFERS"),
        )
    console.print(cases)
    if not all(c.get("uncontended", True) for c in report["heldout_cases"]):
        console.print("* timed only while other processes were busy on this machine")
    regime = report["regime"]
    console.print(
        f"regime (batch exponent >= {regime['threshold_exponent']} scales): "
        f"{regime['agree_strict']}/{regime['cases']} held-out cases on the same side, "
        f"{regime['agree']}/{regime['cases']} agree allowing exponents within "
        f"{regime['exponent_tolerance']}; measured {regime['heldout_regimes']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rounds = args.rounds or (1 if args.quick else 2)
    data = load_data(args.from_data) if args.from_data else measure(args.quick, rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = data["cases"]
    if not args.from_data:
        (out / "measurements.json").write_text(json.dumps(data, indent=1))
        if args.save_data:
            Path(args.save_data).parent.mkdir(parents=True, exist_ok=True)
            Path(args.save_data).write_text(json.dumps(data, indent=1))
    profile = data["profile"]
    peaks = calibrate.Peaks(profile["peak_flops"], profile["stream_bandwidth_bytes_s"])
    measured = np.array([row["min_s"] for row in rows])
    result = calibrate.validate(
        rows, measured, peaks, initial_calibration(profile), steps=args.steps
    )
    report = summarise(data, result)
    plot = predicted_vs_measured_figure(
        result, rows, out / "predicted_vs_measured.png", title=f"{data['device'].get('cpu')}"
    )
    date = data["device"].get("date_utc", "")[:10]
    name = args.spec_name or f"{data['device']['backend']}-measured"
    spec = microbench.hardware_spec_yaml(
        _profile_view(profile),
        name=name,
        memory_bytes=profile.get("memory_bytes"),
        source=args.from_data or args.save_data or str(out / "measurements.json"),
        efficiency=calibrate.efficiency_fields(
            result.calibration,
            f"experiments.validate_timing {date}: fitted on {int(result.train.sum())} layer "
            f"shapes; held-out median error {100 * report['heldout']['median_abs_rel_err']:.1f}%",
        ),
    )
    (out / "calibrated_spec.yaml").write_text(spec)
    if args.write_spec:
        Path(args.write_spec).write_text(spec)
    report["files"] = {
        "plot": str(plot),
        "spec": str(out / "calibrated_spec.yaml"),
        "measurements": args.from_data or str(out / "measurements.json"),
    }
    report["wall_s"] = time.perf_counter() - start
    if args.json:
        print_json(report)
    else:
        print_tables(report, Console(width=140))
    return 0


def _profile_view(profile: dict[str, Any]) -> microbench.DeviceProfile:
    """A DeviceProfile rebuilt from its JSON record (for writing the spec)."""
    return microbench.DeviceProfile(
        device=profile["device"],
        dtype=profile["dtype"],
        matmul=[microbench.MatmulPoint(**p) for p in profile["matmul"]],
        alt_dtype=profile["alt_dtype"],
        alt_matmul=microbench.MatmulPoint(**profile["alt_matmul"]),
        bandwidth=[microbench.BandwidthPoint(**p) for p in profile["bandwidth"]],
        dispatch_s=profile["dispatch_s"],
        kernel_s=profile["kernel_s"],
        os_cache_bytes=profile["os_cache_bytes"],
        cache_knee_bytes=profile["cache_knee_bytes"],
    )


if __name__ == "__main__":
    run(main)
