"""The trainer pod's launcher: `python -m rlpost_trainer` when the gang has more than one rank.

It starts `NPROC_PER_NODE` ranks of this pod (`python -m rlpost_trainer` again, with torchrun's
`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`; see ranks.py) and stays their parent,
as torchrun's agent would, with one difference that matters here: no restarts of its own. A
rank that fails ends the pod (the others are stopped and the launcher exits with its code),
and the operator restarts the whole gang from the last checkpoint. SIGTERM (pod deletion,
`rlpost run` stopping) is passed on to every rank. It imports no torch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from rlpost_trainer.ranks import Gang

log = logging.getLogger("rlpost_trainer.launch")
STOP_GRACE_S = 20.0


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def stop(children: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def launch(gang: Gang, argv: list[str] | None = None, poll_s: float = 0.2) -> int:
    """Run this pod's ranks to the end; 0 when every one succeeded, else the first failure's
    exit code."""
    argv = argv or [sys.executable, "-m", "rlpost_trainer"]
    env = dict(os.environ)
    if gang.nnodes == 1:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in env:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                env["MASTER_PORT"] = str(s.getsockname()[1])
    log.info(
        "starting ranks",
        extra={
            "pod_index": gang.pod_index,
            "nnodes": gang.nnodes,
            "nproc_per_node": gang.nproc,
            "world_size": gang.world_size,
            "master": f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}",
        },
    )
    children: list[subprocess.Popen] = []
    stopping: list[int] = []

    def on_signal(signum, _frame):
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for local in range(gang.nproc):
            children.append(subprocess.Popen(argv, env={**env, **gang.rank_env(local)}))
        while True:
            codes = [c.poll() for c in children]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                local, code = failed[0]
                if not stopping:
                    log.error(
                        "a rank failed: stopping the others",
                        extra={"local_rank": local, "exit_code": exit_code(code)},
                    )
                stop(children)
                return exit_code(code)
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    finally:
        stop(children)
        for s, handler in previous.items():
            signal.signal(s, handler)
