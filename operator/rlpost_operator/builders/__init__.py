"""Pure builders: (job, admission facts) -> Kubernetes manifests. No I/O here.

Every function returns a plain dict ready for server-side apply. The same pod templates
serve the Workload's podSets (what Kueue admits) and the children (what runs), so the
resources Kueue counted are the resources the pods request.

Modules: common (identity, names, labels, hashes, pod groups), security (securityContext),
storage (volumes, mounts, state directory), pods (pod spec/template per role), network
(Services, NetworkPolicy), static (ConfigMaps, Secret, ServiceAccount/RBAC), compute
(the gang's pods, created directly), raypool (the reward pool's Ray head and worker pods),
kueue (the Workload and admission facts).
"""

from .common import (
    JobRef,
    PodGroup,
    PodSetUpdate,
    StartInfo,
    expected_pods,
    host,
    labels,
    names,
    object_meta,
    pod_groups,
    selector,
    spec_hash,
    with_hash,
)
from .compute import (
    build_buffer_pod,
    build_compute_children,
    build_pod,
    build_pool_pods,
    build_training_pods,
    resume_step_of,
)
from .kueue import (
    KUEUE_POD_FIELDS,
    build_workload,
    job_queue_label,
    kueue_template,
    missing_flavors,
    podset_updates,
)
from .network import build_network_policy, build_service
from .pods import apply_update, pod_spec, pod_template
from .static import (
    build_config_map,
    build_progress_config_map,
    build_role,
    build_role_binding,
    build_service_account,
    build_static_children,
    build_token_secret,
)
from .storage import (
    CHECKPOINT_MOUNT,
    CONFIG_MOUNT,
    DATA_MOUNT,
    MODEL_MOUNT,
    STATE_MOUNT,
    build_state_pvc,
    checkpoint_dir,
    state_dir,
)

__all__ = [
    "CHECKPOINT_MOUNT",
    "CONFIG_MOUNT",
    "DATA_MOUNT",
    "MODEL_MOUNT",
    "STATE_MOUNT",
    "JobRef",
    "PodGroup",
    "PodSetUpdate",
    "StartInfo",
    "apply_update",
    "build_buffer_pod",
    "build_compute_children",
    "build_config_map",
    "build_network_policy",
    "build_pod",
    "build_pool_pods",
    "build_progress_config_map",
    "build_role",
    "build_role_binding",
    "build_service_account",
    "build_service",
    "build_state_pvc",
    "build_static_children",
    "build_token_secret",
    "build_training_pods",
    "build_workload",
    "checkpoint_dir",
    "expected_pods",
    "host",
    "job_queue_label",
    "KUEUE_POD_FIELDS",
    "kueue_template",
    "labels",
    "object_meta",
    "missing_flavors",
    "names",
    "pod_groups",
    "pod_spec",
    "pod_template",
    "podset_updates",
    "resume_step_of",
    "selector",
    "spec_hash",
    "state_dir",
    "with_hash",
]
