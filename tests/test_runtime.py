"""Process state: importing costmodel changes none; runtime.configure is the one switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest
import sympy as sp

from costmodel import runtime
from costmodel.compile.codegen import compile_expr
from costmodel.model import symbols as sy
from tests.helpers import ROOT

# Every module of the package, imported in a fresh interpreter; then the state they could touch.
_IMPORT_EVERYTHING = """
import json, os, pkgutil, importlib, sys
before = {k: os.environ.get(k) for k in ("XLA_FLAGS", "MPLBACKEND", "JAX_ENABLE_X64")}
import costmodel
for info in pkgutil.walk_packages(costmodel.__path__, "costmodel."):
    importlib.import_module(info.name)
import jax
after = {k: os.environ.get(k) for k in before}
state = {
    "environ_unchanged": before == after,
    "x64": bool(jax.config.jax_enable_x64),
    "cache_dir": jax.config.jax_compilation_cache_dir,
    "backend_forced": "matplotlib" in sys.modules
        and __import__("matplotlib").rcParams._get_backend_or_none() is not None,
}
print(json.dumps(state))
"""


@pytest.mark.slow
def test_importing_every_module_changes_no_process_state():
    # The child starts clean: this process's runtime.configure() set MPLBACKEND.
    env = {k: v for k, v in os.environ.items() if k not in {"MPLBACKEND", "XLA_FLAGS"}}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state == {
        "environ_unchanged": True,
        "x64": False,
        "cache_dir": None,
        "backend_forced": False,
    }


def test_compiling_without_float64_is_a_clear_error():
    assert runtime.x64_enabled()  # tests/conftest.py configured the runtime
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match=r"float64.*runtime\.configure"):
            compile_expr(sy.B * sy.T, [sy.B, sy.T])
    finally:
        runtime.configure()
    assert runtime.x64_enabled()
    assert float(compile_expr(sp.Integer(2) ** 40 * sy.B, [sy.B])(3.0)) == 3 * 2**40
