"""Operator metrics (names in docs/CONTRACTS.md), served by prometheus-client."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily

RECONCILE_SECONDS = Histogram(
    "rlpost_reconcile_duration_seconds",
    "Time of one reconcile pass of one RLPostTrainJob (decide + writes)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ADMISSION_WAIT = Histogram(
    "rlpost_admission_wait_seconds",
    "From the Workload's creation (or requeue) to the job seeing Kueue's admission",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
RESTARTS = Counter("rlpost_job_restarts_total", "Gang restarts after a trainer/worker failure")
EVICTIONS = Counter(
    "rlpost_job_evictions_total", "Running jobs stopped by Kueue eviction or spec.suspend"
)
CHILD_REFUSALS = Counter(
    "rlpost_child_writes_refused_total",
    "Child writes the API server refused (retryable: 5xx/409/429/quota, else the job fails)",
    ["kind", "retryable"],
)
PODS_READY_TIMEOUTS = Counter(
    "rlpost_pods_ready_timeouts_total",
    "Gangs whose pods were not all Ready within failurePolicy.podsReadyTimeoutSeconds",
)
API_REQUESTS = Counter(
    "rlpost_api_requests_total", "Kubernetes API requests made by the operator", ["verb", "code"]
)
API_ERRORS = Counter("rlpost_api_errors_total", "Kubernetes API requests that failed")


class JobsCollector:
    """rlpost_jobs{namespace,phase}: counted from the operator's cache at scrape time."""

    def __init__(self, phases: Callable[[], Iterable[tuple[str, str]]]):
        self.phases = phases

    def collect(self):
        g = GaugeMetricFamily(
            "rlpost_jobs", "RLPostTrainJobs by namespace and phase", labels=["namespace", "phase"]
        )
        for (ns, phase), n in sorted(_Tally(self.phases()).items()):
            g.add_metric([ns, phase], n)
        yield g


def serve(port: int, phases: Callable[[], Iterable[tuple[str, str]]]) -> None:
    REGISTRY.register(JobsCollector(phases))
    if port:
        start_http_server(port)
