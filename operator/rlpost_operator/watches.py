"""What the operator watches and what it only lists, and the kopf handlers that feed the
cache and the work queue (controller.py). The handlers never write."""

from __future__ import annotations

from typing import TYPE_CHECKING

import kopf

from rlpost import api

from .constants import APP, INSTANCE_LABEL, NAME_LABEL

if TYPE_CHECKING:
    from .controller import Controller

# Children whose changes the operator watches (kopf): what others change under it.
WATCHED_KINDS = {
    # kind: (group, version, plural)
    "Workload": ("kueue.x-k8s.io", "v1beta2", "workloads"),  # Kueue admits, evicts
    "Pod": ("", "v1", "pods"),  # the kubelet and scheduler move them on
    "ConfigMap": ("", "v1", "configmaps"),  # the trainer reports progress
    # the PV controller binds `<job>-state`: the pods that mount it wait for that
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
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
)
RESYNC_S = 300.0


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
