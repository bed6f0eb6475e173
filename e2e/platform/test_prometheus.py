"""Must-show 3: a real Prometheus (Debian package) scrapes the operator and the roles of a
`rlpost run` job, and EVERY PromQL expression of the Grafana dashboard returns data.

- The roles: `rlpost run examples/copy-first-letter.yaml` (engines, router, buffer, trainer
  as local processes, the images' entrypoints); run.json names each role's URL; Prometheus
  scrapes the engines, the buffer and the trainer's RLPOST_METRICS_PORT while it trains.
- The operator: `python -m rlpost_operator` with the chart ServiceAccount's token (fixture
  `operator_a`), reconciling a job in tenant a's namespace through Kueue; the job is
  suspended once (counted in rlpost_job_evictions_total) and resumed.
- Expressions are taken from dashboards/rlpost.json (every panel target, rows included,
  and the variables' label_values selectors) with Grafana's "All" values substituted.
  "Returns data" = a non-empty result with at least one finite value (a quantile over no
  observations is NaN: no data on a Grafana panel).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml

from e2e.platform.chart import (
    REPO,
    contract_metrics,
    dashboard_exprs,
    dashboard_variable_queries,
    metric_names,
    substitute_variables,
)
from e2e.platform.prometheus import Prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "copy-first-letter.yaml"


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    p = Prometheus(tmp_path_factory.mktemp("prometheus")).start()
    try:
        yield p
    finally:
        p.stop()


def addr(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture(scope="module")
def rlpost_run(prom, tmp_path_factory):
    """`rlpost run` of the example, long enough to be scraped while it trains."""
    run_dir = tmp_path_factory.mktemp("run") / "copy-first-letter"
    log = run_dir.parent / "rlpost-run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlpost.cli", "run", str(EXAMPLE), "--steps", "5000",
             "--run-dir", str(run_dir)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        run_json = run_dir / "run.json"
        deadline = time.monotonic() + 300
        while not run_json.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rlpost run did not start its roles:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        urls = json.loads(run_json.read_text())["urls"]
        job = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
        targets = [(addr(u), {"role": "rollout"}) for u in urls["engines"]]
        targets += [(addr(urls["buffer"]), {"role": "buffer"})]
        targets += [(addr(urls["trainer_metrics"]), {"role": "trainer"})]
        prom.set_targets("roles", targets)
        prom.wait_targets_up({a for a, _ in targets}, timeout=60)
        # Train a few steps while being scraped (rates and quantiles need observations
        # between two scrapes), up to the first eval (spec.eval: rlpost_eval_reward), then
        # let Prometheus scrape once more.
        steps = run_dir / "steps.jsonl"
        deadline = time.monotonic() + 300
        while not steps.exists() or '"eval_greedy"' not in steps.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rlpost run made no steps or no eval:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        time.sleep(3)  # 3 scrapes (SCRAPE_INTERVAL 1s)
        yield {"job": job, "targets": targets, "proc": proc, "run_dir": run_dir}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # rlpost run stops every role it started
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def rljob(name: str, queue: str) -> dict:
    """A small disaggregated job for the operator (kwok runs its pods as fakes)."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"] = {"name": name}
    job["spec"]["queueName"] = queue
    job["spec"]["trainer"].update(gpusPerPod=1)
    job["spec"]["rollout"].update(engines=1, gpusPerEngine=1)
    job["spec"]["data"]["prompts"] = "/data/copy-first-letter.jsonl"
    return job


def wait_phase(cluster, op, name: str, ns: str, phases: tuple[str, ...], timeout: float = 120):
    def status():
        return cluster.get_json("rljob", name, "-n", ns).get("status", {})

    try:
        cluster.wait_for(f"{name} in {phases}", lambda: status().get("phase") in phases, timeout)
    except TimeoutError as exc:
        log = [ln for ln in op.log_text().splitlines() if "namespaces is forbidden" not in ln]
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status(), indent=1)}\noperator log:\n"
            + "\n".join(log[-25:])
        ) from exc


def condition(obj: dict, ctype: str) -> dict | None:
    return next(
        (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), None
    )


@pytest.fixture(scope="module")
def operator_activity(prom, operator_a, platform, cluster):
    """The operator scraped from before its first reconcile; then a job is queued,
    admitted, suspended and re-admitted."""
    ns = platform.a
    target = f"127.0.0.1:{operator_a.metrics_port}"
    prom.set_targets("operator", [(target, {"tenant": ns})])
    prom.wait_targets_up({target}, timeout=60)
    time.sleep(3)
    name = "prom-job"
    try:
        cluster.apply({**rljob(name, ns), "metadata": {"name": name, "namespace": ns}})

        def workload():
            wls = cluster.get_json("workloads", "-n", ns)["items"]
            owned = [
                w
                for w in wls
                if any(o.get("name") == name for o in w["metadata"].get("ownerReferences", []))
            ]
            return owned[0] if owned else None

        def admitted():
            wl = workload()
            c = wl and condition(wl, "Admitted")
            return c and c["status"] == "True" and wl

        cluster.wait_for("the job's Workload admitted", admitted, timeout=150)
        wait_phase(cluster, operator_a, name, ns, ("Admitted", "Running"))
        # A suspension (spec.suspend, counted with Kueue evictions in
        # rlpost_job_evictions_total): the gang stops, the job is Suspended; then resumed.
        # (Patching Workload.spec.active directly is undone by the operator, which owns it.)
        for suspend, phases in ((True, ("Suspended",)), (False, ("Admitted", "Running"))):
            patch = json.dumps({"spec": {"suspend": suspend}})
            cluster.kubectl("patch", "rljob", name, "-n", ns, "--type=merge", "-p", patch)
            wait_phase(cluster, operator_a, name, ns, phases)
        cluster.wait_for("the job re-admitted", admitted, timeout=150)
        time.sleep(3)  # a few scrapes after the activity
        yield {"job": name, "namespace": ns, "target": target}
    finally:
        cluster.kubectl("delete", "rljob", name, "-n", ns, "--wait=false", check=False)


def check(prom: Prometheus, exprs: list[tuple[str, str]]) -> list[str]:
    failures = []
    for title, raw in exprs:
        expr = substitute_variables(raw)
        try:
            values = prom.finite_values(expr)
        except Exception as exc:  # a query Prometheus rejects is a failure too
            failures.append(f"{title}: {expr}: {exc}")
            continue
        if not values:
            failures.append(f"{title}: {expr}: no data")
    return failures


def role_exprs() -> list[tuple[str, str]]:
    role = {m for m in contract_metrics() if not m.startswith(OPERATOR_PREFIXES)}
    return [(t, e) for t, e in dashboard_exprs() if metric_names(e) <= role]


OPERATOR_PREFIXES = (
    "rlpost_jobs",
    "rlpost_reconcile",
    "rlpost_admission",
    "rlpost_job_",
    "rlpost_api_",
)


def test_prometheus_scrapes_every_role_of_rlpost_run(prom, rlpost_run):
    up = {
        t["discoveredLabels"]["__address__"]: t
        for t in prom.active_targets()
        if t["scrapePool"] == "rlpost-roles" and t["health"] == "up"
    }
    assert {a for a, _ in rlpost_run["targets"]} <= set(up)
    # The roles' own `job` label (the RLPostTrainJob) is kept, per role.
    for role in ("rollout", "buffer", "trainer"):
        got = prom.query(f'count({{__name__=~"rlpost_.+", role="{role}"}})')
        assert got and float(got[0]["value"][1]) > 0, f"no rlpost_* series of role {role}"
    jobs = {s["metric"]["job"] for s in prom.query("rlpost_buffer_depth")}
    assert jobs == {rlpost_run["job"]}
    assert prom.finite_values(f'max(rlpost_train_step{{job="{rlpost_run["job"]}"}})')[0] >= 2


def test_role_panels_return_data(prom, rlpost_run):
    exprs = role_exprs()
    assert len(exprs) >= 8
    failures = check(prom, exprs)
    assert not failures, "\n".join(failures)


def test_every_dashboard_expression_returns_data(prom, rlpost_run, operator_activity):
    exprs = dashboard_exprs()
    failures = check(prom, exprs)
    # The variables: label_values(selector, label) must offer the tenant and the job.
    values = {}
    for var, selector, label in dashboard_variable_queries():
        series = prom.query(substitute_variables(selector))
        values[var] = {s["metric"].get(label) for s in series} - {None}
        if not values[var]:
            failures.append(f"variable {var}: {selector}: no values for {label}")
    assert not failures, "\n".join(failures)
    assert operator_activity["namespace"] in values["namespace"]
    assert rlpost_run["job"] in values["job"]
    # Every contract metric has a series in Prometheus (none only on paper).
    names = {s["metric"]["__name__"] for s in prom.query('{__name__=~"rlpost_.+"}')}
    for metric in contract_metrics():
        assert any(n == metric or n.startswith(metric + "_") for n in names), metric


def test_operator_scraped_and_counts_what_happened(prom, operator_activity):
    ns = operator_activity["namespace"]
    assert prom.finite_values(f'sum(rlpost_jobs{{namespace="{ns}"}})')[0] >= 1
    assert prom.finite_values("sum(rlpost_job_evictions_total)")[0] >= 1
    assert prom.finite_values("sum(rlpost_admission_wait_seconds_count)")[0] >= 2
    # The chart's RBAC was enough: no request of the operator was refused.
    with contextlib.suppress(IndexError):
        denied = prom.finite_values('sum(rlpost_api_requests_total{code="403"})')[0]
        assert denied == 0
