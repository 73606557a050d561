"""The serving model against measured serving runs (Llama-3.1-8B, H100 and H200).

    python -m experiments.validate_serving [--fit] [--interval LEVEL] [--json]

Answers every run of ``costmodel/data/serving_benchmarks`` (closed loops at a fixed
concurrency under TensorRT-LLM, SGLang and vLLM) three ways: the pure roofline, the engine's
measured kernels alone, and those plus the engine's fitted fixed cost per step.  Prints, per
engine, the held-out third's median and 90th-percentile |predicted / measured - 1| of TPOT and
TTFT and the median ratio predicted / measured, beside the training rows' TPOT error.  With
``--fit`` it first fits each engine's step overhead on the training rows and writes it to the
catalogue (``serving/step_overhead.json``; ``$COSTMODEL_CATALOGUE`` moves the catalogue).
With ``--interval LEVEL`` it also prints, per engine, the share of held-out runs whose measured
TTFT and TPOT lie inside the calibrated prediction's interval at LEVEL (``whatif --interval``'s
intervals: the kernel calibration's uncertainty alone, the step overhead held fixed).
"""

from __future__ import annotations

import argparse
import json

from experiments._cli import Parser, bounded_float, print_json, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser(prog="python -m experiments.validate_serving", description=__doc__)
    parser.add_argument("--fit", action="store_true", help="refit and write the overheads")
    parser.add_argument(
        "--interval",
        type=bounded_float(0.5, 1.0, "an interval level", high_open=True),
        metavar="LEVEL",
        help="also the held-out runs' coverage by the prediction intervals at LEVEL",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def answer(args: argparse.Namespace) -> int:
    """Fit (if asked), evaluate and print."""
    from rich.console import Console
    from rich.table import Table

    from costmodel import runtime
    from costmodel.config import catalogue
    from costmodel.config.load import step_overheads
    from costmodel.present.files import write_text
    from costmodel.validate import serving_data as sd

    runtime.configure()
    every = sd.runs()
    train = [r for r in every if not sd.held_out(r)]
    test = [r for r in every if sd.held_out(r)]
    if args.fit:
        fitted = sd.fit_overheads(train)
        record = {
            "source": f"python -m experiments.validate_serving --fit: least mean squared log "
            f"error of TPOT on the training rows of costmodel/data/serving_benchmarks/"
            f"{sd.DATA_FILE} (Llama-3.1-8B; {len(train)} of {len(every)} runs)",
            "split": sd.SPLIT,
            "seconds": {k: round(v, 9) for k, v in sorted(fitted.items())},
        }
        write_text(catalogue.step_overhead_path(), json.dumps(record, indent=2) + "\n")
    overheads = step_overheads().seconds
    results = []
    for engine in sorted({r.engine for r in every}):
        held = [r for r in test if r.engine == engine]
        trained = [r for r in train if r.engine == engine]
        models = {
            "pure roofline": sd.predict_runs(held, engine=False),
            "engine kernels": sd.predict_runs(held, engine=True, overhead={engine: 0.0}),
            "kernels + step overhead": sd.predict_runs(held, engine=True),
        }
        fitted_train = sd.predict_runs(trained, engine=True)
        for name, answers in models.items():
            results.append(
                {
                    "engine": engine,
                    "hardware": held[0].hardware,
                    "model": name,
                    "step_overhead_ms": overheads.get(engine, 0.0) * 1e3
                    if name == "kernels + step overhead"
                    else 0.0,
                    "tpot": sd.errors(held, answers, "tpot_ms")._asdict(),
                    "ttft": sd.errors(held, answers, "ttft_ms")._asdict(),
                    "train_tpot": sd.errors(trained, fitted_train, "tpot_ms")._asdict()
                    if name == "kernels + step overhead"
                    else None,
                }
            )
    coverage = []
    if args.interval is not None:
        for engine in sorted({r.engine for r in every}):
            held = [r for r in test if r.engine == engine]
            shares = sd.interval_coverage(held, args.interval)
            coverage.append({"engine": engine, "hardware": held[0].hardware, "rows": len(held)})
            coverage[-1] |= {f"inside_{k}": v for k, v in shares.items()}
    if args.json:
        data = {"split": sd.SPLIT, "results": results}
        if args.interval is not None:
            data |= {"interval_level": args.interval, "interval_coverage": coverage}
        print_json(data)
        return 0
    table = Table(title=f"serving runs, held-out third ({sd.SPLIT})", title_justify="left")
    for column in (
        "engine",
        "GPU",
        "model",
        "rows",
        "TPOT med",
        "p90",
        "ratio",
        "TTFT med",
        "p90",
        "ratio",
        "train TPOT med",
    ):
        table.add_column(column, justify="left" if column in ("engine", "model") else "right")
    for r in results:
        t, f = r["tpot"], r["ttft"]
        name = r["model"]
        if name == "kernels + step overhead":
            name += f" ({r['step_overhead_ms']:.2f} ms)"
        table.add_row(
            r["engine"],
            r["hardware"],
            name,
            str(t["rows"]),
            f"{t['median']:.1%}",
            f"{t['p90']:.1%}",
            f"{t['ratio']:.2f}",
            f"{f['median']:.1%}",
            f"{f['p90']:.1%}",
            f"{f['ratio']:.2f}",
            "" if r["train_tpot"] is None else f"{r['train_tpot']['median']:.1%}",
        )
    Console(width=150).print(table)
    if coverage:
        print(
            f"held-out runs inside the calibrated prediction's {args.interval:g} interval "
            f"({sd.INTERVAL_DRAWS} draws per deployment; kernel uncertainty only):"
        )
        for c in coverage:
            print(
                f"  {c['engine']:7} {c['hardware']:9} {c['rows']:3d} runs: TTFT "
                f"{c['inside_ttft_ms']:.1%}, TPOT {c['inside_tpot_ms']:.1%}, both "
                f"{c['inside_both']:.1%}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and answer it (exit status)."""
    return answer(parse_args(argv))


if __name__ == "__main__":
    run(answer, parse=parse_args)
