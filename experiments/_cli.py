"""Shared command-line plumbing: argument types and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from costmodel import runtime
from costmodel.config.specs import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(
    main: Callable[[list[str] | None], int],
    argv: list[str] | None = None,
    *,
    cpu_devices: int | None = None,
) -> None:
    """Configure the runtime (float64 JAX, ``cpu_devices`` CPU devices, Agg plots), then run
    ``main``; a ConfigError becomes one line on stderr and exit status 2, Ctrl-C exit 130."""
    runtime.configure(cpu_devices=cpu_devices)
    try:
        status = main(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        status = EXIT_BAD_INPUT
    except BrokenPipeError:
        status = 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = EXIT_INTERRUPTED
    sys.exit(status)


def print_json(data: Any) -> None:
    """One JSON object on stdout."""
    json.dump(data, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
