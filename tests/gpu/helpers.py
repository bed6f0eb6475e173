"""Shared pieces of the GPU tests: a spec, a synthetic GRPO batch, a GPU reference engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml
from rlpost_trainer.batch import Batch, collate

from rlpost.api import RLPostTrainJob
from rlpost.local.gpus import source_tree_env
from rlpost.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gpu-test-token"
ALPHABET = "abcdefghijklmnopqrstuvwxyz="
# GQA (8 heads / 4 KV groups) so the fused-QKV layout is exercised; fits any GPU.
MODEL = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,  # pipeline stages hold the embedding and lm_head apart
}


def job(
    tmp: Path, dtype: str = "float32", backend: str = "torch", tp: int = 1, pp: int = 1,
    kl_coef: float = 0.0,
) -> RLPostTrainJob:  # fmt: skip
    prompts = tmp / "p.jsonl"
    prompts.write_text('{"prompt": "a=", "label": "a"}\n')
    return RLPostTrainJob.model_validate(
        {
            "metadata": {"name": "gpu-test"},
            "spec": {
                "model": {"config": MODEL, "tokenizer": f"char:{ALPHABET}", "dtype": dtype},
                "trainer": {
                    "backend": backend,
                    "gpusPerPod": tp * pp,
                    "parallelism": {"tensor": tp, "pipeline": pp},
                },
                "rollout": {"engine": "reference", "gpusPerEngine": 1},
                "algorithm": {"lr": 1e-3, "clip": 0.2, "klCoef": kl_coef},
                "data": {"prompts": str(prompts)},
                "seed": 0,
            },
        }
    )


def synthetic_batch(vocab: int, seed: int = 0, groups: int = 4, group_size: int = 4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for gi in range(groups):
        samples = []
        for si in range(group_size):
            plen = int(torch.randint(3, 9, (1,), generator=g))
            rlen = int(torch.randint(1, 7, (1,), generator=g))
            samples.append(
                {
                    "sample_id": f"{gi}-{si}",
                    "prompt_ids": [1] + torch.randint(3, vocab, (plen,), generator=g).tolist(),
                    "response_ids": torch.randint(3, vocab, (rlen,), generator=g).tolist(),
                    "response_logprobs": [-3.0] * rlen,
                    "reward": float(torch.rand((), generator=g) > 0.5),
                    "weight_version": 0,
                }
            )
        out.append({"group_id": str(gi), "weight_version": 0, "samples": samples})
    return collate(Batch.model_validate({"step": 0, "groups": out}), pad_id=0)


class GpuEngine:
    """`python -m rlpost_rollout.engine` on one GPU (gpusPerEngine: 1 puts it on the GPU)."""

    def __init__(self, job_obj: RLPostTrainJob, tmp: Path, gpu: str):
        cfg = tmp / f"engine-{job_obj.spec.model.dtype}.yaml"
        cfg.write_text(yaml.safe_dump(job_obj.wire()))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"engine-{self.port}.log"
        argv = [sys.executable, "-m", "rlpost_rollout.engine", "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            argv + ["--port", str(self.port)],
            env=source_tree_env(gpu, RLPOST_CONFIG=str(cfg), RLPOST_TOKEN=TOKEN),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("engine not up: " + self.log.read_text()[-3000:])

    def logprobs(self, ids: list[int]) -> tuple[list[float], str]:
        r = httpx.post(
            self.url + "/generate",
            json={
                "input_ids": ids,
                "sampling_params": {"max_new_tokens": 0},
                "return_logprob": True,
                "logprob_start_len": 0,
            },
            timeout=60,
        )
        r.raise_for_status()
        meta = r.json()["meta_info"]
        return [x[0] for x in meta["input_token_logprobs"][1:]], meta["weight_version"]

    def direct_buckets(self) -> float:
        """The engine's rlpost_weight_sync_direct_buckets_total (from its /metrics)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        lines = [ln for ln in text.splitlines()
                 if ln.startswith("rlpost_weight_sync_direct_buckets_total")]  # fmt: skip
        assert lines, text[-2000:]
        return float(lines[0].rsplit(" ", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def record(name: str, values: dict[str, Any]) -> None:
    """Measured numbers go to $RLPOST_GPU_RESULTS/gpu_tests.json (merged by test name)."""
    directory = os.environ.get("RLPOST_GPU_RESULTS")
    if not directory:
        return
    path = Path(directory) / "gpu_tests.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = values
    path.write_text(json.dumps(data, indent=1))
