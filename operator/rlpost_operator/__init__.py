"""rlpost's kopf operator: RLPostTrainJob -> one Kueue Workload -> the job's children.

Layout: `builders` (pure spec -> manifests), `protocol` (pure decisions, the Kueue
jobframework steps), `kube` (the thin API layer: server-side apply, status patches,
events), `cache` + `handlers` (kopf watches feeding a work queue), `metrics`, `__main__`.
"""

__all__ = ["FIELD_MANAGER"]

FIELD_MANAGER = "rlpost-operator"
