"""The trainer's Prometheus metrics, served on $RLPOST_METRICS_PORT (every one has `job`)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server


class TrainerMetrics:
    def __init__(self, job: str):
        self.registry = CollectorRegistry()
        labels = ["job"]
        self.step = Gauge(
            "rlpost_train_step", "last trained step (0-based)", labels, registry=self.registry
        ).labels(job)
        self.reward = Gauge(
            "rlpost_reward_mean", "mean reward of the last batch", labels, registry=self.registry
        ).labels(job)
        self.tps = Gauge(
            "rlpost_tokens_per_second",
            "response tokens trained per wall second of the last step",
            labels,
            registry=self.registry,
        ).labels(job)
        self.mismatch = Gauge(
            "rlpost_logprob_mismatch",
            "mean |trainer - rollout logprob| per trained token of the last step",
            labels,
            registry=self.registry,
        ).labels(job)
        # spec.eval's last results, kind: greedy, pass_at_k, mean_at_k.
        self.eval_reward = Gauge(
            "rlpost_eval_reward",
            "held-out eval reward at the last eval (greedy mean, pass@k, mean over k samples)",
            ["job", "kind"],
            registry=self.registry,
        )
        self.sync = Histogram(
            "rlpost_weight_sync_seconds",
            "wall time of one full weight update to all engines",
            labels,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        ).labels(job)

    def serve(self, empty: bool = False) -> int | None:
        """Serve /metrics on $RLPOST_METRICS_PORT. `empty`: no series (the first rank of a
        trainer pod other than global rank 0's, which has them: the pod's port answers, so
        scrapers see it up, and reports nothing a rank 0 does not)."""
        port = os.environ.get("RLPOST_METRICS_PORT")
        if not port:
            return None
        start_http_server(int(port), registry=CollectorRegistry() if empty else self.registry)
        return int(port)
