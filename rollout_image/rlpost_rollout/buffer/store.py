"""Durable buffer state: an append-only JSONL event log, fsynced per event, replayed at start.

Events: `accept` (a scored group that passed the filters), `drop` (a group that did not,
with the reason), `serve` (the groups of batch `step`, plus the stale ones discarded for it),
`version` (the trainer announced a weight version), `resume` (rewind to a checkpoint step).
State changes only after its event is on disk, so a SIGKILL at any instant leaves a log that
replays to a state where every accepted group is either served once or still ready. A torn
last line (killed mid-write, never acknowledged) is cut off at start.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("rlpost_rollout.buffer.store")


@dataclass
class Served:
    step: int
    cursor: int
    group_ids: list[str]


@dataclass
class State:
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # accepted, by id
    ready: list[str] = field(default_factory=list)  # accepted, not served, FIFO
    batches: dict[int, Served] = field(default_factory=dict)
    stale: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    cursor: int = 0  # next prompt index to draw
    base: int = 0  # cursor of the last resume: holes below it are not re-drawn
    settled: set[int] = field(default_factory=set)  # prompt indices with accept/drop events
    step_start_cursor: dict[int, int] = field(default_factory=lambda: {0: 0})
    resume_step: int = 0
    resumes: list[int] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def next_step(self) -> int:
        return max(self.batches) + 1 if self.batches else self.resume_step

    def unsettled(self) -> list[int]:
        """Prompts drawn before a crash whose groups never settled: drawn again first."""
        return [i for i in range(self.base, self.cursor) if i not in self.settled]


class Store:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "buffer.jsonl"
        self.state = State()
        self._replay()
        self._f = self.path.open("a", encoding="utf-8")

    # ------------------------------------------------------------------ log

    def _replay(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            log.warning(
                "cutting a torn last record from the buffer log",
                extra={"path": str(self.path), "bytes": len(data) - good},
            )
            with self.path.open("r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        n = 0
        for line in data[:good].decode("utf-8").splitlines():
            if line.strip():
                self._apply(json.loads(line))
                n += 1
        s = self.state
        log.info(
            "buffer state replayed",
            extra={
                "events": n,
                "accepted": len(s.groups),
                "ready": len(s.ready),
                "served_steps": len(s.batches),
                "cursor": s.cursor,
                "version": s.version,
            },
        )

    def append(self, event: dict[str, Any]) -> None:
        """Write, flush, fsync, then apply: the event counts only once it is durable."""
        self._f.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._apply(event)

    def close(self) -> None:
        self._f.close()

    # ------------------------------------------------------------------ transitions

    def _apply(self, e: dict[str, Any]) -> None:
        s = self.state
        kind = e["t"]
        if kind == "accept":
            g = e["group"]
            if g["group_id"] not in s.groups:  # a replayed duplicate never doubles a group
                s.groups[g["group_id"]] = g
                s.ready.append(g["group_id"])
            self._settle(g["prompt_index"])
        elif kind == "drop":
            s.drops[e["reason"]] = s.drops.get(e["reason"], 0) + 1
            self._settle(e["prompt_index"])
        elif kind == "serve":
            step = e["step"]
            s.batches[step] = Served(step, e["cursor"], list(e["group_ids"]))
            gone = set(e["group_ids"]) | {x["group_id"] for x in e["stale"]}
            s.ready = [g for g in s.ready if g not in gone]
            s.stale.extend({**x, "step": step} for x in e["stale"])
            s.step_start_cursor[step + 1] = e["cursor"]
            s.cursor = max(s.cursor, e["cursor"])
        elif kind == "version":
            s.version = max(s.version, e["version"])
        elif kind == "resume":
            k, c = e["step"], e["cursor"]
            s.batches = {st: b for st, b in s.batches.items() if st < k}
            s.ready = []
            s.resume_step = k
            s.step_start_cursor = {st: v for st, v in s.step_start_cursor.items() if st <= k}
            s.step_start_cursor[k] = c
            s.cursor = s.base = c
            s.settled = {i for i in s.settled if i < c}
            s.resumes.append(k)
        else:
            raise ValueError(f"unknown buffer event {kind!r}")

    def _settle(self, index: int) -> None:
        s = self.state
        s.settled.add(index)
        s.cursor = max(s.cursor, index + 1)
