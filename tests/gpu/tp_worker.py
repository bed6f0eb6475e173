"""torchrun --nproc-per-node 2 tests/gpu/tp_worker.py OUT.json: the megatron backend with
tensor parallel 2 against the torch backend (rank 0) on the same weights and batch."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlpost_trainer.batch import batch_advantages  # noqa: E402

from rlpost.models import build_tokenizer  # noqa: E402
from tests.gpu.helpers import job, synthetic_batch  # noqa: E402


def main(out: str) -> None:
    from rlpost_trainer.megatron_backend import MegatronBackend
    from rlpost_trainer.torch_backend import TorchBackend

    torch.backends.cuda.matmul.allow_tf32 = False
    tmp = Path(tempfile.mkdtemp())
    j = job(tmp, "float32", "megatron", tp=2)
    vocab = build_tokenizer(j.spec.model).vocab_size
    m = MegatronBackend()
    m.setup(j.spec, vocab)
    assert m.tp == 2
    tb = synthetic_batch(vocab)
    lp_m = m.compute_logprobs(tb)
    g = torch.Generator().manual_seed(1)
    tb.old_logprobs = (lp_m + 0.1 * torch.randn(lp_m.shape, generator=g)) * tb.loss_mask
    adv = batch_advantages(tb)
    s_m = m.train_step(tb, adv)
    if dist.get_rank() == 0:
        after_m = dict(m.named_hf_weights())
        t = TorchBackend()
        t.setup(job(tmp, "float32", "torch").spec, vocab)
        lp_t = t.compute_logprobs(tb.__class__(**{**vars(tb), "old_logprobs": tb.old_logprobs}))
        mask = tb.loss_mask.bool()
        s_t = t.train_step(tb, adv)
        after_t = dict(t.named_hf_weights())
        assert set(after_t) == set(after_m)
        res = {
            "tp": 2,
            "loss_torch": s_t["loss"],
            "loss_megatron_tp2": s_m["loss"],
            "loss_rel_diff": abs(s_t["loss"] - s_m["loss"]) / abs(s_t["loss"]),
            "grad_norm_rel_diff": abs(s_t["grad_norm"] - s_m["grad_norm"]) / s_t["grad_norm"],
            "logprob_max_abs_diff": float((lp_t - lp_m)[mask].abs().max()),
            "weights_after_step_max_abs_diff": max(
                float((after_t[n] - after_m[n]).abs().max()) for n in after_t
            ),
            "gpu": torch.cuda.get_device_name(0),
        }
        Path(out).write_text(json.dumps(res))
        print(res, flush=True)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
