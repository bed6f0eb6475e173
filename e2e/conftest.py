"""e2e suites. The `cluster` (session) and `namespace` (per test) fixtures live in the
repo-root conftest.py so tests/ can use them too; see e2e/cluster/localcluster.py for the
helpers on `cluster`: .kubeconfig, .env, .kubectl(...), .helm(...), .apply(...),
.get_json(...), .wait_for(...), .create_token(sa, ns), .kubeconfig_for_token(token, path).
Kueue ResourceFlavors are created by tests (names of their own); kwok nodes are gpu-a-0/1
(label rlpost.dev/gpu-kind=a) and gpu-b-0/1 (label =b, taint rlpost.dev/gpu-kind=b:NoSchedule),
8 nvidia.com/gpu each. With the real node (default; e2e/cluster/node.py) there is also
rlpost-node-0 (labels rlpost.dev/node=real, rlpost.dev/gpu-kind=real; taint
rlpost.dev/real-node=true:NoSchedule; 4 nvidia.com/gpu) that runs containers; e2e/node
tests it."""
