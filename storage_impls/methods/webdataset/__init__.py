"""The webdataset method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.webdataset.store import WebDatasetStore

__all__ = ["WebDatasetStore"]
