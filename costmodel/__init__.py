"""costmodel: a symbolic roofline cost model of transformer inference, compiled to JAX.

The public API, one name per line.  Implementation modules hold the details: ``model`` (pure
SymPy), ``config`` (specs, catalogue, binding), ``compile`` (SymPy to JAX, sweeps), ``search``
(the optimiser), ``validate`` (XLA, timing, calibration), ``present`` (reports, plots, paper).
Importing costmodel changes no process state and imports nothing heavy: each name below is
loaded from its module on first use (PEP 562), so ``import costmodel`` costs no JAX start-up.
Call :func:`runtime.configure` before computing.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it; the names in _MODULES are those modules themselves.
_EXPORTS = {
    "runtime": "costmodel.runtime",
    "compile_expr": "costmodel.compile.codegen",
    "compile_exprs": "costmodel.compile.codegen",
    "Binding": "costmodel.config.bind",
    "Setting": "costmodel.config.bind",
    "bind": "costmodel.config.bind",
    "ConfigError": "costmodel.config.specs",
    "EngineCalibration": "costmodel.config.specs",
    "HardwareSpec": "costmodel.config.specs",
    "ModelSpec": "costmodel.config.specs",
    "Scenario": "costmodel.config.specs",
    "load_engine_calibration": "costmodel.config.load",
    "load_hardware": "costmodel.config.load",
    "load_model": "costmodel.config.load",
    "load_scenario": "costmodel.config.load",
    "symbols": "costmodel.model.symbols",
    "bytes_per_element": "costmodel.model.dtypes",
    "Architecture": "costmodel.model.layers",
    "MoEArchitecture": "costmodel.model.layers",
    "decoder_layer": "costmodel.model.layers",
    "model_parameters": "costmodel.model.layers",
    "touched_experts": "costmodel.model.moe",
    "kv_cache_elements_per_token": "costmodel.model.layers",
    "model_ops": "costmodel.model.layers",
    "parameter_count": "costmodel.model.layers",
    "engine_kernels": "costmodel.model.engine",
    "kernel_family": "costmodel.model.kernels",
    "MemoryCost": "costmodel.model.memory",
    "kv_cache_bytes": "costmodel.model.memory",
    "memory_per_gpu": "costmodel.model.memory",
    "Cost": "costmodel.model.ops",
    "Op": "costmodel.model.ops",
    "intensity": "costmodel.model.roofline",
    "op_time": "costmodel.model.roofline",
    "regime": "costmodel.model.roofline",
    "step_time": "costmodel.model.roofline",
    "totals": "costmodel.model.roofline",
    "whole_model_time": "costmodel.model.roofline",
    "roofline_report": "costmodel.present.report",
}

_MODULES = {"runtime", "symbols"}

__all__ = sorted(_EXPORTS, key=lambda name: (name[0].islower(), name))


def __getattr__(name: str):
    """Load a public name from its module on first access, then keep it here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'costmodel' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
