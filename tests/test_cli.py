"""Command-line plumbing (``experiments._cli``): option types, path checks, ``run``'s exits."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from costmodel.config.specs import ConfigError
from experiments import _cli
from experiments._cli import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    IMAGE_SUFFIXES,
    MAX_TOKENS,
    OptionError,
    Parser,
    check_tp,
    image_file,
    output_dir,
    output_file,
    run,
    token_count,
)
from tests.helpers import ROOT

UNWRITABLE = Path("/proc")  # a directory no one can create files in, root included
CHILD_TIMEOUT_S = 120  # generous: the machine may be shared
COMPILE_FOR_S = 0.5  # let XLA compile a while before the interrupt


def run_exit(capsys, main, argv=None, **kwargs) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv, **kwargs)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# --------------------------------------------------------------------------- option types


def test_token_count_bounds():
    parse = token_count("batch")
    assert parse("1") == 1
    assert parse(str(MAX_TOKENS)) == MAX_TOKENS
    for text in ("0", "-1", str(MAX_TOKENS + 1), "1.5", "", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_parser_errors_are_one_line_naming_the_option(capsys):
    parser = Parser(prog="prog")
    parser.add_argument("--batch", type=token_count("batch"))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--batch", "0"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: --batch: batch must be between 1 and")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("tp", "ok"), [(1, True), (8, True), (3, False), (16, False), (10**6, False)]
)
def test_check_tp(tp, ok):
    if ok:
        assert check_tp("--tp", tp, heads=64, n_gpus=8) == tp
    else:
        with pytest.raises(OptionError, match=r"^--tp: "):
            check_tp("--tp", tp, heads=64, n_gpus=8)


# --------------------------------------------------------------------------- paths


def test_output_file_accepts_new_and_existing_files(tmp_path, monkeypatch):
    assert output_file("--out", tmp_path / "a.json") == tmp_path / "a.json"
    (tmp_path / "b.json").write_text("old")
    assert output_file("--out", tmp_path / "b.json") == tmp_path / "b.json"
    monkeypatch.chdir(tmp_path)
    assert output_file("--out", "c.json") == Path("c.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # nothing created


@pytest.mark.parametrize(
    "make",
    [
        lambda d: d,  # a directory
        lambda d: str(d) + "/",  # a directory's spelling
        lambda d: d / "missing" / "a.json",  # no such directory
        lambda d: d / "file" / "a.json",  # a file where the directory should be
        lambda d: d / ("n" * 300),  # a name over NAME_MAX
        lambda d: d / "missing" / ("n" * 300) / "a.json",  # over-long, below a missing one
        lambda d: UNWRITABLE / "a.json",  # cannot write there
        lambda d: "",
    ],
)
def test_output_file_refusals_name_the_option(tmp_path, make):
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match=r"^--out: "):
        output_file("--out", make(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_output_file_in_an_unwritable_current_directory(monkeypatch):
    monkeypatch.chdir(UNWRITABLE)
    with pytest.raises(OptionError, match="cannot write"):
        output_file("--out", "a.json")


def test_image_suffixes_are_formats_matplotlib_writes(tmp_path):
    from matplotlib.backend_bases import FigureCanvasBase

    supported = {f".{name}" for name in FigureCanvasBase.get_supported_filetypes()}
    assert set(IMAGE_SUFFIXES) <= supported
    assert image_file("--plot", tmp_path / "a.PNG") == tmp_path / "a.PNG"
    with pytest.raises(OptionError, match="unknown file type"):
        image_file("--plot", tmp_path / "a.txt")


def test_output_dir(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    assert output_dir("--out-dir", tmp_path) == tmp_path
    assert output_dir("--out-dir", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    for bad in (
        tmp_path / "file",
        tmp_path / "file" / "below",
        tmp_path / ("d" * 300),
        UNWRITABLE / "new",
        "",
    ):
        with pytest.raises(OptionError, match=r"^--out-dir: "):
            output_dir("--out-dir", bad)
    monkeypatch.chdir(UNWRITABLE)
    with pytest.raises(OptionError, match="cannot write"):
        output_dir("--out-dir", "results")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created


# --------------------------------------------------------------------------- run


def test_run_turns_bad_input_into_one_line_and_exit_2(capsys):
    def config_error(argv):
        raise ConfigError("scenario.yaml", "n_gpus", "must be positive")

    def option_error(argv):
        raise OptionError("--tp", "tp 3 does not divide the model's 64 query heads")

    assert run_exit(capsys, config_error) == (
        2,
        "",
        "error: scenario.yaml: n_gpus: must be positive\n",
    )
    status, out, err = run_exit(capsys, option_error)
    assert (status, out) == (2, "")
    assert err == "error: --tp: tp 3 does not divide the model's 64 query heads\n"


@pytest.fixture
def in_process_interrupt(monkeypatch):
    """Let ``run`` handle Ctrl-C inside pytest: keep the process (``exit_now`` does nothing, so
    ``run`` raises SystemExit) and restore the SIGINT handler it turns off."""
    handler = signal.getsignal(signal.SIGINT)
    exits = []
    monkeypatch.setattr(_cli, "exit_now", exits.append)
    yield exits
    signal.signal(signal.SIGINT, handler)


def test_run_reports_interrupt_and_success(capsys, in_process_interrupt):
    def interrupted(argv):
        print("started")
        raise KeyboardInterrupt

    assert run_exit(capsys, interrupted) == (EXIT_INTERRUPTED, "started\n", "interrupted\n")
    assert in_process_interrupt == [EXIT_INTERRUPTED]
    assert run_exit(capsys, lambda argv: 0, []) == (0, "", "")


def test_run_with_parse_parses_first_and_passes_the_namespace(capsys):
    seen = []

    def parse(argv):
        parser = Parser(prog="prog")
        parser.add_argument("--n", type=token_count("n"), default=1)
        return parser.parse_args(argv)

    def main(args):
        seen.append(args.n)
        return 0

    assert run_exit(capsys, main, ["--n", "3"], parse=parse)[0] == 0
    assert seen == [3]
    status, out, _ = run_exit(capsys, main, ["--help"], parse=parse)
    assert (status, seen) == (0, [3]) and out.startswith("usage: prog")
    status, _, err = run_exit(capsys, main, ["--n", "0"], parse=parse)
    assert (status, seen) == (2, [3]) and err.startswith("error: --n: ")


def test_run_lets_a_bug_raise():
    def bug(argv):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run(bug)


# --------------------------------------------------------------------------- Ctrl-C, for real


def _wait_for(stream, predicate) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line)
        if predicate(line):
            return lines
    raise AssertionError("the child ended before it got there: " + "".join(lines))


COMPILING_CHILD = """
import sys
from experiments._cli import run


def main(argv):
    import jax
    import jax.numpy as jnp

    print("compiling", flush=True)
    for n in range(10**6):  # distinct functions: every one compiles anew
        def f(x, n=n):
            for i in range(100):
                x = jnp.sin(x) * (i + n) + jnp.cos(x @ x.T)
            return x
        jax.jit(f).lower(jnp.ones((32, 32))).compile()


run(main)
"""


@pytest.mark.parametrize("moment", ["importing", "computing", "compiling"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, moment):
    """SIGINT while the command imports costmodel (JAX, SymPy), while it computes a report (the
    calibrated CPU spec: seconds of SymPy), or while JAX compiles: exit 130 (not a crash in
    teardown), stderr one line, no traceback."""
    scenario = tmp_path / "cpu.yaml"
    scenario.write_text(
        "model: llama-3-8b\nhardware: cpu-epyc-2core\nn_gpus: 1\n"
        "workload: {prompt_tokens: 512, output_tokens: 128}\n"
        "slo: {tpot_ms: 50, ttft_ms: 2000}\nsearch: {tp: [1]}\n"
    )
    # -X importtime streams a line per imported module to stderr: the parent reads them to
    # know the child is importing (while computing, stdout's header says it got that far).
    trace = ["-X", "importtime"] if moment == "importing" else []
    command = [sys.executable, *trace, "-m", "experiments.roofline", str(scenario)]
    if moment == "compiling":
        command = [sys.executable, "-c", COMPILING_CHILD]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if moment == "importing":  # costmodel.runtime is imported first, then JAX
            early = _wait_for(child.stderr, lambda line: "costmodel.runtime" in line)
        else:  # the header is printed before the report is computed, or before compiling
            _wait_for(child.stdout, lambda line: "cpu-epyc-2core" in line or "compiling" in line)
            early = []
            if moment == "compiling":
                time.sleep(COMPILE_FOR_S)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        child.kill()
        child.wait()
    said = [
        line
        for line in "".join(early).splitlines() + err.splitlines()
        if not line.startswith("import time:")
    ]
    assert child.returncode == EXIT_INTERRUPTED, err
    assert said == [_cli.INTERRUPTED_MESSAGE]
    if moment == "importing":
        assert out == ""


GC_INTERRUPT_CHILD = """
import gc, time
from experiments._cli import run


def main(argv):
    fired = []

    def callback(phase, info):  # a Ctrl-C landing in a garbage-collection callback (JAX has one)
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt

    gc.callbacks.append(callback)
    gc.collect()
    for _ in range(500):
        time.sleep(0.01)
    print("finished", flush=True)
    return 0


run(main)
"""


def test_ctrl_c_swallowed_by_a_gc_callback_still_interrupts():
    """Python reports an exception raised in a gc callback as "Exception ignored" and goes on;
    run() delivers the Ctrl-C again: exit 130, one line, the command does not finish."""
    child = subprocess.run(
        [sys.executable, "-c", GC_INTERRUPT_CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert child.returncode == EXIT_INTERRUPTED, child.stderr
    assert child.stdout == ""
    assert child.stderr.splitlines() == [_cli.INTERRUPTED_MESSAGE]
