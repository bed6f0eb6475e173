"""A custom reward function is checked when the buffer starts: a path that does not import
or a function that cannot take (prompt, response, label) ends the buffer with exit code 78
and the reason in the pod's termination message (the operator fails the job, no restarts)."""

from __future__ import annotations

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
        ("rlpost_rollout.rewards.base:load_function", "cannot be called as fn(prompt, response"),
    ],
)
def test_check_function_says_what_is_wrong(path, says):
    with pytest.raises(ValueError) as exc:
        check_function(path)
    assert says in str(exc.value)


def test_invalid_spec_writes_the_termination_message_and_exits_78(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("RLPOST_TERMINATION_LOG", str(log))
    with pytest.raises(SystemExit) as exc:
        buffer_main.invalid_spec("reward.function 'x:y': cannot import 'x'")
    assert exc.value.code == buffer_main.INVALID_SPEC_EXIT_CODE == 78
    assert log.read_text() == "reward.function 'x:y': cannot import 'x'"
