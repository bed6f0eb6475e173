"""Work queue and plan executor; the kopf handlers only feed them.

kopf watches the job kind and every child kind (raw `on.event` handlers: no progress
annotations, no finalizers, no posted events — nothing kopf writes). Each event updates the
in-memory cache (cache.py) and enqueues the owning job; workers run `protocol.reconcile` on
a cache snapshot and execute the Plan. A pass whose Plan is empty writes nothing, which is
what keeps an idle cluster free of operator writes.

The queue has three levels: a job that has no Workload yet goes ahead of every other pass
(its pass is small, and Kueue cannot admit what it has not seen), so a burst of new jobs is
queued in Kueue before the operator spends its writes on children; then a job Kueue has
admitted that has no pod yet (its pass makes the gang); then everything else. A namespace the API
server says is terminating is left alone: no pass, no retry, no write.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from rlpost import api

from . import builders as b
from . import metrics, protocol, validation
from .cache import Cache, Key
from .constants import (
    APP,
    HASH_ANNOTATION,
    INSTANCE_LABEL,
    NAME_LABEL,
)
from .kube import ApiError, Kube

log = logging.getLogger("rlpost.operator")

# How long a namespace's "not being deleted" answer is trusted before a pass writes.
NAMESPACE_CHECK_S = 0.5
# A status change of counts only (ready pods, the trainer's step) waits this long, so that
# the next counts go in the same write (pods of a gang turn Ready within moments).
PROGRESS_COALESCE_S = 2.0

# Children whose changes the operator watches (kopf): what others change under it.
WATCHED_KINDS = {
    # kind: (group, version, plural)
    "Workload": ("kueue.x-k8s.io", "v1beta2", "workloads"),  # Kueue admits, evicts
    "Pod": ("", "v1", "pods"),  # the kubelet and scheduler move them on
    "ConfigMap": ("", "v1", "configmaps"),  # the trainer reports progress
}
# The children of a job (the only objects the operator reads of the watched and listed
# kinds): the API server filters the watches and lists by it, so another team's pods in the
# namespace never travel.
CHILD_SELECTOR = f"{NAME_LABEL}={APP},{INSTANCE_LABEL}"
# Children only the operator writes, made once per job: listed (metadata only: a Secret's
# data is never read) at start and every RESYNC_S, not watched. A watch would deliver each
# one's creation back to the operator and its deletion at teardown: a third of the events
# it parses at scale (docs/benchmarks-operator.md) for objects nobody else changes. One
# deleted by hand comes back at the next resync.
LISTED_KINDS = (
    "Secret",
    "Service",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "NetworkPolicy",
    "PersistentVolumeClaim",
)
RESYNC_S = 300.0
# After a pass that made a gang: its follow-up pass (label, Events, status) is queued this
# much later, at the NORMAL level (the job has pods now).
GANG_FOLLOW_UP_S = 0.01


class Controller:
    def __init__(self, kube: Kube, namespaces: list[str] | None, workers: int = 8):
        self.kube = kube
        # The kubernetes client is blocking: its calls run here, not in asyncio's small
        # default pool (min(32, cores + 4) threads).
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="kube")
        self.namespaces = namespaces  # None: all namespaces
        self.cache = Cache()
        self.workers = workers
        self.queue: asyncio.PriorityQueue[tuple[int, int, Key]] | None = None
        self.pending: dict[Key, int] = {}  # key -> the priority it is queued at
        self._seq = 0
        # Namespaces the API server refused a write to as terminating: left alone.
        self.terminating: set[str] = set()
        self.terminating_since: dict[str, float] = {}
        self._ns_checked: dict[str, tuple[float, bool]] = {}
        # Jobs whose counts-only status write is held back, since when (monotonic).
        self._held: dict[Key, float] = {}
        self.running: set[Key] = set()
        self.dirty: set[Key] = set()
        self.failures: dict[Key, int] = defaultdict(int)
        self.ready = False
        self.tasks: list[asyncio.Task] = []
        self._lookups: dict[tuple[str, str, str], tuple[float, dict | None]] = {}
        self._flavors_listed = 0.0
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        # Writes the API server refused, per job, until a write of that object succeeds.
        self.child_errors: dict[Key, dict[tuple[str, str], protocol.ChildError]] = defaultdict(dict)
        self.reconciles = 0

    async def call(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args))

    # ------------------------------------------------------------------ queue
    URGENT, START, NORMAL = 0, 1, 2

    def priority(self, key: Key) -> int:
        """URGENT: a job whose Workload does not exist yet (its pass creates it). START: one
        Kueue admitted that has no pod yet (its pass creates the gang). NORMAL: the rest
        (status that follows pods, failures, suspensions), after those: in a burst of
        admissions every gang is made before the status bookkeeping of the ones made."""
        objs = self.cache.objs.get(key) or {}
        wl = objs.get(("Workload", b.names(key[1])["workload"]))
        if wl is None:
            return self.URGENT if key in self.cache.jobs else self.NORMAL
        if protocol.is_true(wl, "Admitted") and not any(kind == "Pod" for kind, _ in objs):
            return self.START
        return self.NORMAL

    def enqueue(self, key: Key | None, delay: float = 0.0) -> None:
        if key is None or self.queue is None or key[0] in self.terminating:
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.enqueue, key)
            return
        if key in self.running:
            self.dirty.add(key)
            return
        prio = self.priority(key)
        if self.pending.get(key, self.NORMAL + 1) <= prio:
            return  # already queued at this priority or ahead of it
        self.pending[key] = prio
        self._seq += 1
        self.queue.put_nowait((prio, self._seq, key))

    async def run(self) -> None:
        self.queue = asyncio.PriorityQueue()
        await self.call(self.initial_sync)
        self.ready = True
        asyncio.get_running_loop().call_later(30.0, self._expire_unconfirmed)
        self.tasks.append(asyncio.get_running_loop().create_task(self._resync_loop()))
        for key in list(self.cache.jobs):
            self.enqueue(key)
        for key, objs in list(self.cache.objs.items()):
            if key not in self.cache.jobs and objs:
                self.enqueue(key)
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    def shutdown(self) -> None:
        """On SIGTERM: stop taking work; in-flight requests finish on their threads."""
        for task in self.tasks:
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _expire_unconfirmed(self) -> None:
        """By now every watch has delivered its own listing: what only the startup LIST saw
        is gone (deleted in between, with no DELETED event to tell)."""
        for key in self.cache.expire_unconfirmed():
            log.info("dropped a stale startup entry", extra={"job": f"{key[0]}/{key[1]}"})
            self.enqueue(key)

    async def _worker(self) -> None:
        assert self.queue is not None
        while True:
            prio, _, key = await self.queue.get()
            if self.pending.get(key) != prio:
                continue  # moved ahead since (queued again at a higher priority), or done
            del self.pending[key]
            if key[0] in self.terminating:
                continue
            self.running.add(key)
            try:
                delay = await self.reconcile(key)
                self.failures.pop(key, None)
            except Exception as exc:  # retried with backoff; never crash the loop
                if namespace_terminating(exc):
                    self.leave_namespace(key[0])
                    self.running.discard(key)
                    continue
                self.failures[key] += 1
                delay = min(0.5 * 2 ** self.failures[key], 60.0)
                if isinstance(exc, ApiError) and exc.status == 409:
                    delay = 0.2
                log.warning(
                    "reconcile failed; retrying",
                    extra={"job": f"{key[0]}/{key[1]}", "error": str(exc)[:300], "retry_s": delay},
                )
            finally:
                self.running.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.enqueue(key)
            elif delay:
                self.enqueue(key, delay)

    def namespace_deleting(self, ns: str) -> bool:
        """Whether the namespace has a deletion timestamp (or is gone): read before a pass
        writes, at most every NAMESPACE_CHECK_S per namespace. A namespace being deleted is
        left alone (its pods go away by the namespace controller; recreating them would be
        refused). Without permission to read it (a tenant install grants `get` on the
        watched namespaces only), the refusal of a write tells instead."""
        at, deleting = self._ns_checked.get(ns, (0.0, False))
        if time.monotonic() - at < NAMESPACE_CHECK_S:
            return deleting
        try:
            obj = self.kube.get("Namespace", None, ns)
            deleting = obj is None or bool(obj["metadata"].get("deletionTimestamp"))
        except ApiError as exc:
            if exc.status != 403:
                raise
            deleting = False
        self._ns_checked[ns] = (time.monotonic(), deleting)
        return deleting

    def hold_progress(self, key: Key, obs: protocol.Observed, plan: protocol.Plan) -> float | None:
        """A pass whose only change is counts in the status (no write of a child, no Event,
        no phase or condition change) holds its status write back up to PROGRESS_COALESCE_S
        from the first such pass: the seconds to wait, or None to write now."""
        if not plan.status_changed or plan.actions or plan.events:
            self._held.pop(key, None)
            return None
        if not protocol.progress_only(obs.job.get("status") or {}, plan.status):
            self._held.pop(key, None)
            return None
        since = self._held.setdefault(key, time.monotonic())
        left = PROGRESS_COALESCE_S - (time.monotonic() - since)
        if left <= 0:
            del self._held[key]
            return None
        return left if plan.requeue_after is None else min(left, plan.requeue_after)

    def leave_namespace(self, ns: str) -> None:
        """The API server refused a write because the namespace is being deleted: stop
        working on it (no pass, no retry), until a job is created there again."""
        if ns not in self.terminating:
            log.info("namespace terminating: leaving it alone", extra={"namespace": ns})
        self.terminating.add(ns)
        self.terminating_since[ns] = time.time()
        for key in [k for k in self.failures if k[0] == ns]:
            del self.failures[key]
        self.child_errors = defaultdict(
            dict, {k: v for k, v in self.child_errors.items() if k[0] != ns}
        )

    def job_created(self, job: dict[str, Any]) -> None:
        """A job newer than the namespace's termination mark: the namespace is live again."""
        ns = job["metadata"]["namespace"]
        since = self.terminating_since.get(ns)
        created = protocol.parse_ts(job["metadata"].get("creationTimestamp"))
        if since is not None and created is not None and created.timestamp() > since:
            self.terminating.discard(ns)
            del self.terminating_since[ns]

    # ------------------------------------------------------------------ sync
    def initial_sync(self) -> None:
        """List everything once before the first pass (after a restart the cache must know
        what exists, or the first passes would re-create it)."""
        namespaces = self.namespaces or [None]
        for ns in namespaces:
            for job in self.kube.list(api.KIND, ns):
                self.cache.put_job(job, listed=True)
            for kind in WATCHED_KINDS:
                for obj in self.kube.list(kind, ns, CHILD_SELECTOR):
                    self.cache.put(kind, obj, listed=True)
        self.resync_listed()
        self.refresh_flavors(force=True)

    def resync_listed(self) -> set[Key]:
        """List the LISTED_KINDS (metadata only) into the cache; the jobs whose set of them
        changed (one deleted by hand: the next pass creates it again)."""
        changed: set[Key] = set()
        for ns in self.namespaces or [None]:
            for kind in LISTED_KINDS:
                items, rv = self.kube.list_metadata(kind, ns, CHILD_SELECTOR)
                changed |= self.cache.resync(kind, ns, items, rv)
        return changed

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                keys = await self.call(self.resync_listed)
            except Exception as exc:  # the next round tries again
                log.warning("resync failed", extra={"error": str(exc)[:300]})
                continue
            for key in keys:
                if key[0] not in self.terminating:
                    self.enqueue(key)

    def refresh_flavors(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._flavors_listed < 1.0:
            return
        self._flavors_listed = time.monotonic()
        self.cache.flavors = {f["metadata"]["name"]: f for f in self.kube.list("ResourceFlavor")}

    def _lookup(self, kind: str, ns: str | None, name: str) -> dict | None:
        """A LocalQueue / WorkloadPriorityClass, cached 10 s (reads only)."""
        k = (kind, ns or "", name)
        hit = self._lookups.get(k)
        if hit and time.monotonic() - hit[0] < 10:
            return hit[1]
        found = self.kube.get(kind, ns, name)
        self._lookups[k] = (time.monotonic(), found)
        return found

    def _gpu_nodes(self) -> list[dict[str, Any]]:
        """Nodes (for GPU capacity), listed at most every 10 s."""
        at, nodes = self._nodes
        if time.monotonic() - at >= 10:
            nodes = self.kube.list("Node")
            self._nodes = (time.monotonic(), nodes)
        return nodes

    def queue_capacity(self, ns: str, queue: str) -> validation.QueueCapacity | None:
        """LocalQueue -> ClusterQueue -> its GPU flavors -> the nodes they can place pods on.
        None when any of it cannot be read (the check is skipped, never guessed)."""
        try:
            lq = self._lookup("LocalQueue", ns, queue)
            cq_name = ((lq or {}).get("spec") or {}).get("clusterQueue")
            if not cq_name:
                return None
            cq = self._lookup("ClusterQueue", None, cq_name)
            if cq is None:
                return None
            self.refresh_flavors()
            return validation.queue_capacity(queue, cq, self.cache.flavors, self._gpu_nodes())
        except ApiError as exc:
            log.warning("capacity check skipped", extra={"queue": queue, "error": str(exc)[:200]})
            return None

    @staticmethod
    def _before_admission(obs: protocol.Observed) -> bool:
        phase = (obs.job.get("status") or {}).get("phase")
        if phase in (*protocol.WAS_ADMITTED, *protocol.FINISHED_PHASES):
            return False
        return obs.workload is None or not protocol.has_quota_reservation(obs.workload)

    # ------------------------------------------------------------------ one pass
    async def reconcile(self, key: Key) -> float | None:
        if key not in self.cache.jobs:
            self.child_errors.pop(key, None)
            self._held.pop(key, None)
            for (kind, _), obj in list(self.cache.objs.get(key, {}).items()):
                if kind == "Workload":
                    for action in protocol.orphan_workload_plan(obj):
                        if await self.call(self.namespace_deleting, key[0]):
                            raise NamespaceTerminating(key[0])
                        await self.execute_action(key, action)
            return None
        t0 = time.perf_counter()
        obs = self.cache.observed(key)
        spec = obs.job.get("spec") or {}
        if not spec.get("queueName"):
            lq = await self.call(self._lookup, "LocalQueue", key[0], "default")
            obs.default_queue_exists = lq is not None
        if spec.get("priorityClassName"):
            wpc = await self.call(
                self._lookup, "WorkloadPriorityClass", None, spec["priorityClassName"]
            )
            obs.priority_class_exists = wpc is not None
            obs.priority = (wpc or {}).get("value")
        if obs.workload and b.missing_flavors(obs.workload, obs.flavors):
            await self.call(self.refresh_flavors)
            obs.flavors = self.cache.flavors
        queue = spec.get("queueName") or "default"
        if self._before_admission(obs) and isinstance(queue, str):
            obs.capacity = await self.call(self.queue_capacity, key[0], queue)
        obs.child_errors = list(self.child_errors.get(key, {}).values())
        plan = protocol.reconcile(obs)
        self.reconciles += 1
        held = self.hold_progress(key, obs, plan)
        if held is not None:
            return held
        if (plan.actions or plan.status_changed) and await self.call(
            self.namespace_deleting, key[0]
        ):
            raise NamespaceTerminating(key[0])  # the worker leaves the namespace
        # A pass's writes in as few round trips as their order allows:
        #   1. the children pods reference (ServiceAccount, ConfigMaps, Secret) and the
        #      others, together, and the job's own label patch;
        #   2. the pods together, the deletes and other patches (in their order), and the
        #      pass's Events (named after the job's version once its label is written);
        #   3. the status, after its Events (write_status).
        # The status is written even when a write failed: what the pass decided is true
        # (e.g. the Workload is admitted) and the refusal shows on the next pass.
        creates = [a for a in plan.actions if a.verb in ("apply", "create")]
        own = [a for a in plan.actions if a.verb == "patch" and a.kind == api.KIND]
        ordered = [a for a in plan.actions if a not in creates and a not in own]
        # A pass that makes the gang (its first pods) writes what the pods need and the
        # pods, nothing else: the job's label, Events and status follow in the next pass,
        # at the NORMAL level. In a burst of admissions every gang is made first, and a
        # gang's admission -> pods is two round trips, not three.
        gang = self.makes_gang(key, plan)
        if gang:
            own = []
        refused: list[protocol.ChildError] = []
        fresh = False
        failures: list[BaseException | None] = []
        post = plan.events if plan.status_changed and not gang else []
        for wave in (False, True):
            batch = [a for a in creates if (a.kind in protocol.COMPUTE_KINDS) is wave]
            results = await asyncio.gather(
                *(self.execute_action(key, a) for a in batch),
                self._in_order(key, ordered if wave else own),
                *([self.post_events(key, obs.job, post)] if wave and post else []),
                return_exceptions=True,
            )
            failures.append(results[len(batch)])
            got, new = self._record(key, batch, results[: len(batch)])
            refused += got
            fresh = fresh or new
            for extra in results[len(batch) + 1 :]:
                if isinstance(extra, BaseException):
                    raise extra
        wrote_all = not refused and not any(isinstance(f, BaseException) for f in failures)
        if gang and wrote_all:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - t0)
            log.info(
                "gang created",
                extra={"job": f"{key[0]}/{key[1]}", "actions": [repr(a) for a in plan.actions]},
            )
            return GANG_FOLLOW_UP_S  # the label, Events and status: the next pass
        if plan.status_changed:
            await self.write_status(key, obs.job, plan)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - t0)
        for err in (ApiError(e.code, e.message) for e in refused):
            if namespace_terminating(err):
                raise err  # the worker leaves the namespace
        if refused:
            first = refused[0]
            log.warning(
                "child refused",
                extra={
                    "job": f"{key[0]}/{key[1]}",
                    "child": f"{first.kind}/{first.name}",
                    "code": first.code,
                    "retryable": first.retryable,
                    "error": first.message[:300],
                },
            )
            if fresh and not all(e.retryable for e in refused):
                return 0.05  # the next pass fails the job with the API server's message
            raise ApiError(first.code, first.message)  # retried with backoff
        for failure in failures:
            if isinstance(failure, BaseException):
                raise failure
        if plan.actions or plan.status_changed:
            log.info(
                "reconciled",
                extra={
                    "job": f"{key[0]}/{key[1]}",
                    "step": plan.step,
                    "phase": plan.status.get("phase"),
                    "actions": [repr(a) for a in plan.actions],
                },
            )
        return plan.requeue_after

    def makes_gang(self, key: Key, plan: protocol.Plan) -> bool:
        """The pass creates pods of a job that has none (its START pass)."""
        objs = self.cache.objs.get(key) or {}
        if any(kind == "Pod" for kind, _ in objs):
            return False
        return any(a.kind == "Pod" and a.verb in ("apply", "create") for a in plan.actions)

    def _record(
        self, key: Key, actions: list[protocol.Action], results: list[Any]
    ) -> tuple[list[protocol.ChildError], bool]:
        """Remember refused child writes (the protocol reads them next pass); forget those
        that went through."""
        errors = self.child_errors[key]
        refused = []
        fresh = False
        for a, res in zip(actions, results, strict=True):
            if isinstance(res, ApiError):
                body = a.body or {}
                e = protocol.ChildError(
                    a.kind,
                    a.name,
                    res.status,
                    protocol.api_message(res.body),
                    protocol._annotation(body, HASH_ANNOTATION),
                )
                if errors.get((a.kind, a.name)) != e:
                    fresh = True
                errors[(a.kind, a.name)] = e
                refused.append(e)
                metrics.CHILD_REFUSALS.labels(kind=a.kind, retryable=str(e.retryable)).inc()
            elif isinstance(res, BaseException):
                raise res
            else:
                errors.pop((a.kind, a.name), None)
        if not errors:
            self.child_errors.pop(key, None)
        return refused, fresh

    async def execute_action(self, key: Key, a: protocol.Action) -> None:
        ns = key[0]
        if a.verb == "apply":
            out = None
            if a.kind != api.KIND and (a.kind, a.name) not in self.cache.objs.get(key, {}):
                # New to the cache: created with a POST, which costs the API server a
                # fraction of a server-side apply of the same object; one that exists
                # after all (409) is applied.
                out = await self.call(self.kube.create, a.body, ns)
            if out is None:
                out = await self.call(self.kube.apply, a.body, ns)
        elif a.verb == "create":
            out = await self.call(self.kube.create, a.body, ns)
        elif a.verb == "delete":
            await self.call(self.kube.delete, a.kind, ns, a.name)
            if a.kind in LISTED_KINDS:  # no watch tells when it is gone: gone now
                self.cache.objs.get(key, {}).pop((a.kind, a.name), None)
                return
            cur = self.cache.objs.get(key, {}).get((a.kind, a.name))
            if cur is not None:  # marked, so the next pass does not delete it again
                cur["metadata"]["deletionTimestamp"] = protocol.ts(
                    protocol.datetime.now(protocol.UTC)
                )
            return
        elif a.verb in ("patch", "patch_status"):
            out = await self.call(
                self.kube.merge_patch, a.kind, ns, a.name, a.body, a.verb == "patch_status"
            )
        else:
            raise ValueError(a.verb)
        if out:
            if a.kind == api.KIND:
                self.cache.put_job(out)
            else:
                self.cache.put(a.kind, out)

    async def _in_order(self, key: Key, actions: list[protocol.Action]) -> ApiError | None:
        """Deletes and patches, one after the other: the first refusal (the rest still go)."""
        failure = None
        for action in actions:
            try:
                await self.execute_action(key, action)
            except ApiError as exc:
                failure = failure or exc
        return failure

    async def post_events(self, key: Key, job: dict[str, Any], events: list) -> None:
        """Events go before the status write that records their transition, named after the
        job version the transition was decided on: a crash between the Event and the status
        write makes the restarted operator decide the same transition on the same version
        and post the same name (409: one Event); after the status write there is no
        transition left to post. None is lost."""
        current = self.cache.jobs.get(key, job)
        for etype, reason, message in events:
            digest = hashlib.sha256(
                f"{job['metadata'].get('uid')}/{current['metadata']['resourceVersion']}/"
                f"{reason}".encode()
            ).hexdigest()[:16]
            try:
                await self.call(
                    self.kube.event, current, etype, reason, message, f"{key[1]}.{digest}"
                )
            except ApiError as exc:
                log.warning("event not recorded", extra={"error": str(exc)[:200]})

    async def write_status(self, key: Key, job: dict[str, Any], plan: protocol.Plan) -> None:
        """The pass's status: `job` is what it was decided on (a key missing from the new
        status is removed); the write is guarded by the version cached now."""
        current = self.cache.jobs.get(key, job)
        old = job.get("status") or {}
        body = dict(plan.status)
        for k in old:
            if k not in body:
                body[k] = None
        # Our own writes earlier in this pass (the queue label) moved the version on.
        patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}}
        patch["status"] = body
        out = await self.call(self.kube.merge_patch, api.KIND, key[0], key[1], patch, True)
        if out:
            self.cache.put_job(out)
        if plan.evicted:
            metrics.EVICTIONS.inc()
        if plan.restarted:
            metrics.RESTARTS.inc()
        if plan.step == "pods_ready_timeout":
            metrics.PODS_READY_TIMEOUTS.inc()
        if plan.admission_wait is not None and plan.status.get("phase") in ("Admitted", "Running"):
            metrics.ADMISSION_WAIT.observe(max(plan.admission_wait, 0.0))


class NamespaceTerminating(Exception):
    """The namespace of a pass is being deleted: the pass writes nothing."""


def namespace_terminating(exc: BaseException) -> bool:
    """The namespace is being deleted: seen before a write (NamespaceTerminating), or a write
    refused for it (403 "... because it is being terminated", 404 "namespaces ... not
    found")."""
    if isinstance(exc, NamespaceTerminating):
        return True
    if not isinstance(exc, ApiError):
        return False
    body = exc.body or ""
    return (exc.status == 403 and "being terminated" in body) or (
        exc.status == 404 and 'namespaces "' in body and "not found" in body
    )


# ---------------------------------------------------------------------------- kopf wiring


def filter_watches(settings: kopf.OperatorSettings) -> None:
    """kopf's watches of the WATCHED_KINDS ask the API server for CHILD_SELECTOR only."""
    for group, version, plural in WATCHED_KINDS.values():
        settings.watching.label_selectors[group, version, plural] = CHILD_SELECTOR


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    """Raw event handlers: cache + enqueue. They never write."""

    # async: kopf runs a sync handler on a thread of its executor, one hop per event.
    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    async def job_event(event, **_):
        obj = event["object"]
        if event.get("type") == "DELETED":
            ctl.cache.drop_job(obj, LISTED_KINDS)
        elif not ctl.cache.put_job(obj):
            return  # nothing new (the echo of the operator's own status write)
        elif ctl.terminating:
            ctl.job_created(obj)
        if ctl.ready:
            ctl.enqueue((obj["metadata"]["namespace"], obj["metadata"]["name"]))

    for kind, (group, version, plural) in WATCHED_KINDS.items():

        async def child_event(event, _kind=kind, **_):
            obj = event["object"]
            if event.get("type") == "DELETED":
                key = ctl.cache.drop(_kind, obj)
            else:
                key = ctl.cache.put(_kind, obj)
            if ctl.ready:
                ctl.enqueue(key)

        kopf.on.event(
            group,
            version,
            plural,
            labels={NAME_LABEL: APP, INSTANCE_LABEL: kopf.PRESENT},
            registry=registry,
            id=f"cache-{plural}",
        )(child_event)
