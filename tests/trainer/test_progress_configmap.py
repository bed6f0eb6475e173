"""The trainer's progress reaches `<job>-progress` through the real API server, with a
ServiceAccount token that may only get/patch that ConfigMap."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from rlpost_trainer.progress import Progress


@pytest.mark.cluster
def test_progress_patches_the_configmap_with_a_least_privilege_token(
    cluster, namespace, tmp_path, monkeypatch
):
    job = "wjob"
    cluster.kubectl("create", "configmap", f"{job}-progress", "-n", namespace)
    cluster.kubectl("create", "configmap", "other", "-n", namespace)
    cluster.kubectl("create", "serviceaccount", "trainer", "-n", namespace)
    cluster.kubectl(
        "create", "role", "progress", "-n", namespace, "--verb=get,patch",
        "--resource=configmaps", f"--resource-name={job}-progress",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "progress", "-n", namespace, "--role=progress",
        f"--serviceaccount={namespace}:trainer",
    )  # fmt: skip
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(cluster.create_token("trainer", namespace))
    (sa / "namespace").write_text(namespace)
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
    (sa / "ca.crt").write_bytes(base64.b64decode(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.ports["apiserver"]))
    monkeypatch.setenv("RLPOST_SERVICEACCOUNT_DIR", str(sa))
    monkeypatch.delenv("RLPOST_PROGRESS_DIR", raising=False)

    progress = Progress(job)
    progress.update({"step": 2}, step=3, weightVersion=3, lastCheckpointStep=2)
    data = cluster.get_json("configmap", f"{job}-progress", "-n", namespace)["data"]
    assert data == {"step": "3", "weightVersion": "3", "lastCheckpointStep": "2", "done": "false"}
    progress.update(done=True)
    data = cluster.get_json("configmap", f"{job}-progress", "-n", namespace)["data"]
    assert data["done"] == "true" and data["step"] == "3"
    # The token cannot write anything else (the patch is refused, training is not stopped).
    other = Progress("other-job")
    other.cm.url = other.cm.url.replace("other-job-progress", "other")
    r = other.cm.http.patch(
        other.cm.url,
        content=json.dumps({"data": {"x": "1"}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 403
