"""Holding the model to the truth: reference layers, XLA's cost analysis, measured timings,
microbenchmarks and the calibration fit."""
