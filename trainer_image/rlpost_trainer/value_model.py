"""`ppo`'s value model (the critic) in the torch backend: the policy's architecture, built from
the same spec.model (config + seed, or the weights directory) with its LM head replaced by a
scalar head, trained with its own AdamW (algorithm.criticLr) next to the policy.

Position t of the response-aligned layout (batch.TrainBatch) is the state that predicts token
t + 1, so the value of the state before each response token is the head on the hidden state
at t: `token_values` is [B, L-1], aligned with loss_mask like the logprobs.

A step (TorchBackend.train_step): `targets` runs the critic without grad over this rank's
rows, turns the rewards into per-token GAE advantages and returns (algorithms/ppo.py), and
whitens the advantages with the whole batch's moments (summed over the data-parallel ranks);
then per micro-batch `loss` (with grad) adds the value loss; `step` takes the optimizer step
after the backend summed the gradients over the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from rlpost.api import RLPostTrainJobSpec
from rlpost.models import build_model
from rlpost_trainer.algorithms import ppo
from rlpost_trainer.algorithms.critic import value_loss
from rlpost_trainer.batch import TrainBatch


class ValueModel(torch.nn.Module):
    """A causal LM's body (its `base_model`: embeddings, layers, final norm) and a scalar
    head, initialised to 0 (every value starts at 0)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.body = lm.base_model
        hidden = lm.config.get_text_config().hidden_size
        self.head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self.head(out.last_hidden_state.float())[..., 0]


def token_values(model: ValueModel, batch: TrainBatch, device: torch.device) -> torch.Tensor:
    """V(state before each next token), [B, L-1] (grad as the caller's context)."""
    values = model(batch.input_ids.to(device), batch.attention_mask.to(device))
    return values[:, :-1]


@dataclass
class Targets:
    """One micro-batch's training targets: whitened, signed advantages and returns [b, T]."""

    advantages: torch.Tensor
    returns: torch.Tensor


class Critic:
    """The value model, its optimizer and its part of a PPO step on one rank (data parallel
    like the policy: replicas start identical, gradients are summed by the backend)."""

    def __init__(self, spec: RLPostTrainJobSpec, vocab_size: int, device: torch.device):
        self.alg = spec.algorithm
        self.device = device
        lm = build_model(spec.model, vocab_size, seed=spec.seed).float()
        self.model = ValueModel(lm).to(device)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if self.world > 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.alg.value_lr(), betas=(0.9, 0.99), weight_decay=0.0
        )
        self.stats: dict[str, float | None] = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def targets(
        self, micro_batches: list[TrainBatch], rewards: list[torch.Tensor]
    ) -> list[Targets]:
        """Per micro-batch of this rank: GAE over the critic's current values, whitened with
        the whole batch's mean and std, times algorithm.advantageSign. Sets the value
        statistics of the step (value_mean, returns_mean, explained_variance)."""
        gamma, lam = self.alg.gae_params()
        raw = []
        # [n, sum A, sum A^2, sum R, sum R^2, sum (R - V), sum (R - V)^2, sum V]
        total = torch.zeros(8, dtype=torch.float64, device=self.device)
        for mb, r in zip(micro_batches, rewards, strict=True):
            mask = mb.loss_mask.to(self.device)
            values = token_values(self.model, mb, self.device)
            adv, ret = ppo.advantages_and_returns(r.to(self.device), values, mask, gamma, lam)
            raw.append((adv, ret, mask))
            err = ret - values
            total[:3] += ppo.moments(adv, mask)
            total[3:5] += ppo.moments(ret, mask)[1:]
            total[5:7] += ppo.moments(err, mask)[1:]
            total[7] += (values.double() * mask).sum()
        if self.world > 1:
            dist.all_reduce(total)
        n = float(total[0].clamp(min=1.0))
        self.stats = {
            "value_mean": float(total[7]) / n,
            "returns_mean": float(total[3]) / n,
            "explained_variance": ppo.explained_variance(total[[0, 3, 4, 5, 6]]),
        }
        sign = self.alg.advantage_sign
        return [Targets(ppo.whiten(a, m, total[:3]) * sign, ret) for a, ret, m in raw]

    def loss(self, mb: TrainBatch, target: Targets, n_seqs: float, n_tokens: float) -> float:
        """Backward of this micro-batch's share of the batch's value loss
        0.5 (V - returns)^2, aggregated as the policy loss is; returns the share.

        Unclipped: the old values are this critic's before the step, and it takes one
        optimizer step per batch (as the policy does), so PPO's value clip could never bind."""
        values = token_values(self.model, mb, self.device)
        mask = mb.loss_mask.to(self.device)
        loss = value_loss(
            values, values.detach(), target.returns, mask, None, self.alg.aggregation(),
            n_seqs, n_tokens,
        )  # fmt: skip
        loss.backward()
        return float(loss.detach())

    def step(self) -> float:
        """Clip (1.0) and apply the summed gradients; the critic's gradient norm."""
        for p in self.parameters():
            if p.grad is None:  # a rank without rows
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm=1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
