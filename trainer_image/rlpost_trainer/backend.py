"""The interface between the RL loop and a training engine.

The loop (loop.py) is engine-agnostic: it collates the buffer's batch into a TrainBatch,
computes the algorithm's advantages (algorithms/), and asks the backend to do the rest.
`torch` (torch_backend.py) is the reference implementation; a Megatron-core backend
implements the same protocol and converts its parameter layout to HF names in
`named_hf_weights()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from rlpost.api import PPO_MEGATRON, RLPostTrainJobSpec
from rlpost.models import ModelError
from rlpost_trainer.batch import TrainBatch


@runtime_checkable
class TrainerBackend(Protocol):
    """One training engine on one rank.

    Only `is_sync_rank` (global rank 0) sends weights; every rank trains on its shard.
    """

    is_sync_rank: bool

    def setup(self, spec: RLPostTrainJobSpec, vocab_size: int) -> None:
        """Build the policy (same init as the engines: spec.model + spec.seed), the optimizer,
        and a frozen reference policy when spec.algorithm.klCoef > 0."""

    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """log p(targets) per position, [B, L-1], no grad (current policy)."""

    def train_step(self, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        """One optimizer step of spec.algorithm's loss (algorithms.policy_loss) on `batch`;
        returns loss statistics (algorithms.LossStats's fields and grad_norm; with a value
        model, ppo, also loop.CRITIC_STATS)."""

    def named_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) weights under HF parameter names, in the engines' dtype."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training bit-for-bit (model, optimizer; ppo: the
        value model and its optimizer)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UnsupportedAlgorithm(ModelError):
    """The backend cannot train spec.algorithm (the trainer exits 78: InvalidSpec)."""


def make_backend(spec: RLPostTrainJobSpec) -> TrainerBackend:
    name = str(spec.trainer.backend)
    if name == "megatron" and str(spec.algorithm.name) == "ppo":
        raise UnsupportedAlgorithm(PPO_MEGATRON)
    if name == "torch":
        from rlpost_trainer.torch_backend import TorchBackend

        return TorchBackend()
    if name == "megatron":
        try:
            from rlpost_trainer.megatron_backend import MegatronBackend  # type: ignore
        except ImportError as e:
            raise SystemExit(
                "trainer.backend: megatron needs megatron-core and a GPU "
                f"(rlpost_trainer.megatron_backend): {e}"
            ) from e
        return MegatronBackend()
    raise SystemExit(f"trainer.backend {name!r}: use torch or megatron")
