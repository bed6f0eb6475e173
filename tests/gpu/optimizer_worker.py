"""python tests/gpu/optimizer_worker.py OUT.json: device memory of the megatron backend with
the optimizer and params dtype given by RLPOST_MEGATRON_OPTIMIZER / _PARAMS_DTYPE, on one GPU,
for a ~190M-parameter Llama (fp32 master weights), over 3 GRPO steps. One process per
configuration, so each starts from an empty allocator."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlpost_trainer.algorithms import batch_advantages  # noqa: E402

from rlpost.api import RLPostTrainJob  # noqa: E402
from rlpost.models import build_tokenizer  # noqa: E402
from tests.gpu.helpers import ALPHABET, synthetic_batch  # noqa: E402

LARGE = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
GIB = 1024**3


def main() -> None:
    from rlpost_trainer.megatron_backend import MegatronBackend

    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "p.jsonl"
        prompts.write_text('{"prompt": "a=", "label": "a"}\n')
        job = RLPostTrainJob.model_validate(
            {
                "metadata": {"name": "mem"},
                "spec": {
                    "model": {
                        "config": LARGE,
                        "tokenizer": f"char:{ALPHABET}",
                        "dtype": "bfloat16",
                    },  # fmt: skip
                    "trainer": {"backend": "megatron", "gpusPerPod": 1},
                    "algorithm": {"lr": 1e-4},
                    "data": {"prompts": str(prompts)},
                },
            }
        )
        vocab = build_tokenizer(job.spec.model).vocab_size
        m = MegatronBackend()
        m.setup(job.spec, vocab)
        torch.cuda.synchronize()
        params = sum(p.numel() for p in m.model.parameters())
        after_setup = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        tb = synthetic_batch(vocab, groups=8, group_size=8)
        tb.old_logprobs = m.compute_logprobs(tb) * tb.loss_mask
        adv = batch_advantages(tb)
        losses = [m.train_step(tb, adv)["loss"] for _ in range(3)]
        torch.cuda.synchronize()
        res = {
            "optimizer": m.optimizer_kind,
            "params_dtype": str(m.params_dtype).removeprefix("torch."),
            "params": params,
            "allocated_after_setup_GiB": after_setup / GIB,
            "allocated_after_steps_GiB": torch.cuda.memory_allocated() / GIB,
            "peak_during_steps_GiB": torch.cuda.max_memory_allocated() / GIB,
            "reserved_GiB": torch.cuda.memory_reserved() / GIB,
            "bytes_per_param_after_steps": torch.cuda.memory_allocated() / params,
            "losses": losses,
            "env": {k: v for k, v in os.environ.items() if k.startswith("RLPOST_MEGATRON")},
        }
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
