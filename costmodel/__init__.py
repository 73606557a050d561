"""costmodel: a symbolic roofline cost model of transformer inference, compiled to JAX.

The public API, one name per line.  Implementation modules hold the details: ``model`` (pure
SymPy), ``config`` (specs, catalogue, binding), ``compile`` (SymPy to JAX, sweeps), ``search``
(the optimiser), ``validate`` (XLA, timing, calibration), ``present`` (reports, plots, paper).
Importing costmodel changes no process state; call :func:`runtime.configure` before computing.
"""

from costmodel import runtime
from costmodel.compile.codegen import compile_expr
from costmodel.compile.codegen import compile_exprs
from costmodel.config.bind import Binding
from costmodel.config.bind import Setting
from costmodel.config.bind import bind
from costmodel.config.specs import ConfigError
from costmodel.config.specs import HardwareSpec
from costmodel.config.specs import ModelSpec
from costmodel.config.specs import Scenario
from costmodel.config.specs import load_hardware
from costmodel.config.specs import load_model
from costmodel.config.specs import load_scenario
from costmodel.model import symbols
from costmodel.model.dtypes import bytes_per_element
from costmodel.model.layers import decoder_layer
from costmodel.model.layers import kv_cache_elements_per_token
from costmodel.model.layers import model_ops
from costmodel.model.layers import parameter_count
from costmodel.model.memory import MemoryCost
from costmodel.model.memory import kv_cache_bytes
from costmodel.model.memory import memory_per_gpu
from costmodel.model.ops import Cost
from costmodel.model.ops import Op
from costmodel.model.roofline import intensity
from costmodel.model.roofline import op_time
from costmodel.model.roofline import regime
from costmodel.model.roofline import step_time
from costmodel.model.roofline import totals
from costmodel.model.roofline import whole_model_time
from costmodel.present.report import roofline_report

__all__ = [
    "Binding",
    "ConfigError",
    "Cost",
    "HardwareSpec",
    "MemoryCost",
    "ModelSpec",
    "Op",
    "Scenario",
    "Setting",
    "bind",
    "bytes_per_element",
    "compile_expr",
    "compile_exprs",
    "decoder_layer",
    "intensity",
    "kv_cache_bytes",
    "kv_cache_elements_per_token",
    "load_hardware",
    "load_model",
    "load_scenario",
    "memory_per_gpu",
    "model_ops",
    "op_time",
    "parameter_count",
    "regime",
    "roofline_report",
    "runtime",
    "step_time",
    "symbols",
    "totals",
    "whole_model_time",
]
