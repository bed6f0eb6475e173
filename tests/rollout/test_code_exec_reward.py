"""The code_exec reward's sandbox: pass rates, and hostile solutions (an endless loop, 10 GB,
a fork bomb, a socket to a listener this test starts on 127.0.0.1) score 0 within their
limits while the scoring process goes on to score the next sample."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from rlpost_rollout.rewards import make_reward
from rlpost_rollout.rewards.code_exec import (
    Limits,
    SandboxError,
    extract_code,
    parse_label,
    program,
    run_sandboxed,
)

from rlpost.api import RewardSpec

# Small limits: the whole file runs in seconds.
FAST = Limits(cpu_s=2, memory_mb=256, wall_s=3.0, max_processes=16, file_mb=4)
LABEL = {
    "entry_point": "add",
    "tests": [
        {"args": [1, 2], "expected": 3},
        {"args": [-1, 1], "expected": 0},
        "assert add(10, 5) == 15",
        "assert add(0, 0) == 0",
    ],
}
GOOD = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
USERNS = Path("/proc/sys/user/max_user_namespaces").read_text().strip() != "0"


def run(code: str, label=LABEL, limits: Limits = FAST, network: str = "auto"):
    entry, tests = parse_label(label)
    return run_sandboxed(code, tests, entry, limits, network)


def leftovers() -> list[str]:
    """Sandbox processes still alive (a fork bomb's copies would show here)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"sandbox_child.py" in cmd:
                found.append(pid)
    return found


def assert_scores_next():
    """The scorer is fine after a hostile sample: the next one scores normally."""
    assert run(extract_code(GOOD)).pass_rate == 1.0


def test_correct_wrong_and_partial():
    assert run(extract_code(GOOD)).pass_rate == 1.0
    assert run("def add(a, b):\n    return None").pass_rate == 0.0
    partial = run("def add(a, b):\n    return a + b if a >= 0 else 99")
    assert partial.passed == 3 and partial.pass_rate == 0.75
    assert run("this is not python").pass_rate == 0.0


def test_wrong_solution_scores_zero():
    label = {"entry_point": "add", "tests": [{"args": [1, 2], "expected": 3}, "assert add(2,2)==4"]}
    assert run("def add(a, b):\n    return a - b", label).pass_rate == 0.0


@pytest.mark.asyncio
async def test_built_in_reward_through_make_reward():
    reward = make_reward(RewardSpec(type="code_exec", sandbox={"wallSeconds": 3}))
    assert await reward("p", GOOD, LABEL) == 1.0
    assert await reward("p", "def add(a, b):\n    return 0", LABEL) == 0.5


def test_eq_hack_does_not_pass_value_tests():
    hack = (
        "class Any:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Any()"
    )
    assert run(hack, {"entry_point": "add", "tests": [{"args": [1, 2], "expected": 3}]}).passed == 0


def test_labels_and_extraction():
    assert extract_code("a\n```py\nx = 1\n```\nb\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"
    assert parse_label('["assert True"]') == (None, ["assert True"])
    for bad in ("not json", {"tests": []}, {"tests": [{"args": [1], "expected": 1}]}, {"x": 1}):
        with pytest.raises(SandboxError):
            parse_label(bad)


@pytest.mark.asyncio
async def test_prefix_label_runs_the_prompt_and_its_completion():
    """HumanEval-style: "prefix": true runs prompt + response (no fence search); a string
    prefix runs that code + response; without a prefix the response alone runs."""
    tests = [{"args": [x], "expected": x + 3} for x in range(4)]
    label = {"entry_point": "f", "prefix": True, "tests": tests}
    prompt = "#+3\nf=lambda x:x"
    assert program(prompt, "+3", label) == "#+3\nf=lambda x:x+3"
    assert program(prompt, "+3", {**label, "prefix": "g=1\n"}) == "g=1\n+3"
    assert program(prompt, "```\nx\n```", {"tests": ["assert 1"]}) == "x\n"
    reward = make_reward(RewardSpec(type="code_exec", sandbox={"wallSeconds": 3}))
    assert await reward(prompt, "+3", label) == 1.0
    assert await reward(prompt, "|3", json.dumps(label)) == 0.25  # only 0|3 == 0+3
    assert await reward(prompt, "+", label) == 0.0  # a syntax error
    assert await reward(prompt, "", label) == 0.0  # the starter alone: f(x) = x
    string = {**label, "prefix": "f=lambda x:x"}
    assert await reward("+3=", "+3", string) == 1.0
    with pytest.raises(SandboxError):
        program(prompt, "+3", {**label, "prefix": 1})


@pytest.mark.skipif(not USERNS, reason="user namespaces disabled on this kernel")
def test_namespace_path_runs_here():
    result = run(extract_code(GOOD))
    assert result.isolation == "userns"
    ids = run(
        "import os\ndef add(a, b):\n    return os.getpid()", {"tests": ["assert add(1,1)==1"]}
    )
    assert ids.passed == 1  # the tests run as PID 1 of their own PID namespace


def test_endless_loop_scores_zero_within_wall():
    t = time.monotonic()
    result = run("def add(a, b):\n    while True:\n        pass")
    assert result.pass_rate == 0.0 and result.timed_out
    assert time.monotonic() - t < FAST.wall_s + 2
    assert not leftovers()
    assert_scores_next()


def test_cpu_limit_kills_before_wall():
    slow = Limits(cpu_s=1, memory_mb=256, wall_s=20.0, max_processes=16, file_mb=4)
    t = time.monotonic()
    result = run("while True:\n    pass", limits=slow)
    assert result.pass_rate == 0.0 and not result.timed_out  # RLIMIT_CPU, not the wall clock
    assert time.monotonic() - t < 6


def test_ten_gigabytes_scores_zero():
    t = time.monotonic()
    code = "blob = bytearray(10 * 2**30)\ndef add(a, b):\n    return a + b"
    assert run(code).pass_rate == 0.0
    code = "def add(a, b):\n    x = b'x' * (10 * 2**30)\n    return a + b"
    assert run(code).pass_rate == 0.0
    assert time.monotonic() - t < 5
    assert_scores_next()


@pytest.mark.parametrize("network", ["auto", "seccomp"])
def test_fork_bomb_scores_zero_and_leaves_nothing(network):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    t = time.monotonic()
    result = run(bomb, network=network)
    assert result.pass_rate == 0.0
    assert time.monotonic() - t < FAST.wall_s + 3
    time.sleep(0.2)
    assert not leftovers()
    assert_scores_next()


@pytest.mark.parametrize("network", ["auto", "seccomp"])
def test_socket_to_local_listener_never_connects(network):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        sneaky = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'leak')\n"
            "def add(a, b):\n    return a + b"
        )
        # The same, caught: the solution still gets its tests run, but no connection.
        tolerant = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n"
            "except OSError:\n    pass\n"
            "def add(a, b):\n    return a + b"
        )
        result = run(sneaky, network=network)
        assert result.pass_rate == 0.0
        assert result.isolation == ("userns" if network == "auto" and USERNS else "seccomp")
        assert run(tolerant, network=network).pass_rate == 1.0
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    assert_scores_next()


def test_scratch_cwd_and_minimal_env():
    probe = "import os\nopen('mine.txt', 'w').write('x')\ndef add(a, b):\n    return a + b\n"
    label = {
        "entry_point": "add",
        "tests": [
            "assert os.path.basename(os.getcwd()).startswith('rlpost-sbx-')",
            "assert sorted(os.listdir('.')) == ['mine.txt']",
            "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_CTYPE'}",
        ],
    }
    assert run(probe, label).pass_rate == 1.0
