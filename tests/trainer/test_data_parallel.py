"""Data-parallel trainer ranks through the launcher the trainer pods use.

`trainer.replicas: 2, gpusPerPod: 2` is simulated as two `python -m rlpost_trainer` launcher
processes with the env the operator gives the two pods (RLPOST_POD_INDEX 0 and 1, NNODES=2,
NPROC_PER_NODE=2, MASTER_ADDR=127.0.0.1): 4 CPU gloo ranks. They train on one fixed batch,
served by a stand-in for the buffer that speaks the Buffer API (docs/CONTRACTS.md) and counts
what it is asked; the loss, the statistics and the updated weights must match one rank
(`python -m rlpost_trainer` without the gang env, as `rlpost run` starts it).

The learning rate is small on purpose: Adam divides each gradient element by its magnitude
(+ eps 1e-8), so an element whose gradient is ~1e-8 turns fp32 summation-order noise (the
ranks' partial gradients add up in another order) into a weight difference of up to ~lr/100.
At lr 1e-4 that stays below 1e-6, while every weight still moves by ~lr per step; the loss,
the statistics and the gradient norm (compared at 1e-5 as well) see any error in the
normalisation or the reduction directly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import torch
import yaml
from rlpost_trainer import checkpoint
from rlpost_trainer.ranks import Gang, Ranks, dp_rows, needs_launch

from rlpost.local.runner import free_port
from tests.trainer.conftest import TOKEN, job_dict

torch.set_num_threads(1)
STEPS = 2
TOL = 1e-5


def fixed_groups() -> list[dict]:
    """10 samples in 3 groups of uneven sizes: prompts and responses of different lengths, one
    response whose tokens are all masked (tool output) and one partly masked, logprobs near
    the tiny model's (ratios on both sides of the clip range)."""
    rng = random.Random(7)
    groups = []
    for gi, (size, rewards) in enumerate(
        [(4, [1.0, 0.0, 0.0, 1.0]), (3, [0.3, 0.9, 0.1]), (3, [1.0, 0.0, 0.5])]
    ):
        prompt = [rng.randrange(3, 12) for _ in range(2 + gi)]
        samples = []
        for si in range(size):
            n = 1 + (gi * 3 + si * 2) % 6
            resp = [rng.randrange(3, 12) for _ in range(n)]
            mask = None
            if (gi, si) == (1, 1):
                mask = [0] * n
            if (gi, si) == (2, 0):
                mask = [1 if j % 2 else 0 for j in range(n)]
            samples.append(
                {
                    "sample_id": f"g{gi}-s{si}",
                    "prompt_ids": prompt,
                    "response_ids": resp,
                    "response_logprobs": [-2.48 + rng.uniform(-0.4, 0.4) for _ in resp],
                    "reward": rewards[si],
                    "finish_reason": "stop",
                    "weight_version": 0,
                    "loss_mask": mask,
                }
            )
        groups.append({"group_id": f"g{gi}", "prompt_index": gi, "weight_version": 0,
                       "samples": samples})  # fmt: skip
    return groups


class FakeBuffer:
    """The Buffer API's trainer side on 127.0.0.1: every step is the same fixed batch; every
    request is counted (method, path)."""

    def __init__(self):
        self.groups = fixed_groups()
        self.calls: Counter = Counter()
        self.versions: list[int] = []
        buf = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body: dict, code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                buf.calls["GET", url.path] += 1
                if url.path == "/health":
                    return self.reply({"status": "ok"})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.reply({"detail": "token"}, 401)
                step = int(query.get("step", 0))
                if url.path == "/batch":
                    return self.reply({"step": step, "groups": buf.groups})
                if url.path == "/checkpoint":
                    return self.reply({"step": step, "cursor": 10 * step})
                self.reply({"detail": "not found"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                buf.calls["POST", self.path] += 1
                if self.path == "/weight_version":
                    buf.versions.append(body["version"])
                    return self.reply({"version": body["version"]})
                if self.path == "/resume":
                    return self.reply({"step": body["step"], "cursor": body["cursor"]})
                self.reply({"detail": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def buffer():
    fake = FakeBuffer()
    yield fake
    fake.close()


GANG_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NNODES",
            "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "KUBERNETES_SERVICE_HOST")  # fmt: skip


def write_job(
    path: Path, replicas: int, gpus_per_pod: int, steps: int = STEPS, **algorithm
) -> Path:
    job = job_dict(
        trainer={"replicas": replicas, "gpusPerPod": gpus_per_pod},
        algorithm={
            "groupSize": 4,
            "rolloutBatchSize": 3,
            "lr": 1e-4,
            "klCoef": 0.05,
            **algorithm,
        },  # fmt: skip
        checkpoint={"intervalSteps": 1},
        steps=steps,
    )
    path.write_text(yaml.safe_dump(job))
    return path


def trainer_env(config: Path, buffer_url: str, state: Path, progress: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RLPOST_") and k not in GANG_ENV}  # fmt: skip
    env.update(
        RLPOST_CONFIG=str(config),
        RLPOST_TOKEN=TOKEN,
        RLPOST_BUFFER_URL=buffer_url,
        RLPOST_STATE_DIR=str(state),
        RLPOST_PROGRESS_DIR=str(progress),
        RLPOST_BATCH_TIMEOUT_S="60",
        RLPOST_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def run_trainers(envs: list[dict], logs: Path, timeout_s: float = 420) -> None:
    """`python -m rlpost_trainer` once per env (one per simulated pod), to the end."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, env in enumerate(envs):
        out = open(logs / f"pod-{i}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, "-m", "rlpost_trainer"], env=env,
                                       stdout=out, stderr=subprocess.STDOUT), out))  # fmt: skip
    try:
        for i, (p, out) in enumerate(procs):
            code = p.wait(timeout=timeout_s)
            out.close()
            assert code == 0, (
                f"pod {i} exited {code}:\n" + (logs / f"pod-{i}.log").read_text()[-4000:]
            )
    finally:
        for p, out in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()


def read_steps(progress: Path) -> list[dict]:
    return [json.loads(line) for line in (progress / "steps.jsonl").read_text().splitlines()]


def model_state(state_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return checkpoint.load(state_dir / "checkpoints", step)["backend"]["model"]


def assert_same_training(one: list[dict], many: list[dict]) -> None:
    assert [r["step"] for r in many] == [r["step"] for r in one]
    for a, b in zip(one, many, strict=True):
        keys = ("loss", "pg_loss", "kl", "kl_rollout", "logprob_mismatch", "clip_fraction")
        for key in (*keys, "grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=TOL, rel=TOL), (a["step"], key, a, b)
        assert a["samples"] == b["samples"] == 10


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=TOL, rtol=0), (
            name, float((a[name] - b[name]).abs().max()),
        )  # fmt: skip


def gang_envs(config, buffer_url, states, progresses, nnodes, nproc, **extra) -> list[dict]:
    port = str(free_port())
    return [
        trainer_env(
            config,
            buffer_url,
            states[i],
            progresses[i],
            NNODES=str(nnodes),
            NPROC_PER_NODE=str(nproc),
            RLPOST_POD_INDEX=str(i),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **extra,
        )  # fmt: skip
        for i in range(nnodes)
    ]


# ---------------------------------------------------------------------- the env contract


def test_rank_env_follows_the_pod_index():
    env = {"NNODES": "2", "NPROC_PER_NODE": "2", "RLPOST_POD_INDEX": "1"}
    gang = Gang.from_env(env)
    assert gang.world_size == 4
    assert [gang.rank_env(i)["RANK"] for i in range(2)] == ["2", "3"]
    assert gang.rank_env(1)["LOCAL_RANK"] == "1" and gang.rank_env(1)["WORLD_SIZE"] == "4"
    assert needs_launch(env)
    assert not needs_launch({**env, **gang.rank_env(0)})  # a rank does not launch again
    assert not needs_launch({})  # one rank: `rlpost run`, one-GPU pods
    assert Ranks.from_env(gang.rank_env(1)) == Ranks(rank=3, world_size=4, local_rank=1)
    with pytest.raises(SystemExit):
        Gang.from_env({**env, "RLPOST_POD_INDEX": "2"})
    # Without the pod-index label (a pod made by hand) the pod name's ordinal.
    no_label = {**env, "RLPOST_POD_INDEX": "", "POD_NAME": "j-trainer-1"}
    assert Gang.from_env(no_label).pod_index == 1
    with pytest.raises(SystemExit, match="pod-index"):
        Gang.from_env({**no_label, "POD_NAME": ""})
    # Rows: ceil(n / world) each, in order, every row once.
    parts = [dp_rows(10, r, 4) for r in range(4)]
    assert parts == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [dp_rows(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


def test_the_operator_pod_env_gives_the_launcher_its_gang():
    """The trainer pod's env as the operator builds it, with the pod-index label resolved
    as the kubelet does for pod 1: its launcher starts ranks 4..7 of 8."""
    from rlpost_operator import builders as b

    from rlpost import api

    job = job_dict(trainer={"replicas": 2, "gpusPerPod": 4})
    spec = api.RLPostTrainJobSpec.model_validate(job["spec"])
    pod = b.pod_spec(b.JobRef("j", "ns", "uid"), spec, "trainer")
    env = {}
    for e in pod["containers"][0]["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "pod-index" in str(e.get("valueFrom")):
            env[e["name"]] = "1"
    assert pod["containers"][0]["command"] == ["python", "-m", "rlpost_trainer"]
    assert needs_launch(env)
    gang = Gang.from_env(env)
    ranks = [Ranks.from_env(gang.rank_env(i)) for i in range(gang.nproc)]
    assert [(r.rank, r.world_size, r.local_rank) for r in ranks] == [
        (4, 8, 0), (5, 8, 1), (6, 8, 2), (7, 8, 3),
    ]  # fmt: skip
    assert env["MASTER_ADDR"] == "j-trainer-0.j"


def test_a_failed_rank_ends_the_pod_with_its_exit_code(tmp_path):
    """The launcher stops the other ranks when one fails and exits with its code (the
    operator then restarts the gang); every rank saw its own RANK/LOCAL_RANK."""
    import time

    from rlpost_trainer.launch import launch

    script = (
        "import os, sys, time, pathlib\n"
        "r = os.environ['RANK']\n"
        f"pathlib.Path({str(tmp_path)!r}, 'rank-' + r).write_text(os.environ['LOCAL_RANK'])\n"
        "if r == '3':\n"
        "    time.sleep(0.5); sys.exit(7)\n"
        "time.sleep(120)\n"
    )
    gang = Gang(nnodes=2, nproc=2, pod_index=1)
    t0 = time.monotonic()
    assert launch(gang, [sys.executable, "-c", script]) == 7
    assert time.monotonic() - t0 < 60  # rank 2 was stopped, not waited for
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"rank-2": "0", "rank-3": "1"}


# ---------------------------------------------------------------------- world 4 == world 1


@pytest.fixture(scope="module")
def world_one(tmp_path_factory):
    """One rank on the fixed batch: (its step records, its state dir)."""
    root = tmp_path_factory.mktemp("world1")
    fake = FakeBuffer()
    try:
        config = write_job(root / "job.yaml", replicas=1, gpus_per_pod=0)
        env = trainer_env(config, fake.url, root / "state", root / "progress")
        run_trainers([env], root / "logs")
    finally:
        fake.close()
    return read_steps(root / "progress"), root / "state"


@pytest.fixture(scope="module")
def world_four(tmp_path_factory):
    """The gang of 2 pods x 2 ranks on the fixed batch: (the buffer's counts, pod dirs)."""
    root = tmp_path_factory.mktemp("world4")
    fake = FakeBuffer()
    try:
        config = write_job(root / "job.yaml", replicas=2, gpus_per_pod=2)
        # Each simulated pod has its own state and progress directories (as two emptyDirs).
        states = [root / "pod0-state", root / "pod1-state"]
        progresses = [root / "pod0-progress", root / "pod1-progress"]
        run_trainers(gang_envs(config, fake.url, states, progresses, 2, 2), root / "logs")
    finally:
        fake.close()
    return fake, states, progresses


@pytest.mark.slow
def test_two_pods_of_two_ranks_train_as_one_rank(world_one, world_four):
    one_steps, one_state = world_one
    _, states, progresses = world_four
    assert_same_training(one_steps, read_steps(progresses[0]))
    for step in range(1, STEPS + 1):
        assert_same_weights(model_state(one_state, step), model_state(states[0], step))
    # The weights moved: matching is not trivially true.
    init = model_state(one_state, 1)
    final = model_state(states[0], STEPS)
    assert max(float((init[k] - final[k]).abs().max()) for k in init) > 10 * TOL


@pytest.mark.slow
def test_only_global_rank_0_talks_to_the_buffer_reports_and_checkpoints(world_four):
    buffer, states, progresses = world_four
    # One batch pull, one version, one cursor per step; ranks 1..3 never asked (the
    # buffer's serve-once accounting sees one trainer).
    assert buffer.calls["GET", "/batch"] == STEPS
    assert buffer.calls["GET", "/checkpoint"] == STEPS
    assert buffer.versions == list(range(1, STEPS + 1))
    # Progress and checkpoints only from global rank 0 (pod 0); pod 1's ranks wrote nothing.
    assert not progresses[1].exists() or not any(progresses[1].iterdir())
    assert not (states[1] / "checkpoints").exists()
    assert len(read_steps(progresses[0])) == STEPS  # one line per step, not one per rank
    progress = json.loads((progresses[0] / "progress.json").read_text())
    rewards = [r["reward_mean"] for r in read_steps(progresses[0])]
    assert progress == {"step": STEPS, "weightVersion": STEPS, "lastCheckpointStep": STEPS,
                        "rewardMean": round(sum(rewards[-5:]) / len(rewards[-5:]), 4),
                        "done": True}  # fmt: skip
    names = os.listdir(states[0] / "checkpoints")
    assert not [n for n in names if n.startswith(".")]  # no temp dir left behind
    ckpts = sorted(n for n in names if n.startswith("step-"))
    assert ckpts == [checkpoint.step_dir(Path(), s).name for s in range(1, STEPS + 1)]
    assert os.listdir(states[0] / "checkpoints" / ckpts[-1]) == [checkpoint.STATE_FILE]


@pytest.mark.slow
def test_every_rank_resumes_from_the_checkpoint(world_one, buffer, tmp_path):
    """Step 1's checkpoint (from one rank) in a directory both pods share; the gang of 4
    resumes there and its step 2 equals one rank's step 2 only if every rank loaded it."""
    one_steps, one_state = world_one
    shared = tmp_path / "shared-state"
    (shared / "checkpoints").mkdir(parents=True)
    src = checkpoint.step_dir(one_state / "checkpoints", 1)
    shutil.copytree(src, checkpoint.step_dir(shared / "checkpoints", 1))
    config = write_job(tmp_path / "job.yaml", replicas=2, gpus_per_pod=2)
    progresses = [tmp_path / "pod0-progress", tmp_path / "pod1-progress"]
    envs = gang_envs(config, buffer.url, [shared, shared], progresses, 2, 2,
                     RLPOST_RESUME_STEP="1")  # fmt: skip
    run_trainers(envs, tmp_path / "logs")

    assert buffer.calls["POST", "/resume"] == 1 and buffer.calls["GET", "/batch"] == STEPS - 1
    assert_same_training(one_steps[1:], read_steps(progresses[0]))
    assert_same_weights(model_state(one_state, STEPS), model_state(shared, STEPS))


@pytest.mark.slow
def test_ppo_gang_trains_policy_and_critic_as_one_rank(tmp_path):
    """ppo: each rank runs the critic on its rows; the advantages are whitened with the
    whole batch's moments and the critic's gradients summed, so 4 ranks equal one."""
    runs = {}
    for world, (pods, per_pod) in {1: (1, 0), 4: (2, 2)}.items():
        fake = FakeBuffer()
        root = tmp_path / f"world{world}"
        root.mkdir()
        try:
            config = write_job(root / "job.yaml", pods, per_pod, name="ppo", criticLr=1e-4)
            states = [root / f"pod{i}-state" for i in range(pods)]
            progresses = [root / f"pod{i}-progress" for i in range(pods)]
            envs = (
                [trainer_env(config, fake.url, states[0], progresses[0])]
                if world == 1
                else gang_envs(config, fake.url, states, progresses, pods, per_pod)
            )
            run_trainers(envs, root / "logs")
        finally:
            fake.close()
        runs[world] = (read_steps(progresses[0]), states[0])
    (one, one_state), (four, four_state) = runs[1], runs[4]
    assert_same_training(one, four)
    for a, b in zip(one, four, strict=True):
        for key in ("value_loss", "value_mean", "returns_mean", "critic_grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=TOL, rel=TOL), (a["step"], key)
    assert one[-1]["value_mean"] != 0.0  # the critic moved
    for step in range(1, STEPS + 1):
        assert_same_weights(model_state(one_state, step), model_state(four_state, step))
        critics = [checkpoint.load(s / "checkpoints", step)["backend"]["critic"]["model"]
                   for s in (one_state, four_state)]  # fmt: skip
        assert_same_weights(*critics)


# ---------------------------------------------------------------------- rlpost run


@pytest.mark.slow
def test_rlpost_run_with_two_trainer_ranks(tmp_path):
    """`rlpost run --trainer-ranks 2`: the trainer role is the launcher with two gloo ranks;
    the whole loop (real engines, router, buffer) runs, rank 0 alone reports and syncs."""
    import httpx

    from rlpost.local.runner import LocalRun
    from tests.loop.conftest import example_job

    job = example_job(steps=3, checkpoint__interval_steps=2)
    run = LocalRun(job, tmp_path / "run", quiet=True, trainer_ranks=2)
    try:
        run.start()
        result = run.follow(timeout_s=400)
        # Rank 0 pushed every version to every engine.
        for url in run.urls["engines"]:
            version = httpx.get(f"{url}/get_weight_version", timeout=10).json()
            assert version["weight_version"] == "3"
    finally:
        run.stop()
    assert [r["step"] for r in result.steps] == [0, 1, 2]  # one line per step, not per rank
    log = (tmp_path / "run" / "logs" / "trainer.log").read_text()
    assert log.count('"trainer rank started"') == 2 and '"world_size": 2' in log
    ckpts = tmp_path / "run" / "trainer-state" / "checkpoints"
    assert checkpoint.latest_step(ckpts) == 3
