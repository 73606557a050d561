"""The main job: choose batch, quantisation and tensor-parallel degree for a scenario.

    python -m experiments.optimise configs/h100_70b.yaml

Until the optimiser lands this prints the scenario's roofline report.
"""

from __future__ import annotations

from experiments import roofline
from experiments._cli import run


def main(argv: list[str] | None = None) -> int:
    return roofline.main(argv)


if __name__ == "__main__":
    run(main)
