"""Reward functions: rule checkers, custom by Python path, remote HTTP with a timeout."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rlpost_rollout.rewards import RewardError, make_reward
from rlpost_rollout.rewards.builtin import exact_match, math_answer

from rlpost.api import RewardSpec


async def score(spec: RewardSpec, response: str, label, prompt: str = "p") -> float:
    return await make_reward(spec)(prompt, response, label)


def test_exact_match_and_math_answers():
    assert exact_match("", " 42\n", "42") == 1.0
    assert exact_match("", "42.0", "42") == 0.0
    # Math-Verify: symbolic equality of the boxed / final answer and the label.
    assert math_answer("", "so x = 3, then \\boxed{7/2}.", "3.5") == 1.0
    assert math_answer("", "first 3 then 12", "12") == 1.0
    assert math_answer("", "the answer is \\boxed{3.5}", "7/2") == 1.0
    assert math_answer("", "1,000 apples", "1000") == 1.0
    assert math_answer("", "maybe 41", "42") == 0.0
    assert math_answer("", "no number", "42") == 0.0
    assert math_answer("", "The answer is 5", "-5") == 0.0
    # Nested braces, which the old hand-written \\boxed{} grader could not read.
    assert math_answer("", "\\boxed{\\frac{{1}}{2}}", "0.5") == 1.0
    assert math_answer("", "\\boxed{\\frac{1}{x^{2}}}", "\\frac{1}{x^2}") == 1.0
    assert math_answer("", "\\boxed{\\frac{1}{x^{3}}}", "\\frac{1}{x^2}") == 0.0


@pytest.mark.asyncio
async def test_math_reward_runs_math_verify_in_a_worker_process():
    # Through make_reward: a worker process's main thread (Math-Verify's SIGALRM timeouts
    # work there; in the buffer's threads they would raise).
    spec = RewardSpec(type="math")
    assert await score(spec, "= 6", "6") == 1.0
    assert await score(spec, "The total is \\boxed{\\frac{3}{4}} dollars", "0.75") == 1.0
    assert await score(spec, "The total is 7", "8") == 0.0
    # A label that is no math answer is a failed sample (visible), not a silent zero.
    with pytest.raises(RewardError, match="not a math answer"):
        await score(spec, "12", "twelve apples")


@pytest.mark.asyncio
async def test_custom_reward_by_python_path(tmp_path, monkeypatch):
    (tmp_path / "custom_rw.py").write_text(
        "def length(prompt, response, label):\n    return len(response)\n"
        "def bad(prompt, response, label):\n    return 'high'\n"
        "def boom(prompt, response, label):\n    raise KeyError('oops')\n"
        "def slow(prompt, response, label):\n    import time; time.sleep(5)\n"
        "async def anet(prompt, response, label):\n    return 0.5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("custom_rw", None)
    assert await score(RewardSpec(type="custom", function="custom_rw:length"), "abc", "x") == 3.0
    assert await score(RewardSpec(type="custom", function="custom_rw:anet"), "abc", "x") == 0.5
    with pytest.raises(RewardError, match="returned 'high', not a number"):
        await score(RewardSpec(type="custom", function="custom_rw:bad"), "abc", "x")
    with pytest.raises(RewardError, match="raised KeyError"):
        await score(RewardSpec(type="custom", function="custom_rw:boom"), "abc", "x")
    slow = make_reward(RewardSpec(type="custom", function="custom_rw:slow", timeoutSeconds=0.5))

    started = time.monotonic()
    with pytest.raises(RewardError, match="timed out after 0.5s"):
        await slow("p", "a", "x")
    assert time.monotonic() - started < 2  # the driver moves on; the stuck thread is abandoned
    with pytest.raises(ValueError, match="has no function 'nope'"):
        make_reward(RewardSpec(type="custom", function="custom_rw:nope"))
    with pytest.raises(ValueError, match="cannot import 'no_such_mod'"):
        make_reward(RewardSpec(type="custom", function="no_such_mod:f"))


class Judge(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["label"] == "slow":
            time.sleep(3)
        if body["label"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"judge down")
            return
        reply = {"reward": float(body["response"] == body["label"])}
        if body["label"] == "nofield":
            reply = {"score": 1}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score"
    server.shutdown()
    server.server_close()


@pytest.mark.asyncio
async def test_remote_reward(judge):
    spec = RewardSpec(type="remote", url=judge, timeoutSeconds=1)
    assert await score(spec, "42", "42") == 1.0
    assert await score(spec, "41", "42") == 0.0
    with pytest.raises(RewardError, match="answered HTTP 500: judge down"):
        await score(spec, "x", "broken")
    with pytest.raises(RewardError, match="without a 'reward' field"):
        await score(spec, "x", "nofield")
    started = time.monotonic()
    with pytest.raises(RewardError, match="timed out after 1.0s"):
        await score(spec, "x", "slow")
    assert time.monotonic() - started < 2.5
    dead = RewardSpec(type="remote", url="http://127.0.0.1:9/score", timeoutSeconds=1)
    with pytest.raises(RewardError, match="unreachable"):
        await score(dead, "x", "y")
