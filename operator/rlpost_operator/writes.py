"""How a pass's Plan is written (controller.py decides when a pass runs and what it
reads; this writes what it decided).

The writes go in as few round trips as their order allows: the children pods reference
and the others together with the job's label, then the pods with the deletes and patches
in order and the pass's Events, then the status. A pass that makes a gang writes the
children and pods only; its label, Events and status follow in the next pass. A refused
child write is remembered for the protocol (`child_errors`); a namespace being deleted
is never written to.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from rlpost import api

from . import metrics, protocol
from .cache import Cache, Key
from .constants import HASH_ANNOTATION
from .kube import ApiError, Kube
from .watches import LISTED_KINDS

log = logging.getLogger("rlpost.operator")

# A status change of counts only (ready pods, the trainer's step) waits this long, so that
# the next counts go in the same write (pods of a gang turn Ready within moments).
PROGRESS_COALESCE_S = 2.0
# After a pass that made a gang: its follow-up pass (label, Events, status) is queued this
# much later, at the NORMAL level (the job has pods now).
GANG_FOLLOW_UP_S = 0.01


class PlanWriter:
    """The Controller's writing half (a mixin: the Controller holds the state)."""

    kube: Kube
    cache: Cache
    child_errors: dict[Key, dict[tuple[str, str], protocol.ChildError]]
    _held: dict[Key, float]

    # Provided by the Controller: a blocking call on its thread pool, and whether a
    # namespace is being deleted.
    async def call(self, fn, *args): ...

    def namespace_deleting(self, ns: str) -> bool: ...

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

    async def write_plan(
        self, key: Key, obs: protocol.Observed, plan: protocol.Plan, t0: float
    ) -> float | None:
        """Write what the pass decided; the delay before the job's next pass (None: none)."""
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
        """The pass creates pods of a job's gang (its START pass)."""
        if not self.cache.gang_to_make(key):
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
