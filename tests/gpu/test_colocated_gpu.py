"""Colocated mode on one GPU: CUDA IPC weight sync of a 7B bf16 model at device speed, the
engine's memory release/resume, and `rlpost run` (megatron backend) learning with the engine
on the trainer's GPU. `make test-gpu` runs these; CI never does (no GPU there)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from rlpost.api import WeightSyncSpec
from tests.gpu.helpers import ROOT, record

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

sys.path.insert(0, str(ROOT / "benchmarks"))


def results_file(name: str) -> Path | None:
    directory = os.environ.get("RLPOST_GPU_RESULTS")
    return Path(directory) / name if directory else None


def test_colocated_7b_sync_at_device_speed_and_release_resume(tmp_path):
    import weight_sync

    bucket = WeightSyncSpec().bucket_mb  # the default bucket size
    out_path = results_file("gpu_colocated_sync.json")

    def save(res: dict) -> None:
        if out_path is not None:
            out_path.write_text(json.dumps(res, indent=1))

    res = weight_sync.colocated([bucket], reps=7, work=tmp_path, warmup=2, save=save)
    res["date"] = __import__("time").strftime("%Y-%m-%d")
    res["torch"] = torch.__version__
    save(res)
    row = next(r for r in res["table"] if r["variant"] == "packed")
    staged = next(r for r in res["table"] if r["variant"] == "staged")
    mem = res["memory"]
    record(
        "colocated_7b_ipc",
        {
            "bucket_mb": bucket,
            "full_over_raw_packed": row["full_over_raw"],
            "full_over_raw_staged": staged["full_over_raw"],
            "full_ms": row["full_ms"],
            "raw_ms": row["raw_ms"],
            "first_push_ms": row["first_push_ms"],
            "release_after_over_before_reserved": mem["after_over_before_reserved"],
            "release_after_over_before_nvidia_smi": mem["after_over_before_nvidia_smi"],
            "logprobs_equal_after_resume": mem["logprobs_equal"],
            "gpu": torch.cuda.get_device_name(0),
        },
    )
    assert res["engine_checksums_match"], res.get("checksum_mismatches")
    # Handles exported once: after the first push no bucket is serialised again.
    assert all(n == 0 for n in row["new_payloads_per_push"][1:]), row
    assert row["full_over_raw"] >= 0.8, row
    assert mem["after_over_before_reserved"] <= 0.05, mem
    if mem["after_over_before_nvidia_smi"] is not None:
        assert mem["after_over_before_nvidia_smi"] <= 0.05, mem
    assert mem["logprobs_equal"], mem


def test_rlpost_run_colocated_megatron_learns(tmp_path):
    import gpu_loop

    config = gpu_loop.spec_file(tmp_path, colocated=True)
    res = gpu_loop.run(config, 120, 0, tmp_path / "colocated", timeout=280)
    out_path = results_file("gpu_loop_colocated.json")
    if out_path is not None:
        out = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
               "runs": {"colocated": res}}  # fmt: skip
        out_path.write_text(json.dumps(out, indent=1))
    assert "failed" not in res, json.dumps(res)[:4000]
    record("rlpost_run_colocated_megatron", res)
    assert res["placement"].startswith("placement: colocated"), res["placement"]
    assert "weight sync: ipc" in res["placement"], res["placement"]
    assert res["reward_last10"] >= 0.9, res
    assert res["sync_share_of_step"] < 0.05, res
