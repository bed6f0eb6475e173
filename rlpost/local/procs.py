"""Child processes of `rlpost run`: started in their own session, logged to files, stopped
by process-group id (SIGTERM, then SIGKILL), never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class RoleFailed(RuntimeError):
    pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@dataclass
class Role:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    health_url: str | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def failure(self, what: str) -> RoleFailed:
        code = self.proc.poll() if self.proc else None
        return RoleFailed(
            f"role {self.name} {what} (exit code {code}); last lines of {self.log}:\n"
            f"{tail(self.log)}"
        )


class Processes:
    def __init__(self):
        self.roles: list[Role] = []

    def start(self, role: Role) -> Role:
        role.log.parent.mkdir(parents=True, exist_ok=True)
        with open(role.log, "ab") as out:
            role.proc = subprocess.Popen(
                role.argv,
                env=role.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped with its children
            )
        self.roles.append(role)
        return role

    def check_alive(self, except_done: set[str] = frozenset()) -> None:
        for r in self.roles:
            if r.name in except_done:
                continue
            if r.proc is not None and r.proc.poll() is not None:
                raise r.failure("exited")

    def wait_healthy(self, roles: list[Role], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [r for r in roles if r.health_url]
        with httpx.Client(timeout=2.0) as http:
            while pending:
                self.check_alive()
                for r in list(pending):
                    try:
                        if http.get(r.health_url).status_code == 200:
                            pending.remove(r)
                    except httpx.HTTPError:
                        pass
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise pending[0].failure(f"not healthy after {timeout_s:.0f}s")
                time.sleep(0.3)

    def stop_all(self, grace_s: float = 10.0) -> None:
        # Reverse start order: trainer first (it tears down weight sync), engines last.
        live = [r for r in reversed(self.roles) if r.proc and r.proc.poll() is None]
        for r in live:
            self._signal(r, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for r in live:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(r, signal.SIGKILL)
                r.proc.wait(timeout=5)
        # Reap leftovers in each role's group (e.g. a router binary a launcher started).
        for r in self.roles:
            self._signal(r, signal.SIGKILL)

    def kill(self, name: str) -> None:
        """SIGKILL one role's process group (tests use it to simulate crashes)."""
        for r in self.roles:
            if r.name == name and r.proc:
                self._signal(r, signal.SIGKILL)
                r.proc.wait(timeout=10)

    @staticmethod
    def _signal(role: Role, sig: int) -> None:
        if role.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(role.proc.pid, sig)
