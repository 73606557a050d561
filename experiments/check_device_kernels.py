"""Our own GPU kernel timings against the calibrated model and the pure roofline.

    python -m experiments.check_device_kernels [CSV] [--hardware NAME] [--level L] [--json]

CSV (default: the committed H200 timings of 2026-11-30,
``costmodel/data/device_kernels/h200-2026-11-30.csv``) holds rows timed on a GPU by
``python -m experiments.time_gpu_kernels`` (PyTorch's kernels, not an engine's).  Each kernel
row is predicted by every engine calibration of --hardware (default h200) that fitted its
family and dtype, and by the family's pure roofline; per (family, dtype, source) the command
prints the median and 90th-percentile |predicted / measured - 1| and, for a calibration, the
share of rows inside its prediction interval at --level (default 0.9).  The timed decode
and prefill steps of a Llama-3-8B-shaped model are printed beside the model's steps (engine
kernels under each calibration, and the pure roofline).  None of these rows was used to fit
anything.
"""

from __future__ import annotations

import argparse

from experiments._cli import OptionError, Parser, bounded_float, input_file, print_json, run

MAX_CSV_BYTES = 16 * 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser(
        prog="python -m experiments.check_device_kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("csv", nargs="?", help="timed rows (default: the committed H200 ones)")
    parser.add_argument("--hardware", default="h200", help="catalogue hardware of the GPU")
    parser.add_argument("--level", type=bounded_float(0.5, 0.99, "an interval level"), default=0.9)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.csv is not None:
        args.csv = input_file("csv", args.csv, max_bytes=MAX_CSV_BYTES)
    return args


def answer(args: argparse.Namespace) -> int:
    """Compare and print."""
    from costmodel.config import catalogue
    from costmodel.validate import device_check

    known = catalogue.names("hardware")
    if args.hardware not in known:
        raise OptionError(
            "--hardware", f"{args.hardware!r} is not in the catalogue ({', '.join(known)})"
        )
    args.csv = args.csv or device_check.DEFAULT_TIMINGS
    rows = device_check.read_measured(args.csv)
    kernels = device_check.kernel_agreement(rows, args.hardware, args.level)
    steps = device_check.step_agreement(rows, args.hardware)
    if args.json:
        print_json(
            {
                "csv": str(args.csv),
                "hardware": args.hardware,
                "level": args.level,
                "kernels": [k._asdict() for k in kernels],
                "steps": [s._asdict() for s in steps],
                "step_median_abs_rel_err": device_check.step_summary(steps),
            }
        )
        return 0
    print(f"{args.csv.name}: {len(rows)} timed rows, predicted for {args.hardware}")
    print(
        f"{'family':22} {'dtype':9} {'source':9} {'rows':>5} {'median':>8} {'p90':>8} "
        f"{'inside ' + format(args.level, 'g'):>10}"
    )
    for k in kernels:
        inside = "" if k.inside is None else f"{100 * k.inside:.1f}%"
        print(
            f"{k.family:22} {k.dtype:9} {k.source:9} {k.rows:5d} "
            f"{100 * k.median_abs_rel_err:7.1f}% {100 * k.p90_abs_rel_err:7.1f}% {inside:>10}"
        )
    summary = device_check.step_summary(steps)
    for phase, medians in summary.items():
        mine = [s for s in steps if s.phase == phase]
        names = list(medians)
        tokens = "context" if phase == "decode" else "prompt"
        print(f"\n{phase} steps of a Llama-3-8B-shaped model [ms]: measured, then predicted")
        print(f"{'batch':>6} {tokens:>8} {'measured':>9} " + " ".join(f"{n:>9}" for n in names))
        for s in mine:
            print(
                f"{s.batch:6d} {s.tokens:8d} {s.measured_ms:9.3f} "
                + " ".join(f"{s.predicted_ms[n]:9.3f}" for n in names)
            )
        print(
            f"{'median |predicted/measured - 1|':34}"
            + " ".join(f"{100 * medians[n]:8.1f}%" for n in names)
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
