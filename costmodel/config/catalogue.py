"""The shipped catalogue of hardware and model specs, found as package data.

The YAML files live in ``costmodel/catalogue/{hardware,models}/`` and install with the package,
so an installed (non-editable) costmodel finds them from any working directory.  Setting the
environment variable ``COSTMODEL_CATALOGUE`` to a directory with ``hardware/`` and ``models/``
subdirectories replaces the shipped catalogue (for specs of hardware that does not exist yet).
A catalogue directory that is missing or holds no specs is an error, never an empty catalogue.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

Kind = Literal["hardware", "models"]
ENVIRONMENT_VARIABLE = "COSTMODEL_CATALOGUE"


class CatalogueError(LookupError):
    """A catalogue directory that is missing or holds no specs of its kind."""

    def __init__(self, directory: Path, message: str):
        super().__init__(f"{directory}: {message}")
        self.directory = directory
        self.message = message


def root() -> Path:
    """The catalogue directory in use: ``$COSTMODEL_CATALOGUE`` if set, else the package's."""
    override = os.environ.get(ENVIRONMENT_VARIABLE)
    if override:
        return Path(override)
    return Path(str(resources.files("costmodel") / "catalogue"))


def _source() -> str:
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return f"${ENVIRONMENT_VARIABLE}"
    return "the costmodel package data"


def directory(kind: Kind) -> Path:
    """The directory holding the catalogue's ``kind`` specs."""
    return root() / kind


def names(kind: Kind, folder: Path | None = None) -> list[str]:
    """Names (file stems) of the ``kind`` specs in ``folder`` (default: the catalogue's), sorted.

    Raises :class:`CatalogueError` if the folder is missing or holds no ``*.yaml`` spec.
    """
    folder = directory(kind) if folder is None else folder
    source = _source() if folder == directory(kind) else "beside the scenario"
    try:
        found = sorted(p.stem for p in folder.glob("*.yaml") if p.is_file())
        exists = folder.is_dir()
    except OSError as err:
        raise CatalogueError(folder, f"cannot read the {kind} catalogue: {err.strerror}") from None
    if not exists:
        raise CatalogueError(folder, f"no {kind} catalogue directory (from {source})")
    if not found:
        raise CatalogueError(folder, f"no {kind} specs (*.yaml) in the catalogue (from {source})")
    return found


def path(kind: Kind, name: str) -> Path:
    """Path of the catalogue entry ``name`` of ``kind`` (it may not exist)."""
    return directory(kind) / f"{name}.yaml"


def engine_path(hardware: str, engine: str) -> Path:
    """Path of the calibration of ``engine`` on ``hardware`` (it may not exist):
    ``engines/<hardware>/<engine>.json`` under the catalogue directory."""
    return root() / "engines" / hardware / f"{engine}.json"


def step_overhead_path() -> Path:
    """Path of the engines' fitted step overheads (it may not exist):
    ``serving/step_overhead.json`` under the catalogue directory."""
    return root() / "serving" / "step_overhead.json"


def engine_pairs() -> list[tuple[str, str]]:
    """Every (hardware, engine) with a calibration in the catalogue, sorted (may be empty)."""
    folder = root() / "engines"
    if not folder.is_dir():
        return []
    return sorted((p.parent.name, p.stem) for p in folder.glob("*/*.json") if p.is_file())
