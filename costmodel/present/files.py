"""Writing result files whole or not at all: write beside the target, then rename over it.

A run killed mid-way leaves the previous file (or none), never a truncated one; two concurrent
runs writing the same path each leave a whole file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s directory, then rename it to
    ``path``.  The temporary file keeps ``path``'s suffix (matplotlib picks a format by it).
    Returns ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_figure(fig, path: str | Path, **savefig_options) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from the suffix)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, **savefig_options))
