"""The pure SymPy model: symbols, dtypes, kernels, layers, parallelism, memory, roofline.

No JAX, no I/O: every formula of the project lives here, as exact SymPy expressions.
"""
