"""Versions crib reports (CRI `Version`, /healthz, metrics)."""

__version__ = "0.1.0"
RUNTIME_NAME = "crib"
# The CRI API version this crib speaks (runtime.v1).
CRI_API_VERSION = "v1"
