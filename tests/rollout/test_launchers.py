"""The SGLang and sglang-router command lines built from the spec."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile

import pytest
from rlpost_rollout.launch_sglang import sglang_argv
from rlpost_rollout.router import router_argv

from rlpost.api import RLPostTrainJob
from tests.rollout.sglang_wheel import sglang_wheel


def job(**spec) -> RLPostTrainJob:
    base = {
        "model": {"path": "qwen3-0.6b", "pvc": "models", "tokenizer": "qwen3-0.6b"},
        "data": {"prompts": "/data/p.jsonl"},
        "rollout": {"gpusPerEngine": 4, "sglangArgs": ["--mem-fraction-static", "0.7"]},
    }
    base.update(spec)
    return RLPostTrainJob.model_validate({"metadata": {"name": "math-rl"}, "spec": base})


def flag_values(argv: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_sglang_argv_from_the_spec():
    argv = sglang_argv(job(), 30000, token="s3cret", python="python")
    assert argv[:3] == ["python", "-m", "sglang.launch_server"]
    f = flag_values(argv)
    assert f["--model-path"] == "/models/qwen3-0.6b"
    assert f["--tokenizer-path"] == "/models/qwen3-0.6b"
    assert f["--tp-size"] == "4"
    assert f["--port"] == "30000"
    assert f["--admin-api-key"] == "s3cret"  # control endpoints only; /generate stays open
    assert "--api-key" not in f
    assert "--enable-metrics" in f
    assert f["--weight-version"] == "0"
    assert argv[-2:] == ["--mem-fraction-static", "0.7"]  # user args last, verbatim
    assert "--admin-api-key" not in sglang_argv(job(), 1, token=None)
    # absolute paths are used as given; without a model PVC nothing is prefixed
    g = flag_values(sglang_argv(job(model={"path": "/weights/q", "pvc": "models"}), 1))
    assert g["--model-path"] == "/weights/q"
    g = flag_values(sglang_argv(job(model={"path": "q"}), 1))
    assert g["--model-path"] == "q"


def test_sglang_in_a_cluster_is_not_ready_before_the_trainers_first_push():
    from rlpost_rollout.ready import UNSYNCED_VERSION, ready

    f = flag_values(sglang_argv(job(), 1, wait_for_weights=True))
    assert f["--weight-version"] == UNSYNCED_VERSION == "-1"
    assert ready({"weight_version": "-1"}) == (
        False,
        "waiting for the first weights from the trainer",
    )
    assert ready({"weight_version": "0"})[0] and ready({"weight_version": 12})[0]
    assert not ready({})[0]
    # the probe command itself: an engine that does not answer is not ready
    from rlpost.local.runner import free_port

    port = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "rlpost_rollout.ready", "--port", port, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "not answering" in done.stdout


def test_sglang_argv_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="model.path"):
        sglang_argv(job(model={"config": {}, "tokenizer": "char:ab"}), 1)
    with pytest.raises(ValueError, match="--tp-size"):
        sglang_argv(job(rollout={"sglangArgs": ["--tp-size", "8"]}), 1)


def sglang_server_flags() -> set[str]:
    """Every --flag of the pinned SGLang (server-arg fields of its arg_groups, and aliases)."""
    flags: set[str] = set()
    with zipfile.ZipFile(sglang_wheel()) as z:
        for name in z.namelist():
            if name.startswith("sglang/srt/arg_groups/fields/") and name.endswith(".py"):
                tree = ast.parse(z.read(name).decode())
                for node in ast.walk(tree):
                    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                        flags.add("--" + node.target.id.replace("_", "-"))
                    text = node.value if isinstance(node, ast.Constant) else None
                    if isinstance(text, str) and text.startswith("--") and " " not in text:
                        flags.add(text)
    return flags


def test_every_flag_we_pass_sglang_exists_in_the_pinned_version():
    known = sglang_server_flags()
    assert "--model-path" in known and len(known) > 100
    ours = [a for a in sglang_argv(job(), 30000, token="t") if a.startswith("--")]
    user = {"--mem-fraction-static"}  # from the spec: the user's responsibility
    missing = [a for a in ours if a not in known and a not in user]
    assert not missing, missing


def test_router_argv_local_and_in_cluster():
    local = router_argv(
        job(rollout={"router": {"policy": "manual"}}),
        30000,
        in_cluster=False,
        engine_urls=["http://a:1", "http://b:2"],
    )
    f = flag_values(local)
    assert f["--policy"] == "manual" and f["--port"] == "30000"
    i = local.index("--worker-urls")
    assert local[i + 1 : i + 3] == ["http://a:1", "http://b:2"]
    assert "--service-discovery" not in local
    with pytest.raises(ValueError, match="RLPOST_ENGINE_URLS"):
        router_argv(job(), 30000, in_cluster=False, engine_urls=[])

    cluster = router_argv(job(), 30000, in_cluster=True, engine_urls=[], namespace="team-a")
    f = flag_values(cluster)
    assert f["--policy"] == "cache_aware"
    i = cluster.index("--selector")
    assert cluster[i + 1 : i + 3] == [
        "app.kubernetes.io/instance=math-rl",
        "rlpost.dev/role=rollout",
    ]
    assert f["--service-discovery-namespace"] == "team-a"
    assert f["--service-discovery-port"] == "30000"
    assert "--worker-urls" not in cluster
    # mode colocated: the engines are containers of the worker pods
    coloc = router_argv(job(mode="colocated"), 30000, in_cluster=True, engine_urls=[])
    i = coloc.index("--selector")
    assert coloc[i + 1 : i + 3] == ["app.kubernetes.io/instance=math-rl", "rlpost.dev/role=worker"]


def test_the_installed_sglang_router_accepts_our_flags():
    out = subprocess.run(
        [sys.executable, "-m", "sglang_router.launch_router", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    argv = router_argv(job(), 1, in_cluster=True, engine_urls=[], namespace="n", prometheus_port=9)
    argv += router_argv(job(), 1, in_cluster=False, engine_urls=["http://a:1"])
    for flag in {a for a in argv if a.startswith("--")}:
        assert flag in out, flag
