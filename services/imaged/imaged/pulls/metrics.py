"""Prometheus metrics of image pulls, on imaged's `/metrics`.

    crib_image_pulls_in_flight                      gauge
    crib_image_pulls_total{requester}               counter: pulls started
    crib_image_pull_bytes_total{registry}           counter: layer bytes downloaded
    crib_image_pull_duration_seconds{outcome}       histogram: done | failed
    crib_image_pull_failures_total{reason}          counter: error kind, or no_progress
    crib_image_pull_layers_present_total            counter: layers already unpacked
    crib_image_pull_watchers                        gauge: progress streams open

Bytes are added by the table's ticker from what each transfer gained since the last tick
(not per chunk), so counting costs the download nothing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PullMetrics"]

# Pulls last from a second (a cached small image) to an hour (many GB on a slow link).
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class PullMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.in_flight = Gauge("crib_image_pulls_in_flight", "Image pulls in flight",
                               registry=reg)
        self.started = Counter("crib_image_pulls_total", "Image pulls started, by requester",
                               ["requester"], registry=reg)
        self.bytes = Counter("crib_image_pull_bytes_total",
                             "Layer bytes downloaded, by registry", ["registry"],
                             registry=reg)
        self.duration = Histogram("crib_image_pull_duration_seconds",
                                  "Duration of image pulls, by outcome", ["outcome"],
                                  buckets=DURATION_BUCKETS, registry=reg)
        self.failures = Counter("crib_image_pull_failures_total",
                                "Failed image pulls, by reason", ["reason"], registry=reg)
        self.present = Counter("crib_image_pull_layers_present_total",
                               "Layers a pull found already unpacked", registry=reg)
        self.watchers = Gauge("crib_image_pull_watchers", "Pull progress streams open",
                              registry=reg)
