"""Reward functions the reward-pool tests run on Ray workers (importable by path)."""

from __future__ import annotations

import os
import time


def _log(label: dict, line: str) -> None:
    with open(label["log"], "a") as f:
        f.write(line + "\n")
        f.flush()


def traced(prompt: str, response: str, label: dict) -> float:
    """Logs `start <sid> <pid>`, burns `cost` seconds of CPU, logs `done <sid>`; the reward
    is len(response) (a value the test can check)."""
    _log(label, f"start {label['sid']} {os.getpid()}")
    end = time.thread_time() + label.get("cost", 0.2)
    while time.thread_time() < end:
        pass
    _log(label, f"done {label['sid']}")
    return float(len(response))


def hangs(prompt: str, response: str, label: dict) -> float:
    _log(label, f"start {label['sid']} {os.getpid()}")
    time.sleep(3600)
    return 0.0


def raises(prompt: str, response: str, label: dict) -> float:
    _log(label, f"start {label['sid']} {os.getpid()}")
    raise ValueError("no score for you")


def exact(prompt: str, response: str, label) -> float:
    """exact_match as a custom reward (an `rlpost run --reward-workers N` check)."""
    return 1.0 if response.strip() == str(label).strip() else 0.0
