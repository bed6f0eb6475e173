"""Weight sync between the trainer (sender, rank 0) and rollout engines (receivers).

Same HTTP contract as SGLang (see docs/CONTRACTS.md "Weight sync"): the trainer sends HF
parameter names + metadata over HTTP and the tensors by broadcast in a dedicated
torch.distributed group (gloo on CPU, NCCL on GPU).
"""

from rlpost.weightsync.receiver import WeightReceiver, WeightSyncError
from rlpost.weightsync.sender import WeightSender, WeightSyncFailed
from rlpost.weightsync.tensor_ipc import deserialize_named_tensors, serialize_named_tensors

__all__ = [
    "WeightReceiver",
    "WeightSender",
    "WeightSyncError",
    "WeightSyncFailed",
    "deserialize_named_tensors",
    "serialize_named_tensors",
]
