"""One-line texts shared by the command lines' human-readable output."""

from __future__ import annotations

from typing import Any


def efficiency_line(report: dict[str, Any]) -> str:
    """'efficiency: pure roofline (1.0)', or the calibrated values and where they came from,
    or (with an engine) which engine calibration times the steps.

    ``report`` holds ``calibrated`` (bool), ``efficiency``
    (:func:`costmodel.present.report.efficiency_record`) and ``engine``
    (:func:`costmodel.present.report.engine_record`, or None).
    """
    eff = report.get("efficiency", {})
    engine = report.get("engine")
    if engine is not None:
        return (
            f"times: {engine['name']}'s measured kernels on {engine['hardware']} "
            f"(engine calibration: {engine['source']})"
        )
    if not report["calibrated"]:
        return "efficiency: pure roofline (1.0)"
    parts = [
        f"compute {eff.get('compute', 1.0):.3g}",
        f"memory {eff.get('memory', 1.0):.3g}",
        f"kernel overhead {eff.get('kernel_overhead_us', 0.0):.3g} us",
    ]
    if eff.get("overlap") is not None:
        parts.append(f"overlap exponent {eff['overlap']:.3g}")
    if eff.get("cache_mb"):
        parts.append(f"cache {eff['cache_mb']:.3g} MB at {eff['cache_bandwidth_tb_s']:.3g} TB/s")
    if eff.get("weight_relayout") is not None:
        parts.append(f"multi-row matmul weight re-layout {eff['weight_relayout']:.3g}x")
    if eff.get("attention") is not None:
        parts.append(f"attention kernels at {eff['attention']:.3g} of the rates")
    return f"efficiency: calibrated ({eff.get('calibrated')}): " + ", ".join(parts)
