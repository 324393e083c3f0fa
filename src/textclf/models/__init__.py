"""Model families: one module each (never a module named after the library it wraps)."""
