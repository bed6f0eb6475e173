"""The `megatron` backend: Megatron-core GPTModel with tensor and pipeline parallelism.

Same contract as the torch backend (backend.py): fp32 master weights built from the same HF
init as the engines (spec.model + spec.seed, converted to Megatron's fused layouts), the
same loss (algorithms.policy_loss of spec.algorithm) on the same micro-batches, AdamW, global
grad-norm clipping at 1.0; `named_hf_weights()` converts back to HF names/layouts (fused QKV
and gate/up split, TP shards gathered) in spec.model.dtype for the engines.

Optimizer (RLPOST_MEGATRON_OPTIMIZER): `distributed` (the default on one GPU) is
Megatron-core's own DistributedDataParallel (gradients accumulated into contiguous fp32
main-grad buffers and reduced across data-parallel ranks) + DistributedOptimizer (Adam states
and fp32 main params sharded across data-parallel ranks) + its global grad-norm clipping;
`local` is the hand-written path (torch AdamW, an all-reduce per parameter, a hand-written
clip), the default with several ranks and the only one with TP or PP > 1 (megatron_options).
RLPOST_MEGATRON_PARAMS_DTYPE=bfloat16 (distributed only): bf16 model params, fp32 main grads
and fp32 main params in the optimizer (Megatron's mixed precision).

Parallelism: trainer.parallelism.tensor = TP, trainer.parallelism.pipeline = PP (layers split
evenly between stages; micro-batches run through Megatron's pipeline schedule, the loss on
the last stage); the remaining ranks are data parallel (rows of the batch split between them,
gradients all-reduced). For weight sync every stage's HF tensors are collected on global
rank 0 (first stage, TP rank 0), which pushes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import torch
import torch.distributed as dist

from rlpost.api import RLPostTrainJobSpec
from rlpost.models import DTYPES, build_model
from rlpost_trainer.algorithms import LossStats, policy_loss
from rlpost_trainer.batch import TrainBatch
from rlpost_trainer.megatron.convert import (
    LlamaShape,
    gather_tp,
    hf_to_megatron,
    in_hf_order,
    stage_layers,
    to_hf,
    tp_split_dim,
)
from rlpost_trainer.torch_backend import MICRO_BATCH_ROWS, rows

MAX_GRAD_NORM = 1.0


def gpt_inputs(batch: TrainBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """GPTModel's inputs for a right-padded batch. With a causal mask the real positions never
    see padding: no padding mask is needed (the HF model's attention_mask changes nothing
    there either)."""
    ids = batch.input_ids.to(device)
    b, length = ids.shape
    position_ids = torch.arange(length, device=device).unsqueeze(0).expand(b, length)
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)
    return {"input_ids": ids, "position_ids": position_ids, "attention_mask": causal[None, None]}


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) [B, L-1] from full-vocab logits [B, L, V]."""
    logp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    return logp.gather(-1, targets.to(logits.device)[..., None])[..., 0]


def megatron_logprobs(model: torch.nn.Module, batch: TrainBatch, device: torch.device):
    """log p(targets) [B, L-1] from a whole (one-stage) GPTModel."""
    return logprobs_from_logits(model(**gpt_inputs(batch, device)), batch.targets)


OPTIMIZERS = ("distributed", "local")
PARAMS_DTYPES = ("float32", "bfloat16")


def megatron_options(
    env: dict[str, str] | None = None, tp: int = 1, pp: int = 1, world: int = 1
) -> tuple[str, torch.dtype]:
    """(optimizer, params dtype) from RLPOST_MEGATRON_OPTIMIZER / RLPOST_MEGATRON_PARAMS_DTYPE.

    The default is Megatron's distributed optimizer on one GPU (the configuration measured
    against the torch backend) and the local path with several ranks. Megatron's optimizer
    with tensor or pipeline parallelism is refused: TP=2 on 2 H200s hung in its one run
    (2026-12-01, not investigated yet); with data parallelism alone it is allowed but has not
    been run."""
    env = os.environ if env is None else env
    default = "distributed" if world == 1 else "local"
    optimizer = env.get("RLPOST_MEGATRON_OPTIMIZER", default) or default
    params = env.get("RLPOST_MEGATRON_PARAMS_DTYPE", "float32") or "float32"
    if optimizer == "distributed" and tp * pp > 1:
        raise ValueError(
            "RLPOST_MEGATRON_OPTIMIZER=distributed with tensor or pipeline parallelism is not "
            "supported yet (it hung with TP=2); use RLPOST_MEGATRON_OPTIMIZER=local"
        )
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"RLPOST_MEGATRON_OPTIMIZER={optimizer!r}: use one of {OPTIMIZERS}")
    if params not in PARAMS_DTYPES:
        raise ValueError(f"RLPOST_MEGATRON_PARAMS_DTYPE={params!r}: use one of {PARAMS_DTYPES}")
    if optimizer == "local" and params != "float32":
        raise ValueError(
            "RLPOST_MEGATRON_PARAMS_DTYPE=bfloat16 needs RLPOST_MEGATRON_OPTIMIZER=distributed "
            "(the fp32 main params and grads live in Megatron's optimizer)"
        )
    return optimizer, DTYPES[params]


def inner_optimizers(optimizer) -> list:
    """The torch optimizers inside a Megatron optimizer (a ChainedOptimizer holds several)."""
    subs = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return [o.optimizer for o in subs]


STAT_KEYS = tuple(f.name for f in fields(LossStats))


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
        init_distributed(self.tp, self.pp, spec.seed)
        self.tp_rank = mpu.get_tensor_model_parallel_rank()
        self.tp_group = mpu.get_tensor_model_parallel_group()
        self.dp_rank = mpu.get_data_parallel_rank()
        self.dp_size = mpu.get_data_parallel_world_size()
        self.dp_group = mpu.get_data_parallel_group()
        self.pp_rank = mpu.get_pipeline_model_parallel_rank()
        self.pp_group = mpu.get_pipeline_model_parallel_group()
        self.first_stage = mpu.is_pipeline_first_stage()
        self.last_stage = mpu.is_pipeline_last_stage()
        self.is_sync_rank = dist.get_rank() == 0
        # Checkpoints (checkpoint.py): one file per TP/PP shard, written by its DP rank 0;
        # without model parallelism the state is replicated and global rank 0 writes it.
        self.shard_key = f"tp{self.tp_rank}-pp{self.pp_rank}" if self.tp * self.pp > 1 else None
        self.writes_shard = self.dp_rank == 0
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.send_dtype = DTYPES[spec.model.dtype]

        hf = build_model(spec.model, vocab_size, seed=spec.seed)  # the engines' init, on CPU
        self.hf_config = hf.config
        self.shape = LlamaShape.from_hf_config(hf.config)
        self.layers = stage_layers(self.shape, self.pp, self.pp_rank)  # this stage's, global
        hf_state = {n: t.detach().float() for n, t in hf.state_dict().items()}
        del hf
        self.optimizer_kind, self.params_dtype = megatron_options(
            None, self.tp, self.pp, dist.get_world_size()
        )
        self.model = build_gpt(self.shape, self.hf_config, self.tp, self.pp, self.params_dtype)
        self.load_hf_state(hf_state)
        self.model.train()
        self.ddp = None
        if self.optimizer_kind == "distributed":
            self.ddp, self.optimizer = self._megatron_optimizer(spec.algorithm.lr)
            if self.dp_size > 1:  # optimizer state sharded by DP rank: one file per rank
                self.shard_key = f"tp{self.tp_rank}-pp{self.pp_rank}-dp{self.dp_rank}"
                self.writes_shard = True
        else:
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=spec.algorithm.lr, betas=(0.9, 0.99), weight_decay=0.0
            )
        # Megatron's DDP averages gradients over DP ranks; each rank's loss is its share of
        # the whole batch's (the sum over ranks is the batch loss): scale back.
        self.grad_scale = float(self.dp_size) if self.ddp is not None else 1.0
        self.ref_model = None
        if spec.algorithm.kl_coef > 0:
            # A second model from the same HF weights (Megatron modules hold process groups,
            # which do not deep-copy).
            ref = build_gpt(self.shape, self.hf_config, self.tp, self.pp, self.params_dtype)
            self.load_hf_state(hf_state, ref)
            self.ref_model = ref.eval().requires_grad_(False)
        self._gathered: list[tuple[str, torch.Tensor]] | None = None

    def _megatron_optimizer(self, lr: float):
        """Megatron-core's DistributedDataParallel around the model and its
        DistributedOptimizer (Adam, betas 0.9/0.99, eps 1e-8, no weight decay, grad-norm
        clipping at MAX_GRAD_NORM: the local path's hyper-parameters)."""
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,  # fp32 main grads, also for bf16 params
            overlap_grad_reduce=False,
            overlap_param_gather=False,
            use_distributed_optimizer=True,
        )
        ddp = DistributedDataParallel(self.model.config, ddp_config, self.model)
        bf16 = self.params_dtype == torch.bfloat16
        config = OptimizerConfig(
            optimizer="adam",
            lr=lr,
            min_lr=lr,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.99,
            adam_eps=1e-8,
            clip_grad=MAX_GRAD_NORM,
            bf16=bf16,
            params_dtype=self.params_dtype,
            use_distributed_optimizer=True,
        )
        optimizer = get_megatron_optimizer(config, [ddp])
        for group in optimizer.param_groups:  # no LR scheduler: a constant lr
            group["lr"] = lr
        return ddp, optimizer

    # ------------------------------------------------------------------ weights

    def load_hf_state(
        self, hf_state: dict[str, torch.Tensor], model: torch.nn.Module | None = None
    ) -> None:
        """Set this rank's shard of `model` (default: the policy) from a full HF state dict
        (names/shapes must match)."""
        mine = hf_to_megatron(
            hf_state,
            self.shape,
            self.tp,
            layers=self.layers,
            first_stage=self.first_stage,
            last_stage=self.last_stage,
        )[self.tp_rank]
        params = dict((model or self.model).named_parameters())
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
        """This stage's full HF weights on its TP group's first rank (collective over the TP
        group)."""
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
                out.extend(to_hf(name, t, self.shape, self.tp, self.layers.start))
        return in_hf_order(out) if first else None

    def _collect_stages(
        self, mine: list[tuple[str, torch.Tensor]] | None
    ) -> list[tuple[str, torch.Tensor]] | None:
        """Every stage's HF weights onto the first stage (TP rank 0 of each stage takes part;
        stage order is HF order: embeddings, layers, final norm, lm_head)."""
        if self.tp_rank != 0 or mine is None:
            return None
        ranks = dist.get_process_group_ranks(self.pp_group)
        if self.pp_rank != 0:
            meta = [[(n, tuple(t.shape), t.dtype) for n, t in mine]]
            dist.send_object_list(meta, dst=ranks[0])
            for _, t in mine:
                dist.send(t.contiguous(), dst=ranks[0])
            return None
        out = list(mine)
        for src in ranks[1:]:
            meta = [None]
            dist.recv_object_list(meta, src=src)
            for name, shape, dtype in meta[0]:
                t = torch.empty(shape, dtype=dtype, device=self.device)
                dist.recv(t, src=src)
                out.append((name, t))
        return out

    def named_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.tp == 1 and self.pp == 1:
            yield from self._gather_hf(self.send_dtype) or ()  # one rank: no collective
            return
        # TP or PP > 1: every rank took part in the gather at the end of train_step (only the
        # sync rank calls this method).
        if self._gathered is None:
            raise RuntimeError("model-parallel weights are gathered after a train_step")
        yield from self._gathered

    def gather_for_sync(self) -> None:
        """Collective (all TP and PP ranks of DP rank 0): gather the HF weights onto the sync
        rank."""
        if (self.tp > 1 or self.pp > 1) and self.dp_rank == 0:
            stage = self._gather_hf(self.send_dtype)
            self._gathered = self._collect_stages(stage) if self.pp > 1 else stage

    # ------------------------------------------------------------------ training

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        if self.pp == 1:
            return megatron_logprobs(self.model, batch, self.device).cpu()
        n, width = batch.targets.shape
        parts = self._pipeline_logprobs(self.model, self._micro_batches(batch, 0, n))
        out = torch.zeros(n, width, dtype=torch.float32, device=self.device)
        if self.last_stage:  # micro-batches are trimmed to their own width: pad back
            at = 0
            for lp in parts:
                out[at : at + lp.shape[0], : lp.shape[1]] = lp
                at += lp.shape[0]
        last = dist.get_process_group_ranks(self.pp_group)[-1]
        dist.broadcast(out, src=last, group=self.pp_group)
        return out.cpu()

    # ------------------------------------------------------------------ pipeline schedule

    @staticmethod
    def _micro_batches(batch: TrainBatch, lo: int, hi: int) -> list[TrainBatch]:
        starts = range(lo, hi, MICRO_BATCH_ROWS)
        return [rows(batch, a, min(hi, a + MICRO_BATCH_ROWS)) for a in starts]

    def _run_pipeline(self, model, items: list, loss_func_for, forward_only: bool) -> list:
        """Megatron's pipeline schedule over `items` (one per micro-batch: a tuple whose first
        element is the TrainBatch). `loss_func_for(item)` -> the last stage's loss function;
        returns what those report, in order (empty on other stages)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        def forward_step(data_iterator, stage_model):
            item = next(data_iterator)
            # Stages after the first take their input from the previous one (the schedule
            # sets it); every stage needs the positions and mask.
            return stage_model(**gpt_inputs(item[0], self.device)), loss_func_for(item)

        widths = [item[0].input_ids.shape for item in items]
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(items),
            model=model,
            num_microbatches=len(items),
            seq_length=max(w[1] for w in widths),  # shapes travel with each micro-batch
            micro_batch_size=max(w[0] for w in widths),
            forward_only=forward_only,
        )

    def _pipeline_logprobs(self, model, mbs: list[TrainBatch]) -> list[torch.Tensor]:
        def loss_func_for(item):
            def collect(logits):
                lp = logprobs_from_logits(logits, item[0].targets).detach()
                return torch.zeros((), device=self.device), {"logprobs": lp}

            return collect

        with torch.no_grad():
            reports = self._run_pipeline(model, [(mb,) for mb in mbs], loss_func_for, True)
        return [r["logprobs"] for r in reports] if self.last_stage else []

    def _items(self, batch: TrainBatch, advantages: torch.Tensor, lo: int, hi: int) -> list:
        """Rows lo..hi as micro-batches: (batch, advantages, the full batch's (sequences with
        trained tokens, trained tokens), reference logprobs or None) each."""
        whole = (
            float((batch.loss_mask.sum(-1) > 0).sum().clamp(min=1)),
            float(batch.loss_mask.sum().clamp(min=1)),
        )
        mbs = self._micro_batches(batch, lo, hi)
        refs: list = [None] * len(mbs)
        if self.ref_model is not None:
            if self.pp > 1:
                refs = self._pipeline_logprobs(self.ref_model, mbs) or refs
            else:
                with torch.no_grad():
                    refs = [megatron_logprobs(self.ref_model, mb, self.device) for mb in mbs]
        starts = range(lo, hi, MICRO_BATCH_ROWS)
        return [
            (mb, advantages[a : a + mb.input_ids.shape[0]], whole, ref)
            for mb, a, ref in zip(mbs, starts, refs, strict=True)
        ]

    def _weighted_loss(self, item, logits: torch.Tensor):
        """The spec's loss of one micro-batch and its stats, each its share of the whole
        batch's value (normalised by the whole batch's sequences and tokens, as the torch
        backend does): the shares of all micro-batches and ranks add up to it."""
        mb, adv, (n_seqs, n_tokens), ref = item
        loss, stats = policy_loss(
            self.spec.algorithm,
            logprobs_from_logits(logits, mb.targets),
            mb.old_logprobs.to(self.device),
            adv.to(self.device),
            mb.loss_mask.to(self.device),
            ref_logprobs=ref,
            n_seqs=n_seqs,
            n_tokens=n_tokens,
        )
        vec = torch.tensor([getattr(stats, k) for k in STAT_KEYS], dtype=torch.float64)
        return loss, vec

    def _forward_backward(self, items: list) -> torch.Tensor:
        """Gradients of the weighted loss over `items`; the stats totals on every stage."""
        totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
        if self.pp == 1:
            for item in items:
                logits = self.model(**gpt_inputs(item[0], self.device))
                loss, vec = self._weighted_loss(item, logits)
                (loss * self.grad_scale).backward()
                totals += vec
            return totals

        def loss_func_for(item):
            def loss_func(logits):
                loss, vec = self._weighted_loss(item, logits)
                # The schedule divides each micro-batch's loss by their number: undo it, so
                # the step equals one full-batch step as in the one-stage path.
                return loss * len(items) * self.grad_scale, {"stats": vec}

            return loss_func

        reports = self._run_pipeline(self.model, items, loss_func_for, False)
        out = totals.to(self.device)
        for r in reports:
            out += r["stats"].to(self.device)
        last = dist.get_process_group_ranks(self.pp_group)[-1]
        dist.broadcast(out, src=last, group=self.pp_group)
        return out.cpu()

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
        total = split + replicated
        if self.pp > 1:  # stages hold disjoint parameters
            dist.all_reduce(total, group=self.pp_group)
        return total.sqrt()

    def _local_step(self) -> torch.Tensor:
        """The hand-written path: all-reduce every gradient over DP, clip, torch AdamW."""
        if self.dp_size > 1:
            for p in self.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, group=self.dp_group)
        grad_norm = self._grad_norm()
        # As torch.nn.utils.clip_grad_norm_ does on the full model.
        coef = torch.clamp(MAX_GRAD_NORM / (grad_norm + 1e-6), max=1.0)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.detach().mul_(coef)
        self.optimizer.step()
        return grad_norm

    def train_step(self, batch: TrainBatch, advantages: torch.Tensor) -> dict[str, float]:
        if self.ddp is not None:
            self.ddp.zero_grad_buffer()
            self.optimizer.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        n = batch.input_ids.shape[0]
        # Data parallel: each DP rank takes a contiguous slice of the rows.
        per = -(-n // self.dp_size)
        lo_dp, hi_dp = min(n, self.dp_rank * per), min(n, (self.dp_rank + 1) * per)
        if self.pp > 1 and hi_dp <= lo_dp:
            raise ValueError(
                f"a batch of {n} rows leaves data-parallel rank {self.dp_rank} nothing to train "
                "on with pipeline parallelism: use more rows per step"
            )
        totals = self._forward_backward(self._items(batch, advantages, lo_dp, hi_dp))
        if self.dp_size > 1:
            t = totals.to(self.device)
            dist.all_reduce(t, group=self.dp_group)
            totals = t.cpu()
        if self.ddp is not None:
            # Megatron: reduce(-scatter) the fp32 main grads over DP ranks, then its optimizer
            # computes the global grad norm (TP/PP/DP aware), clips at MAX_GRAD_NORM, steps
            # its fp32 main params and copies them back into the model params.
            self.ddp.finish_grad_sync()
            ok, grad_norm, _ = self.optimizer.step()
            if not ok:
                raise RuntimeError("Megatron's optimizer skipped the step (inf/nan gradients)")
        else:
            grad_norm = self._local_step()
        self.gather_for_sync()
        out = {k: float(v) for k, v in zip(STAT_KEYS, totals.tolist(), strict=True)}
        out["grad_norm"] = float(grad_norm)
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self._optimizer_state(),
            "optimizer_kind": self.optimizer_kind,
            "dp_rank": self.dp_rank,
            "tp": self.tp,
            "tp_rank": self.tp_rank,
            "pp": self.pp,
            "pp_rank": self.pp_rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state.get("tp", 1), state.get("tp_rank", 0), state.get("pp", 1))
        saved += (state.get("pp_rank", 0),)
        if saved != (self.tp, self.tp_rank, self.pp, self.pp_rank):
            raise ValueError(
                f"checkpoint is of TP rank {saved[1]}/{saved[0]}, PP rank {saved[3]}/{saved[2]}; "
                f"this is TP {self.tp_rank}/{self.tp}, PP {self.pp_rank}/{self.pp}"
            )
        kind = state.get("optimizer_kind", "local")
        if kind != self.optimizer_kind:
            raise ValueError(
                f"checkpoint was written with RLPOST_MEGATRON_OPTIMIZER={kind}; this run uses "
                f"{self.optimizer_kind}"
            )
        self.model.load_state_dict(state["model"], strict=False)
        self._load_optimizer_state(state["optimizer"])
        self.gather_for_sync()

    def _optimizer_state(self) -> dict[str, Any]:
        """The local AdamW's state dict; for Megatron's optimizer, each inner torch optimizer's
        state dict (Adam moments of this DP rank's shard) and its fp32 main params (in bf16
        runs the only full-precision copy of the weights)."""
        if self.ddp is None:
            return self.optimizer.state_dict()
        return {
            "inner": [
                {
                    "state_dict": opt.state_dict(),
                    "main_params": [
                        p.detach().clone() for g in opt.param_groups for p in g["params"]
                    ],
                }
                for opt in inner_optimizers(self.optimizer)
            ]
        }

    @torch.no_grad()
    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if self.ddp is None:
            self.optimizer.load_state_dict(state)
            return
        inner = inner_optimizers(self.optimizer)
        if len(inner) != len(state["inner"]):
            raise ValueError("checkpoint's optimizer has another structure (other parallelism?)")
        for opt, saved in zip(inner, state["inner"], strict=True):
            opt.load_state_dict(saved["state_dict"])
            params = [p for g in opt.param_groups for p in g["params"]]
            if [tuple(p.shape) for p in params] != [tuple(t.shape) for t in saved["main_params"]]:
                raise ValueError("checkpoint's main params do not match this optimizer's shards")
            for p, t in zip(params, saved["main_params"], strict=True):
                p.copy_(t.to(p.device))
