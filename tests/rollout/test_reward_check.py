"""A custom reward function is checked when the buffer starts: a path that does not import
or a function that cannot take (prompt, response, label) ends the buffer with exit code 78
and the reason in the pod's termination message (the operator fails the job, no restarts)."""

from __future__ import annotations

import json

import pytest
from rlpost_rollout.buffer import __main__ as buffer_main
from rlpost_rollout.rewards.base import check_function


def test_check_function_accepts_the_documented_signature():
    assert callable(check_function("rlpost_rollout.rewards.builtin:exact_match"))


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("rlpost_rollout.rewards.builtin:nope", "has no function 'nope'"),
        ("rlpost_rollout.rewards.base:code_exec_fn", "cannot be called as fn(prompt, response"),
    ],
)
def test_check_function_says_what_is_wrong(path, says):
    with pytest.raises(ValueError) as exc:
        check_function(path)
    assert says in str(exc.value)


def test_buffer_refuses_a_bad_function_at_start_with_exit_78(tmp_path, monkeypatch):
    job = {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": "j"},
        "spec": {
            "model": {"config": {"hidden_size": 8}},
            "data": {"prompts": str(tmp_path / "p.jsonl")},
            "reward": {"type": "custom", "function": "no_such_module_xyz:score"},
        },
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job))
    log = tmp_path / "termination-log"
    monkeypatch.setenv("RLPOST_TERMINATION_LOG", str(log))
    monkeypatch.setenv("RLPOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RLPOST_ROUTER_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exc:
        buffer_main.main(["--config", str(cfg)])
    assert exc.value.code == 78
    assert "cannot import 'no_such_module_xyz'" in log.read_text()
