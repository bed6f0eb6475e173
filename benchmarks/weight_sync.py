"""Weight-sync benchmark on GPUs: the real WeightSender -> reference engine -> WeightReceiver.

    python benchmarks/weight_sync.py --out results.json           # both modes
    python benchmarks/weight_sync.py --mode disaggregated|colocated

disaggregated (needs 2 GPUs): trainer weights on GPU0, the reference engine on GPU1.
  full  = pause + per-bucket HTTP metadata (/update_weights_from_distributed) + NCCL
          broadcast + engine load + continue (WeightSender.push), then POST /bench/sync on
          the engine (its GPU finished loading): wall time of all of it. Variants: the
          pipelined control channel (default; all requests down one connection) and the
          one-request-at-a-time client, flattened_bucket; pipelined per-tensor.
  raw   = torch.distributed broadcast GPU0 -> GPU1 of the same bytes, in the same bucket
          sizes, from and into preallocated buffers, in the same run (a peer process).
  Both load formats: per-tensor broadcasts (SGLang's default) and "flattened_bucket".
colocated (1 GPU): trainer and engine on GPU0; /update_weights_from_tensor with CUDA IPC
  handles per bucket (+ pause/continue, + /bench/sync), against a device-to-device copy of
  the same bytes.
The models (--models): ~7B and ~1.5B random-init HF Llamas in bf16 (built from config, no
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
from dataclasses import dataclass
from pathlib import Path

from rlpost.local.gpus import source_tree_env
from rlpost.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 =+"
# ~7B parameters (Llama-3-8B body, char vocab): 32 layers x 218M (hidden 4096, GQA 32 heads /
# 8 KV heads, ffn 14336), 13.96 GB in bf16.
MODELS = {
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
    # ~1.5B parameters: 24 layers x 62.9M (hidden 2048, GQA 16 / 8 KV heads, ffn 8192).
    "1.5b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
}
MODEL = MODELS["7b"]
BUCKETS_MB = [256, 512, 1024, 2048]  # --buckets


def write_job(directory: Path, dtype: str = "bfloat16", model: dict | None = None) -> Path:
    import yaml

    prompts = directory / "p.jsonl"
    prompts.write_text('{"prompt": "a=", "label": "a"}\n')
    job = {
        "apiVersion": "rlpost.dev/v1alpha1",
        "kind": "RLPostTrainJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"config": model or MODEL, "tokenizer": f"char:{ALPHABET}", "dtype": dtype},
            "rollout": {"engine": "reference", "gpusPerEngine": 1},
            "trainer": {"gpusPerPod": 1},
            "data": {"prompts": str(prompts)},
        },
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


class EngineProc:
    def __init__(self, job: Path, gpu: str, log: Path, staged: bool = False):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [sys.executable, str(ROOT / "benchmarks/gpu_engine.py"), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            argv + (["--staged"] if staged else []),
            env=source_tree_env(gpu, RLPOST_CONFIG=str(job), RLPOST_TOKEN=TOKEN),
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

    def direct_buckets(self) -> int:
        return self.http.get(self.url + "/bench/stats").json()["direct_buckets"]

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


def build_source(model: dict | None = None, packed: bool = False):
    """The trainer's weights: the engine's architecture in bf16, random init on the GPU
    (built in bf16 directly: no fp32 copy, seconds for 7B). packed: the weights back to back
    in one buffer (rlpost.weightsync.packed, as the torch backend holds them), so every bucket
    is one run of their memory; same seed, same values."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpost.models import TINY_DEFAULTS
    from rlpost.weightsync.packed import pack_parameters

    cfg = LlamaConfig(**{**TINY_DEFAULTS, **(model or MODEL), "vocab_size": len(ALPHABET) + 3})
    torch.manual_seed(1234)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    finally:
        torch.set_default_dtype(prev)
    if packed:
        pack_parameters(m)
    return [(n, p.detach()) for n, p in m.named_parameters()]


def own_checksums(named) -> dict[str, float]:
    import torch

    with torch.no_grad():
        return {n: float(t.double().sum()) for n, t in named}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------- raw broadcast


def raw_peer(port: int, plan: str) -> None:
    """GPU1 side of the raw baseline: receive warmup + reps rounds of the given sizes."""
    import torch

    from rlpost.weightsync.group import create_sync_group

    spec = json.loads(plan)
    group = create_sync_group("127.0.0.1", port, 1, 2, "raw", "nccl")
    for sizes in spec["rounds"]:
        bufs = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in sizes]
        for _ in range(spec["reps"] + spec["warmup"]):
            group.barrier()
            for b in bufs:
                group.broadcast(b, 0)
            torch.cuda.synchronize()
            group.barrier()
        del bufs
    group.destroy()


def bucket_sizes(named, bucket_mb: float) -> list[int]:
    from rlpost.weightsync import payloads as P

    return [sum(P.tensor_nbytes(t) for _, t in b) for b in P.buckets(named, bucket_mb)]


def measure_raw(
    named, buckets_mb: list[int], reps: int, warmup: int, log_dir: Path, save
) -> dict[int, dict]:
    import torch

    from rlpost.weightsync.group import create_sync_group

    rounds = [bucket_sizes(named, mb) for mb in buckets_mb]
    port = free_port()
    plan = json.dumps({"rounds": rounds, "reps": reps, "warmup": warmup})
    peer = subprocess.Popen(
        [sys.executable, __file__, "--raw-peer", str(port), plan],
        env=source_tree_env("1"),
        stdout=(log_dir / "raw_peer.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    group = create_sync_group("127.0.0.1", port, 0, 2, "raw", "nccl")
    out: dict = {}
    for mb, sizes in zip(buckets_mb, rounds, strict=True):
        bufs = [torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda") for n in sizes]
        times = []
        for rep in range(reps + warmup):
            group.barrier()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in bufs:
                group.broadcast(b, 0)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            group.barrier()
            if rep >= warmup:
                times.append(dt)
        total = sum(sizes)
        out[mb] = {
            "bytes": total,
            "buckets": len(sizes),
            "seconds_median": median(times),
            "seconds_all": times,
            "GBps": total / median(times) / 1e9,
        }
        print(
            f"raw broadcast  bucket {mb:>5} MB: {out[mb]['GBps']:7.1f} GB/s "
            f"({median(times) * 1e3:.2f} ms)",
            flush=True,
        )
        save()
        del bufs
    group.destroy()
    peer.wait(timeout=120)
    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------- full sync


@dataclass(frozen=True)
class Variant:
    """One way of pushing. pipelined: the pipelined control channel (default) or the
    one-request-at-a-time client it replaces. engine "packed" (the reference engine as shipped:
    buckets land in the weights) or "staged" (every bucket received into a buffer and copied,
    what an engine without packing pays). trainer "separate" (every tensor its own storage:
    each bucket is copied into a flat buffer first) or "packed" (the weights packed back to
    back, rlpost.weightsync.packed: buckets go on the wire from the weights' own memory).
    reuse: the next update reuses the control connection (WeightSender.keep_alive_s)."""

    pipelined: bool = True
    load_format: str | None = "flattened_bucket"
    engine: str = "packed"
    trainer: str = "separate"
    reuse: bool = True


VARIANTS = {
    "pipelined_flat": Variant(),
    "pipelined_flat_inplace": Variant(trainer="packed"),
    "pipelined_flat_newconn": Variant(reuse=False),
    "pipelined_flat_staged": Variant(engine="staged"),
    "sequential_flat": Variant(pipelined=False),
    "pipelined_per_tensor": Variant(load_format=None),
}
DEFAULT_VARIANTS = "pipelined_flat,pipelined_flat_inplace,pipelined_flat_newconn,sequential_flat"


def measure_full(
    sources: dict, engine: EngineProc, variants: list[str], buckets_mb: list[int], reps: int,
    warmup: int, results: dict, save,
) -> dict:  # fmt: skip
    import torch

    from rlpost.weightsync import payloads as P
    from rlpost.weightsync.sender import WeightSender

    named = sources["separate"]
    total = sum(P.tensor_nbytes(t) for _, t in named)
    backend = "nccl" if torch.cuda.is_available() else "gloo"  # gloo: CPU smoke test only
    sender = WeightSender(
        [engine.url], token=TOKEN, backend=backend, bucket_mb=512, master_address="127.0.0.1"
    )
    sender.connect()
    version = 0
    try:
        # Fixed HTTP costs of one update, alone: pause + continue, and the /bench/sync probe.
        fixed, probe = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            sender._wait(sender._post_all(P.PATH_PAUSE, [P.pause_payload()]))
            sender._wait(sender._post_all(P.PATH_CONTINUE, [P.continue_payload()]))
            t1 = time.perf_counter()
            engine.post("/bench/sync")
            fixed.append(t1 - t0)
            probe.append(time.perf_counter() - t1)
        results.setdefault("pause_continue_sequential_s_median", median(fixed))
        results.setdefault("sync_probe_s_median", median(probe))
        for name in variants:
            v = VARIANTS[name]
            sender.pipelined, sender.load_format = v.pipelined, v.load_format
            sender.keep_alive_s = 2.0 if v.reuse else 0.0
            named = sources[v.trainer]
            results.setdefault(name, {})
            for mb in buckets_mb:
                direct_before = engine.direct_buckets()
                sender.bucket_mb = mb
                walls, pushes, in_place = [], [], 0
                for rep in range(reps + warmup):
                    version += 1
                    sync()
                    t0 = time.perf_counter()
                    pushed = sender.push(named, version)
                    sync()
                    # The continue answer comes after the engine's torch.cuda.synchronize
                    # (rlpost_rollout/engine): the update is applied on GPU1 when push() returns.
                    wall = time.perf_counter() - t0
                    engine.post("/bench/sync")  # (not timed; a no-op by now)
                    if rep >= warmup:
                        walls.append(wall)
                        pushes.append(pushed)
                        in_place += sender.last_in_place_buckets
                results[name][mb] = {
                    "bytes": total,
                    "buckets": len(sender.last_bucket_sizes),
                    # buckets that went straight into the weights, over all pushes of the cell
                    "direct_buckets": engine.direct_buckets() - direct_before,
                    # buckets the trainer sent from its weights' own memory (timed pushes)
                    "in_place_buckets": in_place,
                    "pushes": reps + warmup,
                    "seconds_median": median(walls),
                    "seconds_all": walls,
                    "push_returned_s_median": median(pushes),
                    "GBps": total / median(walls) / 1e9,
                }
                print(
                    f"full sync {name:21s} bucket {mb:>5} MB: "
                    f"{results[name][mb]['GBps']:7.1f} GB/s  ({median(walls) * 1e3:.2f} ms; "
                    f"push() {median(pushes) * 1e3:.2f} ms)",
                    flush=True,
                )
                save()
        want = own_checksums(named)
        got = engine.checksums()
        bad = [n for n in want if abs(want[n] - got[n]) > 1e-6 * max(1.0, abs(want[n]))]
        kind = VARIANTS[variants[0]].engine
        results[f"engine_checksums_match_{kind}"] = not bad
        results[f"checksum_mismatches_{kind}"] = bad[:5]
        results[f"engine_weight_version_{kind}"] = engine.http.get(
            engine.url + "/get_weight_version"
        ).json()["weight_version"]
        results[f"last_version_pushed_{kind}"] = version
        print(f"{kind} engine: checksums match the trainer's: {not bad}", flush=True)
        save()
    finally:
        sender.close()
    return results


def measure_timeline(named, engine: EngineProc, bucket_mb: int, pushes: int) -> dict:
    """Where one update's time goes: host timestamps (trainer and engine share
    CLOCK_MONOTONIC) plus CUDA events on the trainer's stream when each broadcast completed.
    All offsets in ms from the start of push(); medians over `pushes` (after 2 warm-ups)."""
    import torch

    from rlpost.weightsync.sender import WeightSender

    sender = WeightSender([engine.url], token=TOKEN, backend="nccl", bucket_mb=bucket_mb,
                          master_address="127.0.0.1", load_format="flattened_bucket")  # fmt: skip
    sender.connect()
    marks: list = []
    launch = sender.group.broadcast_async

    class Traced:
        def __init__(self, work):
            self.work = work

        def wait(self):
            self.work.wait()
            done = torch.cuda.Event(enable_timing=True)
            done.record()  # fires when this broadcast has completed on the trainer's GPU
            marks.append(("done", done))

    def traced(tensor, src=0):
        marks.append(("enqueued", time.perf_counter()))
        return Traced(launch(tensor, src))

    sender.group.broadcast_async = traced
    rows = []
    try:
        for rep in range(pushes + 2):
            marks.clear()
            engine.http.get(engine.url + "/bench/timeline")  # clear
            torch.cuda.synchronize()
            ref = torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            ref.record()
            took = sender.push(named, 10_000 + rep)
            events = engine.http.get(engine.url + "/bench/timeline").json()
            torch.cuda.synchronize()
            if rep < 2:
                continue
            enq = [t for k, t in marks if k == "enqueued"]
            done = [t0 + ref.elapsed_time(e) / 1e3 for k, e in marks if k == "done"]
            upd = [e for e in events if e[0] == "/update_weights_from_distributed"]
            pause = next(e for e in events if e[0] == "/pause_generation")
            cont = next(e for e in events if e[0] == "/continue_generation")

            def ms(t: float, t0: float = t0) -> float:
                return (t - t0) * 1e3

            rows.append({
                "engine_pause_arrived": ms(pause[1]),
                "engine_bucket0_posted": ms(upd[0][2]),
                "trainer_bucket0_enqueued": ms(enq[0]),
                "trainer_last_enqueued": ms(enq[-1]),
                "engine_last_posted": ms(upd[-1][2]),
                "bucket0_done_gpu": ms(done[0]),
                "last_done_gpu": ms(done[-1]),
                "engine_continue_arrived": ms(cont[1]),
                "engine_continue_answered": ms(cont[2]),
                "push_returned": took * 1e3,
                "engine_request_ms_median": statistics.median(
                    (e[2] - e[1]) * 1e3 for e in upd
                ),
            })  # fmt: skip
    finally:
        sender.close()
    out = {k: median([r[k] for r in rows]) for k in rows[0]}
    out.update(bucket_mb=bucket_mb, buckets=len(sender.last_bucket_sizes), pushes=pushes)
    print("timeline (ms from push start): " + json.dumps({k: round(v, 3) for k, v in out.items()}))
    return out


def disaggregated(
    model_name: str, variants: list[str], buckets_mb: list[int], reps: int, warmup: int,
    work: Path, out: dict, save, timeline_mb: int | None = None,
) -> dict:  # fmt: skip
    import torch

    model = MODELS[model_name]
    t0 = time.perf_counter()
    named = build_source(model)
    nparams = sum(t.numel() for _, t in named)
    total = sum(t.numel() * t.element_size() for _, t in named)
    print(
        f"model {model_name}: {nparams / 1e9:.3f}B parameters, {total / 1e9:.3f} GB in bf16 "
        f"(built in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    out.update(
        {
            "model": model_name,
            "config": model,
            "params": nparams,
            "bytes": total,
            "dtype": "bfloat16",
            "gpus": [torch.cuda.get_device_name(0)],
            "reps": reps,
            "warmup": warmup,
            "timing": "wall of WeightSender.push (ends with the continue_generation answer, "
            "sent after the engine's torch.cuda.synchronize) + trainer cuda sync; medians",
        }
    )
    out["raw"] = measure_raw(named, buckets_mb, reps, warmup, work, save)
    sources = {"separate": named}
    if any(VARIANTS[v].trainer == "packed" for v in variants):
        sources["packed"] = build_source(model, packed=True)
    job = write_job(work, model=model)
    out["full"] = {}
    for kind in ("packed", "staged"):
        mine = [v for v in variants if VARIANTS[v].engine == kind]
        if not mine:
            continue
        t0 = time.perf_counter()
        log = work / f"engine_disagg_{model_name}_{kind}.log"
        engine = EngineProc(job, "1", log, staged=kind == "staged")
        print(f"{kind} engine up in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            measure_full(sources, engine, mine, buckets_mb, reps, warmup, out["full"], save)
            if kind == "packed" and timeline_mb:
                # One timeline per trainer layout: "timeline" (separate tensors, copied into
                # flat buffers) and "timeline_inplace" (packed: sent from the weights).
                for layout, key in (("separate", "timeline"), ("packed", "timeline_inplace")):
                    if layout in sources:
                        out[key] = measure_timeline(sources[layout], engine, timeline_mb, reps + 2)
                        save()
        finally:
            engine.stop()
    table = []
    for name in variants:
        for mb in buckets_mb:
            f, r = out["full"][name][mb], out["raw"][mb]
            table.append(
                {
                    "variant": name,
                    "bucket_mb": mb,
                    "buckets": f["buckets"],
                    "full_GBps": f["GBps"],
                    "raw_GBps": r["GBps"],
                    "full_over_raw": f["GBps"] / r["GBps"],
                    "full_ms": f["seconds_median"] * 1e3,
                    "push_returned_ms": f["push_returned_s_median"] * 1e3,
                    "push_returned_over_raw": r["seconds_median"] / f["push_returned_s_median"],
                    "raw_ms": r["seconds_median"] * 1e3,
                    "direct_buckets": f["direct_buckets"],
                    "in_place_buckets": f["in_place_buckets"],
                }
            )
    out["table"] = table
    for row in table:
        print(
            f"{model_name} {row['variant']:21s} {row['bucket_mb']:>5} MB  full "
            f"{row['full_GBps']:6.1f} GB/s  raw {row['raw_GBps']:6.1f} GB/s  "
            f"full/raw {row['full_over_raw']:.3f}",
            flush=True,
        )
    save()
    del named, sources
    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------- colocated


def gpu_process_memory(pid: int) -> int | None:
    """Device memory nvidia-smi attributes to process `pid`, bytes (None: not listed/no tool)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) * 1024 * 1024
    return None


def engine_memory(engine: EngineProc) -> dict:
    state = engine.http.get(engine.url + "/server_info").json()["internal_states"][0]
    return {**state["memory"], "nvidia_smi_process": gpu_process_memory(engine.proc.pid)}


def engine_logprobs(engine: EngineProc, ids: list[int]) -> list[float]:
    r = engine.http.post(
        engine.url + "/generate",
        json={"input_ids": ids, "sampling_params": {"max_new_tokens": 0},
              "return_logprob": True, "logprob_start_len": 0},
    )  # fmt: skip
    r.raise_for_status()
    return [x[0] for x in r.json()["meta_info"]["input_token_logprobs"][1:]]


COLOCATED_VARIANTS = {
    # the trainer's weights are the wire: bf16, HF order, packed (pack_parameters)
    "packed": True,
    # every tensor its own storage: each push copies them into the sender's staging buffer
    "staged": False,
}


def colocated(
    buckets_mb: list[int], reps: int, work: Path, model_name: str = "7b", warmup: int = 2,
    variants: tuple[str, ...] = ("packed", "staged"), memory: bool = True, save=None,
) -> dict:  # fmt: skip
    """Trainer and engine on one GPU (this process is the trainer). full = ColocatedSender.push
    (pause -> one /update_weights_from_tensor per bucket with CUDA IPC handles -> continue,
    answered after the engine's torch.cuda.synchronize: the update is applied) against raw =
    device-to-device copies of the same bytes in the same bucket sizes, same run. Then the
    engine's memory release/resume: its device memory before/after, and its logprobs on a
    fixed input before the release and after the resume."""
    import torch

    from rlpost.weightsync import payloads as P
    from rlpost.weightsync.colocated import ColocatedSender

    model = MODELS[model_name]
    sources = {v: build_source(model, packed=COLOCATED_VARIANTS[v]) for v in variants}
    named = sources[variants[0]]
    total = sum(P.tensor_nbytes(t) for _, t in named)
    job = write_job(work, model=model)
    engine = EngineProc(job, os.environ.get("CUDA_VISIBLE_DEVICES", "0"), work / "engine_co.log")
    out: dict = {"model": model_name, "bytes": total, "table": [], "variants": {}}
    version = 0
    sender = ColocatedSender([engine.url], token=TOKEN, dtype=torch.bfloat16)
    # Raw: device-to-device copies of the same bytes, bucket by bucket, into a preallocated
    # buffer (bytes counted once, as for the sync; the copy reads and writes each).
    src = torch.randint(0, 255, (total,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    try:
        for mb in buckets_mb:
            sizes = bucket_sizes(named, mb)
            copies = []
            for rep in range(reps + warmup):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                at = 0
                for n in sizes:
                    dst[at : at + n].copy_(src[at : at + n])
                    at += n
                torch.cuda.synchronize()
                if rep >= warmup:
                    copies.append(time.perf_counter() - t0)
            raw_gbps = total / median(copies) / 1e9
            for v in variants:
                sender.bucket_mb = mb
                walls, firsts, new_payloads = [], [], []
                for rep in range(reps + warmup):
                    version += 1
                    wall = sender.push(sources[v], version)
                    new_payloads.append(sender.last_new_payloads)
                    (walls if rep >= warmup else firsts).append(wall)
                full_gbps = total / median(walls) / 1e9
                row = {
                    "variant": v,
                    "bucket_mb": mb,
                    "buckets": len(sender.last_bucket_sizes),
                    "staged": sender.last_staged,
                    "full_GBps": full_gbps,
                    "raw_copy_GBps": raw_gbps,
                    "full_over_raw": full_gbps / raw_gbps,
                    "full_ms": median(walls) * 1e3,
                    "full_ms_all": [w * 1e3 for w in walls],
                    "raw_ms": median(copies) * 1e3,
                    "raw_ms_all": [c * 1e3 for c in copies],
                    "first_push_ms": firsts[0] * 1e3 if firsts else None,
                    "new_payloads_per_push": new_payloads,
                }
                out["table"].append(row)
                print(
                    f"colocated IPC {v:6s} bucket {mb:>5} MB ({row['buckets']} buckets): full "
                    f"{full_gbps:7.1f} GB/s ({row['full_ms']:.2f} ms; first push "
                    f"{row['first_push_ms']:.1f} ms)  raw d2d copy {raw_gbps:7.1f} GB/s "
                    f"({row['raw_ms']:.2f} ms)  full/raw {row['full_over_raw']:.3f}",
                    flush=True,
                )
                if save:
                    save(out)
            # the engine holds the last variant's weights: checksums after each bucket size
            want = own_checksums(sources[variants[-1]])
            got = engine.checksums()
            bad = [n for n in want if abs(want[n] - got[n]) > 1e-6 * max(1.0, abs(want[n]))]
            out.setdefault("engine_checksums_match", True)
            out["engine_checksums_match"] &= not bad
            out.setdefault("checksum_mismatches", []).extend(bad[:5])
        del src, dst
        torch.cuda.empty_cache()
        if memory:
            out["memory"] = release_resume(engine, len(ALPHABET))
            if save:
                save(out)
    finally:
        sender.close()
        engine.stop()
    out["gpus"] = [torch.cuda.get_device_name(0)]
    return out


def release_resume(engine: EngineProc, vocab: int) -> dict:
    """Memory release/resume on the engine: its device memory before, after the release and
    after the resume; its logprobs on a fixed input before the release and after the resume
    (+ continue), which must be equal."""
    import random

    from rlpost.weightsync.colocated import release_engines, resume_engines

    rng = random.Random(0)
    ids = [1] + [rng.randrange(3, vocab + 3) for _ in range(40)]
    before_lp = engine_logprobs(engine, ids)
    before = engine_memory(engine)
    released_s = release_engines([engine.url], TOKEN)
    time.sleep(1.0)  # nvidia-smi's per-process figure lags a little
    after = engine_memory(engine)
    resumed_s = resume_engines([engine.url], TOKEN)
    resumed = engine_memory(engine)
    engine.post("/continue_generation", {})
    after_lp = engine_logprobs(engine, ids)
    diff = max(abs(a - b) for a, b in zip(before_lp, after_lp, strict=True))

    def frac(key: str) -> float | None:
        if not before.get(key) or after.get(key) is None:
            return None
        return after[key] / before[key]

    res = {
        "before": before,
        "after_release": after,
        "after_resume": resumed,
        "release_s": released_s,
        "resume_s": resumed_s,
        "after_over_before_reserved": frac("reserved"),
        "after_over_before_nvidia_smi": frac("nvidia_smi_process"),
        "logprobs_tokens": len(before_lp),
        "logprobs_max_abs_diff_after_resume": diff,
        "logprobs_equal": before_lp == after_lp,
    }
    print(
        f"release/resume: reserved {before['reserved'] / 1e9:.2f} -> "
        f"{after['reserved'] / 1e9:.3f} GB, nvidia-smi {before['nvidia_smi_process']} -> "
        f"{after['nvidia_smi_process']} B; release {released_s * 1e3:.0f} ms, resume "
        f"{resumed_s * 1e3:.0f} ms; logprobs equal after resume: {res['logprobs_equal']}",
        flush=True,
    )
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-peer":
        raw_peer(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["all", "disaggregated", "colocated"], default="all")
    parser.add_argument("--models", default="7b,1.5b", help="comma list of " + ",".join(MODELS))
    parser.add_argument("--buckets", default=",".join(map(str, BUCKETS_MB)), help="MB, comma list")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help="comma list of " + ",".join(VARIANTS)
    )
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--timeline", type=int, default=None, metavar="MB",
                        help="also break one update down in time, at this bucket size")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_weight_sync.json"))
    args = parser.parse_args()
    buckets_mb = [int(x) for x in args.buckets.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    for k, v in (
        ("NCCL_NVLS_ENABLE", "0"),
        ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
        ("NVSHMEM_DISABLE_NVLS", "1"),
    ):
        os.environ.setdefault(k, v)
    import torch

    result: dict = {
        "torch": torch.__version__,
        "host_gpus": torch.cuda.device_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a timeout still leaves the results
        out_path.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_LOG_DIR", tmp))
        work.mkdir(parents=True, exist_ok=True)
        if args.mode in ("all", "disaggregated"):
            if torch.cuda.device_count() < 2:
                result["disaggregated"] = {"skipped": "needs 2 GPUs"}
            else:
                # This process (the trainer) uses GPU0; the engine and raw peer GPU1.
                torch.cuda.set_device(0)
                result["disaggregated"] = {}
                for name in args.models.split(","):
                    result["disaggregated"][name] = {}
                    disaggregated(name, variants, buckets_mb, args.reps, args.warmup, work,
                                  result["disaggregated"][name], save, args.timeline)  # fmt: skip
            save()
        if args.mode in ("all", "colocated"):
            result["colocated"] = colocated(buckets_mb, args.reps, work, warmup=args.warmup)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
