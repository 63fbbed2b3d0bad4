"""The zarr method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.zarr.store import ZarrStore

__all__ = ["ZarrStore"]
