"""The reference engine: batching with a KV cache, auth, control endpoints, weight sync."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import torch

from rlpost.api import ModelSource
from rlpost.models import build_model, build_tokenizer
from tests.rollout.procs import ALPHABET, auth, write_job, write_prompts

SOURCE = ModelSource(config={}, tokenizer=f"char:{ALPHABET}", dtype="float32")


def gen(url: str, body: dict, **kw) -> dict:
    r = httpx.post(f"{url}/generate", json=body, timeout=60, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def state(url: str) -> dict:
    return httpx.get(f"{url}/server_info", timeout=10).json()["internal_states"][0]


def engine(procs, tmp_path):
    job = write_job(tmp_path, write_prompts(tmp_path / "p.jsonl"))
    return procs.engine(job)[1]


def greedy(text: str, n: int = 12) -> dict:
    return {
        "text": text,
        "sampling_params": {"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True},
        "return_logprob": True,
    }


@pytest.mark.asyncio
async def test_concurrent_requests_are_batched_and_match_single_runs(procs, tmp_path):
    url = engine(procs, tmp_path)
    prompts = ["1+1=", "12345+678=", "a", "9 9 9 9 9 9 9=", "bcd", "0=0", "77+1=", "j"]
    alone = {p: gen(url, greedy(p)) for p in prompts}
    before = state(url)

    async with httpx.AsyncClient(timeout=60) as c:
        rs = await asyncio.gather(*(c.post(f"{url}/generate", json=greedy(p)) for p in prompts))
    together = {p: r.json() for p, r in zip(prompts, rs, strict=True)}
    after = state(url)
    assert after["requests_total"] - before["requests_total"] == len(prompts)
    batches = after["batches"] - before["batches"]
    assert batches < len(prompts), f"{len(prompts)} concurrent requests ran in {batches} batches"
    for p in prompts:
        # Left padding + attention mask: a row in a batch computes what it computes alone.
        assert together[p]["output_ids"] == alone[p]["output_ids"], p
        a = [x[0] for x in alone[p]["meta_info"]["output_token_logprobs"]]
        b = [x[0] for x in together[p]["meta_info"]["output_token_logprobs"]]
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4, p
        assert together[p]["meta_info"]["finish_reason"] == {"type": "length", "length": 12}


def test_stop_strings_seeds_and_input_logprobs(procs, tmp_path):
    url = engine(procs, tmp_path)
    body = {
        "text": "3+4=",
        "sampling_params": {"max_new_tokens": 20, "temperature": 1.0, "sampling_seed": 7},
    }
    assert gen(url, body)["output_ids"] == gen(url, body)["output_ids"]  # seeded: reproducible
    out = gen(url, {**body, "return_logprob": True, "logprob_start_len": 2})
    meta = out["meta_info"]
    assert [t for _, t, _ in meta["input_token_logprobs"]] == build_tokenizer(SOURCE).encode(
        "3+4="
    )[2:]
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    first = out["text"][:1]
    stopped = gen(url, {**body, "sampling_params": {**body["sampling_params"], "stop": [first]}})
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": first}
    assert stopped["text"] == ""  # SGLang trims the matched stop string
    bad = httpx.post(f"{url}/generate", json={"text": "XYZ"}, timeout=10)
    assert bad.status_code == 400 and "alphabet" in bad.text


def test_control_endpoints_need_the_token_generation_does_not(procs, tmp_path):
    url = engine(procs, tmp_path)
    for path, body in [
        ("/pause_generation", {}),
        ("/continue_generation", {}),
        ("/flush_cache", None),
        ("/abort_request", {"abort_all": True}),
        ("/update_weight_version", {"new_version": "5"}),
        ("/release_memory_occupation", {}),
        ("/update_weights_from_disk", {"model_path": "/nope"}),
    ]:
        r = httpx.post(f"{url}{path}", json=body, timeout=10)
        assert r.status_code == 401, (path, r.status_code)
        r = httpx.post(f"{url}{path}", json=body, timeout=10, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401, path
    assert httpx.get(f"{url}/get_weight_version", timeout=10).json() == {"weight_version": "0"}
    gen(url, greedy("1", 2))
    for path in ("/health", "/health_generate", "/model_info", "/get_model_info", "/v1/loads"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    assert "rlpost_engine_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text


def test_pause_with_abort_ends_running_requests_and_continue_resumes(procs, tmp_path):
    model = {"config": {"max_position_embeddings": 4096}, "tokenizer": f"char:{ALPHABET}",
             "dtype": "float32"}  # fmt: skip
    url = procs.engine(write_job(tmp_path, write_prompts(tmp_path / "p.jsonl"), model=model))[1]
    results = {}
    long = {"text": "1", "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}

    def run():
        results["long"] = gen(url, long)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v1/loads").json()["loads"][0]["num_running_reqs"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.post(f"{url}/pause_generation", json={"mode": "abort"}, headers=auth(), timeout=10)
    assert r.status_code == 200
    t.join(30)
    assert results["long"]["meta_info"]["finish_reason"]["type"] == "abort"
    assert results["long"]["meta_info"]["completion_tokens"] < 4000
    # While paused, a new request waits; continue lets it through.
    waiting = {}
    t2 = threading.Thread(target=lambda: waiting.setdefault("r", gen(url, greedy("2", 3))))
    t2.start()
    time.sleep(0.5)
    assert "r" not in waiting
    httpx.post(f"{url}/continue_generation", json={}, headers=auth(), timeout=10)
    t2.join(30)
    assert waiting["r"]["meta_info"]["completion_tokens"] == 3


def trainer_logprobs(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def engine_logprobs(url: str, ids: list[int]) -> tuple[list[float], str]:
    out = gen(
        url,
        {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": 0,
        },
    )
    lps = out["meta_info"]["input_token_logprobs"]
    assert lps[0][0] is None and [t for _, t, _ in lps] == ids
    return [x[0] for x in lps[1:]], out["meta_info"]["weight_version"]


def test_weight_sync_then_engine_logprobs_match_the_trainer(procs, tmp_path):
    from rlpost.weightsync.sender import WeightSender
    from rlpost.weightsync.tensor_ipc import serialize_named_tensors

    torch.set_num_threads(1)
    url = engine(procs, tmp_path)
    tok = build_tokenizer(SOURCE)
    model = build_model(SOURCE, tok.vocab_size, seed=0)  # the trainer's copy: same init
    ids = tok.encode("12+34=46")  # a fixed prompt + completion
    lp, version = engine_logprobs(url, ids)
    assert version == "0"
    assert max(abs(a - b) for a, b in zip(lp, trainer_logprobs(model, ids), strict=True)) <= 1e-4

    with torch.no_grad():  # "a training step": the weights move
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    want = trainer_logprobs(model, ids)
    assert max(abs(a - b) for a, b in zip(lp, want, strict=True)) > 1e-2  # it did move

    sender = WeightSender([url], token=auth()["Authorization"].split()[1], backend="gloo",
                          bucket_mb=0.05, master_address="127.0.0.1")  # fmt: skip
    try:
        sender.push(list(model.named_parameters()), weight_version=1)
        assert len(sender.last_bucket_sizes) > 1  # several buckets went through
    finally:
        sender.close()
    lp, version = engine_logprobs(url, ids)
    assert version == "1"
    diff = max(abs(a - b) for a, b in zip(lp, want, strict=True))
    assert diff <= 1e-4, diff

    # Colocated path: release the weights, resume, load them from tensors.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    want = trainer_logprobs(model, ids)
    h = auth()
    assert httpx.post(f"{url}/release_memory_occupation", json={}, headers=h).status_code == 200
    assert httpx.post(f"{url}/generate", json=greedy("1", 1), timeout=10).status_code == 503
    assert httpx.post(f"{url}/resume_memory_occupation", json={}, headers=h).status_code == 200
    named = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    body = {"serialized_named_tensors": [serialize_named_tensors(named)], "weight_version": "2"}
    r = httpx.post(f"{url}/update_weights_from_tensor", json=body, headers=h, timeout=60)
    assert r.status_code == 200 and r.json()["success"], r.text
    lp, version = engine_logprobs(url, ids)
    assert version == "2"
    assert max(abs(a - b) for a, b in zip(lp, want, strict=True)) <= 1e-4
