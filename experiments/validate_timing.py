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

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from costmodel.config.specs import ConfigError, Efficiency
from costmodel.present import records
from costmodel.present.timing_plots import predicted_vs_measured_figure
from costmodel.validate import calibrate, microbench, timing
from costmodel.validate.measure import measure_device
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


def measure(quick: bool, rounds: int | None) -> dict[str, Any]:
    """Microbenchmarks and layer timings by the library's protocol, with a progress bar."""
    protocol = timing.QUICK_PROTOCOL if quick else timing.DEFAULT_PROTOCOL
    if rounds:
        protocol = protocol._replace(rounds=rounds)
    with tqdm(total=0, file=sys.stderr, unit="step") as bar:

        def plan(n: int) -> None:
            bar.total += n
            bar.refresh()

        def step(label: str) -> None:
            bar.set_description(label)
            bar.update()

        return measure_device(quick=quick, protocol=protocol, progress=timing.Progress(plan, step))


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


def _errors(predicted, measured) -> calibrate.ErrorSummary:
    return calibrate.error_summary(predicted, measured)


def _clean(row: dict[str, Any]) -> bool:
    """Whether a case had a round with little CPU used by other processes (True if unknown)."""
    return row.get("clean_rounds", 1) > 0


def summarise(data: dict[str, Any], result: calibrate.Validation) -> records.TimingReport:
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
    load = data.get("load_average")
    return records.TimingReport(
        device=data["device"],
        calibration=records.TimingCalibration(
            terms=result.model._asdict(),
            efficiency=Efficiency.from_calibration(result.calibration, "fitted"),
            peak_flops=profile["peak_flops"],
            peak_bandwidth_bytes_s=profile["stream_bandwidth_bytes_s"],
            loss_start=float(result.losses[0]),
            loss_end=float(result.losses[-1]),
            steps=int(len(result.losses) - 1),
        ),
        train=_errors(result.predicted[train], measured[train]),
        heldout=_errors(result.predicted[heldout], measured[heldout]),
        roofline_only=_errors(result.predicted_roofline[heldout], measured[heldout]),
        heldout_uncontended=_errors(result.predicted[heldout & clean], measured[heldout & clean])
        if (heldout & clean).any()
        else None,
        basic_calibration=records.BasicCalibration(
            efficiency=Efficiency.from_calibration(result.basic, "fitted"),
            train=_errors(result.predicted_basic[train], measured[train]),
            heldout=_errors(result.predicted_basic[heldout], measured[heldout]),
        ),
        regime=records.RegimeSummary(
            cases=len(regime),
            agree=sum(c.agree for c in regime),
            agree_strict=sum(c.agree_strict for c in regime),
            threshold_exponent=calibrate.SCALING_THRESHOLD,
            exponent_tolerance=calibrate.EXPONENT_TOLERANCE,
            heldout_regimes={
                r: sum(c.measured_regime == r for c in regime)
                for r in ("flat in batch", "scales with batch")
            },
        ),
        measurement=records.Measurement(
            cases=len(rows),
            dtype=data.get("dtype"),
            quick=data.get("quick"),
            load_average=records.LoadAverage(load["start"], load["end"]) if load else None,
            measure_wall_s=data.get("measure_wall_s"),
            policy=data.get("policy"),
            rounds=data.get("rounds"),
            contention=data.get("contention"),
        ),
        microbench={
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
        heldout_cases=tuple(cases),
    )


# --------------------------------------------------------------------------- output


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_tables(report: dict[str, Any], console: Console) -> None:
    """The report as tables: errors per split, fitted values, held-out cases, regimes."""
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
    params = report["calibration"]["efficiency"]
    console.print(
        "calibrated (spec units): "
        + ", ".join(f"{k} {v:.4g}" for k, v in params.items() if isinstance(v, float))
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
    data = load_data(args.from_data) if args.from_data else measure(args.quick, args.rounds)
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
        rows, measured, peaks, calibrate.starting_calibration(profile), steps=args.steps
    )
    report = summarise(data, result).to_json()
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
        efficiency=Efficiency.from_calibration(
            result.calibration,
            f"experiments.validate_timing {date}: fitted on {int(result.train.sum())} layer "
            f"shapes; held-out median error {100 * report['heldout']['median_abs_rel_err']:.1f}%",
        ).model_dump(exclude_none=True),
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
