"""Reading stores from object storage (S3, GCS, Azure, HTTP) and moving stores to and from it; docs/remote.md.

Shared by the methods' remote readers (``storage_impls/methods/<method>/remote.py``): the client and its ranged,
concurrent, coalesced requests (client.py, ranges.py), the local mirror a method's own read path runs on
(staged.py, checkpointed.py), and ``upload`` / ``stage`` (transfer.py). Needs obstore (the ``[s3]`` extra)."""

from storage_impls.remote.client import STATS, Location, is_url
from storage_impls.remote.transfer import stage, upload

__all__ = ["STATS", "Location", "is_url", "stage", "upload"]
