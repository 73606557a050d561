"""Generate the paper's LaTeX and figures from the model, or check that they are current.

    python -m experiments.paper                 # write paper/generated/*.tex, paper/figures/*.png
    python -m experiments.paper --check         # exit 1 if paper/generated/ is out of date
    python -m experiments.paper --record NAME   # run an experiment, keep its JSON in paper/data/
    make -C paper                               # then build paper/paper.pdf

Everything under paper/generated/ comes from the model's own expressions (costmodel.present.paper),
from the experiments' recorded JSON under paper/data/ (NAME: validate_xla, optimise_h100_70b,
validate_timing; whatif, the what-if section's worked example, under a minute; kernel_coverage,
the kernels' prediction-interval coverage, about a minute; serving_interval, the worked
example's serving intervals, a quarter of a minute; device_kernels, our own H200 timings
against the calibrations, under a minute; or all) and from the shipped GPU engine
calibrations (costmodel/catalogue/engines/, read as they are, never refitted; the GPU section's
figure is drawn from one of them and the committed measurements).  --check regenerates the
LaTeX in memory, compares it byte for byte and draws no figures, so it is fast and
deterministic.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from costmodel.config import catalogue
from costmodel.config.load import load_scenario
from costmodel.present import records
from costmodel.present.paper import device, figures, gpu
from costmodel.present.paper.build import generated_files
from costmodel.present.paper.results import EXPERIMENTS, command, lookup
from costmodel.present.paper.whatif import RECORDINGS as WHATIF_RECORDINGS
from costmodel.present.paper.whatif import Recording, commands
from experiments._cli import run

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the paper is built there
PAPER = ROOT / "paper"
GENERATED = PAPER / "generated"
FIGURES = PAPER / "figures"
DATA = PAPER / "data"
SCENARIO = ROOT / "configs" / "h100_70b.yaml"
RECORDINGS = WHATIF_RECORDINGS | device.RECORDINGS  # plain JSON, one key per command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.paper", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare, write nothing")
    mode.add_argument(
        "--record",
        choices=[*sorted(EXPERIMENTS), *sorted(RECORDINGS), "all"],
        help="run an experiment and store its --json output under paper/data/",
    )
    parser.add_argument(
        "--generated-dir", type=Path, default=GENERATED, help="where the .tex files go"
    )
    return parser.parse_args(argv)


def recorded_results(directory: Path = DATA) -> dict[str, object | None]:
    """Each experiment's recorded output read through its schema, or None where there is none
    (a malformed recording is a RecordError naming the file and the key)."""
    found: dict[str, object | None] = {}
    for name, experiment in EXPERIMENTS.items():
        path = directory / f"{name}.json"
        found[name] = records.load(path, experiment.schema) if path.is_file() else None
    for name in RECORDINGS:  # the what-if section's and the device check's: plain JSON
        path = directory / f"{name}.json"
        found[name] = json.loads(path.read_text()) if path.is_file() else None
    return found


def expected_files() -> dict[str, str]:
    """What paper/generated/ must hold for the current code and recorded results."""
    return generated_files(load_scenario(SCENARIO), recorded_results())


def stale_files(directory: Path, expected: dict[str, str]) -> list[str]:
    """Names that differ, are missing, or should not be there; with a short diff each."""
    problems = []
    present = {p.name for p in directory.glob("*.tex")} if directory.is_dir() else set()
    for name in sorted(present - expected.keys()):
        problems.append(f"{name}: not produced by the code (remove it)")
    for name, text in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        current = path.read_text()
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), "on disk", "from the code", lineterm=""
            )
            problems.append(f"{name}: differs\n" + "\n".join(list(diff)[:12]))
    return problems


def write_generated(directory: Path, expected: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.tex"):
        if path.name not in expected:
            path.unlink()
    for name, text in expected.items():
        (directory / name).write_text(text)


def draw_figures(recorded: dict[str, dict | None]) -> list[Path]:
    scenario = load_scenario(SCENARIO)
    paths = [
        figures.roofline_plot(scenario, FIGURES / "roofline.png"),
        figures.decode_batch_plot(scenario, FIGURES / "decode_batch.png"),
        figures.kv_traffic_plot(scenario, FIGURES / "kv_traffic.png"),
        figures.tensor_parallel_plot(scenario, FIGURES / "tensor_parallel.png"),
    ]
    paths += figures.result_figures(recorded, FIGURES)
    if gpu.FIGURE_PAIR in set(catalogue.engine_pairs()):
        paths.append(figures.gpu_calibration_plot(*gpu.FIGURE_PAIR, FIGURES / gpu.GPU_FIGURE))
    return paths


def record(name: str) -> Path:
    """Run one experiment with --json and store its output under paper/data/."""
    experiment = EXPERIMENTS[name]
    module = ROOT / "experiments" / f"{experiment.module}.py"
    if not module.is_file():
        raise SystemExit(f"error: {module.relative_to(ROOT)} does not exist yet")
    print(f"+ {command(experiment)}", file=sys.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", f"experiments.{experiment.module}", *experiment.args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        check=False,
        text=True,
    )
    if proc.returncode not in (0, experiment.failing_exit):
        raise SystemExit(f"error: {command(experiment)} exited {proc.returncode}")
    data = json.loads(proc.stdout)
    try:
        experiment.schema.from_json(data, command(experiment))
    except records.RecordError as err:
        raise SystemExit(f"error: {err}") from None
    for key, figure in experiment.figures:
        target = FIGURES / figure
        source = ROOT / lookup(data, key)  # an absolute path stays as it is
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        print(f"copied {source} to {target.relative_to(ROOT)}", file=sys.stderr)
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def record_commands(recording: Recording) -> Path:
    """Run each command of a what-if recording with --json and store their outputs together
    under paper/data/, one key per command."""
    data = {}
    for (key, module, args), shown in zip(recording.commands, commands(recording), strict=True):
        print(f"+ {shown}", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", f"experiments.{module}", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            check=False,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"error: {shown} exited {proc.returncode}")
        data[key] = json.loads(proc.stdout)
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{recording.name}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.record:
        names = (
            [*sorted(EXPERIMENTS), *sorted(RECORDINGS)] if args.record == "all" else [args.record]
        )
        for name in names:
            path = record(name) if name in EXPERIMENTS else record_commands(RECORDINGS[name])
            print(f"recorded {path.relative_to(ROOT)}")
        args.check = False
    expected = expected_files()
    if args.check:
        problems = stale_files(args.generated_dir, expected)
        for name in sorted(EXPERIMENTS):
            module = ROOT / "experiments" / f"{EXPERIMENTS[name].module}.py"
            if module.is_file() and not (DATA / f"{name}.json").is_file():
                print(
                    f"note: experiments/{module.name} exists but paper/data/{name}.json does "
                    f"not: python -m experiments.paper --record {name}",
                    file=sys.stderr,
                )
        if problems:
            print("paper/generated/ is out of date; run python -m experiments.paper:")
            print("\n".join(problems))
            return 1
        print(f"paper/generated/: {len(expected)} files, all current")
        return 0
    write_generated(args.generated_dir, expected)
    for path in draw_figures(recorded_results()):
        print(f"wrote {path.relative_to(ROOT)}")
    print(f"wrote {len(expected)} files under {args.generated_dir}")
    return 0


if __name__ == "__main__":
    run(main)
