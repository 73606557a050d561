"""The shipped catalogue of hardware and model specs, found as package data.

The YAML files live in ``costmodel/catalogue/{hardware,models}/`` and install with the package,
so an installed (non-editable) costmodel finds them from any working directory.  Setting the
environment variable ``COSTMODEL_CATALOGUE`` to a directory with ``hardware/`` and ``models/``
subdirectories replaces the shipped catalogue (for specs of hardware that does not exist yet).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

Kind = Literal["hardware", "models"]
ENVIRONMENT_VARIABLE = "COSTMODEL_CATALOGUE"


def root() -> Path:
    """The catalogue directory in use: ``$COSTMODEL_CATALOGUE`` if set, else the package's."""
    override = os.environ.get(ENVIRONMENT_VARIABLE)
    if override:
        return Path(override)
    return Path(str(resources.files("costmodel") / "catalogue"))


def directory(kind: Kind) -> Path:
    """The directory holding the catalogue's ``kind`` specs."""
    return root() / kind


def names(kind: Kind) -> list[str]:
    """Names (file stems) of the catalogue's ``kind`` specs, sorted."""
    return sorted(p.stem for p in directory(kind).glob("*.yaml"))


def path(kind: Kind, name: str) -> Path:
    """Path of the catalogue entry ``name`` of ``kind`` (it may not exist)."""
    return directory(kind) / f"{name}.yaml"
