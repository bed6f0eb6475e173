"""The markdown tables of benchmarks/peer_kuberay.py: per (N, controller-manager limits) one
column per run and the ratios ours / KubeRay; then the idle minutes and the teardowns."""

from __future__ import annotations

ROWS = [
    ("jobs with all pods", lambda r: f"{r['jobs_with_all_pods']} / {r['jobs']}", None),
    ("jobs by status once settled", lambda r: _states(r), None),
    ("wall to the last job's pods (s)", lambda r: r["wall_seconds_to_last_jobs_pods"], "num"),
    ("create → Workload p50 (s)", lambda r: r["create_to_workload_s"]["p50"], "num"),
    ("create → Workload p99 (s)", lambda r: r["create_to_workload_s"]["p99"], "num"),
    ("admission → all pods p50 (s)", lambda r: r["admission_to_all_pods_s"]["p50"], "num"),
    ("admission → all pods p99 (s)", lambda r: r["admission_to_all_pods_s"]["p99"], "num"),
    (
        "wall to the last job's pods Running (s)",
        lambda r: r.get("wall_seconds_to_last_jobs_pods_running"),
        "num",
    ),
    (
        "admission → all pods Running p50 (s)",
        lambda r: (r.get("admission_to_all_pods_running_s") or {}).get("p50"),
        "num",
    ),
    (
        "admission → all pods Running p99 (s)",
        lambda r: (r.get("admission_to_all_pods_running_s") or {}).get("p99"),
        "num",
    ),
    ("operator writes per job", lambda r: r["operator_writes_per_job"], "num"),
    (
        "operator reconcile passes per job",
        lambda r: r.get("operator_passes_per_job"),
        "num",
    ),
    ("all API writes per job (every component)", lambda r: r["api_writes_per_job"], "num"),
    ("controller-manager writes per job", lambda r: r["kcm_writes_per_job"], "num"),
    ("operator CPU seconds (process, at the end)", lambda r: r["operator_cpu_seconds"], "num"),
    ("… of which before the first job", lambda r: r["operator_cpu_seconds_at_start"], "num"),
    ("operator peak RSS (MiB)", lambda r: r["operator_peak_rss_mib"], "num"),
    ("operator writes in the idle minute", lambda r: r["idle"]["operator_writes"], "num"),
    ("kube-apiserver CPU seconds (to settled)", lambda r: _cpu(r, "kube-apiserver"), "num"),
    ("every process's CPU seconds (to settled)", lambda r: _cpu(r, None), "num"),
    ("load average (1 min) start → end", lambda r: _la(r), None),
]


def _cpu(r: dict, name: str | None) -> float:
    """A control-plane process's CPU seconds over the run (None: all of them and the
    operator together)."""
    cpu = r["cpu_seconds_by_component"]
    return round(sum(cpu.values()), 1) if name is None else cpu[name]


def _states(r: dict) -> str:
    states = r.get("job_status_at_settle")
    return ", ".join(f"{k} {v}" for k, v in states.items()) if states else "–"


def _la(r: dict) -> str:
    return f"{r['load_average_start'][0]} → {r['load_average_end'][0]}"


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:g}" if abs(x) >= 100 or x == int(x) else f"{x:.2f}".rstrip("0").rstrip(".")
    return str(x)


def _ratio(a, b) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def _state(r: dict) -> str:
    """What a run's jobs keep: a volume per job ("per-job") or not (ours with the shared
    checkpoint PVC, KubeRay without a volume)."""
    st = r["settings"].get("state", "none")
    return "per-job" if st == "per-job" else "none"


def _pairs(ours: list[dict], theirs: list[dict]) -> list[tuple[dict, dict]]:
    """The ratio columns: ours (admin credentials) against KubeRay with the same storage
    (per-job volume or none); every pair when no run matches that way."""
    admin = [o for o in ours if o["settings"].get("auth") == "admin"] or ours[:1]
    like = [(o, k) for o in admin for k in theirs if _state(o) == _state(k)]
    return like or [(o, k) for o in admin[:1] for k in theirs]


def table(runs: list[dict]) -> str:
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in (r for r in runs if "error" not in r):
        groups.setdefault((r["jobs"], r["kcm_limits"]), []).append(r)
    out = []
    for (n, limits), rs in groups.items():
        ours = [r for r in rs if r["side"] == "ours"]
        theirs = [r for r in rs if r["side"] == "kuberay"]
        pairs = _pairs(ours, theirs)
        cols = [r["label"] for r in rs]
        cols += [f"{o['label']} / {k['label']}" for o, k in pairs]
        kcm = "default client limits" if limits == "default" else "raised limits"
        out.append(f"\n### {n} jobs, kube-controller-manager {kcm}\n")
        out.append("| | " + " | ".join(cols) + " |")
        out.append("| --- |" + " ---: |" * len(cols))
        for title, get, kind in ROWS:
            cells = [_fmt(_get(get, r)) for r in rs]
            cells += [_ratio(_get(get, o), _get(get, k)) if kind else "" for o, k in pairs]
            out.append(f"| {title} | " + " | ".join(cells) + " |")
    for r in runs:
        if "error" in r:
            out.append(f"\n{r['label']}, {r['jobs']} jobs, {r['kcm_limits']} limits: {r['error']}")
    teardowns = [r for r in runs if r.get("teardown")]
    if teardowns:
        out.append("\n### Namespace deletion with every job in it\n")
        out.append(
            "| run | jobs | gone after (s) | operator writes after deletionTimestamp "
            "| operator CPU, mean cores (peak 1 s) |"
        )
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for r in teardowns:
            t = r["teardown"]
            out.append(
                f"| {r['label']}, {r['kcm_limits']} limits | {t['jobs']} "
                f"| {_fmt(t['namespace_gone_s'])} | {_fmt(t['operator_writes_after_deletion'])} "
                f"| {t['operator_cpu_cores_mean']} ({t['operator_cpu_cores_peak_1s']}) |"
            )
    return "\n".join(out) + "\n"


def _get(get, r):
    try:
        return get(r)
    except (KeyError, TypeError):
        return None
