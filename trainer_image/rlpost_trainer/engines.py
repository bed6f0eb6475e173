"""The engines the trainer pushes weights to, and the one rule for engines that come and go.

Sources (each a callable returning the engine base URLs present now):
- `rlpost run`: RLPOST_ENGINE_URLS, a fixed comma-separated list (`static_source`);
- a cluster: RLPOST_ENGINE_SERVICE=<job>-rollout-0.<job>:30000,<job>-rollout-1.<job>:30000,
  one `host:port` per engine pod: the pod's name under the job's headless Service, which
  publishes not-ready addresses, so each resolves once its pod has an IP, Ready or not
  (`dns_source`; a headless Service's own name, resolving to all its pods, works too). An
  engine started in a cluster reports not-ready until it has received weights from the
  trainer, so the router (and through it the buffer) never sends it traffic before that.

`EngineSet` feeds both into one rule, applied before every weight update and while the
trainer waits for a batch (`catch_up`):
- an engine counts as present once it answers `GET /model_info`; its `weight_version` there
  tells whether it still holds what this trainer last pushed to it;
- when the present set differs from the weight-sync group's members, or a member no longer
  holds the version pushed to it (its process restarted at the same address), the group is
  re-formed: destroyed on the members still present, then initialised with the current set;
- every engine that is new, replaced or restarted receives the full current weights at the
  current version before the push returns; only then can it report Ready.
Before an update it waits (log line every 10 s, `wait_s` in all) until `expected`
(spec.rollout.engines) engines are present; after `wait_s` it goes on with those present,
and fails when there are none.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence

import httpx
import torch

from rlpost.api import RLPostTrainJob
from rlpost.weightsync import WeightSender

log = logging.getLogger("rlpost_trainer.engines")

Source = Callable[[], list[str]]
Weights = Callable[[], Iterable[tuple[str, torch.Tensor]]]


class EnginesUnavailable(RuntimeError):
    pass


def static_source(urls: Sequence[str]) -> Source:
    fixed = [u.strip().rstrip("/") for u in urls if u.strip()]
    return lambda: list(fixed)


def dns_source(service: str, scheme: str = "http") -> Source:
    """`host:port[,host:port...]` -> one URL per A record of each host (none yet: none)."""
    targets = []
    for item in service.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"engine service {item!r}: expected host:port")
        targets.append((host, int(port)))

    def resolve() -> list[str]:
        urls: set[str] = set()
        for host, port in targets:
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except OSError:  # gaierror: NXDOMAIN / no address yet; DNS unreachable
                continue
            urls.update(f"{scheme}://{i[4][0]}:{port}" for i in infos)
        return sorted(urls)

    return resolve


def source_from_env(env: dict[str, str]) -> tuple[Source | None, str]:
    """(source, description): RLPOST_ENGINE_URLS wins (rlpost run), else the Service."""
    urls = [u for u in env.get("RLPOST_ENGINE_URLS", "").split(",") if u.strip()]
    if urls:
        return static_source(urls), f"RLPOST_ENGINE_URLS ({len(urls)} engines)"
    service = env.get("RLPOST_ENGINE_SERVICE", "").strip()
    if service:
        return dns_source(service), f"Service {service}"
    return None, "no engines"


def engine_set_from_env(
    job: RLPostTrainJob, token: str | None, backend: str, env: dict[str, str] | None = None
) -> EngineSet | None:
    """The trainer's engines: RLPOST_ENGINE_URLS (rlpost run; they start from the same spec,
    so they already hold the initial weights) or RLPOST_ENGINE_SERVICE (a cluster: every
    engine gets a push before it is Ready). None when neither is set."""
    env = dict(os.environ) if env is None else env
    source, describe = source_from_env(env)
    if source is None:
        return None
    spec = job.spec

    def make_sender(urls: list[str]) -> WeightSender:
        if backend == "ipc":  # colocated: the engines share this trainer's GPUs (or host)
            from rlpost.models import DTYPES
            from rlpost.weightsync.colocated import ColocatedSender

            return ColocatedSender(  # type: ignore[return-value]
                urls,
                token=token,
                bucket_mb=spec.weight_sync.bucket_mb,
                dtype=DTYPES[spec.model.dtype],
            )
        return WeightSender(
            urls,
            token=token,
            backend=backend,
            bucket_mb=spec.weight_sync.bucket_mb,
            # Async runs keep the requests generated ahead (see WeightSender).
            pause_mode="in_place" if spec.rollout.max_staleness > 0 else "abort",
        )

    return EngineSet(
        source,
        spec.rollout.engines,
        make_sender,
        describe=describe,
        trust_initial=bool(env.get("RLPOST_ENGINE_URLS", "").strip()),
        wait_s=float(env.get("RLPOST_ENGINE_WAIT_S", "600")),
        token=token,
    )


def probe_version(http: httpx.Client, url: str) -> str | None:
    """The engine's weight version, or raises when it does not answer (not up yet)."""
    r = http.get(url + "/model_info")
    r.raise_for_status()
    version = r.json().get("weight_version")
    return None if version is None else str(version)


class EngineSet:
    def __init__(
        self,
        source: Source,
        expected: int,
        make_sender: Callable[[list[str]], WeightSender],
        *,
        describe: str = "engines",
        trust_initial: bool = False,
        wait_s: float = 600.0,
        poll_s: float = 1.0,
        token: str | None = None,
        probe_timeout_s: float = 5.0,
    ):
        """trust_initial: the engines present at the first look already hold this trainer's
        initial weights (`rlpost run` starts both from the same spec; no push needed until
        the first step). In a cluster nothing is trusted: every engine gets a push."""
        self.source = source
        self.expected = max(1, expected)
        self.make_sender = make_sender
        self.describe = describe
        self.trust_initial = trust_initial
        self.wait_s = wait_s
        self.poll_s = poll_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=probe_timeout_s)
        self.sender: WeightSender | None = None
        self.members: list[str] = []  # engines in the current weight-sync group
        self.pushed: dict[str, str] = {}  # engine -> the version it holds from this trainer
        self.reforms = 0  # groups formed (the first one counts)
        self._looked = False

    # ------------------------------------------------------------------ discovery

    def present(self) -> dict[str, str | None]:
        """Engines resolved now that answer, with the weight version each reports."""
        out: dict[str, str | None] = {}
        for url in self.source():
            try:
                out[url] = probe_version(self.http, url)
            except (httpx.HTTPError, ValueError):
                continue  # resolved but not serving yet (starting, or gone)
        if not self._looked and out:
            self._looked = True
            if self.trust_initial:
                self.pushed = {u: v for u, v in out.items() if v is not None}
        return out

    def wait_present(self) -> dict[str, str | None]:
        deadline = time.monotonic() + self.wait_s
        next_log = 0.0
        while True:
            found = self.present()
            if len(found) >= self.expected:
                return found
            now = time.monotonic()
            if now >= deadline:
                if found:
                    log.warning(
                        "going on with fewer engines than spec.rollout.engines",
                        extra={"present": len(found), "expected": self.expected},
                    )
                    return found
                raise EnginesUnavailable(
                    f"no engine answered behind {self.describe} after {self.wait_s:.0f}s "
                    f"(expected {self.expected}); check the rollout pods (kubectl get pods)"
                )
            if now >= next_log:
                log.info(
                    "waiting for engines",
                    extra={
                        "source": self.describe,
                        "present": len(found),
                        "expected": self.expected,
                        "timeout_s": round(deadline - now),
                    },
                )
                next_log = now + 10.0
            time.sleep(self.poll_s)

    def stale(self, found: dict[str, str | None]) -> list[str]:
        """Engines present that do not hold what this trainer last pushed to them."""
        out = []
        for url, version in found.items():
            held = self.pushed.get(url)
            if held is None or (version is not None and version != held):
                out.append(url)
        return out

    def needs_reform(self, found: dict[str, str | None]) -> bool:
        return sorted(found) != sorted(self.members) or any(
            u in self.members for u in self.stale(found)
        )

    # ------------------------------------------------------------------ the group

    def reform(self, urls: list[str]) -> None:
        """Destroy the group on the members still present, then form it with `urls`."""
        old, self.sender = self.sender, None
        if old is not None:
            survivors = [u for u in self.members if u in urls]
            log.info(
                "weight-sync group re-formed",
                extra={
                    "joined": sorted(set(urls) - set(self.members)),
                    "left": sorted(set(self.members) - set(urls)),
                    "engines": len(urls),
                },
            )
            old.close(engine_urls=survivors)
        self.members = sorted(urls)
        self.sender = self.make_sender(self.members)
        self.reforms += 1

    def push(
        self,
        weights: Weights,
        version: int,
        *,
        pause_mode: str | None = None,
        found: dict[str, str | None] | None = None,
    ) -> float:
        """Push the full weights as `version` to every engine present (after waiting for
        `expected` of them), re-forming the group first when the set changed. A push that
        fails (a member died under it) is retried once on a freshly formed group."""
        for attempt in (1, 2):
            found = found if found is not None else self.wait_present()
            if self.sender is None or self.needs_reform(found):
                self.reform(list(found))
            assert self.sender is not None
            default_mode = self.sender.pause_mode
            if pause_mode is not None:
                self.sender.pause_mode = pause_mode
            try:
                seconds = self.sender.push(weights(), version)
            except Exception as exc:
                self.sender.pause_mode = default_mode
                if attempt == 2:
                    raise
                log.warning(
                    "weight push failed; re-forming the group with the engines present",
                    extra={"error": str(exc)[:300], "weight_version": version},
                )
                found = None
                self.pushed = {}
                still = [u for u in self.members if u in self.present()]
                self.members = still  # destroy on those alive only, then form afresh
                continue
            self.sender.pause_mode = default_mode
            self.pushed = {u: str(version) for u in self.members}
            return seconds
        raise AssertionError("unreachable")

    def catch_up(self, weights: Weights, version: int) -> float | None:
        """Without waiting for `expected`: when an engine present is new, replaced or
        restarted, re-form the group and push the current weights at the current `version`
        (in place: engines that already hold them keep their requests). Returns the push's
        seconds, or None when nothing had to be done (an engine that only left is dropped
        from the group by the next step's push)."""
        found = self.present()
        stale = self.stale(found)
        if not stale:
            return None
        log.info(
            "engines need the current weights",
            extra={"engines": stale, "weight_version": version},
        )
        return self.push(weights, version, pause_mode="in_place", found=found)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        self.http.close()
