"""dashboards/rlpost.json: generated from dashboards/generate.py, copied into the chart,
every expression parses with Prometheus' own parser (promtool), and the dashboard covers
exactly the metrics docs/CONTRACTS.md names."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import yaml

from e2e.platform.chart import (
    CHART,
    DASHBOARD,
    REPO,
    contract_metrics,
    dashboard,
    dashboard_exprs,
    dashboard_variable_queries,
    metric_names,
    named_metrics,
    substitute_variables,
)


def _generator():
    spec = importlib.util.spec_from_file_location(
        "dash_generate", REPO / "dashboards" / "generate.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_json_is_the_generators_output_and_the_chart_copy_is_current():
    assert DASHBOARD.read_text() == _generator().render(), "run `python dashboards/generate.py`"
    assert (CHART / "dashboards" / "rlpost.json").read_text() == DASHBOARD.read_text(), (
        "run `make chart-sync`"
    )


def test_every_contract_metric_is_on_the_dashboard_and_nothing_unnamed():
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    core = contract_metrics()
    assert len(core) == 16, core
    assert core <= used, f"not on the dashboard: {core - used}"
    assert used <= named_metrics(), f"not in docs/CONTRACTS.md: {used - named_metrics()}"


def test_every_expression_parses_with_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) missing: run `make system-deps`"
    exprs = [substitute_variables(e) for _, e in dashboard_exprs()]
    exprs += [substitute_variables(sel) for _, sel, _ in dashboard_variable_queries()]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"rlpost:dashboard:{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(exprs)} rules found" in proc.stdout


def test_panels_are_well_formed():
    d = dashboard()
    ids = []
    for p in d["panels"]:
        ids.append(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"], p["title"]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]
    # Role panels are filtered by the variables, so one dashboard serves every tenant.
    for title, e in dashboard_exprs():
        if any(
            m in e for m in ("rlpost_train_step", "rlpost_buffer_depth", "rlpost_samples_total")
        ):
            assert "$namespace" in e and "$job" in e, title
