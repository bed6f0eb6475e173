"""The buffer's Prometheus metrics (names in docs/CONTRACTS.md, all with the label `job`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BufferMetrics:
    def __init__(self, job: str):
        self.job = job
        self.registry = CollectorRegistry()
        r = self.registry
        samples = Counter("rlpost_samples", "samples by outcome", ["job", "outcome"], registry=r)
        self.samples = _Bound(samples.labels, job)
        self.depth = Gauge(
            "rlpost_buffer_depth", "accepted groups ready to serve", ["job"], registry=r
        ).labels(job)
        self.reward_mean = Gauge(
            "rlpost_reward_mean",
            "mean reward of samples scored since the last batch",
            ["job"],
            registry=r,
        ).labels(job)
        self.staleness = Histogram(
            "rlpost_sample_staleness",
            "step - weight_version of served groups",
            ["job"],
            buckets=(0, 1, 2, 3, 4, 8, 16, 64),
            registry=r,
        ).labels(job)
        self.rejected_rows = Counter(
            "rlpost_dataset_rows_rejected", "malformed dataset rows", ["job"], registry=r
        ).labels(job)
        self.reward_errors = Counter(
            "rlpost_reward_errors", "samples whose reward raised or timed out", ["job"], registry=r
        ).labels(job)
        self.generate_errors = Counter(
            "rlpost_generate_errors", "failed /generate attempts (retried)", ["job"], registry=r
        ).labels(job)
        # Partial rollouts: requests a weight update aborted that were resumed on the new
        # weights, and the tokens they kept (not generated again).
        self.resumed_requests = Counter(
            "rlpost_resumed_requests",
            "aborted /generate requests resumed on new weights (partial rollouts)",
            ["job"],
            registry=r,
        ).labels(job)
        self.resumed_tokens = Counter(
            "rlpost_resumed_tokens",
            "tokens aborted requests kept and resumed from (partial rollouts)",
            ["job"],
            registry=r,
        ).labels(job)
        self.weight_version = Gauge(
            "rlpost_buffer_weight_version",
            "live weight version announced by the trainer",
            ["job"],
            registry=r,
        ).labels(job)
        self.step = Gauge(
            "rlpost_buffer_served_step", "last step served to the trainer", ["job"], registry=r
        ).labels(job)


class _Bound:
    """`samples.labels(outcome=...)` with the job label already applied."""

    def __init__(self, labels, job: str):
        self._labels, self._job = labels, job

    def labels(self, outcome: str):
        return self._labels(job=self._job, outcome=outcome)
