"""Every generated file of the paper, by name, from the scenario and the recorded results."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from costmodel.config.specs import EngineCalibration, Scenario
from costmodel.present.paper import device, gpu, model, results, serving, whatif
from costmodel.present.paper.latex import macro_file


def macros(scenario: Scenario) -> str:
    """Every ``\\val{key}`` of the paper: expressions and numbers of the derivations."""
    entries: dict[str, str] = {}
    for part in (
        model.roofline_values,
        model.intensity_values,
        model.ridge_values,
        model.kv_values,
        model.quantisation_values,
        model.flash_values,
        model.mla_values,
        model.moe_values,
        model.tensor_parallel_values,
        whatif.crossover_values,
        lambda _: gpu.term_values(),
    ):
        values = part(scenario)
        clash = entries.keys() & values.keys()
        if clash:
            raise ValueError(f"macro keys defined twice: {sorted(clash)}")
        entries |= values
    return macro_file(entries)


def generated_files(
    scenario: Scenario,
    recorded: Mapping[str, Mapping[str, Any] | None],
    calibrations: Mapping[tuple[str, str], EngineCalibration] | None = None,
) -> dict[str, str]:
    """File name under ``paper/generated/`` -> its content.  ``calibrations``: the engine
    calibrations the GPU section reports, by (hardware, engine) (None: the catalogue's)."""
    model_parts: dict[str, Callable[[], str]] = {
        "macros.tex": lambda: macros(scenario),
        "symbols.tex": model.symbol_table,
        "conventions.tex": model.conventions_table,
        "ridge.tex": model.ridge_table,
        "architectures.tex": model.architectures_table,
        "kernels_prefill.tex": lambda: model.kernel_table("prefill"),
        "kernels_decode.tex": lambda: model.kernel_table("decode"),
        "kernels_numbers.tex": lambda: model.kernel_numbers(
            scenario, 1, scenario.workload.default_context
        ),
        "seed_table.tex": lambda: model.seed_table(
            scenario, (scenario.workload.default_context, model.LONG_CONTEXT)
        ),
        "quantisation.tex": lambda: model.quantisation_table(scenario),
        "tensor_parallel.tex": lambda: model.tensor_parallel_table(scenario),
        "xla.tex": lambda: results.xla_section(recorded.get("validate_xla")),
        "optimiser.tex": lambda: results.optimiser_section(recorded.get("optimise_h100_70b")),
        "timing.tex": lambda: results.timing_section(recorded.get("validate_timing")),
        "gpu_families.tex": gpu.families_table,
        "device.tex": lambda: device.device_part(recorded.get(device.DEVICE_KERNELS)),
        "serving.tex": serving.serving_section,
        "whatif.tex": lambda: whatif.sensitivity_part(recorded.get("whatif")),
        "whatif_coverage.tex": lambda: whatif.coverage_part(recorded.get("kernel_coverage")),
        "whatif_serving.tex": lambda: whatif.serving_interval_part(
            recorded.get("serving_interval")
        ),
        "whatif_tables.tex": lambda: whatif.tables(
            recorded.get("whatif"), recorded.get("kernel_coverage")
        ),
        "gpu.tex": lambda: gpu.gpu_section(
            gpu.shipped_calibrations() if calibrations is None else calibrations
        ),
    }
    return {name: make() for name, make in sorted(model_parts.items())}
