"""Where the trainer reports progress.

In a cluster (KUBERNETES_SERVICE_HOST set) rank 0 merge-patches the ConfigMap
`<job>-progress` with its ServiceAccount (docs/CONTRACTS.md "Progress reporting"); the
projected token expires and the kubelet rewrites the file, so it is re-read whenever the file
changed and once more after a 401 (`ServiceAccountToken`, `TokenAuth`). Outside
one (`rlpost run`) it writes `progress.json` and appends `steps.jsonl` in
$RLPOST_PROGRESS_DIR. Both may be active; neither is required.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections import deque
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("rlpost_trainer.progress")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def sa_dir() -> Path:
    """The mounted ServiceAccount (overridable for non-standard mounts and tests)."""
    return Path(os.environ.get("RLPOST_SERVICEACCOUNT_DIR") or SA_DIR)


class ServiceAccountToken:
    """The token file, re-read when it changed (the kubelet rotates projected tokens by
    swapping the file: new inode, mtime or size) or when `reload` is called (after a 401)."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.value = ""
        self.reloads = 0  # reads after the first (tests, logs)
        self.reload()
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows the kubelet's ..data symlink
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> str:
        try:
            if self._stat() != self._stamp:
                self.reload()
        except OSError as e:
            log.warning("ServiceAccount token unreadable, keeping the last one: %s", e)
        return self.value

    def reload(self) -> bool:
        """Read the file again; True when the token changed."""
        stamp = self._stat()
        value = self.path.read_text().strip()
        changed = value != self.value
        self._stamp, self.value = stamp, value
        self.reloads += 1
        if changed and self.reloads > 1:
            log.info("ServiceAccount token reloaded (rotated by the kubelet)")
        return changed


class TokenAuth(httpx.Auth):
    """Bearer auth with the current token; a 401 re-reads the file and, if the token
    changed, sends the request once more."""

    requires_request_body = True

    def __init__(self, token: ServiceAccountToken):
        self.token = token

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = f"Bearer {self.token.current()}"
        response = yield request
        if response.status_code == 401:
            try:
                changed = self.token.reload()
            except OSError:
                changed = False
            if changed:
                request.headers["Authorization"] = f"Bearer {self.token.value}"
                yield request


class ConfigMapProgress:
    def __init__(self, job: str):
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        sa = sa_dir()
        namespace = os.environ.get("RLPOST_NAMESPACE") or (sa / "namespace").read_text()
        self.token = ServiceAccountToken(sa / "token")
        ca = sa / "ca.crt"
        self.url = (
            f"https://{host}:{port}/api/v1/namespaces/{namespace.strip()}/configmaps/{job}-progress"
        )
        self.http = httpx.Client(
            auth=TokenAuth(self.token),
            verify=ssl.create_default_context(cafile=str(ca)) if ca.exists() else True,
            timeout=10.0,
        )

    def write(self, data: dict[str, str]) -> None:
        r = self.http.patch(
            self.url,
            content=json.dumps({"data": data}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if r.status_code >= 400:
            # Progress is advisory: training goes on, the operator sees it on the next patch.
            log.warning("progress ConfigMap patch failed: HTTP %s %s", r.status_code, r.text[:200])


REWARD_WINDOW = 5


class Progress:
    def __init__(self, job: str):
        self.cm = ConfigMapProgress(job) if os.environ.get("KUBERNETES_SERVICE_HOST") else None
        d = os.environ.get("RLPOST_PROGRESS_DIR")
        self.dir = Path(d) if d else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = {
            "step": 0,
            "weightVersion": 0,
            "lastCheckpointStep": None,
            "rewardMean": None,
            "done": False,
        }
        # The job's status shows the mean reward of the last REWARD_WINDOW steps.
        self._rewards: deque[float] = deque(maxlen=REWARD_WINDOW)

    def update(self, record: dict[str, Any] | None = None, **fields: Any) -> None:
        self.state.update(fields)
        if record is not None and "reward_mean" in record:
            self._rewards.append(float(record["reward_mean"]))
            self.state["rewardMean"] = round(sum(self._rewards) / len(self._rewards), 4)
        if self.dir:
            if record is not None:
                with open(self.dir / "steps.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            tmp = self.dir / "progress.json.tmp"
            tmp.write_text(json.dumps(self.state))
            tmp.replace(self.dir / "progress.json")
        if self.cm:
            data = {
                k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in self.state.items()
            }
            try:
                self.cm.write(data)
            except httpx.HTTPError as e:
                log.warning("progress ConfigMap unreachable: %s", e)
