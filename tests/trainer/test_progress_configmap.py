"""The trainer's progress reaches `<job>-progress` through the real API server, with a
ServiceAccount token that may only get/patch that ConfigMap."""

from __future__ import annotations

import base64
import json
import os

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
    progress.update({"step": 1, "reward_mean": 0.25}, step=2, weightVersion=2)
    progress.update({"step": 2, "reward_mean": 0.5}, step=3, weightVersion=3, lastCheckpointStep=2)
    data = cluster.get_json("configmap", f"{job}-progress", "-n", namespace)["data"]
    assert data == {
        "step": "3",
        "weightVersion": "3",
        "lastCheckpointStep": "2",
        "rewardMean": "0.375",  # the mean of the last 5 steps' rewards (here 2)
        "done": "false",
    }
    progress.update(done=True)
    data = cluster.get_json("configmap", f"{job}-progress", "-n", namespace)["data"]
    assert data["done"] == "true" and data["step"] == "3"
    # The kubelet rotates the projected token: a garbage token first (refused, 401, training
    # goes on), then a fresh one from the TokenRequest API: the next patch reads and uses it.
    rotate(sa / "token", "not-a-token")
    progress.update(step=4)
    data = cluster.get_json("configmap", f"{job}-progress", "-n", namespace)["data"]
    assert data["step"] == "3"
    rotate(sa / "token", cluster.create_token("trainer", namespace))
    progress.update(step=5)
    data = cluster.get_json("configmap", f"{job}-progress", "-n", namespace)["data"]
    assert data["step"] == "5"
    # The token cannot write anything else (the patch is refused, training is not stopped).
    other = Progress("other-job")
    other.cm.url = other.cm.url.replace("other-job-progress", "other")
    r = other.cm.http.patch(
        other.cm.url,
        content=json.dumps({"data": {"x": "1"}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 403


class FakeAPIServer:
    """A ConfigMap PATCH endpoint that accepts one bearer token (what a real API server does
    with a projected token: the old one expires) and records what it was sent."""

    def __init__(self, accepted: str):
        import http.server
        import threading

        self.accepted = accepted
        self.seen: list[str] = []
        self.data: dict = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization", "")
                fake.seen.append(auth)
                code = 200 if auth == f"Bearer {fake.accepted}" else 401
                if code == 200:
                    fake.data.update(json.loads(body)["data"])
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_api(tmp_path, monkeypatch):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_text("ns")
    (sa / "token").write_text("token-1")
    server = FakeAPIServer("token-1")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setenv("RLPOST_SERVICEACCOUNT_DIR", str(sa))
    monkeypatch.delenv("RLPOST_PROGRESS_DIR", raising=False)

    def reporter() -> Progress:
        p = Progress("wjob")
        p.cm.url = p.cm.url.replace("https://", "http://")  # the fake speaks plain HTTP
        return p

    yield server, sa / "token", reporter
    server.close()


def rotate(path, value: str) -> None:
    """What the kubelet does: a new file swapped in (new inode)."""
    tmp = path.with_name(".token.new")
    tmp.write_text(value)
    os.replace(tmp, path)


def test_a_rotated_token_file_is_read_before_the_next_request(fake_api):
    server, token, reporter = fake_api
    progress = reporter()
    progress.update(step=1)
    assert server.seen == ["Bearer token-1"] and server.data["step"] == "1"
    rotate(token, "token-2")
    server.accepted = "token-2"  # the old token has expired
    progress.update(step=2)
    # the new token went with the very next request: no 401 round trip
    assert server.seen[1:] == ["Bearer token-2"] and server.data["step"] == "2"
    token.write_text("token-three")  # rewritten in place (same inode, new size/mtime)
    server.accepted = "token-three"
    progress.update(step=3)
    assert server.seen[2:] == ["Bearer token-three"] and server.data["step"] == "3"


def test_a_401_rereads_the_token_and_retries_once(fake_api, caplog):
    server, token, reporter = fake_api
    progress = reporter()
    progress.update(step=1)
    st = os.stat(token)
    # rotated without a visible change (same inode, size and mtime): only the 401 tells
    token.write_text("token-9")
    os.utime(token, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert progress.cm.token.current() == "token-1"
    server.accepted = "token-9"
    progress.update(step=2)
    assert server.seen[1:] == ["Bearer token-1", "Bearer token-9"]
    assert server.data["step"] == "2"
    # a token that is refused and not rotated: one request, a warning, training goes on
    server.accepted = "nobody"
    with caplog.at_level("WARNING", logger="rlpost_trainer.progress"):
        progress.update(step=3)
    assert server.seen[3:] == ["Bearer token-9"] and server.data["step"] == "2"
    assert "HTTP 401" in caplog.text
