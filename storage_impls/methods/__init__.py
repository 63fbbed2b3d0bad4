"""One module or package per storage method; the registry (storage_impls/registry.py) names them.
Methods are independent of each other and of the registry (import contracts in pyproject.toml)."""
