"""The `torch` backend: a HF causal LM trained with plain torch (CPU or one GPU).

Master weights are fp32 whatever the engines serve (small models, exact logprob match in
tests); they are cast to spec.model.dtype when sent. They are packed in one buffer
(rlpost.weightsync.packed): where no cast is needed, a flattened bucket is broadcast from the
weights' own memory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch

from rlpost.api import RLPostTrainJobSpec
from rlpost.models import DTYPES, build_model
from rlpost.weightsync.packed import pack_parameters
from rlpost_trainer.batch import TrainBatch
from rlpost_trainer.grpo import grpo_loss

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
    )


class TorchBackend:
    is_sync_rank = True

    def setup(self, spec: RLPostTrainJobSpec, vocab_size: int) -> None:
        self.spec = spec
        use_cuda = torch.cuda.is_available() and spec.trainer.gpus_per_pod > 0
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.send_dtype = DTYPES[spec.model.dtype]
        self.model = build_model(spec.model, vocab_size, seed=spec.seed).float().to(self.device)
        pack_parameters(self.model)  # before the optimizer: it keeps these same parameters
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.algorithm.lr, betas=(0.9, 0.99), weight_decay=0.0
        )
        self.ref_model = None
        if spec.algorithm.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        return token_logprobs(self.model, batch, self.device).cpu()

    def train_step(self, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        alg = self.spec.algorithm
        self.optimizer.zero_grad(set_to_none=True)
        n = batch.input_ids.shape[0]
        totals: dict[str, float] = {}
        for lo in range(0, n, MICRO_BATCH_ROWS):
            hi = min(n, lo + MICRO_BATCH_ROWS)
            mb = rows(batch, lo, hi)
            logp = token_logprobs(self.model, mb, self.device)
            ref = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref = token_logprobs(self.ref_model, mb, self.device)
            loss, stats = grpo_loss(
                logp,
                mb.old_logprobs.to(self.device),
                advantages[lo:hi].to(self.device),
                mb.loss_mask.to(self.device),
                clip=alg.clip,
                kl_coef=alg.kl_coef,
                ref_logprobs=ref,
            )
            weight = (hi - lo) / n
            (loss * weight).backward()
            for key, value in vars(stats).items():
                totals[key] = totals.get(key, 0.0) + value * weight
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=1.0)
        self.optimizer.step()
        totals["grad_norm"] = float(grad_norm)
        return totals

    def named_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in self.model.named_parameters():
            yield name, p.detach().to(self.send_dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
