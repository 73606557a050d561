"""costmodel: a symbolic roofline cost model of transformer inference, compiled to JAX.

The public API, one name per line.  Implementation modules hold the details.
"""

from costmodel import symbols
from costmodel.codegen import compile_expr
from costmodel.codegen import compile_exprs
from costmodel.dtypes import bytes_per_element
from costmodel.layers import decoder_layer
from costmodel.layers import kv_cache_elements_per_token
from costmodel.layers import model_ops
from costmodel.layers import parameter_count
from costmodel.memory import MemoryCost
from costmodel.memory import kv_cache_bytes
from costmodel.memory import memory_per_gpu
from costmodel.ops import Cost
from costmodel.ops import Op
from costmodel.report import Setting
from costmodel.report import roofline_report
from costmodel.report import substitution
from costmodel.roofline import intensity
from costmodel.roofline import op_time
from costmodel.roofline import regime
from costmodel.roofline import step_time
from costmodel.roofline import totals
from costmodel.roofline import whole_model_time
from costmodel.specs import ConfigError
from costmodel.specs import HardwareSpec
from costmodel.specs import ModelSpec
from costmodel.specs import Scenario
from costmodel.specs import load_hardware
from costmodel.specs import load_model
from costmodel.specs import load_scenario

__all__ = [
    "ConfigError",
    "Cost",
    "HardwareSpec",
    "MemoryCost",
    "ModelSpec",
    "Op",
    "Scenario",
    "Setting",
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
    "step_time",
    "substitution",
    "symbols",
    "totals",
    "whole_model_time",
]
