"""Engines that come and go (rlpost_trainer.engines.EngineSet), against real reference engines.

The engines run as in a cluster (RLPOST_WAIT_FOR_WEIGHTS=1: not ready before the trainer's
first push); the Service's DNS answer is played by a list the test edits.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from rlpost_trainer.engines import (
    EngineSet,
    EnginesUnavailable,
    dns_source,
    engine_set_from_env,
    source_from_env,
)

from rlpost.api import RLPostTrainJob
from rlpost.local.procs import Processes, Role
from rlpost.local.runner import free_port
from rlpost.weightsync import WeightSender
from tests.trainer.conftest import TOKEN, job_dict
from tests.trainer.test_weight_sync import (
    PROMPT,
    engine_logprobs,
    trained_backend,
    trainer_logprobs,
)

torch.set_num_threads(1)


class ClusterEngines:
    """Reference engines started the way the operator starts them (gated on first weights)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs = Processes()
        job = tmp / "job.yaml"
        job.write_text(yaml.safe_dump(job_dict()))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")},
            "RLPOST_CONFIG": str(job),
            "RLPOST_TOKEN": TOKEN,
            "RLPOST_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "RLPOST_WAIT_FOR_WEIGHTS": "1",
        }
        self.n = 0

    def start(self, port: int | None = None) -> str:
        port = port or free_port()
        self.n += 1
        name = f"engine-{self.n}"
        argv = [sys.executable, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
        self.procs.start(Role(name, argv, self.env, self.tmp / f"{name}.log", None))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/model_info", timeout=2).raise_for_status()
                return url
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"engine at {url} did not come up: {(self.tmp / name).read_text()}")

    def kill(self, url: str) -> None:
        port = url.rsplit(":", 1)[1]
        for r in self.procs.roles:
            if r.argv[-1] == port and r.proc and r.proc.poll() is None:
                self.procs.kill(r.name)


@pytest.fixture
def cluster_engines(tmp_path):
    ce = ClusterEngines(tmp_path)
    yield ce
    ce.procs.stop_all(grace_s=5)


def health(url: str) -> int:
    return httpx.get(url + "/health", timeout=5).status_code


def version(url: str) -> str:
    return str(httpx.get(url + "/model_info", timeout=5).json()["weight_version"])


def make_sender(urls: list[str]) -> WeightSender:
    return WeightSender(urls, token=TOKEN, backend="gloo", bucket_mb=0.05)


def matches(url: str, be, ids) -> bool:
    return (engine_logprobs(url, ids) - trainer_logprobs(be, ids)).abs().max().item() <= 1e-4


def test_engines_joining_leaving_and_restarting_get_the_current_weights(cluster_engines):
    be, tok = trained_backend()
    ids = tok.encode(PROMPT)
    e1 = cluster_engines.start()
    e2 = cluster_engines.start()
    dns = [e1]  # what the headless Service answers
    es = EngineSet(lambda: list(dns), 2, make_sender, wait_s=0.5, poll_s=0.1, token=TOKEN)
    try:
        # Not ready before the trainer's first push (router and kubelet see 503).
        assert health(e1) == 503 and health(e2) == 503
        assert es.catch_up(be.named_hf_weights, 0) is not None
        assert health(e1) == 200 and version(e1) == "0" and matches(e1, be, ids)
        assert health(e2) == 503  # not behind the Service yet
        assert es.catch_up(be.named_hf_weights, 0) is None  # nothing new: no push

        # A second engine appears: the group is re-formed and it gets version 0.
        dns.append(e2)
        assert es.catch_up(be.named_hf_weights, 0) is not None
        assert es.reforms == 2 and es.members == sorted([e1, e2])
        assert health(e2) == 200 and version(e2) == "0" and matches(e2, be, ids)

        # A step: both move to version 1 through the same group.
        with torch.no_grad():
            be.model.lm_head.weight.mul_(1.5)
        es.push(be.named_hf_weights, 1)
        assert es.reforms == 2
        assert version(e1) == version(e2) == "1" and matches(e1, be, ids)

        # e1 is replaced by a pod at another address: e3 gets version 1 before it is ready.
        cluster_engines.kill(e1)
        e3 = cluster_engines.start()
        dns[:] = [e2, e3]
        assert health(e3) == 503
        assert es.catch_up(be.named_hf_weights, 1) is not None
        assert es.reforms == 3 and es.members == sorted([e2, e3])
        assert health(e3) == 200 and version(e3) == "1" and matches(e3, be, ids)

        # e3's process restarts at the same address: it reports version 0, gets version 1.
        cluster_engines.kill(e3)
        port = int(e3.rsplit(":", 1)[1])
        assert cluster_engines.start(port) == e3
        assert version(e3) == "0" and health(e3) == 503
        assert es.catch_up(be.named_hf_weights, 1) is not None
        assert es.reforms == 4 and version(e3) == "1" and health(e3) == 200
        assert matches(e3, be, ids)

        # The next step reaches both engines of the re-formed group.
        with torch.no_grad():
            be.model.lm_head.weight.mul_(0.5)
        es.push(be.named_hf_weights, 2)
        assert version(e2) == version(e3) == "2" and matches(e2, be, ids) and matches(e3, be, ids)
    finally:
        es.close()


def test_an_engine_that_died_is_dropped_from_the_group_at_the_next_push(cluster_engines):
    be, _ = trained_backend()
    e1, e2 = cluster_engines.start(), cluster_engines.start()
    dns = [e1, e2]
    es = EngineSet(lambda: list(dns), 1, make_sender, wait_s=0.5, poll_s=0.1, token=TOKEN)
    try:
        es.push(be.named_hf_weights, 1)
        cluster_engines.kill(e2)  # still in DNS for a while (pod terminating)
        es.push(be.named_hf_weights, 2)
        assert es.members == [e1] and version(e1) == "2"
    finally:
        es.close()


def test_static_engines_of_rlpost_run_are_trusted_at_start(engines):
    (url,) = engines(1)  # plain engines, as `rlpost run` starts them
    job = RLPostTrainJob.model_validate(job_dict(rollout={"engines": 1, "engine": "reference"}))
    es = engine_set_from_env(job, TOKEN, "gloo", {"RLPOST_ENGINE_URLS": url})
    assert es is not None and es.trust_initial
    be, _ = trained_backend()
    try:
        # They start from the same spec as the trainer: no push before the first step.
        assert es.catch_up(be.named_hf_weights, 0) is None and es.sender is None
        es.push(be.named_hf_weights, 1)
        assert version(url) == "1" and es.reforms == 1
    finally:
        es.close()


def test_waiting_for_engines_times_out_with_a_clear_error():
    es = EngineSet(lambda: [], 2, make_sender, describe="Service j-rollout:30000", wait_s=0.3)
    with pytest.raises(EnginesUnavailable, match="no engine answered behind Service j-rollout"):
        es.push(lambda: [], 1)


def test_dns_source_resolves_a_records_and_no_records_means_no_engines():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert dns_source(f"localhost:{port}")() == [f"http://127.0.0.1:{port}"]
    assert dns_source("no-such-engine-service.invalid:30000")() == []
    with pytest.raises(ValueError):
        dns_source("no-port")
    # one host:port per engine pod (what the operator sets): those without an address yet
    # are left out until they have one
    both = dns_source(f"no-such-engine-0.invalid:30000, localhost:{port},127.0.0.2:{port}")
    assert both() == [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
    with pytest.raises(ValueError):
        dns_source(f"localhost:{port},no-port")


def test_source_from_env_prefers_engine_urls_then_the_service():
    src, what = source_from_env({"RLPOST_ENGINE_URLS": "http://a:1/, http://b:2"})
    assert src() == ["http://a:1", "http://b:2"] and "RLPOST_ENGINE_URLS" in what
    src, what = source_from_env({"RLPOST_ENGINE_SERVICE": "j-rollout:30000"})
    assert what == "Service j-rollout:30000"
    assert source_from_env({}) == (None, "no engines")


def test_trainer_looks_for_engines_while_it_waits_for_a_batch(monkeypatch):
    """Trainer.wait_batch: GET /batch in slices of RLPOST_ENGINE_CHECK_S, catch_up between."""
    from rlpost_trainer.buffer_client import BatchNotReady
    from rlpost_trainer.loop import Trainer

    calls: list = []

    class Buffer:
        def __init__(self):
            self.asked = 0

        def batch(self, step, timeout_s):
            calls.append(("batch", step, timeout_s))
            self.asked += 1
            if self.asked < 3:
                raise BatchNotReady("HTTP 504: not ready")
            return "the batch"

    class Engines:
        def catch_up(self, weights, version):
            calls.append(("catch_up", version))
            return 0.01 if len(calls) == 1 else None

    class Sync:
        def observe(self, s):
            calls.append(("observed", s))

    class Metrics:
        sync = Sync()

    t = Trainer.__new__(Trainer)
    t.buffer, t.engines, t.metrics = Buffer(), Engines(), Metrics()
    t.backend = type("B", (), {"named_hf_weights": lambda self: []})()
    t.batch_timeout_s, t.engine_check_s = 60.0, 2.0
    assert t.wait_batch(7) == "the batch"
    assert calls == [
        ("catch_up", 7),
        ("observed", 0.01),
        ("batch", 7, 2.0),
        ("catch_up", 7),
        ("batch", 7, 2.0),
        ("catch_up", 7),
        ("batch", 7, 2.0),
    ]
    # past the batch timeout the 504 reaches the caller
    t.buffer, t.batch_timeout_s = Buffer(), 0.0
    t.buffer.asked = -10
    with pytest.raises(BatchNotReady):
        t.wait_batch(7)


def test_a_push_that_fails_is_retried_once_on_a_group_of_the_engines_still_answering(
    monkeypatch,
):
    """A member dies under a push (the broadcast breaks): the group is re-formed with the
    engines that still answer and the push is sent again; a second failure is raised."""
    import rlpost_trainer.engines as engines_mod

    alive = {"http://a:1": "1", "http://b:1": "1"}

    def probe(_http, url):
        if url not in alive:
            raise httpx.ConnectError("refused")
        return alive[url]

    monkeypatch.setattr(engines_mod, "probe_version", probe)
    made: list[FakeSender] = []

    class FakeSender:
        pause_mode = "abort"

        def __init__(self, urls, fail):
            self.urls, self.fail, self.closed_with = urls, fail, None
            made.append(self)

        def push(self, weights, version):
            list(weights)
            if self.fail:
                alive.pop("http://b:1", None)  # b died during the broadcast
                raise RuntimeError("gloo: connection reset by peer")
            for u in self.urls:
                alive[u] = str(version)
            return 0.5

        def close(self, engine_urls=None):
            self.closed_with = engine_urls

    fails = [True, False]
    es = EngineSet(
        lambda: ["http://a:1", "http://b:1"],
        2,
        lambda urls: FakeSender(urls, fails.pop(0)),
        wait_s=0.2,
        poll_s=0.05,
    )
    es.pushed = {"http://a:1": "1", "http://b:1": "1"}
    es._looked = True
    assert es.push(lambda: [], 2) == 0.5
    assert [s.urls for s in made] == [["http://a:1", "http://b:1"], ["http://a:1"]]
    assert made[0].closed_with == ["http://a:1"]  # destroy only where someone answers
    assert es.members == ["http://a:1"] and es.pushed == {"http://a:1": "2"}
    # both attempts fail: the error reaches the trainer (its pod restarts the gang)
    fails[:] = [True, True]
    alive["http://b:1"] = "2"
    with pytest.raises(RuntimeError, match="connection reset"):
        es.push(lambda: [], 3)
