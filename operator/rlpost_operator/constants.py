"""Names shared by the builders, the protocol and the handlers."""

from __future__ import annotations

from rlpost import api

FIELD_MANAGER = "rlpost-operator"

# Labels on every child (and the Workload): how the operator maps an object to its job.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ROLE_LABEL = "rlpost.dev/role"
ATTEMPT_LABEL = "rlpost.dev/attempt"
POD_INDEX_LABEL = "rlpost.dev/pod-index"  # an indexed pod's ordinal (trainer rank group, engine)
APP = "rlpost"

# Annotations the operator reads back (compare before apply; the resume step of a start).
HASH_ANNOTATION = "rlpost.dev/spec-hash"
RESUME_ANNOTATION = "rlpost.dev/resume-step"

# Kueue.
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PODSET_LABEL = "kueue.x-k8s.io/podset"
RESOURCE_IN_USE_FINALIZER = "kueue.x-k8s.io/resource-in-use"
GPU = "nvidia.com/gpu"
DEFAULT_LOCAL_QUEUE = "default"

JOB_API_VERSION = api.API_VERSION
JOB_KIND = api.KIND

# The non-root uid/gid the three images create (USER 10001, owner of /var/lib/rlpost):
# every pod runs as it (docs/CONTRACTS.md).
IMAGE_UID = 10001

# Ports of the roles (docs/CONTRACTS.md).
BUFFER_PORT = 8000
ROUTER_PORT = 30000
ENGINE_PORT = 30000
MASTER_PORT = 29500
TRAINER_METRICS_PORT = 9400
ROUTER_METRICS_PORT = 29000  # sglang-router's --prometheus-port
# The reward pool's Ray cluster (builders/raypool.py): the head's GCS, Ray Client server (what
# the buffer connects to), dashboard; every Ray node's metrics (Prometheus format) and its
# dashboard agent (the raylet health endpoint).
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080
RAY_AGENT_PORT = 52365

# Roles whose pods run the gang (stopped on eviction/suspension/restart/finish).
ROLE_TRAINER = "trainer"
ROLE_WORKER = "worker"
ROLE_ROLLOUT = "rollout"
ROLE_ROUTER = "router"
ROLE_BUFFER = "buffer"
ROLE_POOL = "reward-pool"  # the Ray head and workers of spec.reward.pool (one podSet)
RAY_NODE_LABEL = "rlpost.dev/ray-node"  # head | worker, on the pool's pods
TRAINING_ROLES = (ROLE_TRAINER, ROLE_WORKER)
