"""Shared command-line plumbing: argument types, option and path checks, one-line errors.

Bad input is one line on stderr, ``error: FILE: FIELD: message`` (a ConfigError) or
``error: --option: message`` (an :class:`OptionError`, or argparse's own complaints), and exit
status 2; Ctrl-C is one line and exit status 130.  Importing this module is cheap (no costmodel,
no JAX): a command parses its arguments, so ``--help`` and usage errors answer at once, before
anything heavy is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
REINTERRUPT_S = 0.05  # delay before a Ctrl-C swallowed by a callback is delivered again [s]
MAX_TOKENS = 2**24  # largest batch, context or token count an option accepts (16 Mi)
# Formats matplotlib writes without extra software (pgf needs LaTeX), by file suffix.
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff")
INTERRUPTED_MESSAGE = "interrupted"


# The engines a command may name: costmodel.config.specs.ENGINES, repeated here so that parsing
# (and --help) imports nothing heavy; tests/test_engine.py checks that the two agree.
ENGINES = ("vllm", "trtllm", "sglang")


class OptionError(Exception):
    """A bad command-line option, reported as one line ``--option: message``."""

    def __init__(self, option: str, message: str):
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``error: --option: message``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        """Print argparse's complaint as one line and exit with status 2."""
        print(f"error: {message.removeprefix('argument ')}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


# --------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def bounded_int(low: int, high: int, what: str) -> Callable[[str], int]:
    """argparse type: an integer in [low, high]; ``what`` names the quantity in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{what} must be between {low:,} and {high:,}, got {value:,}"
            )
        return value

    return parse


def token_count(what: str) -> Callable[[str], int]:
    """argparse type: a count of sequences or tokens, 1 to :data:`MAX_TOKENS`."""
    return bounded_int(1, MAX_TOKENS, what)


def bounded_float(
    low: float, high: float, what: str, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite number in the interval from ``low`` to ``high`` (each end
    excluded where ``low_open`` or ``high_open`` says); ``what`` names it in the message."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"{what} must lie in {interval}, got {value:g}")
        return value

    return parse


def input_file(option: str, text: str, *, max_bytes: int) -> Path:
    """An existing regular file ``text`` of at most ``max_bytes`` bytes; else an OptionError
    naming ``option``."""
    if not text.strip():
        raise OptionError(option, "expected a file path, got an empty one")
    path = Path(text)
    _check_names(option, path)
    try:
        if not path.exists():
            raise OptionError(option, f"{text}: no such file")
        if not path.is_file():
            raise OptionError(option, f"{text}: not a regular file")
        size = path.stat().st_size
    except OSError as err:
        raise OptionError(option, f"{text}: cannot read: {err.strerror or err}") from None
    if size > max_bytes:
        raise OptionError(
            option, f"{text}: {size:,} bytes: larger than an input file may be ({max_bytes:,})"
        )
    return path


# --------------------------------------------------------------------------- option checks


def check_tp(option: str, tp: int, *, heads: int, n_gpus: int) -> int:
    """A tensor-parallel degree that divides the ``heads`` query heads and fits in ``n_gpus``
    GPUs; else an OptionError naming ``option``."""
    if tp > n_gpus:
        raise OptionError(option, f"tp {tp} exceeds the scenario's n_gpus {n_gpus}")
    if heads % tp:
        raise OptionError(option, f"tp {tp} does not divide the model's {heads} query heads")
    return tp


def check_experts(args: argparse.Namespace, *, experts: bool) -> None:
    """--ep, --attention-dp and --expert-dtype: only for a model with experts, ep dividing tp,
    data-parallel attention with ep equal to tp; else an OptionError naming the option."""
    if not experts:
        for option, given in (
            ("--ep", args.ep != 1),
            ("--attention-dp", args.attention_dp),
            ("--expert-dtype", args.expert_dtype is not None),
        ):
            if given:
                raise OptionError(option, "the model has no experts")
        return
    if args.tp % args.ep:
        raise OptionError("--ep", f"ep {args.ep} does not divide tp {args.tp}")
    if args.attention_dp and args.ep != args.tp:
        raise OptionError("--attention-dp", f"needs ep equal to tp (ep {args.ep}, tp {args.tp})")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the current directory for a bare name)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, not guessed: a read-only mount or
    missing permission fails here even for root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".costmodel-check-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _check_names(option: str, path: Path) -> None:
    """Refuse a path with a name longer than the file system takes (checked before any stat of
    ``path``, which would fail on it)."""
    absolute = Path(os.path.abspath(path))
    limit = _name_max(Path(absolute.anchor))
    for part in absolute.parts[1:]:
        if len(os.fsencode(part)) > limit:
            raise OptionError(option, f"name {part[:20]}... is over {limit} bytes long")


def output_file(option: str, path: str | Path, *, suffixes: Collection[str] = ()) -> Path:
    """An output file ``path`` that can be written (atomically: a new file beside it, then a
    rename): not a directory, in an existing writable directory, a name the file system takes,
    and (if ``suffixes`` is given) one of those suffixes.  Else an OptionError naming
    ``option``.  Creates nothing."""
    text = str(path)
    if not text.strip():
        raise OptionError(option, "expected a file path, got an empty one")
    path = Path(text)
    _check_names(option, path)
    if text.endswith(os.sep) or path.is_dir():
        raise OptionError(option, f"{text} is a directory; expected a file path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OptionError(
            option,
            f"{text}: unknown file type {path.suffix or '(none)'!r}; use one of "
            + ", ".join(sorted(suffixes)),
        )
    parent = path.parent
    if not parent.exists():
        raise OptionError(option, f"{text}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OptionError(option, f"{text}: {parent} is not a directory")
    if not _can_create_in(parent):
        raise OptionError(option, f"{text}: cannot write in directory {parent}")
    return path


def image_file(option: str, path: str | Path) -> Path:
    """An output image path (:func:`output_file` with a suffix of :data:`IMAGE_SUFFIXES`)."""
    return output_file(option, path, suffixes=IMAGE_SUFFIXES)


def output_dir(option: str, path: str | Path) -> Path:
    """An output directory ``path`` that exists and is writable, or can be created (its
    nearest existing ancestor is a writable directory and its names are not too long).
    Else an OptionError naming ``option``.  Creates nothing."""
    text = str(path)
    if not text.strip():
        raise OptionError(option, "expected a directory path, got an empty one")
    path = Path(text)
    _check_names(option, path)
    if path.exists() and not path.is_dir():
        raise OptionError(option, f"{text} exists and is not a directory")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise OptionError(option, f"{text}: {existing} is not a directory")
    if not _can_create_in(existing):
        raise OptionError(option, f"{text}: cannot write in directory {existing}")
    return path


@contextlib.contextmanager
def staged_output(option: str, out: Path) -> Iterator[Path]:
    """A staging folder inside ``out`` (created with its parents if missing) for the body to
    write into; on success its files move into ``out`` (each rename atomic), on failure
    nothing stays: the staging folder goes, and so do the folders this call created.

    An output folder that cannot be made or written raises an OptionError naming ``option``.
    """
    created = []
    for parent in reversed([out, *out.parents]):
        if not parent.exists() and parent != Path(""):
            created.append(parent)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as err:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        reason = err.strerror or str(err)
        raise OptionError(option, f"{out}: cannot write the output folder: {reason}") from None
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if sys.exc_info()[0] is not None:
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()


# --------------------------------------------------------------------------- running a command


def _config_error(err: BaseException) -> bool:
    """Whether ``err`` is a costmodel ConfigError (without importing costmodel to find out)."""
    specs = sys.modules.get("costmodel.config.specs")
    return specs is not None and isinstance(err, specs.ConfigError)


def _interrupt_again(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook that does not let Ctrl-C be lost: Python swallows an
    exception raised where it cannot propagate (a garbage-collection callback such as JAX's)
    and reports it as "Exception ignored"; a KeyboardInterrupt there is sent again as SIGINT
    from another thread a moment later (:data:`REINTERRUPT_S`), once the callback has returned,
    and other exceptions go to ``hook``."""

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            again = threading.Timer(REINTERRUPT_S, os.kill, (os.getpid(), signal.SIGINT))
            again.daemon = True
            again.start()
            return
        hook(info)

    return unraisable


def _interrupted() -> int:
    """Ignore further Ctrl-C (no second traceback while shutting down), say so in one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(INTERRUPTED_MESSAGE, file=sys.stderr)
    return EXIT_INTERRUPTED


def exit_now(status: int) -> None:
    """Flush stdout and stderr, then end the process with ``status`` at once, skipping the
    interpreter's teardown: after an interrupted XLA compilation, jaxlib can crash there
    (SIGSEGV instead of exit 130).  Files are already whole: writes are atomic."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def run(
    main: Callable[[Any], int],
    argv: list[str] | None = None,
    *,
    cpu_devices: int | None = None,
    parse: Callable[[list[str] | None], Any] | None = None,
) -> None:
    """Run a command and exit with its status.

    With ``parse``, the arguments are parsed first (``--help`` and usage errors answer before
    anything heavy is imported), then the runtime is configured (float64 JAX, ``cpu_devices``
    CPU devices, Agg plots) and ``main(parse(argv))`` runs; without, the runtime is configured
    and ``main(argv)`` runs.  A ConfigError or OptionError becomes one line on stderr and exit
    status 2; Ctrl-C, wherever it lands (imports, JAX compilation, a garbage-collection
    callback, which would swallow it), one line and exit 130."""
    sys.unraisablehook = _interrupt_again(sys.unraisablehook)
    try:
        args = parse(argv) if parse is not None else argv
        import costmodel.runtime as runtime

        runtime.configure(cpu_devices=cpu_devices)
        status = main(args)
    except KeyboardInterrupt:
        status = _interrupted()
        exit_now(status)
    except OptionError as err:
        print(f"error: {err}", file=sys.stderr)
        status = EXIT_BAD_INPUT
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error; silence the final flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 0
    except Exception as err:
        if not _config_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        status = EXIT_BAD_INPUT
    sys.exit(status)


def print_json(data: Any) -> None:
    """One JSON object on stdout."""
    json.dump(data, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
