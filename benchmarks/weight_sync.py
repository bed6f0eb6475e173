"""Weight-sync benchmark on GPUs: the real WeightSender -> reference engine -> WeightReceiver.

    python benchmarks/weight_sync.py --out results.json           # both modes
    python benchmarks/weight_sync.py --mode disaggregated|colocated

disaggregated (needs 2 GPUs): trainer weights on GPU0, the reference engine on GPU1.
  full  = pause + per-bucket HTTP metadata (/update_weights_from_distributed) + NCCL
          broadcast + engine load + continue (WeightSender.push), then POST /bench/sync on
          the engine (its GPU finished loading): wall time of all of it.
  raw   = torch.distributed broadcast GPU0 -> GPU1 of the same bytes, in the same bucket
          sizes, from and into preallocated buffers, in the same run (a peer process).
  Both load formats: per-tensor broadcasts (SGLang's default) and "flattened_bucket".
colocated (1 GPU): trainer and engine on GPU0; /update_weights_from_tensor with CUDA IPC
  handles per bucket (+ pause/continue, + /bench/sync), against a device-to-device copy of
  the same bytes.
The model: a random-init HF Llama of >= 1B parameters in bf16 (built from config, no
download); the engine builds the same architecture (its own init) and after the last push
its per-parameter checksums must equal the trainer's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 =+"
# ~1.5B parameters: 24 layers x 62.9M (hidden 2048, GQA 16 heads / 8 KV heads, ffn 8192).
MODEL = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}
BUCKETS_MB = [64, 128, 256, 512, 1024]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(directory: Path, dtype: str = "bfloat16") -> Path:
    import yaml

    prompts = directory / "p.jsonl"
    prompts.write_text('{"prompt": "a=", "label": "a"}\n')
    job = {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"config": MODEL, "tokenizer": f"char:{ALPHABET}", "dtype": dtype},
            "rollout": {"engine": "reference", "gpusPerEngine": 1},
            "trainer": {"gpusPerPod": 1},
            "data": {"prompts": str(prompts)},
        },
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def child_env(gpu: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLPOST_")}
    path = [str(ROOT), str(ROOT / "rollout_image"), str(ROOT / "trainer_image")]
    env.update(
        CUDA_VISIBLE_DEVICES=gpu,
        PYTHONPATH=os.pathsep.join(path + [env.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        NCCL_NVLS_ENABLE="0",
        TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
        NVSHMEM_DISABLE_NVLS="1",
    )
    env.update(extra)
    return env


class EngineProc:
    def __init__(self, job: Path, gpu: str, log: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "gpu_engine.py"), "--port", str(self.port)],
            env=child_env(gpu, RLPOST_CONFIG=str(job), RLPOST_TOKEN=TOKEN),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"engine not up:\n{log.read_text()[-3000:]}")
        self.http = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)

    def post(self, path: str, body: dict | None = None) -> dict:
        r = self.http.post(self.url + path, json=body or {})
        r.raise_for_status()
        return r.json()

    def checksums(self) -> dict[str, float]:
        r = self.http.get(self.url + "/bench/checksum")
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def build_source():
    """The trainer's weights: the engine's architecture in bf16, random init on the GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpost.models import TINY_DEFAULTS

    cfg = LlamaConfig(**{**TINY_DEFAULTS, **MODEL, "vocab_size": len(ALPHABET) + 3})
    torch.manual_seed(1234)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return [(n, p.detach()) for n, p in model.named_parameters()]


def own_checksums(named) -> dict[str, float]:
    import torch

    with torch.no_grad():
        return {n: float(t.double().sum()) for n, t in named}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------- raw broadcast


def raw_peer(port: int, plan: str) -> None:
    """GPU1 side of the raw baseline: receive `reps` rounds of buffers of the given sizes."""
    import torch

    from rlpost.weightsync.group import create_sync_group

    spec = json.loads(plan)
    group = create_sync_group("127.0.0.1", port, 1, 2, "raw", "nccl")
    for sizes in spec["rounds"]:
        bufs = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in sizes]
        for _ in range(spec["reps"] + 1):
            group.barrier()
            for b in bufs:
                group.broadcast(b, 0)
            torch.cuda.synchronize()
            group.barrier()
    group.destroy()


def bucket_sizes(named, bucket_mb: float) -> list[int]:
    from rlpost.weightsync import payloads as P

    return [sum(P.tensor_nbytes(t) for _, t in b) for b in P.buckets(named, bucket_mb)]


def measure_raw(named, reps: int, log_dir: Path) -> dict[int, dict]:
    import torch

    from rlpost.weightsync.group import create_sync_group

    rounds = [bucket_sizes(named, mb) for mb in BUCKETS_MB]
    port = free_port()
    plan = json.dumps({"rounds": rounds, "reps": reps})
    peer = subprocess.Popen(
        [sys.executable, __file__, "--raw-peer", str(port), plan],
        env=child_env("1"),
        stdout=(log_dir / "raw_peer.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    group = create_sync_group("127.0.0.1", port, 0, 2, "raw", "nccl")
    out = {}
    for mb, sizes in zip(BUCKETS_MB, rounds, strict=True):
        bufs = [torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda") for n in sizes]
        times = []
        for rep in range(reps + 1):
            group.barrier()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in bufs:
                group.broadcast(b, 0)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            group.barrier()
            if rep:  # the first round is warm-up
                times.append(dt)
        total = sum(sizes)
        out[mb] = {
            "bytes": total,
            "buckets": len(sizes),
            "seconds_median": median(times),
            "seconds_all": times,
            "GBps": total / median(times) / 1e9,
        }
        print(f"raw broadcast  bucket {mb:5d} MB: {out[mb]['GBps']:7.1f} GB/s", flush=True)
        del bufs
    group.destroy()
    peer.wait(timeout=120)
    return out


# ---------------------------------------------------------------------- full sync


def measure_full(named, engine: EngineProc, reps: int) -> dict:
    import torch

    from rlpost.weightsync import payloads as P
    from rlpost.weightsync.sender import WeightSender

    total = sum(P.tensor_nbytes(t) for _, t in named)
    sender = WeightSender(
        [engine.url], token=TOKEN, backend="nccl", bucket_mb=512, master_address="127.0.0.1"
    )
    sender.connect()
    results: dict = {"per_tensor": {}, "flattened_bucket": {}}
    version = 0
    try:
        # Fixed HTTP costs of one update, alone: pause + continue, and the /bench/sync probe.
        fixed, probe = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            sender._wait(sender._post_all(P.PATH_PAUSE, [P.pause_payload()]))
            sender._wait(sender._post_all(P.PATH_CONTINUE, [P.continue_payload()]))
            t1 = time.perf_counter()
            engine.post("/bench/sync")
            fixed.append(t1 - t0)
            probe.append(time.perf_counter() - t1)
        results["pause_continue_s_median"] = median(fixed)
        results["sync_probe_s_median"] = median(probe)
        for fmt in ("flattened_bucket", "per_tensor"):
            sender.load_format = None if fmt == "per_tensor" else fmt
            for mb in BUCKETS_MB:
                sender.bucket_mb = mb
                walls, pushes = [], []
                for rep in range(reps + 1):
                    version += 1
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    pushed = sender.push(named, version)
                    torch.cuda.synchronize()
                    engine.post("/bench/sync")
                    wall = time.perf_counter() - t0
                    if rep:
                        walls.append(wall)
                        pushes.append(pushed)
                results[fmt][mb] = {
                    "bytes": total,
                    "buckets": len(sender.last_bucket_sizes),
                    "seconds_median": median(walls),
                    "seconds_all": walls,
                    "push_returned_s_median": median(pushes),
                    "GBps": total / median(walls) / 1e9,
                }
                print(
                    f"full sync {fmt:16s} bucket {mb:5d} MB: {results[fmt][mb]['GBps']:7.1f} GB/s"
                    f"  ({median(walls) * 1e3:.2f} ms)",
                    flush=True,
                )
        want = own_checksums(named)
        got = engine.checksums()
        bad = [n for n in want if abs(want[n] - got[n]) > 1e-6 * max(1.0, abs(want[n]))]
        results["engine_checksums_match"] = not bad
        results["checksum_mismatches"] = bad[:5]
        results["engine_weight_version"] = engine.http.get(
            engine.url + "/get_weight_version"
        ).json()["weight_version"]
        results["last_version_pushed"] = version
    finally:
        sender.close()
    return results


def disaggregated(reps: int, work: Path) -> dict:
    import torch

    named = build_source()
    nparams = sum(t.numel() for _, t in named)
    total = sum(t.numel() * t.element_size() for _, t in named)
    print(f"model: {nparams / 1e9:.3f}B parameters, {total / 1e9:.3f} GB in bf16", flush=True)
    raw = measure_raw(named, reps, work)
    job = write_job(work)
    engine = EngineProc(job, "1", work / "engine_disagg.log")
    try:
        full = measure_full(named, engine, reps)
    finally:
        engine.stop()
    table = []
    for fmt in ("flattened_bucket", "per_tensor"):
        for mb in BUCKETS_MB:
            f, r = full[fmt][mb], raw[mb]
            table.append(
                {
                    "load_format": fmt,
                    "bucket_mb": mb,
                    "buckets": f["buckets"],
                    "full_GBps": f["GBps"],
                    "raw_GBps": r["GBps"],
                    "full_over_raw": f["GBps"] / r["GBps"],
                    "full_ms": f["seconds_median"] * 1e3,
                    "raw_ms": r["seconds_median"] * 1e3,
                }
            )
    for row in table:
        print(
            f"{row['load_format']:16s} {row['bucket_mb']:5d} MB  full {row['full_GBps']:6.1f} "
            f"GB/s  raw {row['raw_GBps']:6.1f} GB/s  full/raw {row['full_over_raw']:.3f}",
            flush=True,
        )
    return {
        "params": nparams,
        "bytes": total,
        "dtype": "bfloat16",
        "gpus": [torch.cuda.get_device_name(0)],
        "reps": reps,
        "raw": raw,
        "full": full,
        "table": table,
    }


# ---------------------------------------------------------------------- colocated


def colocated(reps: int, work: Path) -> dict:
    import torch

    from rlpost.weightsync import payloads as P
    from rlpost.weightsync.tensor_ipc import serialize_named_tensors

    named = build_source()
    total = sum(P.tensor_nbytes(t) for _, t in named)
    job = write_job(work)
    engine = EngineProc(job, os.environ.get("CUDA_VISIBLE_DEVICES", "0"), work / "engine_co.log")
    out: dict = {"bytes": total, "full": {}, "raw_copy": {}, "table": []}
    version = 0
    try:
        for mb in BUCKETS_MB:
            buckets = list(P.buckets(named, mb))
            walls = []
            for rep in range(reps + 1):
                version += 1
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                engine.post(P.PATH_PAUSE, P.pause_payload())
                for b in buckets:
                    body = P.update_tensor_payload([serialize_named_tensors(b)], str(version))
                    ans = engine.post(P.PATH_UPDATE_TENSOR, body)
                    if ans.get("success") is False:
                        raise RuntimeError(ans)
                engine.post(P.PATH_CONTINUE, P.continue_payload())
                engine.post("/bench/sync")
                if rep:
                    walls.append(time.perf_counter() - t0)
            # Raw: a device-to-device copy of the same bytes, bucket by bucket.
            flats = [torch.cat([t.reshape(-1).view(torch.uint8) for _, t in b]) for b in buckets]
            dsts = [torch.empty_like(f) for f in flats]
            copies = []
            for rep in range(reps + 1):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for d, f in zip(dsts, flats, strict=True):
                    d.copy_(f)
                torch.cuda.synchronize()
                if rep:
                    copies.append(time.perf_counter() - t0)
            del flats, dsts
            full_gbps = total / median(walls) / 1e9
            raw_gbps = total / median(copies) / 1e9
            out["full"][mb] = {"seconds_median": median(walls), "seconds_all": walls}
            out["raw_copy"][mb] = {"seconds_median": median(copies), "seconds_all": copies}
            out["table"].append(
                {
                    "bucket_mb": mb,
                    "buckets": len(buckets),
                    "full_GBps": full_gbps,
                    "raw_copy_GBps": raw_gbps,
                    "full_over_raw": full_gbps / raw_gbps,
                    "full_ms": median(walls) * 1e3,
                    "raw_ms": median(copies) * 1e3,
                }
            )
            print(
                f"colocated IPC bucket {mb:5d} MB: full {full_gbps:7.1f} GB/s "
                f"({median(walls) * 1e3:.2f} ms)  raw d2d copy {raw_gbps:7.1f} GB/s "
                f"(bytes moved once; read+write is 2x)",
                flush=True,
            )
        want = own_checksums(named)
        got = engine.checksums()
        out["engine_checksums_match"] = all(
            abs(want[n] - got[n]) <= 1e-6 * max(1.0, abs(want[n])) for n in want
        )
    finally:
        engine.stop()
    out["gpus"] = [torch.cuda.get_device_name(0)]
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-peer":
        raw_peer(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["all", "disaggregated", "colocated"], default="all")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_weight_sync.json"))
    args = parser.parse_args()
    for k, v in (
        ("NCCL_NVLS_ENABLE", "0"),
        ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
        ("NVSHMEM_DISABLE_NVLS", "1"),
    ):
        os.environ.setdefault(k, v)
    import torch

    result: dict = {"torch": torch.__version__, "host_gpus": torch.cuda.device_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_LOG_DIR", tmp))
        work.mkdir(parents=True, exist_ok=True)
        if args.mode in ("all", "disaggregated"):
            if torch.cuda.device_count() < 2:
                result["disaggregated"] = {"skipped": "needs 2 GPUs"}
            else:
                # This process (the trainer) uses GPU0; the engine and raw peer GPU1.
                torch.cuda.set_device(0)
                result["disaggregated"] = disaggregated(args.reps, work)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1))  # kept if colocated fails
        if args.mode in ("all", "colocated"):
            result["colocated"] = colocated(args.reps, work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
