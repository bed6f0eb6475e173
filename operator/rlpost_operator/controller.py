"""The work queue and the passes; the kopf handlers (watches.py) only feed them.

kopf watches the job kind and the child kinds others change (raw `on.event` handlers: no
progress annotations, no finalizers, no posted events — nothing kopf writes). Each event
updates the in-memory cache (cache.py) and enqueues the owning job; workers run
`protocol.reconcile` on a cache snapshot, with what it needs to read besides (the
LocalQueue, priority class, flavors, nodes), and hand the Plan to writes.py. A pass whose
Plan is empty writes nothing, which is what keeps an idle cluster free of operator writes.

The queue has three levels: a job that has no Workload yet goes ahead of every other pass
(its pass is small, and Kueue cannot admit what it has not seen), so a burst of new jobs is
queued in Kueue before the operator spends its writes on children; then a job Kueue has
admitted that has no pod yet (its pass makes the gang); then everything else. A namespace
the API server says is terminating is left alone: no pass, no retry, no write.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlpost import api

from . import builders as b
from . import protocol, validation
from .cache import Cache, Key
from .kube import ApiError, Kube
from .watches import CHILD_SELECTOR, LISTED_KINDS, RESYNC_S, WATCHED_KINDS
from .writes import NamespaceTerminating, PlanWriter, namespace_terminating

log = logging.getLogger("rlpost.operator")

# How long a namespace's "not being deleted" answer is trusted before a pass writes.
NAMESPACE_CHECK_S = 0.5


class Controller(PlanWriter):
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
        self._classes_listed = 0.0
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
        Kueue admitted that has no pod yet, or whose pods held for its state claim can be
        made now that it is bound (its pass creates the gang). NORMAL: the rest
        (status that follows pods, failures, suspensions), after those: in a burst of
        admissions every gang is made before the status bookkeeping of the ones made."""
        objs = self.cache.objs.get(key) or {}
        wl = objs.get(("Workload", b.names(key[1])["workload"]))
        if wl is None:
            return self.URGENT if key in self.cache.jobs else self.NORMAL
        if protocol.is_true(wl, "Admitted") and self.cache.gang_to_make(key):
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
        self.refresh_binding_modes(force=True)

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
                await self.call(self.refresh_binding_modes, True)
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

    def refresh_binding_modes(self, force: bool = False) -> None:
        """StorageClass name -> volumeBindingMode: which claims the PV controller binds
        before any pod mounts them (protocol.claim_to_bind). Listed at start, every
        RESYNC_S, and at most every 10 s while a claim names a class not listed yet. Not
        readable (a ClusterRole without storageclasses): None, and no pod waits for its
        claim, as before."""
        if not force and time.monotonic() - self._classes_listed < 10.0:
            return
        self._classes_listed = time.monotonic()
        try:
            classes = self.kube.list("StorageClass")
        except ApiError as exc:
            if self.cache.binding_modes is not None or force:
                log.warning("StorageClasses not readable", extra={"error": str(exc)[:200]})
            self.cache.binding_modes = None
            return
        self.cache.binding_modes = {
            c["metadata"]["name"]: c.get("volumeBindingMode") or "Immediate" for c in classes
        }

    def _class_unknown(self, obs: protocol.Observed) -> bool:
        """A claim of the job that is not bound names a StorageClass not listed yet."""
        modes = obs.binding_modes
        return modes is not None and any(
            c.get("kind") == "PersistentVolumeClaim"
            and not protocol.claim_bound(c)
            and (cls := (c.get("spec") or {}).get("storageClassName"))
            and cls not in modes
            for c in obs.children
        )

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
        if self._class_unknown(obs):
            await self.call(self.refresh_binding_modes)
            obs.binding_modes = self.cache.binding_modes
        queue = spec.get("queueName") or "default"
        if self._before_admission(obs) and isinstance(queue, str):
            obs.capacity = await self.call(self.queue_capacity, key[0], queue)
        obs.child_errors = list(self.child_errors.get(key, {}).values())
        plan = protocol.reconcile(obs)
        self.reconciles += 1
        held = self.hold_progress(key, obs, plan)
        if held is not None:
            return held
        return await self.write_plan(key, obs, plan, t0)
