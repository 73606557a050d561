"""Fit the kernel families to the measured GPU kernels, or answer kernel questions with the fits.

    python -m experiments.calibrate_gpu [--hardware NAME ...] [--engine NAME ...]
                                        [--family NAME ...] [--json] [--plot DIR]
    python -m experiments.calibrate_gpu --predict FILE.csv
    python -m experiments.calibrate_gpu --coverage [--level 0.9] [--hardware NAME ...]
                                        [--engine NAME ...] [--json]

Default: for every measured (hardware, engine) (``costmodel/data/gpu_kernels``), narrowed by
--hardware and --engine, fit every family at every measured dtype
(:func:`costmodel.validate.gpu_fit.calibrate`; --family fits only the families named and keeps
the catalogue's fits of the others as they are), write the calibration to the catalogue
(``engines/<hardware>/<engine>.json``; ``$COSTMODEL_CATALOGUE`` moves the catalogue), and print
a table per (hardware, engine, family): training and held-out rows, the held-out median and 90th
percentile of |predicted / measured - 1|, the pure roofline's held-out median and the training
median, then one line per dtype.  --json prints one object ``{"fits": [...]}`` instead.
--plot DIR writes ``DIR/<hardware>-<engine>.png``: predicted against measured latency per family.

--predict FILE.csv fits nothing: it answers each row (columns family, hardware, engine, dtype
and the family's shape: gemm m, n, k; allreduce num_gpus, message_bytes; context_attention and
generation_attention batch, isl, heads, kv_heads, head_dim, where a generation row's isl is the
cached tokens; moe num_tokens, hidden_size, inter_size, topk, num_experts, moe_tp_size,
moe_ep_size; the mla families batch, isl, heads) with the catalogue's calibration, one JSON
line per row in file order: the row's columns (numbers as ints where integral) and
``latency_ms``.  Every row is checked first; a bad one is one line ``error: FILE: row N:
column: what is wrong`` (row 1 is the line after the header), exit status 2, and nothing on
stdout.

--coverage fits and writes nothing: for each chosen (hardware, engine) it builds a prediction
interval at --level (default 0.9) for every held-out row from the shipped calibration's
coefficients, their Laplace posterior on the training rows and the training residuals
(:mod:`costmodel.validate.gpu_uncertainty`), and prints the share of held-out rows whose
measured latency lies inside, overall and per family; --json prints one object
``{"coverage": [...]}`` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments._cli import OptionError, Parser, output_dir, print_json, run

if TYPE_CHECKING:  # annotations only: --help imports none of these
    from rich.table import Table

    from costmodel.config.specs import EngineCalibration, FitErrors, HardwareSpec

SELECTING = ("--hardware", "--engine", "--family", "--json", "--plot", "--coverage", "--level")
# The kernel families (costmodel.model.kernels.ALL_FAMILIES), repeated here so that parsing
# (and --help) imports nothing heavy; tests/test_calibrate_gpu.py checks that the two agree.
FAMILY_NAMES = (
    "gemm",
    "context_attention",
    "generation_attention",
    "allreduce",
    "moe",
    "mla_context",
    "mla_generation",
    "mla_context_module",
    "mla_generation_module",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked before anything heavy is imported: a readable --predict file
    (alone), a writable --plot folder."""
    parser = Parser(
        prog="python -m experiments.calibrate_gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--hardware", action="extend", nargs="+", metavar="NAME", help="only these GPUs"
    )
    parser.add_argument(
        "--engine", action="extend", nargs="+", metavar="NAME", help="only these engines"
    )
    parser.add_argument(
        "--family",
        action="extend",
        nargs="+",
        metavar="NAME",
        choices=FAMILY_NAMES,
        help="fit only these families; keep the catalogue's fits of the others",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="DIR", help="write one PNG per (hardware, engine)")
    parser.add_argument("--predict", metavar="FILE.csv", help="answer the rows of a CSV file")
    parser.add_argument(
        "--coverage",
        action="store_true",
        help="check the prediction intervals' coverage on the held-out rows (writes nothing)",
    )
    parser.add_argument(
        "--level",
        type=float,
        metavar="P",
        help="the intervals' level with --coverage, in (0, 1) (default 0.9)",
    )
    args = parser.parse_args(argv)
    try:
        if args.predict is not None:
            given = [o for o in SELECTING if getattr(args, o[2:]) not in (None, False)]
            if given:
                raise OptionError(
                    "--predict", f"answers from the shipped calibrations; drop {', '.join(given)}"
                )
            args.predict = input_file("--predict", args.predict)
        if args.coverage:
            given = [o for o in ("--family", "--plot", "--predict") if getattr(args, o[2:])]
            if given:
                raise OptionError("--coverage", f"fits nothing; drop {', '.join(given)}")
            if args.level is None:
                args.level = 0.9
            elif not 0 < args.level < 1:
                raise OptionError("--level", f"expected a level in (0, 1), got {args.level:g}")
        elif args.level is not None:
            raise OptionError("--level", "needs --coverage")
        if args.plot is not None:
            args.plot = output_dir("--plot", args.plot)
    except OptionError as err:
        parser.error(str(err))
    return args


def input_file(option: str, text: str) -> Path:
    """An existing regular file ``text``; else an OptionError naming ``option``."""
    if not text.strip():
        raise OptionError(option, "expected a file path, got an empty one")
    path = Path(text)
    if not path.exists():
        raise OptionError(option, f"{text}: no such file")
    if not path.is_file():
        raise OptionError(option, f"{text}: not a regular file")
    return path


# --------------------------------------------------------------------------- choosing pairs


def select_pairs(
    measured: Sequence[tuple[str, str]],
    hardware: Sequence[str] | None,
    engines: Sequence[str] | None,
) -> list[tuple[str, str]]:
    """The measured (hardware, engine) pairs narrowed to ``hardware`` and ``engines`` (None:
    all); an OptionError for an unknown name or a choice that leaves no pair."""
    for option, chosen, known in (
        ("--hardware", hardware, sorted({h for h, _ in measured})),
        ("--engine", engines, sorted({e for _, e in measured})),
    ):
        for name in chosen or ():
            if name not in known:
                raise OptionError(option, f"unknown {name!r} (known: {', '.join(known)})")
    found = [
        (h, e)
        for h, e in measured
        if (not hardware or h in hardware) and (not engines or e in engines)
    ]
    if not found:
        there = sorted({e for h, e in measured if h in (hardware or ())})
        raise OptionError(
            "--engine",
            f"{', '.join(engines or ())} not measured on {', '.join(hardware or ())} "
            f"(measured there: {', '.join(there)})",
        )
    return found


# --------------------------------------------------------------------------- summaries


def _errors(heldout: FitErrors, train: FitErrors, roofline: FitErrors) -> dict[str, Any]:
    return {
        "n_train": train.n,
        "n_heldout": heldout.n,
        "median_abs_rel_err": heldout.median,
        "p90_abs_rel_err": heldout.p90,
        "train_median_abs_rel_err": train.median,
        "roofline_median_abs_rel_err": roofline.median,
    }


def summary(calibration: EngineCalibration) -> dict[str, Any]:
    """One (hardware, engine) of the --json output: errors per family, pooled and per dtype
    (fractions; held-out unless named train)."""
    from costmodel.model.kernels import ALL_FAMILIES

    families = {}
    for name in (f for f in ALL_FAMILIES if f in calibration.families):
        fit = calibration.families[name]
        families[name] = {
            **_errors(fit.heldout, fit.train, fit.roofline_heldout),
            "dtypes": {
                d: _errors(f.heldout, f.train, f.roofline_heldout)
                for d, f in sorted(fit.dtypes.items())
            },
        }
    return {"hardware": calibration.hardware, "engine": calibration.engine, "families": families}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _row(label: str, errors: dict[str, Any]) -> list[str]:
    return [
        label,
        str(errors["n_train"]),
        str(errors["n_heldout"]),
        _percent(errors["median_abs_rel_err"]),
        _percent(errors["p90_abs_rel_err"]),
        _percent(errors["roofline_median_abs_rel_err"]),
        _percent(errors["train_median_abs_rel_err"]),
    ]


def table(fits: Sequence[dict[str, Any]]) -> Table:
    """The fits as a rich table: a line per (hardware, engine, family), one per dtype below."""
    from rich.table import Table

    out = Table(
        title="kernel families fitted to measured kernels (|predicted / measured - 1|)",
        title_justify="left",
    )
    for column in ("hardware", "engine", "family / dtype"):
        out.add_column(column)
    for column in ("train", "held-out", "median", "p90", "roofline median", "train median"):
        out.add_column(column, justify="right")
    for fit in fits:
        for name, errors in fit["families"].items():
            out.add_row(fit["hardware"], fit["engine"], *_row(name, errors))
            for dtype, per in errors["dtypes"].items():
                out.add_row("", "", *_row(f"   {dtype}", per), style="dim")
        out.add_section()
    return out


# --------------------------------------------------------------------------- commands


def write_calibration(calibration: EngineCalibration) -> Path:
    """Write ``calibration`` to the catalogue, atomically; returns its path."""
    from costmodel.config import catalogue
    from costmodel.present.files import write_text

    path = catalogue.engine_path(calibration.hardware, calibration.engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(calibration.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
    return write_text(path, text)


def write_plot(calibration: EngineCalibration, spec: HardwareSpec, folder: Path) -> Path:
    """Write ``folder/<hardware>-<engine>.png``, predicted against measured per family."""
    from costmodel.present.gpu_plots import calibration_figure, calibration_panels, figure_title

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{calibration.hardware}-{calibration.engine}.png"
    panels = calibration_panels(calibration, spec)
    return calibration_figure(panels, path, figure_title(calibration))


def calibrate(args: argparse.Namespace) -> int:
    """Fit the chosen pairs, write their calibrations (and figures), print the summary."""
    from rich.console import Console
    from tqdm import tqdm

    from costmodel.config import catalogue
    from costmodel.config.load import load_engine_calibration, load_hardware
    from costmodel.model.kernels import ALL_FAMILIES
    from costmodel.validate import gpu_fit

    chosen = select_pairs(gpu_fit.pairs(), args.hardware, args.engine)
    fits, written = [], []
    for hardware, engine in tqdm(chosen, desc="fitting", unit="pair", file=sys.stderr, leave=False):
        spec = load_hardware(catalogue.path("hardware", hardware))
        if args.family:
            shipped = catalogue.engine_path(hardware, engine)
            previous = load_engine_calibration(shipped) if shipped.is_file() else None
            families = [f for f in ALL_FAMILIES if f in args.family]
            calibration = gpu_fit.calibrate(spec, engine, families, previous)
        else:
            calibration = gpu_fit.calibrate(spec, engine)
        written.append(write_calibration(calibration))
        if args.plot is not None:
            written.append(write_plot(calibration, spec, args.plot))
        fits.append(summary(calibration))
    if args.json:
        print_json({"fits": fits})
        return 0
    console = Console(width=140)
    console.print(table(fits))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 0


def predict(args: argparse.Namespace) -> int:
    """Answer the rows of the --predict file, one JSON line each (nothing if a row is bad)."""
    from costmodel.validate.gpu_predict import PredictError, answer

    try:
        answers = answer(args.predict)
    except PredictError as err:
        raise OptionError(str(args.predict), str(err)) from None
    except OSError as err:
        raise OptionError("--predict", f"{args.predict}: {err.strerror or err}") from None
    sys.stdout.write("".join(json.dumps(a, allow_nan=False) + "\n" for a in answers))
    return 0


def coverage_summary(cov: Any) -> dict[str, Any]:
    """One (hardware, engine) of the --coverage --json output."""

    def share(inside: int, rows: int) -> float | None:
        return inside / rows if rows else None

    return {
        "hardware": cov.hardware,
        "engine": cov.engine,
        "level": cov.level,
        "inside": cov.inside,
        "rows": cov.rows,
        "coverage": share(cov.inside, cov.rows),
        "families": {
            name: {"inside": i, "rows": n, "coverage": share(i, n)}
            for name, (i, n) in cov.families.items()
        },
    }


def coverage_table(results: Sequence[dict[str, Any]]) -> Table:
    """The coverage as a rich table: a line per (hardware, engine), one per family below."""
    from rich.table import Table

    level = results[0]["level"] if results else 0.9
    out = Table(
        title=f"held-out rows inside their {level:.0%} prediction interval",
        title_justify="left",
    )
    for column in ("hardware", "engine", "family"):
        out.add_column(column)
    for column in ("held-out", "inside", "coverage"):
        out.add_column(column, justify="right")
    for r in results:
        out.add_row(
            r["hardware"], r["engine"], "all", str(r["rows"]), str(r["inside"]),
            _percent(r["coverage"]),
        )  # fmt: skip
        for name, f in r["families"].items():
            out.add_row(
                "", "", f"   {name}", str(f["rows"]), str(f["inside"]), _percent(f["coverage"]),
                style="dim",
            )  # fmt: skip
        out.add_section()
    return out


def coverage(args: argparse.Namespace) -> int:
    """Check the prediction intervals of the chosen pairs on their held-out rows."""
    from rich.console import Console
    from tqdm import tqdm

    from costmodel.config import catalogue
    from costmodel.config.load import load_engine_calibration, load_hardware
    from costmodel.validate import gpu_fit, gpu_uncertainty

    chosen = select_pairs(gpu_fit.pairs(), args.hardware, args.engine)
    results = []
    for hardware, engine in tqdm(
        chosen, desc="coverage", unit="pair", file=sys.stderr, leave=False
    ):
        shipped = catalogue.engine_path(hardware, engine)
        if not shipped.is_file():
            raise OptionError("--coverage", f"no calibration of {engine} on {hardware}: {shipped}")
        spec = load_hardware(catalogue.path("hardware", hardware))
        calibration = load_engine_calibration(shipped)
        results.append(coverage_summary(gpu_uncertainty.coverage(spec, calibration, args.level)))
    if args.json:
        print_json({"coverage": results})
        return 0
    Console(width=140).print(coverage_table(results))
    return 0


def answer(args: argparse.Namespace) -> int:
    """Run the command the arguments choose (exit status)."""
    if args.predict is not None:
        return predict(args)
    return coverage(args) if getattr(args, "coverage", False) else calibrate(args)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
