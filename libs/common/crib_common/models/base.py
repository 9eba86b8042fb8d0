"""The base of every model crib reads from JSON: HTTP bodies, answers, the state store."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["JsonModel"]


class JsonModel(BaseModel):
    """pydantic's JSON parser keeps every string it reads in a process-wide cache of up to
    16,384 entries by default, values as well as keys. Ours are pod, container and image
    IDs, names and paths, nearly all seen once: the cache filled with them and each daemon
    grew by about 2 blocks a pod lifecycle (tracemalloc, issue 14), up to some MiB.
    Keys only: field names, which repeat."""

    model_config = ConfigDict(cache_strings="keys")
