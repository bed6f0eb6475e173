"""Must show 5: bad model input is a clear error at `rlpost run` start (nothing started) and,
in a cluster, a role that exits 78 with the reason as its termination message, which the
operator turns into the InvalidSpec condition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlpost import cli
from rlpost import models as M
from rlpost.api import ModelSource
from rlpost.refuse import INVALID_SPEC_EXIT_CODE
from tests.models.conftest import ROOT, corpus, job_dict, write_prompts


@pytest.fixture
def run_start(tmp_path, capsys, monkeypatch):
    """`rlpost run JOB` in this process; returns (exit code, stderr). A refused spec returns
    before any role starts (LocalRun is never built)."""
    import rlpost.local.runner as runner

    def no_start(*a, **k):
        raise AssertionError("roles were started for a spec that cannot work")

    monkeypatch.setattr(runner, "LocalRun", no_start)

    def run(job: dict) -> tuple[int, str]:
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        code = cli.main(["run", str(path), "--run-dir", str(tmp_path / "run")])
        return code, capsys.readouterr().err

    return run


def unknown_architecture_dir(path: Path) -> Path:
    path.mkdir()
    cfg = {"model_type": "foo-lm", "architectures": ["FooLMForCausalLM"], "hidden_size": 8}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"")
    return path


def no_template_dir(tmp_path: Path) -> Path:
    from rlpost.tiny import save_tiny_model

    return save_tiny_model(
        tmp_path / "no-template", "qwen3", corpus("qwen3"), vocab_size=48, chat_template=False
    )


def test_missing_directory(run_start, tmp_path):
    code, err = run_start(job_dict(tmp_path / "nope", write_prompts(tmp_path / "p.jsonl")))
    assert code == 2
    assert f"spec.model.path: {tmp_path / 'nope'} is not a directory" in err


def test_unknown_architecture(run_start, tmp_path):
    d = unknown_architecture_dir(tmp_path / "foo")
    code, err = run_start(job_dict(d, write_prompts(tmp_path / "p.jsonl")))
    assert code == 2
    assert "model_type 'foo-lm'" in err and "FooLMForCausalLM" in err
    assert "not an architecture transformers" in err


def test_tokenizer_without_chat_template_when_messages_are_given(run_start, tmp_path):
    d = no_template_dir(tmp_path)
    rows = [{"messages": [{"role": "user", "content": "abcd="}], "label": "a"}]
    job = job_dict(d, write_prompts(tmp_path / "m.jsonl", rows), data={"messagesKey": "messages"})
    code, err = run_start(job)
    assert code == 2
    assert "has no chat template, but the prompts are chat messages" in err
    # The same directory with plain-text prompts is fine: the template is only needed for
    # messages.
    assert M.model_problems(ModelSource(path=str(d), dtype="float32"), chat_prompts=False) == []


def test_dtype_the_device_lacks(run_start, tmp_path, tiny_models, monkeypatch):
    # A GPU without bfloat16 (e.g. a V100) ...
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    assert M.dtype_problem("bfloat16", "cuda") == (
        "spec.model.dtype: bfloat16 is not supported by this GPU (Tesla V100-SXM2-16GB); use "
        "float16 or float32"
    )
    assert M.dtype_problem("float16", "cuda") is None
    # ... and a CPU whose kernels lack the dtype: found by computing in it, not by a table.
    assert M.dtype_problem("bfloat16", "cpu") is None  # this machine's CPU computes bf16
    real_linear = torch.nn.functional.linear

    def no_half(x, w, b=None):
        if x.dtype == torch.float16:
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        return real_linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", no_half)
    job = job_dict(tiny_models["qwen3"], write_prompts(tmp_path / "p.jsonl"))
    job["spec"]["model"]["dtype"] = "float16"
    code, err = run_start(job)
    assert code == 2
    assert "spec.model.dtype: float16 is not supported on CPU here" in err
    assert "not implemented for 'Half'" in err


def role_env(tmp_path: Path, job: dict) -> dict[str, str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")},
        "RLPOST_CONFIG": str(path),
        "RLPOST_STATE_DIR": str(tmp_path / "state"),
        "RLPOST_ROUTER_URL": "http://127.0.0.1:9",
        "RLPOST_BUFFER_URL": "http://127.0.0.1:9",
        "RLPOST_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "RLPOST_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.mark.parametrize(
    "role, module, case",
    [
        ("engine", "rlpost_rollout.engine", "missing"),
        ("trainer", "rlpost_trainer", "unknown"),
        ("buffer", "rlpost_rollout.buffer", "no_template"),
    ],
)
def test_roles_refuse_the_spec_with_exit_78_and_the_operator_says_invalid_spec(
    role, module, case, tmp_path
):
    prompts = write_prompts(tmp_path / "p.jsonl")
    if case == "missing":
        job, want = job_dict(tmp_path / "nope", prompts), "is not a directory"
    elif case == "unknown":
        job = job_dict(unknown_architecture_dir(tmp_path / "foo"), prompts)
        want = "model_type 'foo-lm'"
    else:
        job = job_dict(no_template_dir(tmp_path), prompts, data={"applyChatTemplate": True})
        want = "no chat template"
    proc = subprocess.run(
        [sys.executable, "-m", module, "--port", "0"] if role != "trainer"
        else [sys.executable, "-m", module],
        env=role_env(tmp_path, job), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == INVALID_SPEC_EXIT_CODE, proc.stderr[-2000:]
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith(f"{role} cannot start:") and want in message, message

    # The pod status the kubelet reports for it -> the operator's InvalidSpec reason.
    from rlpost_operator import protocol, validation

    assert validation.INVALID_SPEC_EXIT_CODE == INVALID_SPEC_EXIT_CODE
    pod = {
        "metadata": {"name": f"j-{role}", "labels": {"rlpost.dev/role": role}},
        "status": {"containerStatuses": [{"name": role, "state": {"terminated": {
            "exitCode": INVALID_SPEC_EXIT_CODE, "message": message}}}]},
    }  # fmt: skip
    why = protocol.invalid_spec_exit(pod)
    assert why is not None and "refused the spec at start" in why and want in why
