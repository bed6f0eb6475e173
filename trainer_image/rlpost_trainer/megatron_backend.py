"""The `megatron` backend: Megatron-core GPTModel with tensor parallelism from the spec.

Same contract as the torch backend (backend.py): fp32 master weights built from the same HF
init as the engines (spec.model + spec.seed, converted to Megatron's fused layouts), the
same GRPO loss (grpo.grpo_loss) on the same micro-batches, AdamW, global grad-norm clipping
at 1.0; `named_hf_weights()` converts back to HF names/layouts (fused QKV and gate/up split,
TP shards gathered) in spec.model.dtype for the engines.

Parallelism: trainer.parallelism.tensor = TP; the remaining ranks are data parallel (rows of
the batch split between them, gradients all-reduced). Pipeline parallelism > 1 is refused
with a clear error (not implemented yet).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from rlpost.api import RLPostTrainJobSpec
from rlpost.models import DTYPES, build_model
from rlpost_trainer.batch import TrainBatch
from rlpost_trainer.grpo import grpo_loss
from rlpost_trainer.megatron.convert import (
    LlamaShape,
    gather_tp,
    hf_to_megatron,
    to_hf,
    tp_split_dim,
)
from rlpost_trainer.torch_backend import MICRO_BATCH_ROWS, rows

MAX_GRAD_NORM = 1.0


def megatron_logprobs(model: torch.nn.Module, batch: TrainBatch, device: torch.device):
    """log p(targets) [B, L-1] from a GPTModel (full-vocab logits, causal attention).

    Batches are right-padded, so with a causal mask the real positions never see padding:
    no padding mask is needed (the HF model's attention_mask changes nothing there either).
    """
    ids = batch.input_ids.to(device)
    b, length = ids.shape
    position_ids = torch.arange(length, device=device).unsqueeze(0).expand(b, length)
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)
    logits = model(input_ids=ids, position_ids=position_ids, attention_mask=causal[None, None])
    logits = logits[:, :-1, :].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, batch.targets.to(device)[..., None])[..., 0]


class MegatronBackend:
    is_sync_rank = True

    def setup(self, spec: RLPostTrainJobSpec, vocab_size: int) -> None:
        from megatron.core import parallel_state as mpu

        from rlpost_trainer.megatron.model import build_gpt, init_distributed

        if not torch.cuda.is_available():
            raise RuntimeError("trainer.backend megatron needs CUDA GPUs (megatron-core)")
        self.spec = spec
        self.tp = spec.trainer.parallelism.tensor
        self.pp = spec.trainer.parallelism.pipeline
        if self.pp != 1:
            raise NotImplementedError(
                "trainer.parallelism.pipeline > 1 is not implemented by the megatron backend "
                "yet; use pipeline: 1 (tensor parallelism and data parallelism work)"
            )
        init_distributed(self.tp, self.pp, spec.seed)
        self.tp_rank = mpu.get_tensor_model_parallel_rank()
        self.tp_group = mpu.get_tensor_model_parallel_group()
        self.dp_rank = mpu.get_data_parallel_rank()
        self.dp_size = mpu.get_data_parallel_world_size()
        self.dp_group = mpu.get_data_parallel_group()
        self.is_sync_rank = dist.get_rank() == 0
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.send_dtype = DTYPES[spec.model.dtype]

        hf = build_model(spec.model, vocab_size, seed=spec.seed)  # the engines' init, on CPU
        self.hf_config = hf.config
        self.shape = LlamaShape.from_hf_config(hf.config)
        hf_state = {n: t.detach().float() for n, t in hf.state_dict().items()}
        del hf
        self.model = build_gpt(self.shape, self.hf_config, self.tp, self.pp, torch.float32)
        self.load_hf_state(hf_state)
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.algorithm.lr, betas=(0.9, 0.99), weight_decay=0.0
        )
        self.ref_model = None
        if spec.algorithm.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._gathered: list[tuple[str, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ weights

    def load_hf_state(self, hf_state: dict[str, torch.Tensor]) -> None:
        """Set this rank's shard from a full HF state dict (names/shapes must match)."""
        mine = hf_to_megatron(hf_state, self.shape, self.tp)[self.tp_rank]
        params = dict(self.model.named_parameters())
        if set(params) != set(mine):
            raise ValueError(
                "Megatron parameters do not match the HF conversion: "
                f"missing {sorted(set(mine) - set(params))[:5]}, "
                f"unexpected {sorted(set(params) - set(mine))[:5]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                if tuple(p.shape) != tuple(mine[name].shape):
                    raise ValueError(f"{name}: shape {tuple(p.shape)} != {tuple(mine[name].shape)}")
                p.copy_(mine[name].to(p.device, p.dtype))

    def _gather_hf(self, dtype: torch.dtype) -> list[tuple[str, torch.Tensor]] | None:
        """Full HF weights on the TP group's first rank (collective over the TP group)."""
        out: list[tuple[str, torch.Tensor]] = []
        first = self.tp_rank == 0
        for name, p in self.model.named_parameters():
            t = p.detach().to(dtype)
            dim = tp_split_dim(name)
            if self.tp > 1 and dim is not None:
                parts = [torch.empty_like(t) for _ in range(self.tp)]
                dist.all_gather(parts, t.contiguous(), group=self.tp_group)
                t = gather_tp(parts, dim)
            if first:
                out.extend(to_hf(name, t, self.shape, self.tp))
        return out if first else None

    def named_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.tp == 1:
            for name, p in self.model.named_parameters():
                yield from to_hf(name, p.detach().to(self.send_dtype), self.shape, 1)
            return
        # TP > 1: every TP rank took part in the gather at the end of train_step (only the
        # sync rank calls this method).
        if self._gathered is None:
            raise RuntimeError("tensor parallel weights are gathered after a train_step")
        yield from self._gathered

    def gather_for_sync(self) -> None:
        """Collective (all TP ranks): gather the HF weights onto the sync rank."""
        if self.tp > 1 and self.dp_rank == 0:
            self._gathered = self._gather_hf(self.send_dtype)

    # ------------------------------------------------------------------ training

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        return megatron_logprobs(self.model, batch, self.device).cpu()

    def _grad_norm(self) -> torch.Tensor:
        """The norm of the full (unsharded) gradient: TP-split parameters summed over the TP
        group, replicated ones counted once."""
        split = torch.zeros((), device=self.device)
        replicated = torch.zeros((), device=self.device)
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            sq = p.grad.detach().float().pow(2).sum()
            if tp_split_dim(name) is not None and self.tp > 1:
                split += sq
            else:
                replicated += sq
        if self.tp > 1:
            dist.all_reduce(split, group=self.tp_group)
        return (split + replicated).sqrt()

    def train_step(self, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        alg = self.spec.algorithm
        self.optimizer.zero_grad(set_to_none=True)
        n = batch.input_ids.shape[0]
        # Data parallel: each DP rank takes a contiguous slice of the rows.
        per = -(-n // self.dp_size)
        lo_dp, hi_dp = min(n, self.dp_rank * per), min(n, (self.dp_rank + 1) * per)
        keys = ("loss", "pg_loss", "kl", "clip_fraction", "ratio_mean", "kl_rollout")
        totals = torch.zeros(len(keys), dtype=torch.float64)
        for lo in range(lo_dp, hi_dp, MICRO_BATCH_ROWS):
            hi = min(hi_dp, lo + MICRO_BATCH_ROWS)
            mb = rows(batch, lo, hi)
            logp = megatron_logprobs(self.model, mb, self.device)
            ref = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref = megatron_logprobs(self.ref_model, mb, self.device)
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
            totals += torch.tensor([getattr(stats, k) for k in keys], dtype=torch.float64) * weight
        if self.dp_size > 1:
            for p in self.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, group=self.dp_group)
            t = totals.to(self.device)
            dist.all_reduce(t, group=self.dp_group)
            totals = t.cpu()
        grad_norm = self._grad_norm()
        # As torch.nn.utils.clip_grad_norm_ does on the full model.
        coef = torch.clamp(MAX_GRAD_NORM / (grad_norm + 1e-6), max=1.0)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.detach().mul_(coef)
        self.optimizer.step()
        self.gather_for_sync()
        out = {k: float(v) for k, v in zip(keys, totals.tolist(), strict=True)}
        out["grad_norm"] = float(grad_norm)
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tp": self.tp,
            "tp_rank": self.tp_rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tp", 1) != self.tp or state.get("tp_rank", 0) != self.tp_rank:
            raise ValueError(
                f"checkpoint is of TP rank {state.get('tp_rank')}/{state.get('tp')}, this is "
                f"{self.tp_rank}/{self.tp}"
            )
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.gather_for_sync()
