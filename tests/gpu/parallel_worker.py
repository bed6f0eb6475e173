"""torchrun --nproc-per-node 2 tests/gpu/parallel_worker.py OUT.json --tp T --pp P: the
megatron backend with tensor parallel T and pipeline parallel P against the torch backend
(rank 0) on the same weights and batch. --micro-rows R splits the batch into micro-batches of
R rows on the megatron side (several micro-batches through the pipeline schedule); --kl adds
the KL term (a reference model, run through the pipeline too); --steps N compares the Nth
step (the KL to the reference is 0 until the policy has moved once)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlpost_trainer.algorithms import batch_advantages  # noqa: E402

from rlpost.models import build_tokenizer  # noqa: E402
from tests.gpu.helpers import job, synthetic_batch  # noqa: E402


def main() -> None:
    import rlpost_trainer.megatron_backend as mb
    from rlpost_trainer.torch_backend import TorchBackend

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--micro-rows", type=int, default=None)
    parser.add_argument("--kl", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    if args.micro_rows:
        mb.MICRO_BATCH_ROWS = args.micro_rows
    torch.backends.cuda.matmul.allow_tf32 = False
    tmp = Path(tempfile.mkdtemp())
    j = job(tmp, "float32", "megatron", tp=args.tp, pp=args.pp, kl_coef=args.kl)
    vocab = build_tokenizer(j.spec.model).vocab_size
    m = mb.MegatronBackend()
    m.setup(j.spec, vocab)
    assert (m.tp, m.pp) == (args.tp, args.pp)
    tb = synthetic_batch(vocab)
    lp_m = m.compute_logprobs(tb)
    g = torch.Generator().manual_seed(1)
    tb.old_logprobs = (lp_m + 0.1 * torch.randn(lp_m.shape, generator=g)) * tb.loss_mask
    adv = batch_advantages(tb)
    for _ in range(args.steps):
        s_m = m.train_step(tb, adv)
    if dist.get_rank() == 0:
        after_m = dict(m.named_hf_weights())
        t = TorchBackend()
        t.setup(job(tmp, "float32", "torch", kl_coef=args.kl).spec, vocab)
        lp_t = t.compute_logprobs(tb.__class__(**{**vars(tb), "old_logprobs": tb.old_logprobs}))
        mask = tb.loss_mask.bool()
        for _ in range(args.steps):
            s_t = t.train_step(tb, adv)
        after_t = dict(t.named_hf_weights())
        assert set(after_t) == set(after_m), sorted(set(after_t) ^ set(after_m))[:5]
        res = {
            "tp": args.tp,
            "pp": args.pp,
            "micro_batches": -(-tb.input_ids.shape[0] // mb.MICRO_BATCH_ROWS),
            "kl_coef": args.kl,
            "steps": args.steps,
            "loss_torch": s_t["loss"],
            "loss_megatron": s_m["loss"],
            "loss_rel_diff": abs(s_t["loss"] - s_m["loss"]) / abs(s_t["loss"]),
            "kl_torch": s_t["kl"],
            "kl_megatron": s_m["kl"],
            "grad_norm_rel_diff": abs(s_t["grad_norm"] - s_m["grad_norm"]) / s_t["grad_norm"],
            "logprob_max_abs_diff": float((lp_t - lp_m)[mask].abs().max()),
            "weights_after_step_max_abs_diff": max(
                float((after_t[n] - after_m[n]).abs().max()) for n in after_t
            ),
            # HF order is what the engines pack: the stages' tensors arrive in it.
            "hf_order_matches": list(after_t) == list(after_m),
            "gpu": torch.cuda.get_device_name(0),
        }
        Path(args.out).write_text(json.dumps(res))
        print(res, flush=True)
    dist.barrier()


if __name__ == "__main__":
    main()
