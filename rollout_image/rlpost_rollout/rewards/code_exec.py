"""`code_exec`: the response holds a Python function; hidden tests from the row's label run in
a sandboxed subprocess (sandbox_child.py); the reward is the fraction of tests that pass.

The label (the dataset row's `label` field, or a JSON string of it):

    {"entry_point": "add",                       # the function the `args` tests call
     "tests": [{"args": [1, 2], "expected": 3},  # fn(*args, **kwargs) == expected (JSON)
               "assert add(-1, 1) == 0"]}        # a statement: passes if it raises nothing

A bare list is `{"tests": [...]}`. The code is the last ```python (or ```) block of the
response, else the whole response. HumanEval-style completion: with `"prefix": true` the code
is the prompt followed by the response (the prompt is the starter code, `f=lambda x:x*`, and
the response completes it, `3`; with a chat template the prompt is the rendered text, so use
a string there); with `"prefix": "<code>"` it is that code followed by the response. Either
way the response is a continuation, not searched for a fenced block.
Limits per sample: CPU seconds (RLIMIT_CPU), address
space (RLIMIT_AS), processes (RLIMIT_NPROC), file size, 64 open files, a wall-clock timeout
(the process group is killed, and with it the PID namespace), no network, a fresh scratch
directory as cwd (deleted after), an environment of PATH/HOME/TMPDIR/LANG only.
A test that does not finish in time counts as failed; tests that passed before it count.
This bounds resources and keeps packets in; it is not a defence against a policy that
attacks the harness itself (the solution runs in the harness's interpreter).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHILD = str(Path(__file__).with_name("sandbox_child.py"))
NOBODY = 65534  # a root parent runs the sandbox as this uid (RLIMIT_NPROC skips uid 0)
_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)


class SandboxError(RuntimeError):
    """The sandbox itself could not run (no isolation available, a bad label)."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 5
    memory_mb: int = 512
    wall_s: float = 10.0
    max_processes: int = 32
    file_mb: int = 16


@dataclass
class SandboxResult:
    passed: int
    total: int
    isolation: str | None  # "userns" or "seccomp" (the path that ran)
    timed_out: bool
    stderr: str

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def _others_can_enter(path: str) -> bool:
    """Every directory above `path` is searchable by any uid (o+x)."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in [*reversed(p.parents), p] if d.is_dir())


def sandbox_python() -> str:
    """The interpreter of the sandbox. A root parent runs it as `nobody`, who must be able to
    read its stdlib: a root-only install (pyenv under /root, mode 700) is not, so then the
    system python3. RLPOST_SANDBOX_PYTHON overrides."""
    explicit = os.environ.get("RLPOST_SANDBOX_PYTHON")
    if explicit:
        return explicit
    if os.geteuid() != 0 or _others_can_enter(sys.base_prefix):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _others_can_enter(os.path.realpath(candidate)):
            return candidate
    raise SandboxError(f"no python that uid {NOBODY} can run ({sys.base_prefix} is not)")


def extract_code(response: str) -> str:
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def parse_label(label: Any) -> tuple[str | None, list]:
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except ValueError as exc:
            raise SandboxError(f"code_exec label is not JSON: {exc}") from exc
    if isinstance(label, list):
        label = {"tests": label}
    if not isinstance(label, dict) or not isinstance(label.get("tests"), list):
        raise SandboxError('code_exec label needs {"tests": [...]} (see rewards/code_exec.py)')
    tests = label["tests"]
    if not tests:
        raise SandboxError("code_exec label has no tests")
    for t in tests:
        if not isinstance(t, str) and not (isinstance(t, dict) and "expected" in t):
            raise SandboxError(f"code_exec test {str(t)[:80]!r}: a string or {{args, expected}}")
    entry = label.get("entry_point")
    if any(isinstance(t, dict) for t in tests) and not entry:
        raise SandboxError("code_exec label: {args, expected} tests need an entry_point")
    return entry, tests


def run_sandboxed(
    code: str,
    tests: list,
    entry_point: str | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen
    network: str = "auto",
) -> SandboxResult:
    """network "auto": a user+network+PID namespace when the kernel allows, else seccomp;
    "seccomp": the fallback only (tests use it to check that path)."""
    python = sandbox_python()
    nonce = secrets.token_hex(16)
    scratch = tempfile.mkdtemp(prefix="rlpost-sbx-")
    root = os.geteuid() == 0
    if root:
        os.chown(scratch, NOBODY, NOBODY)
    r, w = os.pipe()
    job = {
        "code": code,
        "tests": tests,
        "entry_point": entry_point,
        "limits": asdict(limits),
        "nonce": nonce,
        "network": network,
        "result_fd": w,
        "drop_uid": NOBODY,
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(
            [python, "-I", "-S", "-B", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(w,),
            cwd=scratch,
            env=env,
            start_new_session=True,  # its own process group: killed as one
        )
    finally:
        os.close(w)
    lines, timed_out, pid1 = [], False, None
    try:
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
        deadline = time.monotonic() + limits.wall_s
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 65536)
            if not chunk:  # every writer closed: the run is over
                break
            buf += chunk
            if len(buf) > 4 << 20:
                break  # someone floods the result pipe: stop reading
        lines = buf.decode(errors="replace").splitlines()
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == nonce and parts[1] == "pid1":
                pid1 = int(parts[2])
    finally:
        os.close(r)
        _kill(proc, pid1)
        err = proc.stderr.read(8192).decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return _tally(lines, nonce, len(tests), timed_out, err)


def _kill(proc: subprocess.Popen, pid1: int | None) -> None:
    for target in (("pg", proc.pid), ("pid", pid1)):
        if target[1] is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if target[0] == "pg" else os.kill)(target[1], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _tally(lines: list[str], nonce: str, total: int, timed_out: bool, err: str) -> SandboxResult:
    verdicts: dict[int, bool] = {}
    isolation = None
    for line in lines:
        parts = line.split()
        if not parts or parts[0] != nonce:
            continue
        if parts[1:2] == ["iso"] and len(parts) == 3:
            isolation = parts[2]
        elif parts[1:2] == ["t"] and len(parts) == 4 and parts[2].isdigit():
            i, ok = int(parts[2]), parts[3] == "1"
            if 0 <= i < total:  # a test passes only if every report of it says so
                verdicts[i] = verdicts.get(i, True) and ok
    if isolation is None:
        raise SandboxError(f"the sandbox did not start: {err.strip()[-500:] or 'no output'}")
    return SandboxResult(sum(verdicts.values()), total, isolation, timed_out, err)


def program(prompt: str, response: str, label: Any) -> str:
    """The code that runs: prefix + response when the label has a `prefix`, else the
    response's last fenced block (or the whole response)."""
    if isinstance(label, str):
        label = json.loads(label)
    prefix = label.get("prefix") if isinstance(label, dict) else None
    if prefix is None or prefix is False:
        return extract_code(response)
    if prefix is True:
        return prompt + response
    if isinstance(prefix, str):
        return prefix + response
    raise SandboxError(f"code_exec label prefix {prefix!r}: true or a string")


def score(
    response: str,
    label: Any,
    limits: Limits = Limits(),  # noqa: B008 - frozen
    prompt: str = "",
) -> float:
    entry, tests = parse_label(label)
    return run_sandboxed(program(prompt, response, label), tests, entry, limits).pass_rate


def code_exec_reward(prompt: str, response: str, label: Any) -> float:
    """The built-in reward with the default limits (a blocking call: run it in a thread, a
    process or a Ray task)."""
    return score(response, label, prompt=prompt)
