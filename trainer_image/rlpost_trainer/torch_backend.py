"""The `torch` backend: a HF causal LM trained with plain torch (CPU or GPUs, data parallel).

Master weights are fp32 whatever the engines serve (small models, exact logprob match in
tests); they are cast to spec.model.dtype when sent. They are packed in one buffer
(rlpost.weightsync.packed): where no cast is needed, a flattened bucket is broadcast from the
weights' own memory.

`ppo` also trains a value model (value_model.py: same architecture, scalar head, its own
optimizer); its advantages come from it, its state is part of the checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import torch
import torch.distributed as dist

from rlpost.api import RLPostTrainJobSpec
from rlpost.models import DTYPES, build_model
from rlpost.weightsync.packed import pack_parameters
from rlpost_trainer.algorithms import LossStats, needs_critic, policy_loss
from rlpost_trainer.batch import TrainBatch
from rlpost_trainer.ranks import dp_rows

# Rows per forward/backward; the loss is accumulated so the step equals one full-batch step.
MICRO_BATCH_ROWS = 64


def token_logprobs(model: torch.nn.Module, batch: TrainBatch, device: torch.device) -> torch.Tensor:
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        use_cache=False,
    )
    logits = out.logits[:, :-1, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, batch.targets.to(device)[..., None])[..., 0]


def rows(batch: TrainBatch, lo: int, hi: int) -> TrainBatch:
    """A row slice of the batch (micro-batch), trimmed to its own longest sequence."""
    width = int(batch.attention_mask[lo:hi].sum(-1).max())
    return TrainBatch(
        input_ids=batch.input_ids[lo:hi, :width],
        attention_mask=batch.attention_mask[lo:hi, :width],
        targets=batch.targets[lo:hi, : width - 1],
        loss_mask=batch.loss_mask[lo:hi, : width - 1],
        old_logprobs=batch.old_logprobs[lo:hi, : width - 1],
        rewards=batch.rewards[lo:hi],
        group_index=batch.group_index[lo:hi],
        n_groups=batch.n_groups,
        response_tokens=0,
        total_tokens=0,
        response_lengths=None if batch.response_lengths is None else batch.response_lengths[lo:hi],
    )


class TorchBackend:
    """Data parallel over every rank of the default process group (if one is initialised):
    each rank trains on its rows of the batch, gradients are summed (each rank's loss is its
    share of the whole batch's), so every rank takes the same optimizer step."""

    is_sync_rank = True

    def setup(self, spec: RLPostTrainJobSpec, vocab_size: int) -> None:
        self.spec = spec
        self.rank, self.world = 0, 1
        if dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_sync_rank = self.rank == 0
        use_cuda = torch.cuda.is_available() and spec.trainer.gpus_per_pod > 0
        # One GPU per rank: the launcher's LOCAL_RANK, set as the current device.
        cuda = torch.device("cuda", torch.cuda.current_device()) if use_cuda else None
        self.device = cuda or torch.device("cpu")
        self.send_dtype = DTYPES[spec.model.dtype]
        self.model = build_model(spec.model, vocab_size, seed=spec.seed).float().to(self.device)
        pack_parameters(self.model)  # before the optimizer: it keeps these same parameters
        if self.world > 1:
            with torch.no_grad():  # replicas start identical whatever built them
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.algorithm.lr, betas=(0.9, 0.99), weight_decay=0.0
        )
        self.ref_model = None
        if spec.algorithm.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.critic = None
        if needs_critic(spec.algorithm):
            from rlpost_trainer.value_model import Critic

            self.critic = Critic(spec, vocab_size, self.device)

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        return token_logprobs(self.model, batch, self.device).cpu()

    def train_step(self, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        """`batch` is the whole step's batch on every rank; this rank trains on its rows.
        The loss is normalised over the whole batch (its sequences and tokens), so the
        summed gradients equal one full-batch step on one rank.

        ppo: `advantages` are the (shaped) rewards, one per row; the critic makes them
        per-token advantages and is trained on the same micro-batches."""
        alg = self.spec.algorithm
        self.optimizer.zero_grad(set_to_none=True)
        n_seqs = float((batch.loss_mask.sum(-1) > 0).sum().clamp(min=1))
        n_tokens = float(batch.loss_mask.sum().clamp(min=1))
        first, end = dp_rows(batch.input_ids.shape[0], self.rank, self.world)
        totals = {f.name: 0.0 for f in fields(LossStats)}
        spans = [
            (lo, min(end, lo + MICRO_BATCH_ROWS)) for lo in range(first, end, MICRO_BATCH_ROWS)
        ]
        micro = [rows(batch, lo, hi) for lo, hi in spans]
        per_mb = [advantages[lo:hi] for lo, hi in spans]
        if self.critic is not None:
            targets = self.critic.targets(micro, per_mb)
            per_mb = [t.advantages for t in targets]
            totals["value_loss"] = 0.0
        for k, mb in enumerate(micro):
            logp = token_logprobs(self.model, mb, self.device)
            ref = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref = token_logprobs(self.ref_model, mb, self.device)
            loss, stats = policy_loss(
                alg,
                logp,
                mb.old_logprobs.to(self.device),
                per_mb[k].to(self.device),
                mb.loss_mask.to(self.device),
                ref_logprobs=ref,
                n_seqs=n_seqs,
                n_tokens=n_tokens,
            )
            loss.backward()
            for key, value in vars(stats).items():
                totals[key] += value
            if self.critic is not None:
                totals["value_loss"] += self.critic.loss(mb, targets[k], n_seqs, n_tokens)
        if self.world > 1:
            self._all_reduce_grads([p for p in self.model.parameters() if p.requires_grad])
            if self.critic is not None:
                self._all_reduce_grads(self.critic.parameters())
            totals = self._all_reduce(totals)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=1.0)
        self.optimizer.step()
        totals["grad_norm"] = float(grad_norm)
        if self.critic is not None:
            totals["critic_grad_norm"] = self.critic.step()
            totals.update(self.critic.stats)
        return totals

    def _all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients over the ranks (one flat buffer)."""
        for p in params:
            if p.grad is None:  # a rank without rows (batch smaller than the world)
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        at = 0
        for p in params:
            p.grad.copy_(flat[at : at + p.numel()].view_as(p.grad))
            at += p.numel()

    def _all_reduce(self, totals: dict[str, float]) -> dict[str, float]:
        """Sum the statistics over the ranks."""
        stats = torch.tensor(list(totals.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(stats)
        return dict(zip(totals, stats.tolist(), strict=True))

    def named_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in self.model.named_parameters():
            yield name, p.detach().to(self.send_dtype)

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.critic is not None:
            if "critic" not in state:
                raise ValueError(
                    "algorithm ppo: the checkpoint has no value model (written by a run of "
                    "another algorithm); start a fresh run or resume with that algorithm"
                )
            self.critic.load_state_dict(state["critic"])
