"""The local control plane used by `make cluster` and the e2e/integration tests."""

from .localcluster import LocalCluster, default_state_dir
from .paths import bin_dir

__all__ = ["LocalCluster", "bin_dir", "default_state_dir"]
