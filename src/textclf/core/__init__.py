"""Core: config, formats and data, metrics, registry, the Predictor contract, meta, integrity, atomic files."""
