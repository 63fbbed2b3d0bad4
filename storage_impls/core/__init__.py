"""What every storage method is built from: the interface (base), errors, options, image codecs, the
checkpoint + journal protocol, metadata and value records, and the writer lock. Nothing here imports a
method or the registry (an import contract in pyproject.toml enforces it)."""
