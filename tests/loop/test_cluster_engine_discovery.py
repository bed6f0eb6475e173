"""The cluster's engine wiring on one machine: engines that are not ready before the
trainer's first push (RLPOST_WAIT_FOR_WEIGHTS=1, as the operator starts them), a trainer that
finds them through a DNS name (RLPOST_ENGINE_SERVICE, as in a cluster) instead of a fixed
list, and the real sglang-router in front of them. The loop must start (the trainer pushes
version 0 before any generation) and train to the end, every engine at the last version."""

from __future__ import annotations

import httpx

from rlpost.local.runner import LocalRun
from tests.loop.conftest import example_job, read_jsonl


class ClusterWiredRun(LocalRun):
    def roles(self):
        waves = super().roles()
        engines, _router, _buffer, (trainer,) = waves
        for e in engines:
            e.env = {**e.env, "RLPOST_WAIT_FOR_WEIGHTS": "1"}
            e.health_url = None  # 503 until the trainer has pushed: nothing to wait for
        (url,) = self.urls["engines"]
        trainer.env = {k: v for k, v in trainer.env.items() if k != "RLPOST_ENGINE_URLS"}
        # "localhost" resolves to 127.0.0.1 (an A record), as <job>-rollout resolves to pods
        trainer.env["RLPOST_ENGINE_SERVICE"] = f"localhost:{url.rsplit(':', 1)[1]}"
        trainer.env["RLPOST_ENGINE_CHECK_S"] = "1"
        return waves


def test_gated_engine_found_by_dns_gets_version_0_then_every_step(tmp_path):
    job = example_job(steps=4, rollout__engines=1, checkpoint__interval_steps=2)
    run = ClusterWiredRun(job, tmp_path / "run", quiet=True)
    try:
        run.start()
        (engine,) = run.urls["engines"]
        result = run.follow(timeout_s=420)
        assert [r["step"] for r in result.steps] == [0, 1, 2, 3]
        info = httpx.get(engine + "/model_info", timeout=10).json()
        assert str(info["weight_version"]) == "4"
        assert httpx.get(engine + "/health", timeout=10).status_code == 200
        log = (tmp_path / "run" / "logs" / "trainer.log").read_text()
        assert "engines need the current weights" in log  # the version-0 push before step 0
        # every sample trained at step s came from version s (synchronous run)
        steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
        assert all(r["max_staleness"] == 0 for r in steps)
    finally:
        run.stop()


class ColocatedPodRun(ClusterWiredRun):
    """A colocated worker pod as the operator builds it (builders/pods.py): the trainer finds
    its one engine at 127.0.0.1:<engine port> (RLPOST_ENGINE_SERVICE), the engine is gated
    until the first push, and both use one TMPDIR (the pod's `ipc` emptyDir: where the
    trainer's torch shared-memory manager puts the socket the engine connects to)."""

    def roles(self):
        waves = super().roles()
        engines, _router, _buffer, (trainer,) = waves
        ipc = self.run_dir / "ipc"
        ipc.mkdir(parents=True, exist_ok=True)
        for role in (*engines, trainer):
            role.env = {**role.env, "TMPDIR": str(ipc)}
        trainer.env["RLPOST_ENGINE_SERVICE"] = trainer.env["RLPOST_ENGINE_SERVICE"].replace(
            "localhost", "127.0.0.1"
        )
        return waves


def test_colocated_worker_pod_wiring_pushes_the_gated_engine_over_shared_memory(tmp_path):
    job = example_job(steps=3, rollout__engines=1, mode="colocated")
    run = ColocatedPodRun(job, tmp_path / "run", quiet=True)
    try:
        run.start()
        (engine,) = run.urls["engines"]
        result = run.follow(timeout_s=420)
        assert [r["step"] for r in result.steps] == [0, 1, 2]
        assert str(httpx.get(engine + "/model_info", timeout=10).json()["weight_version"]) == "3"
        assert httpx.get(engine + "/health", timeout=10).status_code == 200
        log = (tmp_path / "run" / "logs" / "trainer.log").read_text()
        assert "engines need the current weights" in log  # version 0, before step 0
        # colocated: released around every step, synced over shared memory after it
        assert all(r["release_ms"] > 0 and r["sync_ms"] > 0 for r in result.steps)
    finally:
        run.stop()
