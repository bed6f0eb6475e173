"""Colocated weight sync on the CPU: ColocatedSender -> a reference engine process, through
/update_weights_from_tensor with shared memory (the same code path CUDA IPC takes on GPUs)."""

from __future__ import annotations

import httpx
import torch

from rlpost.models import build_model, build_tokenizer
from rlpost.weightsync.colocated import ColocatedSender, StagingBuffer, release_engines
from rlpost.weightsync.packed import pack_parameters
from rlpost.weightsync.tensor_ipc import share_memory
from tests.rollout.procs import auth, write_job, write_prompts
from tests.rollout.test_engine import SOURCE, engine_logprobs, gen, greedy, state, trainer_logprobs


def token() -> str:
    return auth()["Authorization"].split()[1]


def test_payloads_are_made_once_and_the_engine_decodes_them_once(procs, tmp_path):
    torch.set_num_threads(1)
    url = procs.engine(write_job(tmp_path, write_prompts(tmp_path / "p.jsonl")))[1]
    tok = build_tokenizer(SOURCE)
    model = build_model(SOURCE, tok.vocab_size, seed=0)
    ids = tok.encode("12+34=46")
    sender = ColocatedSender([url], token=token(), bucket_mb=0.05)
    try:
        versions = []
        for version in (1, 2, 3):
            with torch.no_grad():  # "a training step": the weights move
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            sender.push(list(model.named_parameters()), version)
            versions.append((sender.last_new_payloads, len(sender.last_bucket_sizes)))
            lp, got = engine_logprobs(url, ids)
            assert got == str(version)
            want = trainer_logprobs(model, ids)
            assert max(abs(a - b) for a, b in zip(lp, want, strict=True)) <= 1e-4
        # The weights are not shared memory: they went through the staging buffer, whose
        # payloads were serialised by the first push only.
        assert sender.last_staged
        (new1, n1), (new2, n2), (new3, _) = versions
        assert n1 > 1 and new1 == n1 and new2 == 0 and new3 == 0
        ipc = state(url)["ipc_payloads"]
        assert ipc["misses"] == n1 and ipc["hits"] == 2 * n2 and ipc["cached"] == n1
    finally:
        sender.close()


def test_a_packed_shared_trainer_is_sent_from_its_own_memory(procs, tmp_path):
    torch.set_num_threads(1)
    url = procs.engine(write_job(tmp_path, write_prompts(tmp_path / "p.jsonl")))[1]
    tok = build_tokenizer(SOURCE)
    model = build_model(SOURCE, tok.vocab_size, seed=0)
    pack_parameters(model)
    share_memory(next(model.parameters()))
    ids = tok.encode("7+8=15")
    sender = ColocatedSender([url], token=token(), bucket_mb=1024)
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        sender.push(list(model.named_parameters()), 1)
        assert not sender.last_staged and len(sender.last_bucket_sizes) == 1
        lp, _ = engine_logprobs(url, ids)
        assert max(abs(a - b) for a, b in zip(lp, trainer_logprobs(model, ids), strict=True)) < 1e-4
        # The engine copied (one copy: both sides packed): moving the trainer's weights
        # afterwards does not move the engine's.
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        lp2, _ = engine_logprobs(url, ids)
        assert lp2 == lp
    finally:
        sender.close()


def test_a_changed_layout_gets_new_handles_and_wrong_names_are_refused(procs, tmp_path):
    torch.set_num_threads(1)
    url = procs.engine(write_job(tmp_path, write_prompts(tmp_path / "p.jsonl")))[1]
    tok = build_tokenizer(SOURCE)
    model = build_model(SOURCE, tok.vocab_size, seed=0)
    sender = ColocatedSender([url], token=token(), bucket_mb=0.05)
    try:
        named = list(model.named_parameters())
        sender.push(named, 1)
        first = sender.last_new_payloads
        sender.push(named[:-1], 2)  # another layout: a new staging buffer, new payloads
        assert sender.last_new_payloads >= 1 and first >= 1
        bad = [("model.nope.weight", named[0][1])] + named[1:]
        try:
            sender.push(bad, 3)
            raise AssertionError("an unknown name must be refused")
        except Exception as e:  # WeightSyncFailed naming the engine's answer
            assert "unknown parameter" in str(e)
    finally:
        sender.close()


def test_release_while_paused_queues_requests_until_resume_and_continue(procs, tmp_path):
    url = procs.engine(write_job(tmp_path, write_prompts(tmp_path / "p.jsonl")))[1]
    before = gen(url, greedy("1+2=", 4))
    release_engines([url], token())
    r = httpx.post(f"{url}/resume_memory_occupation", json={}, headers=auth(), timeout=10)
    assert r.status_code == 200
    httpx.post(f"{url}/continue_generation", json={}, headers=auth(), timeout=10)
    after = gen(url, greedy("1+2=", 4))
    assert after["output_ids"] == before["output_ids"]


def test_staging_buffer_casts_and_aligns():
    named = [("a", torch.randn(3, 5)), ("b", torch.randn(7, dtype=torch.float64))]
    stage = StagingBuffer([(n, tuple(t.shape), torch.bfloat16) for n, t in named], "cpu")
    views = stage.fill(named)
    assert [v.dtype for _, v in views] == [torch.bfloat16, torch.bfloat16]
    assert torch.equal(views[0][1], named[0][1].to(torch.bfloat16))
    assert torch.equal(views[1][1], named[1][1].to(torch.bfloat16))
    assert stage.flat.is_shared() and stage.nbytes == (15 + 7) * 2
