"""The rlpost Grafana dashboard as code: `python dashboards/generate.py` writes rlpost.json.

Metric names are the ones in docs/CONTRACTS.md. Every PromQL expression here must return
data against a real Prometheus that scrapes the operator and a job's roles: that is what
e2e/platform/test_prometheus.py checks, so never hide an absent metric behind
`or vector(0)`. tests/chart/test_dashboard.py checks that rlpost.json is this file's output
and that the chart's copy is the same file.

Variables: $datasource, $namespace (the jobs' namespace), $job (the RLPostTrainJob name; the
`job` label every role metric carries). Role metrics are filtered by both; operator metrics
by namespace only where they carry that label (rlpost_jobs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "rlpost.json"
UID = "rlpost-overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
NS = 'namespace=~"$namespace"'
JOB = f'{NS}, job=~"$job"'


class Layout:
    """Places panels on Grafana's 24-column grid, row by row."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        w: int = 8,
        h: int = 8,
        description: str = "",
    ) -> None:
        if self.x + w > 24:
            self._newline()
        self.panels.append(
            {
                "type": kind,
                "title": title,
                "description": description,
                "id": self._id(),
                "datasource": DS,
                "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
                if kind == "timeseries"
                else {"reduceOptions": {"calcs": ["lastNotNull"]}},
                "targets": [
                    {
                        "datasource": DS,
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": chr(ord("A") + i),
                    }
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    sel = f"{{{selector}}}" if selector else ""
    prefix = "".join(f"{{{{{b.strip()}}}}} " for b in by.split(",")) if by else ""
    grouping = f"{by}, le" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{sel}[{RI}])))",
            f"{prefix}p{int(q * 100)}",
        )
        for q in (0.5, 0.95)
    ]


def build() -> dict:
    g = Layout()
    g.row("Operator")
    g.panel(
        "Jobs by phase",
        [(f"sum by (phase) (rlpost_jobs{{{NS}}})", "{{phase}}")],
        description="RLPostTrainJobs per phase (Queued, Admitted, Running, Suspended, ...).",
    )
    g.panel(
        "Reconcile duration",
        quantiles("rlpost_reconcile_duration_seconds", "", ""),
        unit="s",
        description="Time one reconcile of a job takes in the operator.",
    )
    g.panel(
        "Reconciles per second",
        [(f"sum(rate(rlpost_reconcile_duration_seconds_count[{RI}]))", "reconciles/s")],
        unit="ops",
    )
    g.panel(
        "Admission wait (Kueue)",
        quantiles("rlpost_admission_wait_seconds", "", ""),
        unit="s",
        description="From Workload creation to Kueue admission (quota, fair sharing).",
    )
    g.panel(
        "API requests by verb and code",
        [(f"sum by (verb, code) (rate(rlpost_api_requests_total[{RI}]))", "{{verb}} {{code}}")],
        unit="reqps",
        description="Requests of the operator to the Kubernetes API server.",
    )
    g.panel(
        "API errors",
        [(f"sum(rate(rlpost_api_errors_total[{RI}]))", "errors/s")],
        unit="reqps",
        description="Failed API calls (403 here means the chart's RBAC misses a rule).",
    )
    g.panel(
        "Job restarts (total)",
        [("sum(rlpost_job_restarts_total)", "restarts")],
        kind="stat",
        w=12,
        h=5,
    )
    g.panel(
        "Job evictions (total)",
        [("sum(rlpost_job_evictions_total)", "evictions")],
        kind="stat",
        w=12,
        h=5,
        description="Kueue evictions (preemption, deactivation) the operator handled.",
    )

    g.row("Training (per job)")
    g.panel(
        "Train step",
        [(f"max by (job) (rlpost_train_step{{{JOB}}})", "{{job}}")],
        description="Last trained step (trainer rank 0).",
    )
    g.panel(
        "Reward (mean)",
        [(f"avg by (job) (rlpost_reward_mean{{{JOB}}})", "{{job}}")],
        description="Mean reward of the last scored batch.",
    )
    g.panel(
        "Eval reward (held-out)",
        [(f"max by (job, kind) (rlpost_eval_reward{{{JOB}}})", "{{job}} {{kind}}")],
        description="spec.eval's last results on the held-out prompts (trainer rank 0, "
        "every eval.intervalSteps): greedy mean reward, pass@k, mean reward over the k "
        "samples. No series for a job without spec.eval.",
    )
    g.panel(
        "Tokens per second",
        [(f"sum by (job, role) (rlpost_tokens_per_second{{{JOB}}})", "{{job}} {{role}}")],
        unit="short",
        description="Generated tokens/s (role rollout: the engines, summed) and trained "
        "tokens/s (role trainer). `role` is the pod label rlpost.dev/role (PodMonitor).",
    )
    g.panel(
        "Weight sync duration",
        quantiles("rlpost_weight_sync_seconds", "job, role", JOB),
        unit="s",
        description="Trainer: one full update to all engines (pause, buckets, continue); "
        "rollout: applying it on one engine.",
    )
    g.panel(
        "Train/rollout logprob mismatch",
        [(f"max by (job) (rlpost_logprob_mismatch{{{JOB}}})", "{{job}}")],
        description="Mean |trainer - rollout logprob| per trained token of the last step: "
        "how far the engines' sampling policy is from the trainer's (staleness, numerics; "
        "algorithm.tisCap corrects for it).",
    )
    g.panel(
        "Buffer depth",
        [(f"sum by (job) (rlpost_buffer_depth{{{JOB}}})", "{{job}}")],
        description="Scored samples waiting in the buffer for the trainer.",
    )
    g.panel(
        "Sample staleness",
        [
            *quantiles("rlpost_sample_staleness", "job", JOB),
            (
                f"sum by (job) (rate(rlpost_sample_staleness_sum{{{JOB}}}[{RI}]))"
                f" / sum by (job) (rate(rlpost_sample_staleness_count{{{JOB}}}[{RI}]))",
                "{{job}} mean",
            ),
        ],
        description="Trained step minus the weight version a sample was generated with.",
    )
    g.panel(
        "Weight version lag (buffer)",
        [
            (
                f"max by (job) (rlpost_train_step{{{JOB}}}) + 1"
                f" - on (job) max by (job) (rlpost_buffer_weight_version{{{JOB}}})",
                "{{job}}",
            )
        ],
        description="Trained steps whose weights the buffer has not been told are live yet "
        "(0 or 1 in steady state; growing: weight sync is stuck).",
    )
    g.panel(
        "Rollout errors",
        [
            (f"sum by (job) (rate(rlpost_reward_errors_total{{{JOB}}}[{RI}]))", "{{job}} reward"),
            (
                f"sum by (job) (rate(rlpost_generate_errors_total{{{JOB}}}[{RI}]))",
                "{{job}} generate (retried)",
            ),
            (
                f"sum by (job) (rate(rlpost_dataset_rows_rejected_total{{{JOB}}}[{RI}]))",
                "{{job}} rejected rows",
            ),
        ],
        unit="ops",
        description="Buffer: rewards that raised or timed out, failed /generate attempts, "
        "malformed dataset rows.",
    )
    g.panel(
        "Samples by outcome",
        [
            (
                f"sum by (job, outcome) (rate(rlpost_samples_total{{{JOB}}}[{RI}]))",
                "{{job}} {{outcome}}",
            )
        ],
        unit="ops",
        description="Buffer outcomes: accepted, served, zero_std (dynamic sampling), stale, "
        "stale_on_arrival, reward_error, generate_error, aborted, rewound.",
    )

    def var(name: str, label: str, query: str) -> dict:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return {
        "uid": UID,
        "title": "rlpost",
        "description": "rlpost operator and RL job roles (metric names: docs/CONTRACTS.md)",
        "tags": ["rlpost", "kueue", "rl"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {},
                },
                var("namespace", "Namespace", "label_values(rlpost_jobs, namespace)"),
                var(
                    "job",
                    "RLPostTrainJob",
                    'label_values(rlpost_train_step{namespace=~"$namespace"}, job)',
                ),
            ]
        },
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
