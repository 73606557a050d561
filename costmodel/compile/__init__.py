"""SymPy to JAX: the one printer (:mod:`~costmodel.compile.codegen`) and grid sweeps."""
