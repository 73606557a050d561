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


def _umask() -> int:
    """The process's file-creation mask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# No software version in a PNG's metadata: the same figure gives the same bytes on any machine.
PNG_METADATA = {"Software": None}


def save_figure(fig, path: str | Path, *, dpi: int, close: bool = True) -> Path:
    """Save a matplotlib figure to ``path`` atomically and reproducibly (format from the
    suffix; PNGs carry no version stamp), then close it unless ``close`` is False."""
    path = Path(path)
    metadata = PNG_METADATA if path.suffix.lower() == ".png" else None
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, metadata=metadata))
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
