"""Reading Kubernetes objects: conditions, timestamps, labels, pod failure and readiness,
progress numbers, content hashes. Pure functions."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from .. import builders as b
from .. import validation
from ..constants import (
    HASH_ANNOTATION,
    ROLE_LABEL,
)


def ts(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_true(obj: dict[str, Any] | None, ctype: str) -> bool:
    c = cond(obj, ctype)
    return bool(c and c.get("status") == "True")


def set_condition(
    conditions: list[dict[str, Any]],
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> None:
    """metav1 semantics: lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    for c in conditions:
        if c["type"] == ctype:
            if c["status"] != value:
                c["lastTransitionTime"] = ts(now)
            c.update(status=value, reason=reason, message=message)
            if generation is not None:
                c["observedGeneration"] = generation
            return
    new = {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": ts(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    conditions.append(new)


def job_ref(job: dict[str, Any]) -> b.JobRef:
    m = job["metadata"]
    return b.JobRef(name=m["name"], namespace=m["namespace"], uid=m.get("uid", ""))


def _annotation(obj: dict[str, Any] | None, key: str) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(key)


def _label(obj: dict[str, Any] | None, key: str) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("labels") or {}).get(key)


def deleting(obj: dict[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def has_quota_reservation(wl: dict[str, Any]) -> bool:
    return is_true(wl, "QuotaReserved") or bool((wl.get("status") or {}).get("admission"))


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why a pod counts as failed: phase Failed or a container that exited non-zero."""
    st = pod.get("status") or {}
    name = pod["metadata"]["name"]
    if st.get("phase") == "Failed":
        return f"pod {name} failed ({st.get('reason') or 'phase Failed'}: {st.get('message', '')})"
    for cs in st.get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated")
            if term and term.get("exitCode", 0) != 0:
                return (
                    f"pod {name} container {cs.get('name')} exited with code "
                    f"{term.get('exitCode')} ({term.get('reason') or 'Error'})"
                    + last_words(term.get("message"))
                )
    return None


def last_words(message: str | None, limit: int = 300) -> str:
    """The last non-empty line of a termination message (FallbackToLogsOnError: the log's
    tail, e.g. a traceback's error line), as a suffix for the failure message."""
    lines = [x.strip() for x in (message or "").splitlines() if x.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return ": " + (last if len(last) <= limit else "..." + last[-limit:])


def pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )


def progress_numbers(cm: dict[str, Any] | None) -> dict[str, Any]:
    data = (cm or {}).get("data") or {}
    out: dict[str, Any] = {}
    for key in ("step", "weightVersion", "lastCheckpointStep"):
        raw = data.get(key)
        if raw not in (None, ""):
            with contextlib.suppress(ValueError):
                out[key] = int(raw)
    raw = data.get("rewardMean")
    if raw not in (None, ""):
        with contextlib.suppress(ValueError):
            out["rewardMean"] = float(raw)
    out["done"] = str(data.get("done", "")).lower() == "true"
    return out


def needs_write(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    return live is None or _annotation(live, HASH_ANNOTATION) != _annotation(
        desired, HASH_ANNOTATION
    )


def _admission_wait(wl: dict[str, Any], now: datetime) -> float | None:
    since = parse_ts(wl["metadata"].get("creationTimestamp"))
    req = cond(wl, "Requeued")
    if req and req.get("lastTransitionTime"):
        since = max(since or now, parse_ts(req["lastTransitionTime"]) or now)
    return (now - since).total_seconds() if since else None


def _cond_reason(status: dict[str, Any], ctype: str, true_only: bool = False) -> str | None:
    for c in status.get("conditions") or []:
        if c["type"] == ctype and (not true_only or c.get("status") == "True"):
            return c.get("reason")
    return None


# kube-scheduler's VolumeBinding PreFilter, for a pod whose Immediate-mode claim is not bound
# yet: it fails before any node is filtered, so the message carries no other reason.
UNBOUND_CLAIM = "unbound immediate PersistentVolumeClaims"


def waits_on_volume_binding(unschedulable_message: str) -> bool:
    """The scheduler cannot place the pod only because a claim it mounts is not bound yet."""
    return UNBOUND_CLAIM in unschedulable_message


# StorageClass.volumeBindingMode that binds a claim only once a pod mounting it is scheduled.
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"


def claim_bound(pvc: dict[str, Any]) -> bool:
    return (pvc.get("status") or {}).get("phase") == "Bound"


def unbound_immediate_claim(
    pvc: dict[str, Any] | None, binding_modes: dict[str, str] | None
) -> bool:
    """The PV controller has yet to bind this claim, and binds it without any pod: its class
    binds Immediate, or it has none (static PVs). False when the class is unknown (not
    listed, or StorageClasses not readable): the pods are then made at once, as always."""
    if pvc is None or binding_modes is None or deleting(pvc):
        return False
    if claim_bound(pvc):
        return False
    cls = (pvc.get("spec") or {}).get("storageClassName")
    if not cls:
        return True
    mode = binding_modes.get(cls)
    return mode is not None and mode != WAIT_FOR_FIRST_CONSUMER


def mounts_claim(pod: dict[str, Any], claim: str) -> bool:
    return any(
        (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
        for v in (pod.get("spec") or {}).get("volumes") or []
    )


def invalid_spec_exit(pod: dict[str, Any]) -> str | None:
    """A container that exited with validation.INVALID_SPEC_EXIT_CODE: its termination
    message says what in the spec is wrong."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated")
            if term and term.get("exitCode") == validation.INVALID_SPEC_EXIT_CODE:
                msg = " ".join((term.get("message") or "").split())[:900]
                return (
                    f"pod {pod['metadata']['name']} ({_label(pod, ROLE_LABEL)}) refused the spec "
                    f"at start: {msg or 'exit code ' + str(validation.INVALID_SPEC_EXIT_CODE)}"
                )
    return None


def _cond_msg(status: dict[str, Any], ctype: str) -> str | None:
    for c in status.get("conditions") or []:
        if c["type"] == ctype:
            return c.get("message")
    return None


def _normal(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if v not in (None, [], {})}
    if "conditions" in out:
        out["conditions"] = sorted(out["conditions"], key=lambda c: c["type"])
    return out


def progress_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The status moved on by counts only (`readyPods`, the messages that quote it, the
    trainer's step): no phase, condition status or reason changed. Such a write may wait
    a moment and carry the next counts too (controller.py coalesces them)."""

    def shape(st: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in _normal(st).items() if k not in PROGRESS_FIELDS}
        out["conditions"] = [
            {k: v for k, v in c.items() if k not in ("message", "lastTransitionTime")}
            for c in out.get("conditions") or []
        ]
        return out

    return shape(old) == shape(new)


# Status fields that count progress (their changes alone are `progress_only`).
PROGRESS_FIELDS = ("readyPods", "step", "weightVersion", "lastCheckpointStep", "rewardMean")
