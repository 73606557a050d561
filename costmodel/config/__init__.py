"""Configuration: validated specs (plain data), the shipped catalogue, and the one module that
binds a scenario and a setting to symbol values (:mod:`costmodel.config.bind`)."""
